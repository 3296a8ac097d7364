"""Commands about the paper and speed: ``paper``, ``reproduce``, ``parallel-plan``, ``bench``."""

from __future__ import annotations

import argparse

from ..files import json_text
from . import options


def add_paper(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiment",
        choices=["fig1", "fig3", "fig4"],
        help="fig1: ReLU against tanh on CIFAR-10 (Figure 1, §3.1); fig3: conv1 kernels and the towers' "
        "colour specialisation; fig4: top-5 and nearest training images in fc7 space",
    )
    p.add_argument("source", nargs="?", help="fig3, fig4: a run directory, weights or a checkpoint")
    options.weights(p, "fig3, fig4: the model, as SOURCE (--weights names a model in every command)", required=False)
    p.add_argument(
        "--out", metavar="DIR", help="where the runs and figures go (default runs/fig1, or beside the source)"
    )
    p.add_argument("--queries", type=options.positive_int, default=5, metavar="N", help="fig4: test images shown")
    p.add_argument("--limit", type=options.positive_int, metavar="N", help="fig4: at most this many images of a folder")
    p.add_argument("--dataset", dest="data__dataset", help="cifar10 (torchvision's format) or folder (JPEGs)")
    options.data_dir(p, "data__data_dir")
    p.add_argument(
        "--sweep",
        type=options.positive_floats,
        metavar="LRS",
        help="comma-separated learning rates per unit, e.g. 0.003,0.01,0.03",
    )
    p.add_argument(
        "--target", type=options.percent, default=25.0, metavar="PCT", help="training error (%%) to reach (paper: 25)"
    )
    p.add_argument("--max-epochs", type=options.positive_int, default=60, metavar="N")
    p.add_argument(
        "--resume",
        choices=["auto"],
        help="fig1: continue the runs already in --out (an interrupted sweep, or more --max-epochs), each from its "
        "last checkpoint; finished ones are read back",
    )
    options.allow_changes(p)
    options.device(p, "train__device")
    options.precision(p, "train__precision")
    options.no_progress(p)
    options.overrides(p)


def run_paper(args: argparse.Namespace) -> int:
    if args.source and args.weights:
        args.command_parser.error("give the model once: as SOURCE or as --weights")
    args.source = args.source or args.weights
    if args.experiment in ("fig3", "fig4"):
        return _figure(args)
    if args.source:  # it was ignored without a word
        args.command_parser.error("fig1 trains its own networks: a model (SOURCE, --weights) is for fig3 and fig4")
    from ..experiments.paper import figure1

    out = args.out or "runs/fig1"
    fields = options.config_fields(args)
    result = figure1(out, args.overrides, args.sweep, args.target, args.max_epochs, bool(args.resume), **fields)
    for r in result.runs:
        if r.diverged:
            print(f"{r.unit:<5} lr {r.lr:<8g} diverged (non-finite loss)")
            continue
        print(
            f"{r.unit:<5} lr {r.lr:<8g} {args.target:g}% training error: {r.reached} "
            f"(final {r.train_error[-1]:.1f}%, {r.seconds:.0f} s)"
        )
    relu, tanh = result.best["relu"], result.best["tanh"]
    if result.speedup:
        verdict = f"ReLU {result.speedup}x faster"
    else:
        verdict = "no speed-up measured: a unit never reached the target (raise --max-epochs or --target)"
    print(
        f"ReLU (lr {relu.lr:g}) {relu.reached}, tanh (lr {tanh.lr:g}) {tanh.reached}: {verdict}; "
        f"the paper: about 6x. {out}/fig1.json, fig1.png"
    )
    return 0


def _figure(args: argparse.Namespace) -> int:
    from ..experiments.figures import run_figure

    result = run_figure(
        args.experiment, args.source, args.out, args.data__dataset, args.data__data_dir, args.queries, args.limit
    )
    if args.experiment == "fig3":
        for t in result["towers"]:
            print(
                f"tower {t['tower']}: {t['kernels']} conv1 kernels, colour specificity mean {t['mean']:.3f} "
                f"(median {t['median']:.3f})"
            )
        if result["ratio"]:
            print(
                f"the more colourful tower: {result['ratio']}x the other's mean (the paper: one tower largely "
                "colour-agnostic, the other largely colour-specific); a random split of the same kernels is as far "
                f"apart with p = {result['p_random_split']}"
            )
    else:
        for q in result["queries"]:
            top = ", ".join(f"{name} {100 * p:.0f}%" for name, p in q["top5"])
            print(f"true {q['true']}: {top}; nearest: {', '.join(q['neighbour_classes'])}")
        precision, chance = 100 * result["retrieval_precision"], 100 * result["chance_precision"]
        print(
            f"fc7 retrieval precision@{result['k']}: {precision:.1f}% over {result['retrieval_queries']} test "
            f"images (chance {chance:.1f}%)"
        )
    print(f"figure: {result['figure']}")
    return 0


