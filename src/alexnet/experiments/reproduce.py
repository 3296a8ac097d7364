"""`alexnet reproduce`: the paper's ablations and claims as ordinary training runs, and a report beside its numbers.

Every experiment compares arms (the paper's choice against the alternative) over seeds; each run is an ordinary
run directory ``OUT/<experiment>/<arm>/seed<k>/``. Runs shared by several experiments (the baseline of the
ablations) are trained once. A finished run leaves a small *record* (``done.json`` with its metrics history,
``metrics.csv``, ``config.json``; never weights) under ``RECORDS/<experiment>/<arm>/seed<k>/`` (``RECORDS`` is
``OUT`` unless given): a run with a record is not trained again, one without resumes from its ``last.pt``. Records
can be committed, so a reproduction longer than one sitting continues from a fresh clone and its report is rebuilt
from the records of every sitting. ``RECORDS/report.md`` has one table per claim (`alexnet.experiments.claims`).

The experiments, their arms and the budgets (``small``, ``cpu``, ``full``) are data: `alexnet.experiments.ablations`.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import native
from ..config import load_config
from ..data.pipeline import check_present
from ..errors import AlexNetError
from ..files import RECORD_BYTES, atomic_write, check_outputs, read_json_input, read_record
from ..names import did_you_mean
from ..training.fit import fit
from . import claims
from .ablations import BUDGETS, Arm, Experiment
from .reproduce_report import is_ensemble_record, is_run_record

log = logging.getLogger(__name__)


def machine() -> str:
    """The CPU model and core count, and torch's version: what a record says it ran on."""
    name = native.cpu_model() or platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    threads = torch.get_num_threads()
    return f"{name} ({threads} thread{'s' if threads != 1 else ''}{gpu}), torch {torch.__version__}"


@dataclass
class Plan:
    """Where one reproduction's runs train (``out``) and where their records go (``records``)."""

    out: Path
    records: Path
    cifar_dir: str | None
    fashion_dir: str | None
    overrides: list[str]
    fields: dict[str, Any]
    baseline: Arm | None


def _run(plan: Plan, arm: Arm, seed: int, rel: Path) -> dict[str, Any]:
    """Train one arm with one seed (skipped when its record exists; resumed when its run was interrupted) and
    return its record."""
    record, run = plan.records / rel, plan.out / rel
    done = record / "done.json"
    if done.is_file():
        return read_json_input(done, RECORD_BYTES, "run record")
    # resume="auto": from the run's checkpoint when it was interrupted, a fresh start when it has none
    overrides = [
        *arm.overrides,
        *_data_overrides(arm, plan),
        *plan.overrides,
        f"train.seed={seed}",
        f'train.out="{run}"',
        'train.resume="auto"',
    ]
    cfg = load_config(arm.recipe, overrides, **plan.fields)
    began = time.perf_counter()
    result = fit(cfg)
    summary: dict[str, Any] = {
        "history": result.history,
        "seconds": round(time.perf_counter() - began, 1),
        "seed": seed,
        "arm": arm.name,
        "recipe": arm.recipe,
        "overrides": list(arm.overrides),
        "settings": _settings(plan),
        "machine": machine(),
    }
    if arm == plan.baseline:
        summary.update(_baseline_measures(run, plan, record))
        # The ensemble averaged the weights this run replaces: measured again, on the new ones, when next asked.
        (record.parent / "ensemble.json").unlink(missing_ok=True)
    record.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "config.json", "held_out.json"):
        if (run / name).is_file() and record != run:
            shutil.copyfile(run / name, record / name)
    atomic_write(done, lambda f: f.write(json.dumps(summary, indent=1).encode()))
    return summary


def _baseline_measures(run: Path, plan: Plan, record: Path) -> dict[str, Any]:
    """The baseline's extra measurements of its final weights, kept in its record (the weights are not): the test
    error with the centre crop and with ten crops, and Figure 3's per-tower colour specificity."""
    from ..inference.evaluate import evaluate_checkpoint
    from .figures import figure3

    weights = run / "last.pt"
    kwargs = _eval_kwargs(plan)
    centre = evaluate_checkpoint(weights, ten_crop=False, **kwargs).err1  # one view, whatever the run validated with
    ten = evaluate_checkpoint(weights, ten_crop=True, **kwargs).err1
    out: dict[str, Any] = {"test_err_centre": round(centre, 3), "test_err_ten_crop": round(ten, 3)}
    try:
        fig3 = figure3(weights, record)
        out["fig3"] = {
            "towers": [{k: t[k] for k in ("tower", "kernels", "mean", "median")} for t in fig3["towers"]],
            "ratio": fig3["ratio"],
            "p_random_split": fig3["p_random_split"],
        }
    except (ImportError, ValueError) as err:  # no matplotlib, or a one-channel model
        log.warning("Figure 3 not drawn for %s: %s", run, err)
    return out


