"""Names a package loads on first use (PEP 562), so that importing it imports no torch: `alexnet` and
`alexnet.models` both answer this way."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_names(
    package: str, path: list[str], where: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__``: each name of ``where`` from its module (relative to ``package``),
    any other public name as the submodule of that name, loaded then; ``dir`` lists the package's dunders and
    ``__all__`` from ``namespace`` (its globals) and its submodules, loaded or not (read from ``path``)."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(import_module(f".{where[name]}", package), name)
        if not name.startswith("_"):  # a submodule on first use (`alexnet.models.list_models()` after `import alexnet`)
            try:
                return import_module(f".{name}", package)
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":  # a module it imports is missing: that is the error to see
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        # What `<package>.<tab>` can reach: not the package's own helpers (import_module, Any, lazy_names).
        from pkgutil import iter_modules  # here: `import alexnet` stays as light as it can

        modules = (m.name for m in iter_modules(path) if not m.name.startswith("_"))
        return sorted({*(n for n in namespace if n.startswith("__")), *namespace.get("__all__", ()), *modules})

    return __getattr__, __dir__
