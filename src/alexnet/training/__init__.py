"""Training: the fit loop, the step engine, optimizers and schedules, checkpoints, and torchrun."""
