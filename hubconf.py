"""torch.hub entry points: ``torch.hub.load("<owner>/alexnet", "alexnet_paper", weights=...)`` gives the model that
``alexnet.create_model("alexnet_paper", weights=...)`` gives, for every registered variant.

torch.hub imports this file from the repository's root without installing the package, so ``src/`` is put on the
path first; ``dependencies`` is what torch.hub checks is importable.
"""

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "safetensors", "numpy"]

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from alexnet.api import create_model as _create_model  # noqa: E402
from alexnet.models import list_models as _list_models  # noqa: E402


def _entry(name):
    def build(weights=None, **kwargs):
        return _create_model(name, weights=weights, **kwargs)

    build.__name__ = name
    build.__doc__ = f"``alexnet.create_model({name!r}, weights=..., **overrides)``: see ``alexnet models``."
    return build


for _name in _list_models():
    globals()[_name] = _entry(_name)
