"""The AlexNet model zoo: a spec table (`specs`), one module (`alexnet`), and a registry.

Names load on first use, as the top package's do: listing the variants, resolving a spec and describing one
(`catalog`) import no torch, so ``alexnet models`` and a config's validation answer without it; building a network
(`registry`, `layers`) imports torch and registers the fused kernels' operators.
"""

from ..lazy import lazy_names

_WHERE = {
    "OVERRIDABLE": "specs",
    "VARIANTS": "specs",
    "ArchSpec": "specs",
    "ConvSpec": "specs",
    "ModelInfo": "catalog",
    "get_spec": "catalog",
    "list_models": "catalog",
    "model_info": "catalog",
    "AlexNet": "alexnet",
    "create_model": "registry",
    "model_from_config": "registry",
    "LocalResponseNorm": "layers",
    "fused_kernels": "layers",
    "matmul_weights_to": "layers",
    "standard_modules": "layers",
}


__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_names(__name__, __path__, _WHERE, globals())
