"""docs/tutorial.ipynb runs top to bottom (at tiny limits: ALEXNET_TUTORIAL_QUICK=1) on the Fashion-MNIST excerpt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_tutorial_notebook_runs(tmp_path, fashion_dir):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    # TMPDIR: the notebook keeps its runs in a mkdtemp directory for the reader; here it goes with tmp_path.
    env = {"ALEXNET_TUTORIAL_QUICK": "1", "ALEXNET_DATA": fashion_dir, "OMP_NUM_THREADS": "2", "TMPDIR": str(tmp_path)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "alexnet_paper" in outputs and "features.0" in outputs  # the model and its shapes were printed
    assert "test top-1" in outputs and "ReLU's speed-up" in outputs  # training and Figure 1 ran
    images = sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))
    assert images >= 3  # the curves, the filters and the predictions were drawn
