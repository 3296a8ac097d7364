"""alexnet: Krizhevsky, Sutskever and Hinton's 2012 network and its descendants, as a library.

import alexnet
model = alexnet.create_model("alexnet_paper")
result = alexnet.fit(alexnet.load_config("fashion-mnist"))
alexnet.Predictor.from_path("runs/demo/best.safetensors").predict(["shoe.jpg"])
"""

from importlib import import_module
from typing import Any

from .version import __version__

# Everything loads on first use: `import alexnet` imports no torch (1.4 s), so the command line's --help, --version
# and usage errors answer at once.
_LAZY = {
    "ModelInfo": "models",
    "get_spec": "models",
    "list_models": "models",
    "model_from_config": "models",
    "model_info": "models",
    "create_model": "api",
    "fit": "training.fit",
    "load_config": "config",
    "evaluate_checkpoint": "inference.evaluate",
    "load_trained": "artifacts.loader",
    "Predictor": "inference.predictor",
    "export_model": "inference.export",
    "benchmark": "experiments.bench",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    if not name.startswith("_"):  # a subpackage on first use (`alexnet.models.list_models()` after `import alexnet`)
        try:
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":  # a module it imports is missing: that is the error to see
                raise
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]


def __dir__() -> list[str]:
    # What `alexnet.<tab>` can reach: the public names and the submodules, loaded or not (read from the directory,
    # not imported); not this file's helpers (import_module, Any).
    from pkgutil import iter_modules

    modules = (m.name for m in iter_modules(__path__) if not m.name.startswith("_"))
    return sorted({*(name for name in globals() if name.startswith("__")), *__all__, *modules})
