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
