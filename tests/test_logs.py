"""Other libraries quieted for one call, their loggers put back and nobody's handlers touched."""

from __future__ import annotations

import logging

import pytest
import torch

from alexnet.logs import level_set


def test_a_level_is_set_for_the_block_and_put_back_even_on_error():
    logger = logging.getLogger("alexnet.tests.other_library")
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(RuntimeError), level_set("alexnet.tests.other_library", logging.ERROR):
            assert not logger.isEnabledFor(logging.WARNING)
            raise RuntimeError
        assert logger.level == logging.INFO and logger.isEnabledFor(logging.WARNING)
    finally:
        logger.setLevel(logging.NOTSET)  # as the logging module made it: no level left behind in this process


@pytest.mark.slow
def test_the_openvino_int8_engine_leaves_nncfs_logger_and_its_handlers_as_they_were():
    """The engine quiets nncf for its calibration only. It used ``nncf.set_log_level``, which also sets every handler on
    nncf's logger: a handler shared with other loggers (pytest's capture handlers, an application's) then dropped
    their warnings too, for the rest of the process."""
    pytest.importorskip("nncf")
    from torch import nn

    from alexnet.experiments import engines

    nncf_logger = logging.getLogger("nncf")
    shared = logging.Handler()  # level NOTSET: everything
    nncf_logger.addHandler(shared)
    level = nncf_logger.level
    try:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
        run = engines.openvino_int8(model, 8, 1)(torch.randn(2, 3, 8, 8))
        run()
        assert shared.level == logging.NOTSET and nncf_logger.level == level
    finally:
        nncf_logger.removeHandler(shared)
