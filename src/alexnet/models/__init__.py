"""The AlexNet model zoo: a spec table (`specs`), one module (`alexnet`), and a registry.

Names load on first use, as the top package's do: listing the variants, resolving a spec and describing one
(`catalog`) import no torch, so ``alexnet models`` and a config's validation answer without it; building a network
(`registry`, `layers`) imports torch and registers the fused kernels' operators.
"""

from importlib import import_module
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)


def __dir__() -> list[str]:
    from pkgutil import iter_modules

    return sorted({*(n for n in globals() if n.startswith("__")), *__all__, *(m.name for m in iter_modules(__path__))})
