"""alexnet: Krizhevsky, Sutskever and Hinton's 2012 network and its descendants, as a library."""

from .models import ModelInfo, create_model, get_spec, list_models, model_from_config, model_info

__version__ = "0.1.0"
__all__ = [
    "ModelInfo",
    "__version__",
    "create_model",
    "get_spec",
    "list_models",
    "model_from_config",
    "model_info",
]
