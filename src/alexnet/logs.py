"""Other libraries' loggers, quieted for the length of one call of theirs and put back as they were."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def level_set(name: str | None, level: int) -> Iterator[None]:
    """The logger ``name`` (None: the root) at ``level`` inside the block, at its own level again after it.

    Only the logger's level changes, never its handlers': a handler may be shared with other loggers (pytest attaches
    its capture handlers to every non-propagating logger, an application may too), so setting a handler's level, as
    ``nncf.set_log_level`` does, quiets those loggers as well, for good.
    """
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
