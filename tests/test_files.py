"""The file layer: what every write promises beyond atomicity (see tests/test_nothing_lost.py for the failures)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from alexnet.files import atomic_write, write_text
from tests.helpers import strict_json


def test_written_files_get_the_users_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "report.md", "hello")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # what `open(path, "w")` would have made
        os.umask(0o077)
        path = write_text(tmp_path / "private.md", "hello")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_an_explicit_mode_wins(tmp_path):
    atomic_write(tmp_path / "key", lambda f: f.write(b"x"), mode=0o600)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600


def test_json_text_writes_what_strict_parsers_read():
    import math

    from alexnet.files import json_text

    tree = {"loss": math.nan, "rows": [1.5, math.inf, (-math.inf, 2)], "nested": {"x": math.nan, "n": 3, "s": "NaN"}}
    with pytest.raises(ValueError, match="NaN is not JSON"):
        strict_json(json.dumps(tree))
    got = strict_json(json_text(tree, indent=1))
    assert got == {"loss": None, "rows": [1.5, None, [None, 2]], "nested": {"x": None, "n": 3, "s": "NaN"}}


def test_a_write_removes_what_a_killed_writer_of_the_same_file_left(tmp_path):
    """SIGKILL (the out-of-memory killer) runs no cleanup: a writer killed in the middle leaves its hidden temporary
    beside the target, the size of what it was writing (a quantized model, a features array), for good. The next
    write to that file removes it, and keeps a live process's, another file's, another machine's and any name
    without our tag."""
    import signal
    import subprocess
    import sys

    from alexnet.files import process_tag

    target = tmp_path / "features.npy"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from alexnet.files import atomic_write\n"
            "atomic_write(sys.argv[1], lambda f: (f.write(b'x' * 4096), f.flush(), os.kill(os.getpid(), 9)))",
            str(target),
        ],
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".features.npy.") and left[0].stat().st_size == 4096

    host = process_tag().split("@")[1]
    kept = [
        tmp_path / f".features.npy.{os.getppid()}@{host}.abc_12.tmp",  # a live process's write under way
        tmp_path / f".features.npy.{_a_finished_pid()}@another-node.abc_12.tmp",  # another machine's
        tmp_path / f".other.npy.{_a_finished_pid()}@{host}.abc_12.tmp",  # another file's
        tmp_path / ".features.npy.abc_12.tmp",  # no tag: not ours to judge
    ]
    for path in kept:
        path.write_bytes(b"x")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert not left[0].exists() and all(p.exists() for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["features.npy"] + [p.name for p in kept])


def _a_finished_pid() -> int:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
