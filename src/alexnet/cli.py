"""The ``alexnet`` command: a thin shell over the library. Each subcommand parses flags, calls library functions
and prints their results; a user error becomes one ``error:`` line and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .config import PARALLEL_MODES, PRECISIONS
from .errors import AlexNetError

MODEL_HELP = "published weights (see alexnet weights), .safetensors weights or a .pt checkpoint"


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch of 0 divides by zero; a negative top-k means nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per variant instead of a table")


def run_models(args: argparse.Namespace) -> int:
    from .models import list_models, model_info

    rows = [model_info(name) for name in list_models()]
    if args.json:
        for r in rows:
            print(json.dumps(r.__dict__))
        return 0
    w = max(len(r.name) for r in rows)
    print(f"{'name':<{w}} {'params':>12} {'GMACs':>7} {'input':>6}  note")
    for r in rows:
        print(f"{r.name:<{w}} {r.params:>12,} {r.macs / 1e9:>7.3f} {r.input_size:>6}  {r.note}")
    return 0


def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="fashion-mnist", help="a recipe name (see --list-recipes) or a .toml/.json file")
    p.add_argument("--list-recipes", action="store_true", help="print the built-in recipes and exit")
    p.add_argument("--model", dest="model__name", help="model variant (alexnet models)")
    p.add_argument(
        "--dataset", dest="data__dataset", help="fashion-mnist, mnist, cifar10, cifar100, imagenet, folder, fake"
    )
    p.add_argument("--data-dir", dest="data__data_dir", help="data root (default $ALEXNET_DATA, else ./data)")
    p.add_argument("--out", dest="train__out", help="run directory (default runs/<time>-<model>-<dataset>)")
    p.add_argument("--epochs", dest="train__epochs", type=_positive_int)
    p.add_argument("-b", "--batch-size", dest="data__batch_size", type=_positive_int)
    p.add_argument("--lr", dest="optim__lr", type=float)
    p.add_argument(
        "--scale-lr",
        dest="optim__lr_reference_batch",
        type=_positive_int,
        metavar="REF_BATCH",
        help="linear scaling rule: lr × (batch × processes × accumulate) / REF_BATCH (the paper's lr: 128)",
    )
    p.add_argument(
        "--accumulate",
        dest="train__accumulate",
        type=_positive_int,
        metavar="N",
        help="accumulate gradients over N batches per optimizer step",
    )
    p.add_argument(
        "--sync-bn",
        dest="train__sync_bn",
        action=argparse.BooleanOptionalAction,
        help="batch norm over every process's images (default: on under torchrun for BN models)",
    )
    p.add_argument("-j", "--workers", dest="data__workers", type=int, help="image-decoding processes (folders)")
    p.add_argument("--device", dest="train__device", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--precision", dest="train__precision", choices=PRECISIONS)
    p.add_argument("--seed", dest="train__seed", type=int)
    p.add_argument("--resume", dest="train__resume", help="checkpoint path, or 'auto' for OUT/last.pt")
    p.add_argument(
        "--weights",
        dest="model__weights",
        metavar="NAME|PATH",
        help="start from these weights (alexnet weights lists them): their network and preprocessing; the last "
        "layer is replaced when the classes differ",
    )
    p.add_argument(
        "--freeze",
        dest="model__freeze",
        metavar="features|N",
        help="train only what follows: every conv layer, or the first N weight layers",
    )
    p.add_argument(
        "--allow-changes",
        dest="train__allow_changes",
        action="store_const",
        const=True,
        help="resume although batch size, learning rate, optimizer, schedule or seed differ from the checkpoint's",
    )
    p.add_argument("--limit-train-batches", dest="train__limit_train_batches", type=_positive_int)
    p.add_argument("--limit-val-batches", dest="train__limit_val_batches", type=_positive_int)
    p.add_argument("--ten-crop", dest="data__ten_crop", action="store_const", const=True, help="10-crop validation")
    p.add_argument("--compile", dest="train__compile", action="store_const", const=True, help="torch.compile")
    p.add_argument(
        "--parallel",
        dest="train__parallel",
        choices=PARALLEL_MODES,
        help="under torchrun: data (DDP, default), towers (the paper's two-GPU split), hybrid (data-parallel convs, "
        "model-parallel fc)",
    )
    p.add_argument("--no-progress", dest="train__progress", action="store_const", const=False)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config field, e.g. --set optim.weight_decay=1e-4 --set model.overrides.width=0.5",
    )


def _fields(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if "__" in k and v is not None}


def run_train(args: argparse.Namespace) -> int:
    from .config import list_recipes, load_config
    from .training.fit import fit

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    result = fit(load_config(args.recipe, args.overrides, **_fields(args)))
    final = result.final
    if final and os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        print(
            f"done: {result.out}  best val acc1 {result.best_acc1:.2f}%  last val acc1 {final['acc1']:.2f}% "
            f"acc5 {final['acc5']:.2f}%  loss {final['loss']:.4f}"
            + (f"  test acc1 {result.test['acc1']:.2f}% (once, after the last epoch)" if result.test else "")
        )
        try:
            from .experiments.report import run_report

            # The report's figures: the test split when validation held images out of training, else validation.
            print(f"report: {run_report(result.out, result.test or final)}")
        except ImportError:  # matplotlib is the optional [report] extra
            print("report: skipped (pip install 'alexnet[report]' for figures)")
    return 0


def _report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory (config.json, metrics.csv, last.pt)")


def run_report_command(args: argparse.Namespace) -> int:
    from .experiments.report import run_report

    print(f"report: {run_report(args.run)}")
    return 0


def _eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True, help=MODEL_HELP)
    p.add_argument("--dataset", help="default: the one the model was trained on")
    p.add_argument("--data-dir")
    views = p.add_mutually_exclusive_group()
    views.add_argument("--ten-crop", action="store_true", help="average softmax over 4 corners + centre and mirrors")
    views.add_argument("--flip-tta", action="store_true", help="average softmax over the centre crop and its mirror")
    p.add_argument("-b", "--batch-size", type=_positive_int)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        default="auto",
        choices=[*PRECISIONS, "int8"],
        help="int8: quantize on the fly, calibrated on 512 training images (see alexnet quantize)",
    )
    p.add_argument("--limit-val-batches", type=_positive_int)
    p.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="test: the data set's own validation or test split; val: the images the run held out of its training "
        "split (data.val_split)",
    )
    p.add_argument("--out-dir", help="where to write confusion.png (default: beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .artifacts.trained import display_label
    from .inference.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        data_dir=args.data_dir,
        ten_crop=args.ten_crop,
        flip=args.flip_tta,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        limit_batches=args.limit_val_batches,
        progress=not args.json,
        split=args.split,
    )
    beside = Path(args.checkpoint).parent if Path(args.checkpoint).exists() else Path("runs", "eval", args.checkpoint)
    out_dir = Path(args.out_dir or beside)
    per_class = dict(zip(result["classes"], (round(a, 3) for a in result["per_class_acc"])))
    summary = {k: round(result[k], 4) for k in ("loss", "acc1", "acc5", "err1", "err5")}
    summary.update(images=result["images"], ten_crop=args.ten_crop, flip_tta=args.flip_tta)
    # The figures come last: a plotting failure must not lose the metrics already computed.
    if args.json:
        print(json.dumps({**summary, "per_class_acc": per_class}), flush=True)
    else:
        print(
            f"Acc@1 {summary['acc1']:.2f}  Acc@5 {summary['acc5']:.2f}  (error {summary['err1']:.2f} / "
            f"{summary['err5']:.2f})  loss {summary['loss']:.4f}  on {summary['images']} images"
        )
        for name, acc in per_class.items():
            print(f"  {display_label(name):<24} {acc:6.2f}%")
        sys.stdout.flush()
    try:
        from .experiments.report import plot_confusion

        out_dir.mkdir(parents=True, exist_ok=True)
        confusion_png = plot_confusion(result["confusion"], result["classes"], out_dir / "confusion.png")
    except ImportError:  # matplotlib is the optional [report] extra
        return 0
    except (OSError, ValueError, RuntimeError) as err:
        print(f"alexnet eval: warning: confusion matrix not drawn ({type(err).__name__}: {err})", file=sys.stderr)
        return 0
    if not args.json:
        print(f"confusion matrix: {confusion_png}")
    return 0


def _demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--recipe", default="fashion-mnist")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def run_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo as demo

    path = demo(args.out, args.recipe, args.overrides)
    print(path.read_text().split("## Figures")[0].rstrip())
    print(f"\nreport: {path}")
    return 0


def _predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR_OR_GLOB", help="images, directories (recursive), globs")
    p.add_argument(
        "--checkpoint",
        "--weights",
        dest="checkpoint",
        required=True,
        help="published weights (see alexnet weights), .safetensors weights, a .pt checkpoint, or an exported .onnx",
    )
    p.add_argument("--topk", type=_positive_int, default=5)
    p.add_argument("-b", "--batch-size", type=_positive_int, default=32)
    p.add_argument("--max-file-mb", type=float, default=64.0, help="refuse image files larger than this (MB)")
    p.add_argument("--ten-crop", action="store_true", help="average softmax over ten crops")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="JSON lines: {path, topk: [{label, prob}]} or {path, error}")


def run_predict(args: argparse.Namespace) -> int:
    from .artifacts.trained import display_label
    from .data.decode import expand_inputs
    from .inference.predictor import Predictor

    inputs = expand_inputs(args.inputs)  # an empty argument, or a folder or glob with no image, fails here
    predictor = Predictor.from_path(args.checkpoint, device=args.device, max_file_mb=args.max_file_mb)
    failed = 0
    for pred in predictor.predict_iter(inputs, args.topk, args.batch_size, args.ten_crop):
        failed += pred.error is not None
        if args.json:
            print(json.dumps(pred.to_json()), flush=True)
        elif pred.error is not None:
            print(f"{display_label(pred.source)}\terror: {display_label(pred.error)}")
        else:
            print(display_label(pred.source) + "\t" + "  ".join(f"{label} {100 * p:.1f}%" for label, p in pred.topk))
    if failed:
        print(f"alexnet predict: {failed} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True, help=MODEL_HELP)
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "exported-program"])
    p.add_argument("--out", required=True, help="file to write (.onnx, .pt, .pt2)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute part of the allowed |export - eager| logit gap")
    p.add_argument("--rtol", type=float, default=1e-4, help="part of the allowed gap relative to max |eager logit|")
    p.add_argument("--images", nargs="+", help="images for the parity check (default: the training data's test split)")


def run_export(args: argparse.Namespace) -> int:
    from .artifacts.loader import load_trained
    from .inference.export import check_inputs_for, export_model

    trained = load_trained(args.checkpoint)
    inputs, described = check_inputs_for(trained, args.images)
    result = export_model(trained, args.format, args.out, check_inputs=inputs, atol=args.atol, rtol=args.rtol)
    check = result.parity
    print(f"wrote {result.path} ({result.format}); {result.note}")
    print(
        f"max |{result.format} - eager| over logits on {described} {result.input_shape}: {check.max_abs:.3e} "
        f"(allowed {check.bound:.3e}); max |prob diff| {check.max_prob:.1e}; top-1 agreement "
        f"{100 * check.top1_agree:.0f}%"
    )
    return 0


def _stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir")
    p.add_argument(
        "--resize", type=_positive_int, help="folders: shorter side resized to this before measuring (default 256)"
    )
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--limit-batches", type=int, help="measure only this many batches of 256 images")


def run_stats(args: argparse.Namespace) -> int:
    from .data.config import DataConfig
    from .data.stats import dataset_stats

    cfg = DataConfig(
        dataset=args.dataset, data_dir=args.data_dir, resize=args.resize, workers=args.workers, batch_size=256
    )
    stats = dataset_stats(cfg, limit_batches=args.limit_batches)
    print(json.dumps(stats, indent=2))
    keys = ("mean", "std", "pca_eigval", "pca_eigvec")
    # Single quotes keep the shell from splitting the lists at their spaces: paste as it is.
    print(
        "use with: " + " ".join(f"--set 'data.{k}={json.dumps(stats[k])}'" for k in keys if k in stats), file=sys.stderr
    )
    return 0


def _bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the owt rows only, fewer repeats (under a minute)")
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="write the result object to stdout")


def run_bench(args: argparse.Namespace) -> int:
    from .experiments.bench import benchmark

    result = benchmark(batch=args.batch_size, quick=args.quick, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    peak = result["peak_gflops"]
    print(
        f"device {result['device']}, {result['threads']} threads, torch {result['torch']}; "
        f"GEMM peak fp32 {peak['fp32']} GFLOP/s, bf16 {peak['bf16']} GFLOP/s"
    )
    print(f"{'case':<40} {'mode':<6} {'batch':>5} {'input':>5} {'prec':>5} {'img/s':>9} {'MFU':>6}")
    for c in result["cases"]:
        print(
            f"{c['name']:<40} {c['mode']:<6} {c['batch']:>5} {c['input']:>5} {c['precision']:>5} "
            f"{c['img_s']:>9.1f} {100 * c['mfu']:>5.1f}%"
        )
    for mode in ("train", "infer"):
        r = result[mode]
        print(
            f"{mode}: {r['alexnet_img_s']:.1f} vs {r['baseline_img_s']:.1f} img/s = {r['speedup']:.2f}x, "
            f"MFU {100 * r['mfu']:.1f}% (at 100% of the peak: {r['ceiling_speedup']:.2f}x)"
        )
    engines = result.get("engines")
    if engines:
        key = f"batch{engines['batch']}_img_s"
        print(f"\ninference engines at {engines['input']} px; int8 GEMM peak {engines['int8_peak_gops']} GOP/s")
        print(f"{'engine':<40} {'batch ' + str(engines['batch']) + ' img/s':>16} {'batch 1 ms':>11} {'MFU':>6}")
        for row in engines["rows"]:
            if "note" in row:
                print(f"{row['engine']:<40} {row['note']}")
                continue
            mfu = f"{100 * row['mfu']:5.1f}%" if row["mfu"] else "     -"
            print(f"{row['engine']:<40} {row[key]:>16.1f} {row['batch1_ms']:>11.2f} {mfu:>6}")
    return 0


def _paper(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiment",
        choices=["fig1", "fig3", "fig4"],
        help="fig1: ReLU against tanh on CIFAR-10 (Figure 1, §3.1); fig3: conv1 kernels and the towers' "
        "colour specialisation; fig4: top-5 and nearest training images in fc7 space",
    )
    p.add_argument("source", nargs="?", help="fig3, fig4: a run directory, weights or a checkpoint")
    p.add_argument("--out", help="where the runs and figures go (default runs/fig1, or beside the source)")
    p.add_argument("--queries", type=_positive_int, default=5, help="fig4: test images shown")
    p.add_argument("--limit", type=_positive_int, help="fig4: at most this many images of a folder")
    p.add_argument("--dataset", dest="data__dataset", help="cifar10 (torchvision's format) or folder (JPEGs)")
    p.add_argument("--data-dir", dest="data__data_dir")
    p.add_argument("--sweep", help="comma-separated learning rates to try for each unit, e.g. 0.003,0.01,0.03")
    p.add_argument("--target", type=float, default=25.0, help="training error (%%) to reach (paper: 25)")
    p.add_argument("--max-epochs", type=int, default=60)
    p.add_argument("--device", dest="train__device")
    p.add_argument("--precision", dest="train__precision", choices=PRECISIONS)
    p.add_argument("--no-progress", dest="train__progress", action="store_const", const=False)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def run_paper(args: argparse.Namespace) -> int:
    if args.experiment in ("fig3", "fig4"):
        return _run_figure(args)
    from .experiments.paper import figure1

    args.out = args.out or "runs/fig1"

    sweep = [float(x) for x in args.sweep.split(",")] if args.sweep else None
    result = figure1(args.out, args.overrides, sweep, args.target, args.max_epochs, **_fields(args))
    for r in result["runs"]:
        if r["diverged"]:
            print(f"{r['unit']:<5} lr {r['lr']:<8g} diverged (non-finite loss)")
            continue
        reached = f"{r['epochs']} epochs" if r["epochs"] else f"not within {len(r['train_error'])} epochs"
        print(
            f"{r['unit']:<5} lr {r['lr']:<8g} {args.target:g}% training error: {reached} "
            f"(final {r['train_error'][-1]:.1f}%, {r['seconds']:.0f} s)"
        )
    relu, tanh = result["best"]["relu"], result["best"]["tanh"]

    def reached(run: dict) -> str:
        return f"{run['epochs']} epochs" if run["epochs"] else f"not within {len(run['train_error'])} epochs"

    verdict = f"ReLU {result['speedup']}x faster" if result["speedup"] else "no speed-up measured: a unit never "
    verdict += "" if result["speedup"] else "reached the target (raise --max-epochs or --target)"
    print(
        f"ReLU (lr {relu['lr']:g}) {reached(relu)}, tanh (lr {tanh['lr']:g}) {reached(tanh)}: {verdict}; "
        f"the paper: about 6x. {args.out}/fig1.json, fig1.png"
    )
    return 0


def _reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="where the runs train (run directories with their checkpoints)")
    p.add_argument(
        "--records",
        help="where each finished run's record (metrics, config; no weights) and report.md go, default --out; a run "
        "with a record there is not trained again, so committed records carry a reproduction across sittings",
    )
    p.add_argument(
        "--budget",
        default="small",
        choices=["small", "cpu", "full"],
        help="small: a smoke run, ~1 h on 2 CPU cores; cpu: converged arms on the CIFAR-10 JPEGs, ~6 h on 2 CPU "
        "cores; full: ImageNet on GPUs",
    )
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument("--only", help="comma-separated experiment names (default: all)")
    p.add_argument("--cifar-dir", help="the CIFAR-10 JPEG folder (train/, test/) for the small and cpu budgets")
    p.add_argument("--fashion-dir", help="where Fashion-MNIST is (default: the usual places)")
    p.add_argument("--data-dir", dest="data__data_dir", help="full budget: the ImageNet root")
    p.add_argument("--dataset", dest="data__dataset", help="replace every run's data set (tests: fake)")
    p.add_argument("--device", dest="train__device")
    p.add_argument("--precision", dest="train__precision", choices=PRECISIONS)
    p.add_argument("--no-progress", dest="train__progress", action="store_const", const=False)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="applied to every run"
    )


def run_reproduce(args: argparse.Namespace) -> int:
    from .experiments.reproduce import reproduce

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
        **_fields(args),
    )
    for name, r in results.items():
        print(f"{name:<13} {r['text']:<30} {r['verdict']}")
    print(f"report: {args.records or args.out}/report.md")
    return 0


def _parallel_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="alexnet_paper")
    p.add_argument("--workers", type=_positive_int, default=2)
    p.add_argument("--batch", type=_positive_int, default=128, help="global batch (the paper: 128)")
    p.add_argument("--classes", type=_positive_int, default=1000)
    p.add_argument("--json", action="store_true")


def run_parallel_plan(args: argparse.Namespace) -> int:
    from .training.model_parallel import parallel_plan

    rows = parallel_plan(args.model, args.workers, args.batch, args.classes)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    print(f"{args.model}, {args.workers} workers, global batch {args.batch}, fp32; bytes each worker sends per step")
    print(f"{'mode':<7} {'MB/step':>9} {'KB/image':>9} {'params MB/worker':>17}  how")
    for r in rows:
        mb, kb, params = r.bytes_per_step / 1e6, r.bytes_per_image / 1e3, r.param_bytes / 1e6
        print(f"{r.mode:<7} {mb:>9.2f} {kb:>9.1f} {params:>17.1f}  {r.note}")
    return 0


def _run_figure(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .experiments.figures import figure3, figure4, resolve

    if not args.source:
        raise ValueError(f"alexnet paper {args.experiment} needs a run directory, weights or a checkpoint")
    out = args.out or str(resolve(args.source).parent)
    if Path(out).exists() and not Path(out).is_dir():
        raise AlexNetError(
            f"--out {out} is a file: alexnet paper {args.experiment} writes its figures into a directory"
        )
    if args.experiment == "fig3":
        result = figure3(args.source, out)
        for t in result["towers"]:
            print(
                f"tower {t['tower']}: {t['kernels']} conv1 kernels, colour specificity mean {t['mean']:.3f} "
                f"(median {t['median']:.3f})"
            )
        if result["ratio"]:
            print(
                f"the more colourful tower: {result['ratio']}x the other's mean (the paper: one tower largely "
                "colour-agnostic, the other largely colour-specific)"
            )
    else:
        result = figure4(args.source, out, args.data__dataset, args.data__data_dir, args.queries, limit=args.limit)
        for q in result["queries"]:
            top = ", ".join(f"{name} {100 * p:.0f}%" for name, p in q["top5"])
            print(f"true {q['true']}: {top}; nearest: {', '.join(q['neighbour_classes'])}")
        precision, chance = 100 * result["retrieval_precision"], 100 * result["chance_precision"]
        print(
            f"fc7 retrieval precision@{result['k']}: {precision:.1f}% over {result['retrieval_queries']} test "
            f"images (chance {chance:.1f}%)"
        )
    from .files import write_text

    write_text(Path(out, f"{args.experiment}.json"), json.dumps(result, indent=1))
    print(f"figure: {result['figure']}")
    return 0


def _features(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR_OR_GLOB")
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True, help=MODEL_HELP)
    p.add_argument("--layer", default="fc7", choices=["fc7", "fc6", "pool5"])
    p.add_argument("--out", required=True, help="a .npy file; the file order goes beside it as .txt")


def run_features(args: argparse.Namespace) -> int:
    import numpy as np

    from .artifacts.loader import load_trained
    from .data.decode import expand_inputs
    from .files import atomic_write, check_target, write_text
    from .inference.features import features_of_files

    order = args.out[: -len(".npy")] + ".txt" if args.out.endswith(".npy") else args.out + ".txt"
    check_target(args.out), check_target(order)  # before any work: a directory or a device where a file goes
    files = expand_inputs(args.inputs)
    feats, done, errors = features_of_files(load_trained(args.checkpoint), files, args.layer)
    atomic_write(args.out, lambda f: np.save(f, feats))
    write_text(order, "".join(name + "\n" for name in done))
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    print(f"wrote {args.out} {tuple(feats.shape)} ({args.layer}) and {order}")
    return 1 if errors else 0


def _weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per entry")


def run_weights(args: argparse.Namespace) -> int:
    from .artifacts.weights import is_cached, list_weights

    for w in list_weights():
        row = {
            "name": w.name,
            "acc1": w.metrics.get("acc1"),
            "acc5": w.metrics.get("acc5"),
            "size_mb": w.size_mb,
            "cached": is_cached(w),
            "path": str(w.cache_path()),
            "url": w.url,
            "digest": w.digest,
            "licence": w.licence,
            "metrics_source": w.metrics_source,
        }
        if args.json:
            print(json.dumps(row))
        else:
            state = "cached" if row["cached"] else "not downloaded"
            print(f"{w.name:<32} acc@1 {row['acc1']:6.2f}  acc@5 {row['acc5']:6.2f}  {w.size_mb:6.1f} MB  {state}")
            print(f"    {w.url}  ({w.digest})\n    licence: {w.licence}\n    metrics: {w.metrics_source}")
    return 0


def _convert_caffe(p: argparse.ArgumentParser) -> None:
    p.add_argument("caffemodel", help="a .caffemodel with bvlc_alexnet's layers (conv1-conv5, fc6-fc8)")
    p.add_argument("--out", help="the .safetensors to write (default: beside the input)")
    p.add_argument("--mean-file", help="Caffe's ilsvrc_2012_mean.binaryproto: use its per-channel means")
    p.add_argument("--classes", help="a text file of class names, one per line (default: ImageNet's 1,000)")


def run_convert_caffe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .artifacts.caffe import IMAGENET_MEAN_BGR, convert_caffe, mean_from_binaryproto
    from .artifacts.checkpoint import save_weights

    mean = mean_from_binaryproto(args.mean_file) if args.mean_file else IMAGENET_MEAN_BGR
    from .files import MB, read_text_input

    classes = read_text_input(args.classes, 16 * MB, "class list").splitlines() if args.classes else None
    trained = convert_caffe(args.caffemodel, classes=classes, mean_bgr=mean)
    out = Path(args.out or Path(args.caffemodel).with_suffix(".safetensors"))
    save_weights(trained.model, out, trained.meta.to_dict())
    spec = trained.meta.model
    print(
        f"wrote {out}: {spec.variant} {spec.overrides}, {spec.num_classes} classes, BGR means "
        f"{tuple(round(m, 2) for m in mean)}"
    )
    return 0


def _serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True, help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs --api-key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="the model's name in /v2/models/NAME (default: the weights' name or file stem)")
    p.add_argument("--max-batch", type=_positive_int, default=32, help="most images run together")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits to be batched (ms)")
    p.add_argument("--max-queue", type=_positive_int, default=256, help="images waiting before requests get 503")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a waiting request gets 504")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="larger request bodies get 413 (MiB)")
    p.add_argument("--api-key", help="required on every endpoint but health checks (default $ALEXNET_API_KEY)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds to receive a request body, else 408")
    p.add_argument("--head-timeout", type=float, default=10.0, help="seconds to receive a request's headers, else 408")
    p.add_argument(
        "--decode-budget-mp",
        type=float,
        default=100.0,
        help="megapixels decoding at once, all requests (bounds memory; larger images: 413)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])


def run_serve(args: argparse.Namespace) -> int:
    try:
        from .inference.serving.app import ServeSettings
        from .inference.serving.server import serve
    except ImportError as err:
        raise AlexNetError(f"serving needs the [serve] extra: pip install 'alexnet[serve]' ({err})") from None
    if not 0 <= args.port <= 65535:
        raise AlexNetError(f"--port {args.port} is not a port number")
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        max_body_mb=args.max_body_mb,
        api_key=args.api_key,
        device=args.device,
        precision=args.precision,
        body_timeout_s=args.body_timeout,
        decode_budget_mp=args.decode_budget_mp,
        head_timeout_s=args.head_timeout,
    )
    # ServeSettings refuses values out of range (--max-wait-ms 1e13 would break the batching thread's wait).
    serve(args.checkpoint, args.host, args.port, settings, args.name)
    return 0


def _quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="the int8 program to write (.pt2)")
    p.add_argument("--calibration", type=_positive_int, default=512, help="training images to calibrate on")
    p.add_argument("--batch", type=_positive_int, default=64, help="the batch size the program is compiled for")
    p.add_argument("--data-dir", help="where the model's data set is (default: as training found it)")
    p.add_argument("--seed", type=int, default=0, help="which training images calibrate")
    p.add_argument(
        "--no-autotune",
        dest="autotune",
        action="store_false",
        help="compile without timing GEMM templates (faster to load, slower at batch 1)",
    )


def run_quantize(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import torch

    from .artifacts.loader import load_trained
    from .files import check_target
    from .inference.quantize import calibration_inputs, quantize, save_int8

    if not args.out.endswith(".pt2"):
        raise AlexNetError(f"--out {args.out}: the int8 program is a torch.export file, name it .pt2")
    check_target(args.out)  # before the work: a directory or a device where the file goes
    if Path(args.checkpoint).exists() and Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise AlexNetError(f"--out {args.out} is the model being quantized: choose another file")
    trained = load_trained(args.checkpoint)
    began = time.perf_counter()
    calibration = calibration_inputs(trained, args.calibration, args.data_dir, args.seed)
    record = {"calibration_split": "train", "calibration_seed": args.seed, "dataset": trained.preprocessing.dataset}
    int8, program = quantize(trained, calibration, args.batch, record, args.autotune)
    save_int8(program, int8.meta, args.out)
    # Agreement with fp32 on other training images (the test split is for eval, never for choices).
    check = calibration_inputs(trained, min(256, args.calibration), args.data_dir, args.seed + 1)
    with torch.no_grad():
        agree = (int8.model(check).argmax(1) == trained.model.float()(check).argmax(1)).float().mean().item()
    print(
        f"wrote {args.out}: int8, calibrated on {len(calibration)} training images of "
        f"{trained.preprocessing.dataset}, batch {args.batch}, in {time.perf_counter() - began:.0f} s; top-1 "
        f"agreement with fp32 on {len(check)} other training images {100 * agree:.1f}%"
    )
    return 0


# name: (help, add arguments, run)
COMMANDS = {
    "models": ("list the model variants with parameters and MACs", _models, run_models),
    "train": ("train a model from a recipe", _train, run_train),
    "eval": ("evaluate a checkpoint: top-1/top-5, per-class accuracy, confusion matrix", _eval, run_eval),
    "predict": ("top-k classes for image files, directories or globs", _predict, run_predict),
    "export": ("export to ONNX, TorchScript or torch.export, checked against eager", _export, run_export),
    "stats": ("mean, std and RGB PCA of a training set, for data.mean/std/pca_*", _stats, run_stats),
    "bench": ("training and inference throughput against torchvision's AlexNet", _bench, run_bench),
    "paper": ("reproduce one of the paper's experiments: fig1 (ReLU against tanh)", _paper, run_paper),
    "features": ("embeddings of images from a hidden layer (fc7, fc6, pool5) as .npy", _features, run_features),
    "report": (
        "rebuild a training run's report.md: curves, conv1 filters, confusion matrix",
        _report,
        run_report_command,
    ),
    "reproduce": (
        "the paper's ablations and claims as training runs, with a report beside its numbers",
        _reproduce,
        run_reproduce,
    ),
    "parallel-plan": (
        "bytes communicated and parameter memory per worker: data, towers, hybrid",
        _parallel_plan,
        run_parallel_plan,
    ),
    "quantize": ("post-training int8 quantization (PT2E, x86 inductor) into a .pt2 program", _quantize, run_quantize),
    "serve": ("an HTTP service: web page, /v1/classify, KServe v2, /metrics; batched", _serve, run_serve),
    "weights": ("list the published weights: metrics, size, licence, whether cached", _weights, run_weights),
    "convert-caffe": (
        "convert Caffe's bvlc_alexnet.caffemodel into weights for alexnet_paper",
        _convert_caffe,
        run_convert_caffe,
    ),
    "demo": ("get Fashion-MNIST, train the default recipe, evaluate, write a report", _demo, run_demo),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``alexnet train: error: ...``), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="alexnet", description="AlexNet: train, evaluate, predict, export.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``alexnet`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return COMMANDS[args.command][2](args)
    except (AlexNetError, ValueError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
