"""The console script, run as a user runs it."""

import json
import subprocess
import sys

from alexnet.cli import main


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "alexnet_paper" in out and "60,965,224" in out and "61,100,840" in out


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"] for r in rows} >= {"alexnet_paper", "alexnet_owt", "alexnet_d2l", "alexnet_small"}
    assert all(r["macs"] > 0 for r in rows)


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "alexnet.cli", "models"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "alexnet_small" in result.stdout
