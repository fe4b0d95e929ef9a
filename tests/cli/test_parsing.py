"""Value checks and defaults shared by the commands."""

import logging

import pytest

from tests.conftest import SMALL
from tumsyn_bids.cli.parsing import (
    AUTHORS_PATCH_SIZE,
    UsageError,
    default_patch_size,
    one_or_three,
)
from tumsyn_bids.model.bundled import demo_weights


def test_default_patch_size_follows_the_weights(caplog):
    with caplog.at_level(logging.INFO, logger="tumsyn_bids"):
        assert default_patch_size(demo_weights()[0]) == 20
    assert "20-voxel patches" in caplog.text
    # weights that record no training patch (the official ones) keep the authors' patch
    assert default_patch_size(SMALL / "synthesis.pth") == AUTHORS_PATCH_SIZE == 60


def test_one_or_three():
    assert one_or_three(None, "--x", 2.0) == (2.0, 2.0, 2.0)
    assert one_or_three([3], "--x", 2.0) == (3, 3, 3)
    assert one_or_three([1, 2, 3], "--x", 2.0) == (1, 2, 3)
    with pytest.raises(UsageError, match="--x takes one or three values, got 2"):
        one_or_three([1, 2], "--x", 2.0)
