"""Timing that holds on a shared, noisy machine: cases run interleaved (A B A B ...) for several rounds, each figure
is the median over rounds with its min-max, and each ratio is the median of the per-round ratios (the two sides of
a round ran seconds apart, under the same neighbours) with its spread. A goal counts as met only when the whole
spread clears it.

Also what the figures are relative to: the CPU's model and the instruction sets that decide its bf16 and int8 speed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import native

# Instruction sets that change bf16/int8 matrix speed several-fold, as /proc/cpuinfo names them.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Stat:
    """A figure over rounds: the median, and the lowest and highest round."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))

    def clears(self, goal: float) -> bool:
        """True only when every round reached ``goal`` (the spread clears it, not just the median)."""
        return self.low >= goal

    def scaled(self, factor: float) -> Stat:
        return Stat(self.median * factor, self.low * factor, self.high * factor)


def interleaved(
    steps: dict[str, Callable[[], None]],
    items: dict[str, float],
    rounds: int = 5,
    repeats: int = 3,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Items per second of each step, per round: every round runs every step ``repeats`` times in turn (A A A B B B,
    then the next round), and a round's rate is ``items`` over the median of its repeats.

    Returns:
        name → one rate per round, in round order (pair them with `ratio`).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
        sync()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times = []
            for _ in range(repeats):
                began = clock()
                step()
                sync()
                times.append(clock() - began)
            rates[name].append(items[name] / max(statistics.median(times), 1e-12))
    return rates


def ratio(numerator: list[float], denominator: list[float]) -> Stat:
    """The per-round ratios of two interleaved measurements, as a `Stat`."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("a ratio needs the same, non-zero number of rounds on both sides")
    return Stat.of([a / b for a, b in zip(numerator, denominator)])


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """The CPU's model name and which of `ISA_FLAGS` it has (empty where /proc/cpuinfo is not there)."""
    flags = native.cpu_flags(cpuinfo)
    return native.cpu_model(cpuinfo) or "unknown CPU", [f for f in ISA_FLAGS if f in flags]


def utilisation(flops_per_s: float, peak: float) -> tuple[float, bool]:
    """MFU, capped at 1, and whether the rate exceeded the measured peak (then the peak, not the model, is wrong:
    its kernels did not reach the hardware's rate, and the report says so instead of printing MFU over 100%)."""
    raw = flops_per_s / peak if peak > 0 else 0.0
    return min(raw, 1.0), raw > 1.0
