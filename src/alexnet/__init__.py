"""alexnet: Krizhevsky, Sutskever and Hinton's 2012 network and its descendants, as a library.

import alexnet
model = alexnet.create_model("alexnet_paper")
result = alexnet.fit(alexnet.load_config("fashion-mnist"))
alexnet.Predictor.from_path("runs/demo/best.safetensors").predict(["shoe.jpg"])
"""

from .lazy import lazy_names
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


__all__ = ["__version__", *_LAZY]
__getattr__, __dir__ = lazy_names(__name__, __path__, _LAZY, globals())
