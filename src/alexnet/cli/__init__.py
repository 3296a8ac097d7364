"""The ``alexnet`` command: a thin shell over the library. Each subcommand parses flags, calls library functions
and prints their results; a user error becomes one ``error:`` line and exit status 2 (``-v`` shows the traceback).

The commands live by family (`train`, `use`, `paper`, `catalog`); the flags several share are defined once in
`options`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from ..errors import AlexNetError, TrainingInterrupted, out_of_memory
from ..names import did_you_mean, display_label
from . import catalog, paper, train, use
from .options import __doc__ as WEIGHTS_RULE

# name: (help, add arguments, run), in the order --help lists them
COMMANDS = {**train.COMMANDS, **use.COMMANDS, **paper.COMMANDS, **catalog.COMMANDS}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``alexnet train: error: ...``), like every other user error, and
    metavars named after the flag (``--out OUT``), never after the config field it sets (``TRAIN__OUT``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's own hook for a value outside ``choices`` (Python 3.14 adds the hint as ``suggest_on_error``)
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as err:
            hint = did_you_mean(value, action.choices or ())
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"{err.message}; {hint.strip()}") from None

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        takes_value = kwargs.get("action") in (None, "store", "append") and kwargs.get("choices") is None
        if takes_value and "metavar" not in kwargs and names and str(names[0]).startswith("-"):
            longest = max((str(n) for n in names), key=len)
            kwargs["metavar"] = longest.lstrip("-").upper().replace("-", "_")
        return super().add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = _Parser(
        prog="alexnet",
        description="AlexNet (Krizhevsky, Sutskever and Hinton, 2012): train, evaluate, predict, export, serve.",
        # the shared flags' rule, without the module docstring's first line (for readers of the code) or its markup
        epilog=" ".join(WEIGHTS_RULE.split("\n\n", 1)[1].replace("``", "").split()),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        add_arguments(command)
        command.set_defaults(command_parser=command)  # its own usage line for a flag it does not have
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``alexnet`` console script."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the parser whose flags they are not: `alexnet paper: ... (see alexnet paper --help)`
        words = list(sys.argv[1:] if argv is None else argv)
        command_at = words.index(args.command) if args.command in words else len(words)
        before = [w for w in words[:command_at] if w in unknown]  # `alexnet --bogus train`: the top level's
        (parser if before else args.command_parser).error(f"unrecognized arguments: {' '.join(before or unknown)}")
    empty = _empty_option(parser, args, list(sys.argv[1:] if argv is None else argv))
    if empty:  # `--weights "$W"` with W unset trained from scratch, `--recipe ""` took the default, without a word
        args.command_parser.error(
            f"argument {empty}: the value is empty (an unset variable?): give one, or leave it out"
        )
    # A terminal or file whose encoding cannot spell a class name (`> out.txt` on Windows writes cp1252; a
    # PYTHONIOENCODING=ascii) showed no prediction at all, only "'ascii' codec can't encode": escaped instead.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # replaced by a caller with a plain stream, or closed
            stream.reconfigure(errors="backslashreplace")
    # Our progress lines at INFO; other libraries' (onnxscript's optimizer, inductor) only from WARNING, all with -v.
    handler = logging.StreamHandler()
    handler.setFormatter(_Plain("%(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[handler])
    logging.getLogger("alexnet").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # matplotlib scores every installed font and PIL names every PNG chunk at DEBUG: hundreds of lines per report
    # that drown ours and say nothing about AlexNet; their INFO and up still show.
    for chatty in ("matplotlib", "PIL"):
        logging.getLogger(chatty).setLevel(logging.INFO)
    if not args.verbose:  # inductor's C++ builds warn that a CPU machine has no CUDA runtime: not news
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        # torch's profiler (bench --profile) logs its start, its stop and, without a GPU, a failed GPU count from C++
        # straight to stderr; 6 is above its highest level (5). Read when it first starts; a user's own setting wins.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    try:
        with _terminated_as_interrupt():
            return COMMANDS[args.command][2](args)
    except (AlexNetError, ValueError, FileNotFoundError) as err:
        if args.verbose:
            raise
        hint = f": {_continue(args.command, err.out)}" if isinstance(err, TrainingInterrupted) else ""
        said = str(err)
        if isinstance(err, OSError) and err.filename is not None:  # the system's ("[Errno 2] ... '/proc/x'"), not ours
            said = f"{os.fsdecode(err.filename)}: {err.strerror}"
        print(f"alexnet {args.command}: error: {display_label(said)}{hint}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except (MemoryError, RuntimeError) as err:
        if args.verbose or not out_of_memory(err):
            raise
        print(f"alexnet {args.command}: error: {_out_of_memory_line(err, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print("terminated" if isinstance(err, Terminated) else "interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT)
    except BrokenPipeError:  # `alexnet predict DIR | head`: the reader has what it wanted
        # stdout to /dev/null, so the interpreter's last flush at exit does not fail again (Python's own recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as err:  # a path the user gave that the system refuses: a name over 255 bytes, a loop of links
        if args.verbose:
            raise
        if err.filename is None and err.errno in _OUTPUT_ERRNOS:  # `predict DIR > preds.txt` on a full disk
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
            print(f"alexnet {args.command}: error: could not write its output: {err.strerror}", file=sys.stderr)
            return 2
        if err.filename is None:  # not a path's: a fault of ours or the machine's, with its traceback
            raise
        where = display_label(os.fsdecode(err.filename))
        print(f"alexnet {args.command}: error: {where}: {err.strerror or err}", file=sys.stderr)
        return 2


def run() -> int:
    """`main` as a process runs it (the console script, ``python -m alexnet.cli``): without the interpreter's last
    garbage collection, which walked every object torch and the command had made only to free memory the exit frees
    anyway (about 0.5 s of a 3.2 s `predict` on 2 cores of a Xeon), however the command ends (``--help`` and usage
    errors leave through SystemExit). Objects are still released as their references go; everything the command
    writes is flushed and closed where it is written, never left to a collector."""
    try:
        return main()
    finally:
        gc.freeze()


def _empty_option(parser: argparse.ArgumentParser, args: argparse.Namespace, words: list[str]) -> str | None:
    """The flag given an empty value, as typed (``--weights`` or ``--checkpoint``), if any (no default is empty).
    Empty inputs among the positional arguments have their own message (`predict`: "'' would mean the current
    directory")."""
    given = {k for k, v in vars(args).items() if v == "" or (isinstance(v, list | tuple) and "" in v)}
    if not given:
        return None
    parsers = [parser]
    for each in parsers:  # the commands' parsers and theirs (`paper fig1`), breadth first
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
            elif action.option_strings and action.dest in given:
                typed = [o for o in action.option_strings if any(w == o or w.startswith(o + "=") for w in words)]
                return (typed or action.option_strings)[0]
    return None


# Errors of writing to the standard output (redirected to a file) that name no file: a full disk or quota, a file
# grown past its limit, an I/O error.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


class _Plain(logging.Formatter):
    """Log lines with control characters escaped, as class names are printed (`display_label`): a file named with
    a terminal's escape sequences (``\x1b]0;...\x07`` retitles the window, ``\x1b[2J`` clears it) shows them as
    text. Line breaks and tabs stay (other libraries' tables under ``-v``), as does a traceback."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        lines = super().formatMessage(record).split("\n")
        return "\n".join("\t".join(map(display_label, line.split("\t"))) for line in lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a container or service stopping), raised where the command is, as Ctrl-C's
    KeyboardInterrupt is: the command's cleanup runs (an export's staged file, a write's temporary file) where the
    default action killed the process and left them, an unfinished ONNX export of ``alexnet_owt`` 244 MB."""


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Terminated` while the command runs (training and serving install their own handlers, which
    save or drain first, and restore this one). Only the main thread may set a handler: elsewhere, as it was; and
    a SIGTERM the caller ignores (``trap '' TERM``, a supervisor's choice) stays ignored."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _continue(command: str, out: str) -> str:
    """How the interrupted ``command`` is continued: each of those that train takes up its run its own way."""
    if command in ("demo", "reproduce"):  # they resume what their directories hold
        return "run the same command again to continue"
    if command == "paper":  # a sweep of runs under its --out, each resumed from its own checkpoint
        return "continue with the same command and --resume auto"
    return f"continue with --resume auto --out {out}"


def _out_of_memory_line(err: BaseException, args: argparse.Namespace) -> str:
    """One line for a failed allocation (`out_of_memory`): where, how much was asked for, what to make smaller
    (a flag the command has: `features` or `stats` advised a --batch-size they do not take)."""
    text = str(err)
    cuda = any(cls.__name__ == "OutOfMemoryError" for cls in type(err).__mro__)
    asked = re.search(r"(?:tried to )?allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]i?B)", text)
    size = asked.group(1) if asked else ""
    if asked and asked.group(2) == "bytes":
        size = f"{int(size) / 2**30:.1f} GiB"
    elif asked:
        size = f"{size} {asked.group(2)}"
    where = "on the GPU" if cuda else "in RAM"
    if "data__batch_size" in vars(args):  # training: the config's sizes too
        advice = "use a smaller --batch-size, input size or width"
    elif "batch_size" in vars(args):
        advice = "use a smaller --batch-size"
    else:
        advice = "the model and its data need more memory than is free"
    return f"out of memory {where}" + (f" (it asked for {size} more)" if size else "") + f": {advice} (-v shows where)"
