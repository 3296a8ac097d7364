"""Whether a batch can fit in the memory left: a batch far too large is refused before it is allocated.

On Linux torch's allocations succeed beyond what is free (the kernel overcommits); touching the pages then brings
the out-of-memory killer, which ends the process without a word (exit 137), and a container's memory limit (a
cgroup's) does the same below what the machine has. So what a batch needs at the least is set against what the
machine, and the tightest cgroup limit above this process, leave free. Elsewhere (macOS, Windows) nothing is read and
nothing refused: their allocators fail with an error the CLI reports as one line, as CUDA's does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import AlexNetError

log = logging.getLogger(__name__)
GB = 1e9
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as 2^63 rounded down to a page


class MemoryBudgetError(AlexNetError):
    """A batch, a model's weights or a checkpoint's tensors need more memory than is available: refused before
    anything was allocated for them."""


@dataclass(frozen=True)
class Available:
    """Bytes this process may still take, and what bounds them (for messages)."""

    bytes: int
    bound: str


def _fields(path: Path) -> dict[str, int]:
    """``key value`` lines (meminfo's, memory.stat's) as a dict; a missing or unreadable file gives none."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    out: dict[str, int] = {}
    for line in lines:
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1]) * (1024 if parts[2:] == ["kB"] else 1)
    return out


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _cgroup_limits(root: Path) -> list[Available]:
    """What each memory cgroup from this process's own up to the hierarchy's root leaves: its limit less its usage,
    less the file cache, which the kernel reclaims before it kills (all of it, where Kubernetes' working set keeps
    the active part: a floor must never be refused for memory that would be found). Inside a container the path
    /proc names may not exist below the mount: only the levels that exist are read."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    found = []
    for line in lines:  # "0::/path" (v2) or "4:memory:/path" (v1)
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base, names = root / "sys/fs/cgroup", ("memory.max", "memory.current", "")
        elif "memory" in controllers.split(","):
            base = root / "sys/fs/cgroup/memory"
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_")
        else:
            continue
        level = Path(path.strip() or "/")
        for directory in [level, *level.parents]:
            here = base / str(directory).lstrip("/")
            limit, used = _number(here / names[0]), _number(here / names[1])
            if limit is None or limit >= UNLIMITED or used is None:
                continue
            stat = _fields(here / "memory.stat")  # file pages, active or not: reclaimed before the killer comes
            cache = stat.get(f"{names[2]}active_file", 0) + stat.get(f"{names[2]}inactive_file", 0)
            found.append(
                Available(max(limit - max(used - cache, 0), 0), f"left under the memory limit of cgroup {directory}")
            )
    return found


def available(root: Path = Path("/")) -> Available | None:
    """What this process may still allocate: the least of the machine's available memory and its cgroups'; None
    where none of it can be read (not Linux)."""
    meminfo = _fields(root / "proc/meminfo")
    candidates = _cgroup_limits(root)
    if "MemAvailable" in meminfo:
        candidates.append(Available(meminfo["MemAvailable"], "available on this machine"))
    if not candidates:
        return None
    least = min(candidates, key=lambda a: a.bytes)
    # Swap lets a larger batch run, slowly: counted wherever it may be used (a cgroup that may not swap is judged
    # leniently, never wrongly), so nothing that would run is refused.
    swap = meminfo.get("SwapFree", 0)
    return Available(least.bytes + swap, f"{least.bound}, swap included") if swap else least


def check_batch(
    what: str,
    count: int,
    per_item: int,
    limit: Available | None = None,
    fixed: int = 0,
    fixed_what: str = "",
    advice: str = "use a smaller batch size",
    processes: int = 1,
) -> None:
    """Refuse ``count`` items of ``per_item`` bytes at the least, and ``fixed`` bytes besides (``fixed_what``: the
    model's weights and gradients, not yet made; a service's budgets), when they cannot fit in what is `available`;
    ``advice`` ends the message. ``processes`` on this machine each holding as much (torchrun's ranks on one node)
    share what is left.

    Neither may overstate: a batch refused here would not have run, one let through may still fail.

    Raises:
        MemoryBudgetError: naming the batch, its need and what bounds it.
    """
    log.debug("%s: %d × (%d × %d + %d bytes)", what, processes, count, per_item, fixed)
    besides = f" ({fixed_what} {_amount(fixed * processes)} of it)" if fixed else ""
    needing = f"a batch of {count:,} needs"
    if processes > 1:
        needing = f"{processes} processes on this machine, each with a batch of {count:,}, need"
    check_need(what, needing, (count * per_item + fixed) * processes, advice, limit, besides)


def check_need(
    what: str, needing: str, need: int, advice: str, limit: Available | None = None, besides: str = ""
) -> None:
    """Refuse ``need`` bytes (``needing``: what needs them, as the message says it; ``besides`` follows the amount)
    when they cannot fit in what is `available` (`check_batch` for a batch).

    Raises:
        MemoryBudgetError: ``{what}: {needing} at least … and … is left …: {advice}``.
    """
    limit = available() if limit is None else limit
    if limit is not None and need > limit.bytes:
        # As many decimals as it takes for the two to differ (1.68 GB against 1.66, not 1.7 against 1.7)
        digits = next((d for d in (1, 2, 3) if _amount(need, d) != _amount(limit.bytes, d)), 3)
        raise MemoryBudgetError(
            f"{what}: {needing} at least {_amount(need, digits)}{besides} and "
            f"{_amount(limit.bytes, digits)} is {limit.bound}: {advice}"
        )


def _amount(n: int, digits: int = 1) -> str:
    return f"{n / GB:.{digits}f} GB" if n >= GB else f"{n / 1e6:.{digits}f} MB"