def _eval_kwargs(plan: Plan) -> dict[str, Any]:
    return {
        "data_dir": plan.cifar_dir,
        "progress": False,
        "dataset": plan.fields.get("data__dataset"),
        "precision": "fp32",
    }


def _ensemble_record(plan: Plan, home: Path, seeds: int) -> dict[str, Any] | None:
    """The test error of each of ``home``'s runs and of all of them as one (`alexnet.inference.ensemble`), one
    centre view each: read from ``ensemble.json`` in its records, else measured on the runs' weights and kept
    there; None where the records have none and the weights are gone (a later sitting: records keep no weights)."""
    from ..inference.evaluate import evaluate_checkpoint

    path = plan.records / home / "ensemble.json"
    if path.is_file():
        saved = read_record(path)
        if not is_ensemble_record(saved):  # a measurement kept: measured again where the weights are, else not
            log.warning("%s is damaged: not read", path)
        elif saved["seeds"] == list(range(seeds)) and len(saved["members_err"]) == seeds:
            return saved
    weights = [plan.out / home / f"seed{s}" / "last.pt" for s in range(seeds)]
    if not all(w.is_file() for w in weights):
        log.warning("ensemble not measured: %s has no record of it and the runs' weights are gone", plan.records / home)
        return None
    began = time.perf_counter()
    kwargs = _eval_kwargs(plan)
    members = [evaluate_checkpoint(w, ten_crop=False, **kwargs).err1 for w in weights]
    together = evaluate_checkpoint(weights, ten_crop=False, **kwargs)
    record = {
        "seeds": list(range(seeds)),
        "members_err": [round(e, 3) for e in members],
        "ensemble_err": round(together.err1, 3),
        "ensemble_err5": round(together.err5, 3),
        "ensemble_loss": round(together.loss, 5),
        "seconds": round(time.perf_counter() - began, 1),
        "machine": machine(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=1).encode()))
    return record


def _data_overrides(arm: Arm, plan: Plan) -> list[str]:
    if arm.recipe.startswith(("cifar10", "fig1")) and plan.cifar_dir:
        return ['data.dataset="folder"', f'data.data_dir="{plan.cifar_dir}"', "model.overrides.input_size=32"]
    if arm.recipe == "fashion-mnist" and plan.fashion_dir:
        return [f'data.data_dir="{plan.fashion_dir}"']
    return []


def _value(exp: Experiment, summary: dict[str, Any]) -> tuple[float, bool]:
    """A run's value for ``exp`` and whether it is censored (never reached the target: a lower bound)."""
    history = summary["history"]
    if exp.metric == "error":  # the last epoch's, on the test split: never selected
        last = history[-1]
        test = last.get("test_acc1")
        return 100 - (test if test is not None and math.isfinite(test) else last["val_acc1"]), False
    key, target = ("train_loss", exp.target) if exp.metric == "converge" else ("train_acc1", 100 - exp.target)
    below = exp.metric == "converge"
    hit = next((i + 1 for i, r in enumerate(history) if (r[key] <= target if below else r[key] >= target)), None)
    return (float(hit), False) if hit else (float(len(history)), True)


@dataclass(frozen=True)
class ArmResult:
    """One arm of a claim over its seeds: the values (epochs or error, %), which runs were censored (never reached
    the target: the value is a lower bound), mean, sample standard deviation, and how the report writes them."""

    values: list[float]
    censored: list[bool]
    mean: float
    sd: float
    text: str


