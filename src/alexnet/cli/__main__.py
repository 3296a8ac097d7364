"""``python -m alexnet.cli``: what torchrun launches."""

import sys

from . import run

sys.exit(run())