def add_reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="where the runs train (with their checkpoints)")
    p.add_argument(
        "--records",
        metavar="DIR",
        help="where each finished run's record (metrics, config; no weights) and report.md go, default --out; a run "
        "with a record there is not trained again, so committed records carry a reproduction across sittings",
    )
    p.add_argument(
        "--budget",
        default="small",
        choices=["small", "cpu", "full"],
        help="small: a smoke run, ~1 h on 2 CPU cores; cpu: converged arms on the CIFAR-10 JPEGs, ~7 h on 2 CPU "
        "cores; full: ImageNet on GPUs",
    )
    p.add_argument("--seeds", type=options.positive_int, default=3, metavar="N")
    p.add_argument("--only", metavar="NAMES", help="comma-separated experiment names (default: all)")
    p.add_argument("--cifar-dir", metavar="DIR", help="the CIFAR-10 JPEG folder (train/, test/): small, cpu budgets")
    p.add_argument("--fashion-dir", metavar="DIR", help="where Fashion-MNIST is (default: the usual places)")
    options.data_dir(p, "data__data_dir", help="full budget: the ImageNet root")
    p.add_argument("--dataset", dest="data__dataset", help="replace every run's data set (tests: fake)")
    options.device(p, "train__device")
    options.precision(p, "train__precision")
    options.no_progress(p)
    options.overrides(p, "applied to every run (repeatable)")


def run_reproduce(args: argparse.Namespace) -> int:
    from ..experiments.reproduce import reproduce

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    results = reproduce(
        args.out,
        args.budget,
        args.seeds,
        only,
        args.cifar_dir,
        args.fashion_dir,
        args.overrides,
        args.records,
        **options.config_fields(args),
    )
    for name, r in results.items():
        print(f"{name:<13} {r.text:<30} {r.verdict}")
    print(f"report: {args.records or args.out}/report.md")
    return 0


def add_parallel_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="alexnet_paper")
    p.add_argument("--workers", type=options.positive_int, default=2, metavar="N")
    p.add_argument("--batch", type=options.positive_int, default=128, metavar="N", help="global batch (the paper: 128)")
    p.add_argument("--classes", type=options.positive_int, default=1000, metavar="N")
    options.json_output(p)


def run_parallel_plan(args: argparse.Namespace) -> int:
    from ..training.model_parallel import parallel_plan

    rows = parallel_plan(args.model, args.workers, args.batch, args.classes)
    if args.json:
        print(json_text([r.__dict__ for r in rows], indent=2))
        return 0
    print(f"{args.model}, {args.workers} workers, global batch {args.batch}, fp32; bytes each worker sends per step")
    print(f"{'mode':<7} {'MB/step':>9} {'KB/image':>9} {'params MB/worker':>17}  how")
    for r in rows:
        mb, kb, params = r.bytes_per_step / 1e6, r.bytes_per_image / 1e3, r.param_bytes / 1e6
        print(f"{r.mode:<7} {mb:>9.2f} {kb:>9.1f} {params:>17.1f}  {r.note}")
    return 0


def add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the owt rows only, fewer repeats (under a minute)")
    p.add_argument("-b", "--batch-size", type=options.positive_int, default=64, metavar="N")
    p.add_argument(
        "--profile",
        metavar="MODEL",
        nargs="?",
        const="alexnet_owt",
        help="instead: where a training step of MODEL (default alexnet_owt) spends its time, by phase and kind",
    )
    p.add_argument(
        "--onednn",
        action="store_true",
        help="with --profile (CPU): oneDNN's primitives in the step instead, with the implementation each ran "
        "(AMX, AVX-512...) and the layout conversions (reorders) between them",
    )
    options.device(p)
    options.json_output(p, "write the result object to stdout")


