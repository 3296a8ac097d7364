"""Commands that use a trained model: ``eval``, ``predict``, ``features``, ``export``, ``quantize``, ``serve``."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import AlexNetError, ConfigError
from ..files import json_text
from . import options


def add_eval(p: argparse.ArgumentParser) -> None:
    options.weights(
        p,
        options.WEIGHTS_HELP + " or a .pt2 program export or quantize wrote; several: scored as one, the softmax "
        "averaged over them (the paper's five CNNs)",
        many=True,
    )
    p.add_argument("--dataset", help="default: the one the model was trained on")
    options.data_dir(p, help="where that data set is (default: where the model's training found it)")
    # No view option: the views the run validated with (its recipe's flip_tta...). Any option: exactly those named.
    views = p.add_mutually_exclusive_group()
    views.add_argument(
        "--ten-crop",
        action=argparse.BooleanOptionalAction,
        help="average softmax over 4 corners + centre and mirrors",
    )
    views.add_argument(
        "--flip-tta",
        action=argparse.BooleanOptionalAction,
        help="average softmax over the centre crop and its mirror",
    )
    p.add_argument(
        "--translate-tta",
        type=options.nonnegative_int,
        metavar="PX",
        help="also average over views shifted by (-PX, -PX) and (+PX, +PX), half the weight (with --flip-tta: and "
        "their mirrors); 0: none",
    )
    views.add_argument(
        "--single-view",
        action="store_true",
        help="score each image once, whatever the run validated with (default: the run's own views)",
    )
    p.add_argument("-b", "--batch-size", type=options.positive_int, metavar="N", help="images per batch")
    options.device(p)
    options.precision(
        p, extra=("int8",), help="auto, fp32, bf16, fp16, or int8: quantized on the fly (see alexnet quantize)"
    )
    p.add_argument(
        "--limit-val-batches", type=options.positive_int, metavar="N", help="evaluate the first N batches of -b"
    )
    p.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="test: the data set's own validation or test split; val: the images the run held out of its training "
        "split (data.val_split)",
    )
    p.add_argument(
        "--out",
        "--out-dir",
        dest="out",
        metavar="DIR",
        help="write confusion.png and eval.json here (default: nothing is written)",
    )
    options.json_output(p, "print one JSON object")


def run_eval(args: argparse.Namespace) -> int:
    from ..inference.evaluate import evaluate_checkpoint
    from ..names import display_label

    if args.single_view and args.translate_tta:
        raise ConfigError("--single-view and --translate-tta are exclusive: translated views are more views")
    if args.out:  # before the work: a run directory's report embeds its own confusion.png
        from ..files import check_outputs, check_replaceable, is_record

        for name in ("eval.json", "confusion.png"):
            check_replaceable(Path(args.out, name))
        ours = is_record(Path(args.out, "eval.json"), ("acc1", "images", "per_class_acc"))  # an earlier eval's
        check_outputs(args.out, ["eval.json", "confusion.png"], ours, "--out")

    result = evaluate_checkpoint(
        args.weights,
        dataset=args.dataset,
        data_dir=args.data_dir,
        ten_crop=False if args.single_view else args.ten_crop,
        flip=args.flip_tta,
        translate=args.translate_tta,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        limit_batches=args.limit_val_batches,
        progress=not args.json,
        split=args.split,
    )
    summary = {k: round(v, 4) for k, v in result.summary().items()}
    views = result.views
    summary.update(ten_crop=views["ten_crop"], flip_tta=views["flip"], translate_tta=views["translate"])
    summary["models"] = len(args.weights)  # several: one ensemble, their softmax averaged
    per_class = dict(zip(result.classes, (round(a, 3) for a in result.per_class_acc)))
    if args.json:
        print(json_text({**summary, "per_class_acc": per_class}), flush=True)
    else:
        print(
            f"Acc@1 {summary['acc1']:.2f}  Acc@5 {summary['acc5']:.2f}  (error {summary['err1']:.2f} / "
            f"{summary['err5']:.2f})  loss {summary['loss']:.4f}  on {summary['images']} images"
            + (f"  ({summary['models']} models, softmax averaged)" if summary["models"] > 1 else "")
        )
        for name, acc in per_class.items():
            print(f"  {display_label(name):<24} " + (f"{acc:6.2f}%" if math.isfinite(acc) else "no images"))
        sys.stdout.flush()
    if args.out:  # written only where asked
        from ..files import write_text

        write_text(Path(args.out, "eval.json"), json_text({**summary, "per_class_acc": per_class}, indent=1))
        try:
            from ..experiments.report import plot_confusion
        except ImportError:  # matplotlib is the optional [report] extra
            return 0
        path = plot_confusion(result.confusion, result.classes, Path(args.out, "confusion.png"))
        if not args.json:
            print(f"wrote {Path(args.out, 'eval.json')} and {path}")
    return 0


def add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE_OR_DIR_OR_GLOB",
        help="images, directories (recursive), globs; - reads one image from standard input",
    )
    options.weights(
        p,
        options.WEIGHTS_HELP + ", a .pt2 program, or an exported .onnx; repeated (--weights A --weights B): one "
        "classifier, the softmax averaged over them (the paper's five CNNs)",
        repeat=True,
    )
    p.add_argument("--topk", type=options.positive_int, default=5, metavar="K", help="classes shown (default 5)")
    p.add_argument("-b", "--batch-size", type=options.positive_int, default=32, metavar="N", help="images per batch")
    p.add_argument(
        "--max-file-mb", type=options.positive_float, default=64.0, metavar="MB", help="refuse larger image files"
    )
    p.add_argument("--ten-crop", action="store_true", help="average softmax over ten crops")
    options.device(p)
    options.precision(p)
    options.compile_first(p)
    options.json_output(p, "JSON lines: {path, topk: [{label, prob}]} or {path, error}")


def run_predict(args: argparse.Namespace) -> int:
    from ..data.decode import expand_inputs
    from ..inference.predictor import Predictor
    from ..names import display_label

    names = expand_inputs(args.inputs)  # an empty argument, or a folder or glob with no image, fails here
    if names.count("-") > 1:
        raise AlexNetError("- is given twice: standard input holds one image")
    inputs = [_standard_input(args.max_file_mb) if name == "-" else name for name in names]
    predictor = Predictor.from_path(
        args.weights, args.device, args.precision, max_file_mb=args.max_file_mb, compile=args.compile
    )
    failed = 0
    for name, pred in zip(names, predictor.predict_iter(inputs, args.topk, args.batch_size, args.ten_crop)):
        pred = replace(pred, source=name)  # "-" for standard input, where the library names bytes by their place
        failed += pred.error is not None
        if args.json:
            print(json_text(pred.to_json()), flush=True)
        elif pred.error is not None:
            print(f"{display_label(pred.source)}\terror: {display_label(pred.error)}")
        else:
            print(display_label(pred.source) + "\t" + "  ".join(f"{label} {100 * p:.1f}%" for label, p in pred.topk))
    if failed:
        print(f"alexnet predict: {failed} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _standard_input(max_file_mb: float) -> bytes:
    """The image piped to ``predict -`` (``curl ... | alexnet predict --weights W -``): at most the size limit and a
    byte more, so a larger one is refused by the limit without reading all of it."""
    if sys.stdin is None or sys.stdin.isatty():
        where = "closed" if sys.stdin is None else "a terminal"
        raise AlexNetError(f"- reads an image from standard input, which is {where} here: pipe a file into it")
    return sys.stdin.buffer.read(int(max_file_mb * 2**20) + 1)


def add_features(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR_OR_GLOB")
    options.weights(p)
    p.add_argument("--layer", default="fc7", choices=["fc7", "fc6", "pool5"])
    p.add_argument("--out", required=True, metavar="FILE", help="the .npy to write; the file order beside it as .txt")


def run_features(args: argparse.Namespace) -> int:

    from ..artifacts.loader import load_network
    from ..data.decode import expand_inputs
    from ..errors import AlexNetError
    from ..files import check_outputs, check_replaceable, write_bytes
    from ..inference.features import NoFeaturesError, write_features
    from ..names import display_label

    if not args.out.endswith(".npy"):
        raise AlexNetError(f"--out {args.out}: the features are a NumPy array, name the file .npy")
    order = args.out[: -len(".npy")] + ".txt"
    # Before any work: a directory, a device or a run's results where a file goes; and a .txt beside the .npy the
    # user named that is not an earlier file order of these features (their notes.txt, for --out notes.npy).
    check_replaceable(args.out), check_replaceable(order)
    check_outputs(Path(order).parent, [Path(order).name], _an_order_of(args.out, order), "--out")
    files = expand_inputs(args.inputs)
    trained = load_network(args.weights, "to read features from")
    try:
        written = write_features(trained, files, args.out, args.layer)
    except NoFeaturesError as err:
        for e in err.errors:
            print(f"error: {display_label(e)}", file=sys.stderr)
        print(f"alexnet features: {err}", file=sys.stderr)
        return 1
    for e in written.errors:
        print(f"error: {display_label(e)}", file=sys.stderr)
    write_bytes(order, b"".join(_order_line(name) for name in written.done))
    print(f"wrote {args.out} {written.shape} ({args.layer}) and {order}")
    return 1 if written.errors else 0


def _an_order_of(npy: str, txt: str) -> bool:
    """Whether ``txt`` is the file order `features` wrote beside ``npy``: a line for each of its rows."""
    import numpy as np

    try:
        rows = np.load(npy, mmap_mode="r").shape[:1]  # numpy refuses pickles by default
        with open(txt, "rb") as f:
            return rows == (sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")),)
    except (OSError, ValueError):  # either missing, not an array, not a file
        return False


def _order_line(name: str) -> bytes:
    """One line of the features' file order: the name's own bytes (a name that is not UTF-8 comes back as the
    file system has it), a line break inside a name escaped as `predict` prints it."""
    import os

    from ..names import display_label

    return os.fsencode(display_label(name) if "\n" in name or "\r" in name else name) + b"\n"


def add_export(p: argparse.ArgumentParser) -> None:
    options.weights(p)
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "exported-program"])
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (.onnx, .pt, .pt2)")
    p.add_argument(
        "--atol",
        type=options.nonnegative_float,
        default=1e-5,
        help="absolute part of the allowed |export - eager| logit gap",
    )
    p.add_argument(
        "--rtol",
        type=options.nonnegative_float,
        default=1e-4,
        help="part of the allowed gap relative to max |eager logit|",
    )
    p.add_argument(
        "--images", nargs="+", metavar="FILE", help="images for the parity check (default: the data's test split)"
    )


def run_export(args: argparse.Namespace) -> int:
    from ..artifacts.loader import load_network
    from ..inference.export import check_inputs_for, export_model

    trained = load_network(args.weights, "to export")
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


def add_quantize(p: argparse.ArgumentParser) -> None:
    options.weights(p)
    p.add_argument("--out", required=True, metavar="FILE", help="the int8 program to write (.pt2)")
    p.add_argument("--calibration", type=options.positive_int, default=512, metavar="N", help="training images")
    p.add_argument(
        "--batch", type=options.positive_int, default=64, metavar="N", help="the batch the program is compiled for"
    )
    options.data_dir(p, help="where the model's data set is (default: as training found it)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="which training images calibrate")
    p.add_argument(
        "--no-autotune",
        dest="autotune",
        action="store_false",
        help="compile without timing GEMM templates (faster to load, slower at batch 1)",
    )


def run_quantize(args: argparse.Namespace) -> int:
    from ..inference.quantize import quantize_file

    r = quantize_file(
        args.weights,
        args.out,
        calibration=args.calibration,
        batch=args.batch,
        data_dir=args.data_dir,
        seed=args.seed,
        autotune=args.autotune,
    )
    print(
        f"wrote {r.path}: int8, calibrated on {r.calibration_images} training images of {r.dataset}, batch "
        f"{r.batch}, in {r.seconds:.0f} s; top-1 agreement with fp32 on {r.checked_images} other training images "
        f"{100 * r.agreement:.1f}%"
    )
    return 0


def _host_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:  # `--allowed-hosts "$PROXY"` with PROXY unset: the proxy's requests would all get 400
        raise argparse.ArgumentTypeError(
            "the value is empty or names no host (an unset variable?): give one, or leave it out"
        )
    return names


def add_serve(p: argparse.ArgumentParser) -> None:
    options.weights(
        p,
        options.WEIGHTS_HELP + ", or a .pt2 program; several: served as one model, the softmax averaged over them "
        "(the paper's five CNNs)",
        many=True,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs --api-key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--allowed-hosts",
        type=_host_names,
        default=(),
        metavar="NAMES",
        help="host names requests may address besides loopback's, comma-separated (a reverse proxy's: "
        "api.example.com, *.example.com); others get 400",
    )
    p.add_argument("--name", help="the model's name in /v2/models/NAME (default: the weights' name or run)")
    p.add_argument("--max-batch", type=options.positive_int, default=32, metavar="N", help="most images run together")
    p.add_argument("--max-wait-ms", type=float, default=10.0, metavar="MS", help="how long a request waits to batch")
    p.add_argument(
        "--max-queue", type=options.positive_int, default=256, metavar="N", help="images waiting before 503s"
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds before a waiting request 504s")
    p.add_argument("--max-body-mb", type=float, default=16.0, metavar="MB", help="larger request bodies get 413")
    p.add_argument(
        "--body-budget-mb",
        type=float,
        metavar="MB",
        help="request bodies held at once, all requests (bounds memory; beyond: 503; default 256, or --max-body-mb)",
    )
    p.add_argument("--api-key", help="required on every endpoint but health checks (default $ALEXNET_API_KEY)")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="S", help="seconds to receive a body, else 408")
    p.add_argument("--head-timeout", type=float, default=10.0, metavar="S", help="seconds to receive headers, else 408")
    p.add_argument(
        "--decode-budget-mp",
        type=float,
        default=100.0,
        metavar="MP",
        help="megapixels decoding at once, all requests (bounds memory; larger images: 413)",
    )
    p.add_argument(
        "--grpc-port", type=int, metavar="PORT", help="also answer KServe v2 over gRPC on this port (the [grpc] extra)"
    )
    options.device(p)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="auto, fp32 or bf16")
    options.compile_first(p)


def run_serve(args: argparse.Namespace) -> int:
    try:
        from ..inference.serving.server import serve
        from ..inference.serving.settings import ServeSettings
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
        body_budget_mb=args.body_budget_mb,
        api_key=args.api_key,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        body_timeout_s=args.body_timeout,
        decode_budget_mp=args.decode_budget_mp,
        head_timeout_s=args.head_timeout,
        grpc_port=args.grpc_port,
        allowed_hosts=args.allowed_hosts,
    )
    # ServeSettings refuses values out of range (--max-wait-ms 1e13 would break the batching thread's wait).
    serve(args.weights, args.host, args.port, settings, args.name)
    return 0


COMMANDS = {
    "eval": ("evaluate a model: top-1/top-5, per-class accuracy, confusion matrix", add_eval, run_eval),
    "predict": ("top-k classes for image files, directories or globs", add_predict, run_predict),
    "features": ("embeddings of images from a hidden layer (fc7, fc6, pool5) as .npy", add_features, run_features),
    "export": ("export to ONNX, TorchScript or torch.export, checked against eager", add_export, run_export),
    "quantize": (
        "post-training int8 quantization (PT2E, x86 inductor) into a .pt2 program",
        add_quantize,
        run_quantize,
    ),
    "serve": ("an HTTP service: web page, /v1/classify, KServe v2, /metrics; batched", add_serve, run_serve),
}
