"""The package's layers, measured from its imports (every import, at module level or inside a function): no module
imports a module of a higher layer, and no import cycle exists, between packages or between modules.

The layers, bottom to top (docs/architecture.md draws them):
0. foundation: errors, files, names (what users choose and see, free of torch), device, memory, native (the C++
   kernels' build), logs (others' loggers quieted), lazy (names loaded on first use), recipes, version
1. models, data
2. config (a run's whole configuration: validated against the models and data sets)
3. artifacts (the trained model and its files)
4. evaluation (the evaluation loop training and inference share)
5. training, inference (neither imports the other)
6. experiments
7. the API and the CLI: alexnet (the package), api, cli
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {
    "errors": 0,
    "files": 0,
    "device": 0,
    "memory": 0,
    "names": 0,
    "lazy": 0,
    "native": 0,
    "logs": 0,
    "recipes": 0,
    "version": 0,
    "models": 1,
    "data": 1,
    "config": 2,
    "artifacts": 3,
    "evaluation": 4,
    "training": 5,
    "inference": 5,
    "experiments": 6,
    "": 7,
    "api": 7,
    "cli": 7,
}


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted((src / "alexnet").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(src: Path = SRC) -> dict[str, set[str]]:
    """module → the package's modules it imports, wherever in the file the import is."""
    mods = modules(src)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names]  # `from x import y`: y may be a module
            else:
                continue
            for target in targets:
                while target not in mods and "." in target:
                    target = target.rpartition(".")[0]
                if target in mods and target != name:
                    graph[name].add(target)
    return graph


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if top not in LAYERS:
        raise AssertionError(f"{module}: its package {top!r} has no layer in tests/test_layers.py: give it one")
    return LAYERS[top]


def upward(graph: dict[str, set[str]]) -> list[str]:
    same = {5}  # training and inference share a layer and may not import each other
    return sorted(
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in graph.items()
        for b in targets
        if layer(b) > layer(a) or (layer(a) in same and layer(a) == layer(b) and a.split(".")[1] != b.split(".")[1])
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_higher_layer():
    assert upward(imports()) == []


def test_no_import_cycle():
    assert cycles(imports()) == []


def test_every_package_has_a_layer():
    for name in modules():
        layer(name)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"models/registry.py": "from ..artifacts import weights\n", "artifacts/weights.py": ""}, "upward"),
        (
            {"training/fit.py": "def f():\n    from ..inference.predictor import P\n", "inference/predictor.py": ""},
            "upward",
        ),
        ({"data/a.py": "from . import b\n", "data/b.py": "def f():\n    from .a import x\n"}, "cycle"),
        ({"data/a.py": "from .b import x\n", "data/b.py": "import alexnet.models.m\n", "models/m.py": ""}, None),
    ],
)
def test_the_checks_see_what_they_should(tmp_path, files, problem):
    """The checks themselves, on small made-up packages: an upward import at module level and inside a function, a
    cycle through a function-level import, and a clean tree."""
    for rel, text in {"__init__.py": "", **files}.items():
        path = tmp_path / "alexnet" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    graph = imports(tmp_path)
    assert bool(upward(graph)) == (problem == "upward")
    assert bool(cycles(graph)) == (problem == "cycle")


def test_the_version_is_the_one_pyproject_declares():
    import tomllib

    import alexnet

    pyproject = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    assert alexnet.__version__ == pyproject["project"]["version"]


def test_the_package_loads_its_names_and_subpackages_on_first_use():
    """`import alexnet` imports no torch (`test_cli` checks that); what it offers still comes on first use, in a
    fresh process (here the suite has imported every subpackage already): the everyday names, and its subpackages
    as attributes, as when the package imported them itself; `alexnet.models` the same (its submodules were
    listed by ``dir`` but refused as attributes when it first loaded lazily)."""
    script = (
        "import alexnet\n"
        "assert 'alexnet_paper' in alexnet.models.list_models() and alexnet.errors.AlexNetError\n"
        "for name in alexnet.__all__:\n"
        "    assert getattr(alexnet, name) is not None, name\n"
        "names = set(dir(alexnet))\n"
        "assert set(alexnet.__all__) | {'models', 'inference', 'errors'} <= names\n"
        "assert not {'Any', 'import_module', 'lazy_names'} & names\n"
        "models = alexnet.models\n"
        "assert {'fused_lrn', 'layers', 'get_spec'} <= set(dir(models)) and 'lazy_names' not in dir(models)\n"
        "assert models.layers.LocalResponseNorm is models.LocalResponseNorm and models.fused_lrn.kernel\n"
        "for package in (alexnet, models):\n"
        "    try:\n"
        "        package.nope\n"
        "    except AttributeError as err:\n"
        "        print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split("\n") == [
        "module 'alexnet' has no attribute 'nope'",
        "module 'alexnet.models' has no attribute 'nope'",
    ], done.stdout
