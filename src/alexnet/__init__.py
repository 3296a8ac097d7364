"""alexnet: Krizhevsky, Sutskever and Hinton's 2012 network and its descendants, as a library.

import alexnet
model = alexnet.create_model("alexnet_paper")
result = alexnet.fit(alexnet.load_config("fashion-mnist"))
alexnet.Predictor.from_path("runs/demo/best.safetensors").predict(["shoe.jpg"])
"""

from importlib import import_module
from typing import Any

from .models import ModelInfo, get_spec, list_models, model_from_config, model_info
from .version import __version__

# Training, evaluation, inference and export load on first use, so `import alexnet` stays light.
_LAZY = {
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
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")


__all__ = [
    "ModelInfo",
    "__version__",
    "get_spec",
    "list_models",
    "model_from_config",
    "model_info",
    *_LAZY,
]
