"""The AlexNet model zoo: a spec table (`specs`), one module (`alexnet`), and a registry."""

from .alexnet import AlexNet
from .layers import LocalResponseNorm, fused_kernels, matmul_weights_to, standard_modules
from .registry import ModelInfo, create_model, get_spec, list_models, model_from_config, model_info
from .specs import OVERRIDABLE, VARIANTS, ArchSpec, ConvSpec

__all__ = [
    "OVERRIDABLE",
    "VARIANTS",
    "AlexNet",
    "ArchSpec",
    "ConvSpec",
    "LocalResponseNorm",
    "ModelInfo",
    "create_model",
    "fused_kernels",
    "get_spec",
    "list_models",
    "matmul_weights_to",
    "model_from_config",
    "model_info",
    "standard_modules",
]
