"""The flags several commands share, each defined once with one default and one meaning.

``--weights NAME|PATH`` names a trained model everywhere (``--checkpoint`` is the same flag): published weights
(``alexnet weights``), our ``.safetensors`` or ``.pt`` files, a program we exported, or a run directory (its
``best.safetensors``, else its ``last.pt``). ``train`` starts from it (fine-tuning); every other command uses it as
it is.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..names import PRECISIONS

WEIGHTS_HELP = "published weights (alexnet weights lists them), our .safetensors or .pt files, a run directory"
DEVICE_HELP = "auto (the default: CUDA, else MPS, else the CPU), cpu, cuda, cuda:N, mps"


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be at least {least}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a size limit of 0 or less refuses every file)."""
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a tolerance: below 0 or NaN nothing would pass, after all the work)."""
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of 0 or more")
    return value


def percent(text: str) -> float:
    """argparse type: a percentage, a finite number in (0, 100)."""
    value = positive_float(text)
    if not value < 100:
        raise argparse.ArgumentTypeError(f"{text} must be a percentage between 0 and 100")
    return value


def positive_floats(text: str) -> list[float]:
    """argparse type: comma-separated finite numbers > 0 (a learning-rate sweep)."""
    return [positive_float(part.strip()) for part in text.split(",")]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch of 0 divides by zero; a negative top-k means nothing)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (0 turns an option off)."""
    return _int_at_least(text, 0)


class Once(argparse.Action):
    """``store``, refusing the flag a second time: a command that takes one model would otherwise quietly use the
    last one named (``--weights A --weights B`` runs B)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice: this command takes one")
        setattr(namespace, self.dest, values)


def weights(
    p: argparse.ArgumentParser,
    help: str = WEIGHTS_HELP,
    many: bool = False,
    repeat: bool = False,
    required: bool = True,
) -> None:
    # Several: `alexnet eval`'s ensemble, listed after one --weights or over several (``many``), or, for a command
    # whose positional arguments such a list would swallow (`alexnet predict`'s images), one --weights each
    # (``repeat``). Otherwise one, given once.
    nargs = "+" if many else None
    action = "extend" if many else "append" if repeat else Once
    p.add_argument(
        "--weights",
        "--checkpoint",
        dest="weights",
        required=required,
        metavar="NAME|PATH",
        nargs=nargs,
        action=action,
        help=help,
    )


def device(p: argparse.ArgumentParser, dest: str = "device") -> None:
    # Commands that build a run config leave it None, so the recipe's value (itself "auto" by default) stands.
    p.add_argument("--device", dest=dest, default=None if "__" in dest else "auto", help=DEVICE_HELP)


def precision(p: argparse.ArgumentParser, dest: str = "precision", extra: tuple[str, ...] = (), help: str = "") -> None:
    p.add_argument(
        "--precision",
        dest=dest,
        default=None if "__" in dest else "auto",
        choices=[*PRECISIONS, *extra],
        help=help or "auto (the default: bf16 where the device runs it fast, else fp32), fp32, bf16, fp16",
    )


def compile_first(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the model ahead of time first (seconds once; half the batch-1 latency on the CPU)",
    )


def json_output(p: argparse.ArgumentParser, help: str = "print JSON instead of a table") -> None:
    p.add_argument("--json", action="store_true", help=help)


def data_dir(p: argparse.ArgumentParser, dest: str = "data_dir", help: str = "") -> None:
    p.add_argument(
        "--data-dir", dest=dest, metavar="DIR", help=help or "data root (default $ALEXNET_DATA, else ./data)"
    )


def overrides(p: argparse.ArgumentParser, help: str = "") -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=help or "override any config field, e.g. --set optim.weight_decay=1e-4 (repeatable)",
    )


def allow_changes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-changes",
        dest="train__allow_changes",
        action="store_const",
        const=True,
        help="resume although batch size, learning rate, optimizer, schedule or seed differ from the checkpoint's",
    )


def no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="train__progress", action="store_const", const=False, help="no progress bars")


def config_fields(args: argparse.Namespace) -> dict:
    """The flags that set run-config fields (their dest is SECTION__KEY), where given."""
    return {k: v for k, v in vars(args).items() if "__" in k and v is not None}
