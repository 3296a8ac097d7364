"""The ``alexnet`` command: a thin shell over the library. Each subcommand parses flags, calls library functions
and prints their results; a user error becomes one ``error:`` line and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from .errors import AlexNetError


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per variant instead of a table")


def run_models(args: argparse.Namespace) -> int:
    from .models import list_models, model_info

    rows = [model_info(name) for name in list_models()]
    if args.json:
        for r in rows:
            print(json.dumps(r.__dict__))
        return 0
    print(f"{'name':<15} {'params':>12} {'GMACs':>7} {'input':>6}  note")
    for r in rows:
        print(f"{r.name:<15} {r.params:>12,} {r.macs / 1e9:>7.3f} {r.input_size:>6}  {r.note}")
    return 0


# name: (help, add arguments, run)
COMMANDS = {
    "models": ("list the model variants with parameters and MACs", _models, run_models),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet", description="AlexNet: train, evaluate, predict, export.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
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
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