def run_primitives(args: argparse.Namespace) -> int:
    from ..experiments.profile import primitive_profile

    result = primitive_profile(args.profile or "alexnet_owt", batch=args.batch_size, device=args.device)
    if args.json:
        print(json_text(result.to_dict(), indent=2))
        return 0
    print(
        f"{result.model} training step, batch {result.batch} at {result.input} px, {result.precision}, "
        f"{result.steps} steps: {result.step_ms:.1f} ms a step in oneDNN primitives ({result.isa or 'ISA not logged'})"
    )
    header = ("primitive", "implementation", "propagation, layouts or shape", "calls", "ms", "share")
    table = [header] + [
        (r.primitive, r.implementation, r.propagation, f"{r.calls:g}", f"{r.ms:.2f}", f"{100 * r.share:.1f}%")
        for r in result.rows
    ]
    wide = [max(len(row[i]) for row in table) for i in range(len(header))]  # implementations run to 60 characters
    for row in table:  # text left, figures right
        print(" ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, wide))))
    return 0


def run_profile(args: argparse.Namespace) -> int:
    from ..experiments.profile import profile_step

    if args.onednn:
        return run_primitives(args)
    result = profile_step(args.profile, batch=args.batch_size, device=args.device)
    if args.json:
        print(json_text(result.to_dict(), indent=2))
        return 0
    print(
        f"{result.model} training step, batch {result.batch} at {result.input} px, {result.precision}, "
        f"{result.steps} steps profiled: {result.step_ms:.1f} ms of operator time a step"
    )
    print(f"{'phase':<10} {'kind':<42} {'ms':>9} {'share':>7}")
    for row in result.rows:
        print(f"{row.phase:<10} {row.kind:<42} {row.ms:>9.2f} {100 * row.share:>6.1f}%")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from ..experiments.bench import benchmark

    if args.profile or args.onednn:
        return run_profile(args)

    result = benchmark(batch=args.batch_size, quick=args.quick, device=args.device)
    if args.json:
        print(json_text(result.to_dict(), indent=2))
        return 0
    peak = result.peak_gflops
    print(
        f"{result.cpu or result.device} ({', '.join(result.isa) or 'no AVX-512/AMX'}), {result.threads} threads, "
        f"torch {result.torch}; {result.rounds} interleaved rounds, medians (min-max)"
    )
    # bf16 is measured only where a case runs it (native bf16): elsewhere it is emulated, far below fp32.
    bf16 = f"bf16 {peak['bf16']} GFLOP/s" if "bf16" in peak else "bf16 not native here (not run)"
    int8 = f", int8 {peak['int8']} GOP/s" if "int8" in peak else ""
    print(f"peak fp32 {peak['fp32']} GFLOP/s, {bf16}{int8}")
    print(f"{'case':<40} {'mode':<6} {'batch':>5} {'input':>5} {'prec':>5} {'img/s':>9} {'min-max':>15} {'MFU':>6}")
    for c in result.cases:
        spread = f"{c.img_s_low:.1f}-{c.img_s_high:.1f}"
        flag = "  (above the measured peak)" if c.peak_exceeded else ""
        print(
            f"{c.name:<40} {c.mode:<6} {c.batch:>5} {c.input:>5} {c.precision:>5} {c.img_s:>9.1f} {spread:>15} "
            f"{100 * c.mfu:>5.1f}%{flag}"
        )
    for mode, r in (("train", result.train), ("infer", result.infer)):
        print(
            f"{mode}: {r.alexnet_img_s:.1f} vs {r.baseline_img_s:.1f} img/s = {r.speedup:.2f}x "
            f"({r.speedup_low:.2f}-{r.speedup_high:.2f}), MFU {100 * r.mfu:.1f}% (at 100% of the peak: "
            f"{r.ceiling_speedup:.2f}x)"
        )
    for mode, r in (result.paper_per_flop or {}).items():
        print(f"{mode}: alexnet_paper's FLOP rate {r['median']:.2f}x alexnet_owt's ({r['low']:.2f}-{r['high']:.2f})")
    engines = result.engines
    if engines:
        key = f"batch{engines['batch']}_img_s"
        print(
            f"\ninference engines at {engines['input']} px, {engines['rounds']} interleaved rounds, medians "
            f"(min-max); int8 GEMM peak {engines['int8_peak_gops']} GOP/s"
        )
        print(f"{'engine':<46} {'batch ' + str(engines['batch']) + ' img/s':>24} {'batch 1 ms':>19} {'MFU':>6}")
        for row in engines["rows"]:
            if "note" in row:
                print(f"{row['engine']:<46} {row['note']}")
                continue
            mfu = f"{100 * row['mfu']:5.1f}%" if row["mfu"] else "     -"
            rate = f"{row[key]:.1f} ({row['img_s_low']:.0f}-{row['img_s_high']:.0f})"
            ms = f"{row['batch1_ms']:.2f} ({row['ms_low']:.2f}-{row['ms_high']:.2f})"
            flag = "  (above the measured peak)" if row.get("peak_exceeded") else ""
            print(f"{row['engine']:<46} {rate:>24} {ms:>19} {mfu:>6}{flag}")
        for pair in engines["versus"]:
            (t, t_low, t_high), (m, m_low, m_high) = pair["throughput"], pair["latency"]
            print(
                f"{pair['ours']} against {pair['peer']}, the two alone: {t:.2f}x the throughput "
                f"({t_low:.2f}-{t_high:.2f}), {m:.2f}x the batch-1 latency ({m_low:.2f}-{m_high:.2f})"
            )
    return 0


COMMANDS = {
    "paper": ("one of the paper's figures: fig1 (ReLU vs tanh), fig3 (towers), fig4 (fc7)", add_paper, run_paper),
    "reproduce": (
        "the paper's ablations and claims as training runs, with a report beside its numbers",
        add_reproduce,
        run_reproduce,
    ),
    "parallel-plan": (
        "bytes communicated and parameter memory per worker: data, towers, hybrid",
        add_parallel_plan,
        run_parallel_plan,
    ),
    "bench": ("training and inference throughput against torchvision's AlexNet", add_bench, run_bench),
}
