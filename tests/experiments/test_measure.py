"""The noise-robust timing: interleaved rounds, medians with their spread, per-round ratios, the MFU cap, the CPU's
instruction sets; checked with a stubbed clock whose noise is known."""

from __future__ import annotations

import pytest

from alexnet.experiments.measure import Stat, cpu_features, interleaved, ratio, utilisation


class ScriptedClock:
    """A clock the steps advance by their scripted durations."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rates_are_medians_of_repeats_per_round_and_ratios_pair_the_rounds():
    clock = ScriptedClock()
    # Round noise: the machine is 1×, 2× then 4× slower in rounds 1-3 (neighbours), the same for both sides; within
    # a round one of three repeats is an outlier (×10) that the median ignores.
    slow = iter([1, 1, 10, 2, 2, 20, 4, 4, 40])  # A's repeats, round by round
    fast = iter([0.5, 5, 0.5, 1, 10, 1, 2, 20, 2])  # B's: half A's time

    def a():
        clock.now += 0.1 * next(slow)

    def b():
        clock.now += 0.1 * next(fast)

    rates = interleaved({"A": a, "B": b}, {"A": 10, "B": 10}, rounds=3, repeats=3, warmup=0, clock=clock)
    assert rates["A"] == pytest.approx([100.0, 50.0, 25.0])  # 10 items / (0.1 s × 1, 2, 4)
    assert rates["B"] == pytest.approx([200.0, 100.0, 50.0])
    speedup = ratio(rates["B"], rates["A"])
    assert speedup == Stat(pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))  # the drift cancels
    a_stat = Stat.of(rates["A"])
    assert (a_stat.median, a_stat.low, a_stat.high) == pytest.approx((50.0, 25.0, 100.0))


def test_a_goal_is_met_only_when_the_spread_clears_it():
    assert Stat(2.0, 1.85, 2.2).clears(1.8) and not Stat(2.0, 1.7, 2.2).clears(1.8)
    with pytest.raises(ValueError):
        ratio([1.0, 2.0], [1.0])


def test_mfu_is_capped_and_an_impossible_rate_flags_the_peak():
    assert utilisation(50e9, 100e9) == (0.5, False)
    assert utilisation(167e9, 100e9) == (1.0, True)  # the old report's "MFU 167%": the peak was under-measured


def test_cpu_features_names_the_isa_that_decides_bf16_and_int8_speed(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 "
        "amx_tile amx_int8 avx512_vnni\n"
    )
    model, flags = cpu_features(info)
    assert model.startswith("Intel(R) Xeon") and {"amx_bf16", "amx_int8", "avx512_bf16"} <= set(flags)
    assert cpu_features(tmp_path / "missing") == ("unknown CPU", [])
