"""``report.md`` of `alexnet reproduce`, written from the runs' records alone (never their weights), so a reproduction
spread over several sittings is reported as one."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ..files import atomic_write, json_text, read_record, save_figure


def is_ensemble_record(saved: Any) -> bool:
    """Whether ``saved`` (an ``ensemble.json``'s JSON) holds the numbers the report reads: a damaged one is not."""
    if not isinstance(saved, dict) or not isinstance(members := saved.get("members_err"), list):
        return False
    numbers = [*members, saved.get("ensemble_err"), saved.get("seconds")]
    return isinstance(saved.get("seeds"), list) and all(isinstance(v, (int, float)) for v in numbers)


def is_run_record(record: Any) -> bool:
    """Whether ``record`` (a ``done.json``'s JSON) holds what the measures and this report read: the seconds, and
    every epoch's training loss and accuracy with a test (or else validation) accuracy after the last."""
    number = (int, float)
    history = record.get("history") if isinstance(record, dict) else None
    if not (isinstance(history, list) and history and all(isinstance(r, dict) for r in history)):
        return False
    rows = all(isinstance(r.get(k), number) for r in history for k in ("train_loss", "train_acc1"))
    last = isinstance(history[-1].get("test_acc1"), number) or isinstance(history[-1].get("val_acc1"), number)
    return rows and last and isinstance(record.get("seconds"), number)


def _arm_records(records: Path, home: Path) -> list[dict[str, Any]]:
    """The records of one arm's seeds, by seed: those past this sitting's seeds too, which `reproduce` did not
    check, so a damaged one is left out rather than read."""
    found = (read_record(p) for p in sorted((records / home).glob("seed*/done.json")))
    return [r for r in found if is_run_record(r)]


def _records(records: Path, homes: dict[Any, Path]) -> list[dict[str, Any]]:
    """Every finished run's record of this reproduction, each once."""
    return [r for home in sorted(set(homes.values())) for r in _arm_records(records, home)]


def _ensembles(records: Path, homes: dict[Any, Path]) -> list[dict[str, Any]]:
    """The ensemble records (``ensemble.json`` beside an arm's seeds) of this reproduction."""
    found = sorted({records / home / "ensemble.json" for home in homes.values()})
    return [r for r in (read_record(p) for p in found if p.is_file()) if is_ensemble_record(r)]


def write_report(
    records: Path, plan: Any, experiments: list[Any], results: dict[str, Any], seeds: int, homes: dict[Any, Path]
) -> Path:
    """``records/report.md`` and ``results.json``: per claim the paper's figure, the arms (mean ± sd over seeds, with
    censored runs named), the effect with its 95% interval, the verdict, published reproductions; the runs' total
    time and the machines they ran on; Figure 3 of the baseline; ``curves_<experiment>.png`` when matplotlib is
    installed."""
    runs = _records(records, homes)
    hours = sum(r["seconds"] for r in runs) / 3600
    machines = sorted({r.get("machine", "not recorded") for r in runs})
    ensembles = _ensembles(records, homes)  # measured where the weights were, maybe on another machine
    if ensembles:
        made = sorted({e.get("machine", "not recorded") for e in ensembles})
        machines.append(f"the ensemble measured on {', '.join(made)}")
    lines = [
        f"# The paper's claims, reproduced ({plan.describe})",
        "",
        f"{seeds} seed(s) per arm; arms as mean ± sample standard deviation over seeds; effects with their 95% "
        "confidence interval (Welch's t for differences of errors, a t-interval on the logarithm for ratios, paired "
        "t for ten crops and the ensemble). Verdict: *reproduced in sign* when the interval excludes no effect, "
        "*and size* when the estimate is also within a factor of two of the paper's; a run that never reached its "
        "target is *censored* (its value is a lower bound) and its arm's figure is a bound, without an interval. "
        "Errors are the last epoch's test top-1 error, never selected.",
        "",
        f"{len(runs)} runs, **{hours:.2f} h** of training and evaluation in all, on: " + "; ".join(machines) + ".",
        "",
    ]
    if plan.settings:
        lines += ["Settings: " + "; ".join(f"{k} `{' '.join(v)}`" for k, v in plan.settings.items()) + ".", ""]
    lines += [
        "| claim | paper | ours: arms | effect, 95% CI | verdict | time | others |",
        "|---|---|---|---|---|---:|---|",
    ]
    for exp in experiments:
        r = results[exp.name]
        arms = "; ".join(f"{name} {a.text}" for name, a in r.arms.items())
        lines.append(
            f"| **{exp.name}** ({exp.section}): {exp.claim} | {exp.paper} | {arms} | {r.text} | "
            f"{r.verdict} | {r.seconds / 60:.1f} min | {exp.others} |"
        )
    lines += [
        "",
        "Effects: `error` claims in test-error points the paper's choice saves (positive agrees with the paper); "
        "`relu_tanh` tanh's epochs to the target over ReLU's; `dropout` the epochs to the target training loss with "
        "dropout over without; `ten_crop` centre-crop error minus ten-crop error of the same weights; `ensemble` each "
        "run's centre-crop error minus that of all the runs, their softmax averaged.",
        "",
    ]
    notes = [f"- **{e.name}**: {e.note}" for e in experiments if e.note]
    if notes:
        lines += ["Notes:", *notes, ""]
    baseline = homes.get(plan.baseline)
    lines += _figure3(runs, baseline)
    with contextlib.suppress(ImportError):  # matplotlib is the optional [report] extra
        lines += _curves(records, experiments, homes)
    path = records / "report.md"
    atomic_write(path, lambda f: f.write("\n".join(lines).encode()))
    tree = {k: r.to_dict() for k, r in results.items()}
    atomic_write(records / "results.json", lambda f: f.write(json_text(tree, indent=1).encode()))
    return path


def _figure3(runs: list[dict[str, Any]], baseline: Path | None) -> list[str]:
    """The baseline runs' per-tower colour specificity (the paper's Figure 3: one tower colour-agnostic, the other
    colour-specific)."""
    rows = [r for r in runs if r.get("fig3")]
    if not rows:
        return []
    lines = [
        "## Figure 3: the towers' conv1 kernels",
        "",
        "Colour specificity of a kernel: the share of its energy outside its grey component (0: luminance only). "
        'The paper: one tower\'s kernels "largely color-agnostic", the other\'s "largely color-specific". p: how '
        "often a random split of the same kernels into two towers sets their means as far apart (a permutation test; "
        "small p: the towers specialise).",
        "",
        "| seed | tower 1 mean | tower 2 mean | ratio | p (random split) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["seed"]):
        towers = r["fig3"]["towers"]
        means = " | ".join(f"{t['mean']:.3f}" for t in towers)
        p = r["fig3"].get("p_random_split")  # records written before the test had none
        lines.append(f"| {r['seed']} | {means} | {r['fig3']['ratio']} | {'-' if p is None else p} |")
    return [*lines, "", f"![Figure 3, seed 0]({baseline}/seed0/fig3.png)", ""]


def _curves(records: Path, experiments: list[Any], homes: dict[Any, Path]) -> list[str]:
    from .report import _pyplot

    plt = _pyplot()
    lines = ["## Curves", ""]
    for exp in experiments:
        if exp.other_arm is None:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        key = "val_acc1" if exp.metric == "error" else ("train_acc1" if exp.metric == "epochs" else "train_loss")
        for arm in (exp.paper_arm, exp.other_arm):
            for i, record in enumerate(_arm_records(records, homes[arm])):
                rows = record["history"]
                ys = [r[key] if key == "train_loss" else 100 - r[key] for r in rows]
                ax.plot(
                    range(1, len(ys) + 1),
                    ys,
                    "--" if arm is exp.other_arm else "-",
                    color=f"C{int(arm is exp.other_arm)}",
                    alpha=0.8,
                    label=arm.name if i == 0 else None,
                )
        ylabel = {"val_acc1": "validation error (%)", "train_acc1": "training error (%)", "train_loss": "training loss"}
        ax.set(xlabel="epoch", ylabel=ylabel[key], title=exp.name)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, records / f"curves_{exp.name}.png", dpi=90)
        plt.close(fig)
        lines.append(f"![{exp.name}](curves_{exp.name}.png)")
    return lines
