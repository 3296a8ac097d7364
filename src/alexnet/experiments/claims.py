"""The statistics behind `alexnet reproduce`'s verdicts: each claim's effect with a 95% confidence interval over
seeds, censored runs, and the verdict.

An arm's runs give one value each (a test error in %, or the epochs to a target). A run that never reached its
target is *censored*: its value is only a lower bound (the epochs it was given). Effects:

- ``error`` claims: the difference of the arms' mean errors (points the paper's choice saves), with Welch's
  t-interval (unequal variances; Welch–Satterthwaite degrees of freedom).
- ``ratio`` claims (epochs to a target): the ratio of the arms' mean epochs, with a t-interval on its logarithm
  (delta method). Censoring in the slower arm makes the ratio a lower bound, reported as ``≥``, without an interval;
  censoring in the faster arm leaves nothing to conclude.
- ``paired`` claims (one set of weights evaluated two ways): the mean of the per-run differences, with a t-interval.

With one seed there is no interval, and the verdict says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom; interpolated in 1/df between rows.
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
    60: 2.000,
    120: 1.980,
}


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` (≥ 1, not necessarily whole) degrees of freedom."""
    if df >= 120:
        return 1.980 + (1.960 - 1.980) * (1 - 120 / df)
    rows = sorted(_T975)
    df = max(df, 1.0)
    hi = next(r for r in rows if r >= df)
    lo = max((r for r in rows if r <= df), default=hi)
    if lo == hi:
        return _T975[lo]
    w = (1 / lo - 1 / df) / (1 / lo - 1 / hi)  # linear in 1/df, where t is nearly linear
    return _T975[lo] + w * (_T975[hi] - _T975[lo])


@dataclass
class Arm:
    """One arm's values over seeds; ``censored[i]``: run i never reached the target (its value is a lower bound)."""

    values: list[float]
    censored: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.censored = self.censored or [False] * len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def n_censored(self) -> int:
        return sum(self.censored)


@dataclass
class Effect:
    """A claim's effect: its estimate, 95% interval (None without one), and how to read it.

    Attributes:
        estimate: error points saved (``error``, ``paired``) or a ratio (``ratio``).
        low, high: the 95% confidence interval, or None (one seed, or censored runs).
        kind: ``error``, ``ratio`` or ``paired``.
        bound: ``lower`` when censoring makes the estimate a lower bound; ``unknown`` when nothing can be said.
        n: runs per arm.
    """

    estimate: float
    low: float | None
    high: float | None
    kind: str
    bound: str = ""
    n: int = 0


def difference(paper: Arm, other: Arm) -> Effect:
    """``other.mean − paper.mean`` (positive: the paper's choice has the lower value) with Welch's interval."""
    est = other.mean - paper.mean
    n = min(len(paper.values), len(other.values))
    if n < 2:
        return Effect(est, None, None, "error", n=n)
    vp, vo = paper.sd**2 / len(paper.values), other.sd**2 / len(other.values)
    se = math.sqrt(vp + vo)
    if se == 0:
        return Effect(est, est, est, "error", n=n)
    df = (vp + vo) ** 2 / (vp**2 / (len(paper.values) - 1) + vo**2 / (len(other.values) - 1) or 1e-300)
    half = t975(df) * se
    return Effect(est, est - half, est + half, "error", n=n)


def ratio(slow: Arm, fast: Arm) -> Effect:
    """``slow.mean / fast.mean`` (the claim: ``slow`` needs this many times the epochs) with an interval on its log.

    Censored runs in ``slow`` make the ratio a lower bound; in ``fast``, unknown.
    """
    n = min(len(slow.values), len(fast.values))
    est = slow.mean / fast.mean
    if fast.n_censored:
        return Effect(est, None, None, "ratio", bound="unknown", n=n)
    if slow.n_censored:
        return Effect(est, None, None, "ratio", bound="lower", n=n)
    if n < 2:
        return Effect(est, None, None, "ratio", n=n)
    vs, vf = (slow.sd / slow.mean) ** 2 / len(slow.values), (fast.sd / fast.mean) ** 2 / len(fast.values)
    se = math.sqrt(vs + vf)
    if se == 0:
        return Effect(est, est, est, "ratio", n=n)
    df = (vs + vf) ** 2 / (vs**2 / (len(slow.values) - 1) + vf**2 / (len(fast.values) - 1) or 1e-300)
    half = t975(df) * se
    return Effect(est, est * math.exp(-half), est * math.exp(half), "ratio", n=n)


def paired(differences: list[float]) -> Effect:
    """The mean of per-run differences (same weights, two evaluations) with a t-interval on n − 1 df."""
    n = len(differences)
    est = statistics.fmean(differences)
    if n < 2:
        return Effect(est, None, None, "paired", n=n)
    half = t975(n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return Effect(est, est - half, est + half, "paired", n=n)


def verdict(effect: Effect, paper: float | None) -> str:
    """Reproduced in sign and size (the interval excludes no effect and the estimate is within a factor of two of
    the paper's), in sign only, not reproduced (within noise, or opposite); or why no verdict can be given.
    ``paper`` None: the paper states the effect without a figure, so only its sign can be reproduced."""
    null = 1.0 if effect.kind == "ratio" else 0.0
    if effect.bound == "unknown":
        return "no verdict: the faster arm's runs were censored"
    if effect.bound == "lower":
        if effect.estimate <= null:
            return "no verdict: censored runs, and the bound does not exceed no effect"
        return "reproduced in sign (a lower bound: censored runs)" + (
            ", at least the paper's size" if paper is not None and effect.estimate >= paper else ""
        )
    if effect.low is None or effect.high is None:
        return "one seed: no interval, no verdict"
    if effect.low <= null <= effect.high:
        return "not reproduced (within noise)"
    if effect.high < null:
        return "not reproduced (opposite)"
    if paper is None:
        return "reproduced (in sign: the paper gives no figure for its size)"
    size = effect.estimate / paper if effect.kind != "ratio" else math.log(effect.estimate) / math.log(paper)
    return "reproduced in sign and size" if 0.5 <= size <= 2 else "reproduced in sign only"


def describe(effect: Effect) -> str:
    """The effect as the report prints it: ``+1.23 points [0.40, 2.06]``, ``3.8× [2.9, 5.0]``, ``≥ 6.7×``."""
    if effect.kind == "ratio":
        if effect.bound == "lower":
            return f"≥ {effect.estimate:.2f}× (censored)"
        if effect.bound == "unknown":
            return f"{effect.estimate:.2f}× (censored)"
        interval = "" if effect.low is None else f" [{effect.low:.2f}, {effect.high:.2f}]"
        return f"{effect.estimate:.2f}×{interval}"
    interval = "" if effect.low is None else f" [{effect.low:+.2f}, {effect.high:+.2f}]"
    return f"{effect.estimate:+.2f} points{interval}"


def describe_arm(arm: Arm, unit: str) -> str:
    """``mean ± sd`` of an arm, with its censored runs named (``> 40 in 2 of 3 runs``)."""
    if arm.n_censored:  # the mean of lower bounds is itself only a lower bound
        cap = max(v for v, c in zip(arm.values, arm.censored) if c)
        return f"≥ {arm.mean:.2f}{unit} (censored: > {cap:g} in {arm.n_censored} of {len(arm.values)} runs)"
    return f"{arm.mean:.2f}{unit} ± {arm.sd:.2f}" if len(arm.values) > 1 else f"{arm.mean:.2f}{unit} (one seed)"