@dataclass(frozen=True)
class ClaimResult:
    """A claim measured: its arms, the effect with its 95% interval, the verdict, and the seconds its runs took."""

    arms: dict[str, ArmResult]
    effect: claims.Effect
    text: str
    verdict: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _measure(exp: Experiment, runs: dict[str, list[dict[str, Any]]]) -> ClaimResult:
    if exp.metric == "tencrop":
        records = runs[exp.paper_arm.name]
        centre = [r["test_err_centre"] for r in records]
        ten = [r["test_err_ten_crop"] for r in records]
        arms = {"centre crop": claims.Arm(centre), "ten crops": claims.Arm(ten)}
        effect = claims.paired([c - t for c, t in zip(centre, ten)])
    else:
        arms = {}
        for name, records in runs.items():
            values = [_value(exp, r) for r in records]
            arms[name] = claims.Arm([v for v, _ in values], [c for _, c in values])
        paper, other = arms[exp.paper_arm.name], arms[exp.other_arm.name]  # type: ignore[union-attr]
        if exp.metric == "error":
            effect = claims.difference(paper, other)
        elif exp.metric == "epochs":  # the other arm (tanh) is the slower one
            effect = claims.ratio(other, paper)
        else:  # converge: the paper's arm (dropout) is the slower one
            effect = claims.ratio(paper, other)
    seconds = sum(r["seconds"] for rs in runs.values() for r in rs)
    return _claim_result(exp, arms, effect, seconds)


def _measure_ensemble(exp: Experiment, record: dict[str, Any] | None) -> ClaimResult:
    if record is None:
        why = "not measured: the runs' weights are gone and no ensemble.json was kept (train the seeds again)"
        return ClaimResult({}, claims.Effect(math.nan, None, None, "paired"), "not measured", why, 0.0)
    members, together = record["members_err"], record["ensemble_err"]
    name = f"{len(members)} averaged"
    arms = {"one model": claims.Arm(members), name: claims.Arm([together])}
    result = _claim_result(exp, arms, claims.paired([m - together for m in members]), record["seconds"])
    result.arms[name] = replace(result.arms[name], text=f"{together:.2f}%")  # one model of all the seeds
    return result


def _claim_result(exp: Experiment, arms: dict[str, claims.Arm], effect: claims.Effect, seconds: float) -> ClaimResult:
    unit = "%" if exp.metric in ("error", "tencrop", "ensemble") else " epochs"
    return ClaimResult(
        {
            k: ArmResult(
                [round(v, 3) for v in a.values],
                a.censored,
                round(a.mean, 3),
                round(a.sd, 3),
                claims.describe_arm(a, unit),
            )
            for k, a in arms.items()
        },
        effect,
        claims.describe(effect),
        claims.verdict(effect, exp.paper_effect),
        round(seconds, 1),
    )


def _recorded(plan: Plan, home: Path, seeds: int) -> bool:
    """Whether every seed of the arm at ``home`` has its record: nothing of it trains in this sitting."""
    return all((plan.records / home / f"seed{s}" / "done.json").is_file() for s in range(seeds))


def _check_data(plan: Plan, arms: list[Arm]) -> None:
    """Every data set the ``arms`` about to train read is there, before the first trains: the small budget's dropout
    claim (Fashion-MNIST) comes after 40 minutes of CIFAR-10 runs."""
    checked = set()
    for arm in arms:
        cfg = load_config(arm.recipe, [*arm.overrides, *_data_overrides(arm, plan), *plan.overrides], **plan.fields)
        source = (cfg.data.dataset, cfg.data.data_dir)
        if source not in checked:
            check_present(cfg.data)
            checked.add(source)


def _settings(plan: Plan) -> dict[str, str]:
    """What this sitting changes in every run: its ``--set`` overrides (the last of a key holds) and ``--dataset``;
    where and how fast the runs go (device, precision, progress bars) leaves a run the same experiment."""
    given = [*plan.overrides, *(f"data.dataset={v}" for k, v in plan.fields.items() if k == "data__dataset")]
    return {k.strip(): v.strip() for k, v in (o.split("=", 1) for o in given if "=" in o)}


def _check_records(plan: Plan, homes: dict[Arm, Path], seeds: int) -> None:
    """Every record this sitting would read was trained as this sitting would train it: an arm whose definition
    changed (a newer version's table) or a sitting with other ``--set`` values would otherwise be reported beside
    runs it does not match. Checked before anything trains; the record is never overwritten."""
    ours = _settings(plan)
    for arm, home in homes.items():
        for seed in range(seeds):
            done = plan.records / home / f"seed{seed}" / "done.json"
            if not done.is_file():
                continue
            record = read_json_input(done, RECORD_BYTES, "run record")
            if not is_run_record(record):
                raise AlexNetError(
                    f"{done} is not a run record (a JSON object with every epoch's losses and accuracies, and the "
                    "seconds): move it away to train the run again"
                )
            theirs = record.get("settings", {})  # records made before settings were kept: made without --set
            what = [f"recipe {record.get('recipe')!r}"] if record.get("recipe") != arm.recipe else []
            kept, now = record.get("overrides"), list(arm.overrides)
            if kept != now and isinstance(kept, list):  # only what differs: an arm has a dozen overrides
                gone, added = [o for o in kept if o not in now], [o for o in now if o not in kept]
                what.append(f"the arm had {gone}, now {added}" if gone or added else "the arm's overrides reordered")
            elif kept != now:
                what.append(f"the arm's overrides {kept!r}")
            if not isinstance(theirs, dict):
                what.append(f"settings {theirs!r}")
            elif theirs != ours:
                keys = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
                what += [f"{k}={theirs.get(k, '(not set)')}, not {ours.get(k, '(not set)')}" for k in keys]
            if what:
                raise AlexNetError(
                    f"{done} was trained otherwise ({'; '.join(what)}): run with its settings, or move the record "
                    "away to train the run again"
                )


