"""Names users give and see, kept free of torch so that the command line's ``--help``, ``--version`` and usage
errors answer without importing it (1.4 s of a 1.5 s ``alexnet --help``): the precisions one chooses among, the
near miss a mistyped name is told of, and any name made safe to print."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def did_you_mean(value: object, choices: Iterable[object]) -> str:
    """``"did you mean 'mnist'? "`` for a name a letter's case or a typo away from one of ``choices``, else ``""``:
    the start of a refusal's hint (``MNIST``, ``cifar-10``, ``alexnet_owt.imagenet1k_v1``)."""
    if not isinstance(value, str):
        return ""
    names = {c.lower(): c for c in choices if isinstance(c, str)}
    close = difflib.get_close_matches(value.lower(), list(names), n=1, cutoff=0.8)
    return f"did you mean {names[close[0]]!r}? " if close else ""


def display_label(name: str) -> str:
    """``name`` safe to print or plot: control characters (escape sequences, newlines, bidi overrides) escaped
    as ``\\xNN`` / ``\\uNNNN``, a file name's bytes that are not UTF-8 as ``\\xNN``, and maths markers left to the
    caller (plots render labels as plain text)."""
    out = []
    for ch in name:
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte of a file name that is not UTF-8 (os.listdir's surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)
