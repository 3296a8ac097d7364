"""The paper's figures and claims, benchmarks, the demo and run reports."""