def _holds_reproduction(records: Path) -> bool:
    """Whether ``records`` holds a reproduction's records (a run's ``done.json``, or ``results.json`` with a claim's
    verdict): then its report and figures are this command's to write again."""
    if any(records.glob("*/*/seed*/done.json")):
        return True
    found = read_record(records / "results.json")
    return (
        bool(found)
        and isinstance(found, dict)
        and all(isinstance(claim, dict) and "verdict" in claim for claim in found.values())
    )


def reproduce(
    out: Path | str,
    budget: str = "small",
    seeds: int = 3,
    only: list[str] | None = None,
    cifar_dir: str | None = None,
    fashion_dir: str | None = None,
    overrides: list[str] | None = None,
    records: Path | str | None = None,
    **fields: Any,
) -> dict[str, ClaimResult]:
    """Run the budget's experiments (or ``only`` those) over ``seeds`` seeds and write ``records/report.md``.

    Args:
        out: where the runs train (run directories with their checkpoints).
        budget: ``small`` (a smoke run), ``cpu`` (converged, ~7 h on 2 cores) or ``full`` (ImageNet on GPUs).
        seeds: runs per arm (seeds 0, 1, ...).
        only: experiment names to run; default all.
        cifar_dir: the CIFAR-10 JPEG folder (``train/``, ``test/``).
        fashion_dir: where Fashion-MNIST is (default: the usual places).
        overrides: ``section.key=value`` for every run (tests: a fake data set, tiny limits).
        records: where finished runs' records and the report go (default ``out``); a run with a record there is
            not trained again.
        **fields: ``section__key=value`` for every run.

    Returns:
        per experiment: the arms' values per seed (with censoring), the effect with its 95% interval, the verdict.
    """
    if budget not in BUDGETS:
        raise AlexNetError(f"unknown budget {budget!r}; choose one of {list(BUDGETS)}")
    budget_plan = BUDGETS[budget]()
    names = [e.name for e in budget_plan.experiments]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        hint = did_you_mean(unknown[0], names)
        raise AlexNetError(f"unknown experiment(s) {unknown}; {hint}choose from {names}")
    if seeds < 1:
        raise AlexNetError("seeds must be at least 1")
    out = Path(out)
    plan = Plan(
        out,
        Path(records) if records else out,
        cifar_dir,
        fashion_dir,
        list(overrides or []),
        fields,
        budget_plan.baseline,
    )
    chosen = [e for e in budget_plan.experiments if not only or e.name in only]
    written = ["report.md", "results.json", *(f"curves_{e.name}.png" for e in chosen)]
    check_outputs(plan.records, written, _holds_reproduction(plan.records), "--records" if records else "--out")
    homes: dict[Arm, Path] = {}  # an arm shared by experiments (the ablations' baseline) trains once
    for exp in chosen:
        for arm in (a for a in (exp.paper_arm, exp.other_arm) if a is not None):
            homes.setdefault(arm, Path(exp.name) / arm.name)
    _check_records(plan, homes, seeds)
    _check_data(plan, [a for a, home in homes.items() if not _recorded(plan, home, seeds)])
    results: dict[str, ClaimResult] = {}
    for exp in chosen:
        runs: dict[str, list[dict[str, Any]]] = {}
        for arm in (a for a in (exp.paper_arm, exp.other_arm) if a is not None):
            runs[arm.name] = [_run(plan, arm, s, homes[arm] / f"seed{s}") for s in range(seeds)]
        if exp.metric == "ensemble":
            results[exp.name] = _measure_ensemble(exp, _ensemble_record(plan, homes[exp.paper_arm], seeds))
        else:
            results[exp.name] = _measure(exp, runs)
    from .reproduce_report import write_report

    write_report(plan.records, budget_plan, chosen, results, seeds, homes)
    return results
