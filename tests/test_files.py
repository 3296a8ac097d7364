"""The file layer: what every write promises beyond atomicity (see tests/test_nothing_lost.py for the failures)."""

from __future__ import annotations

import os
import stat

from alexnet.files import atomic_write, write_text


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
