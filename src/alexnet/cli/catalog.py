"""Commands that list and convert: ``models``, ``weights``, ``convert-caffe``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import options


def add_models(p: argparse.ArgumentParser) -> None:
    options.json_output(p, "one JSON object per variant instead of a table")


def run_models(args: argparse.Namespace) -> int:
    from ..models import list_models, model_info

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


def add_weights(p: argparse.ArgumentParser) -> None:
    options.json_output(p, "one JSON object per entry")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check each cached file's hash against the published one (exit 1 if one differs)",
    )


def run_weights(args: argparse.Namespace) -> int:
    from ..artifacts.published import cache_state, list_weights
    from ..names import display_label

    damaged = 0
    for w in list_weights():
        cache = cache_state(w, check=args.verify)
        damaged += cache.verified is False
        row = {
            "name": w.name,
            "acc1": w.metrics.get("acc1"),
            "acc5": w.metrics.get("acc5"),
            "size_mb": w.size_mb,
            "cached": cache.cached,
            "verified": cache.verified,
            "problem": cache.problem,
            "path": str(w.cache_path()),
            "url": w.url,
            "digest": w.digest,
            "licence": w.licence,
            "metrics_source": w.metrics_source,
        }
        if args.json:
            print(json.dumps(row))
            continue
        if not cache.cached:
            state = "not downloaded"
        elif cache.verified is False:
            state = "cached, damaged"
        elif cache.verified:
            state = "cached, verified"
        elif cache.looks_cut_short(w):
            state = f"cached, but {cache.size_mb:.1f} MB: check it with --verify"
        else:
            state = "cached"
        print(f"{w.name:<32} acc@1 {row['acc1']:6.2f}  acc@5 {row['acc5']:6.2f}  {w.size_mb:6.1f} MB  {state}")
        print(f"    {w.url}  ({w.digest})\n    licence: {w.licence}\n    metrics: {w.metrics_source}")
        if cache.problem:
            print(f"    {display_label(cache.problem)}")
    return 1 if damaged else 0


def add_convert_caffe(p: argparse.ArgumentParser) -> None:
    p.add_argument("caffemodel", help="a .caffemodel with bvlc_alexnet's layers (conv1-conv5, fc6-fc8)")
    p.add_argument("--out", metavar="FILE", help="the .safetensors to write (default: beside the input)")
    p.add_argument("--mean-file", metavar="FILE", help="Caffe's ilsvrc_2012_mean.binaryproto: its channel means")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (default: ImageNet's 1,000)")


def run_convert_caffe(args: argparse.Namespace) -> int:
    from ..artifacts.caffe import IMAGENET_MEAN_BGR, convert_caffe, mean_from_binaryproto
    from ..artifacts.checkpoint import read_weights_meta, save_weights
    from ..errors import AlexNetError, WriteError
    from ..files import MB, check_replaceable, read_text_input

    out = check_replaceable(args.out or Path(args.caffemodel).with_suffix(".safetensors"))  # before the work
    if out.exists() and out.resolve() == Path(args.caffemodel).resolve():
        raise WriteError(f"{out} is the Caffe model being converted: write the weights to another file")
    if not args.out and out.exists():
        # A file the user did not name: replaced only where it is an earlier conversion of this caffemodel.
        try:
            earlier = read_weights_meta(out).get("provenance", {}).get("converted_from")
        except (AlexNetError, OSError, AttributeError):
            earlier = None
        if earlier != Path(args.caffemodel).name:
            raise WriteError(f"{out} exists and is not a conversion of {args.caffemodel}: name the file with --out")
    mean = mean_from_binaryproto(args.mean_file) if args.mean_file else IMAGENET_MEAN_BGR
    classes = read_text_input(args.classes, 16 * MB, "class list").splitlines() if args.classes else None
    trained = convert_caffe(args.caffemodel, classes=classes, mean_bgr=mean)
    save_weights(trained.model, out, trained.meta.to_dict())
    spec = trained.meta.model
    print(
        f"wrote {out}: {spec.variant} {spec.overrides}, {spec.num_classes} classes, BGR means "
        f"{tuple(round(m, 2) for m in mean)}"
    )
    return 0


COMMANDS = {
    "models": ("list the model variants with parameters and MACs", add_models, run_models),
    "weights": ("list the published weights: metrics, size, licence, whether cached", add_weights, run_weights),
    "convert-caffe": (
        "convert Caffe's bvlc_alexnet.caffemodel into weights for alexnet_paper",
        add_convert_caffe,
        run_convert_caffe,
    ),
}
