"""Value checks and defaults shared by the commands."""

import logging

import pytest

from tests.conftest import SMALL
from tumsyn_bids.cli.parsing import (
    AUTHORS_PATCH_SIZE,
    UsageError,
    batch_size,
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


def test_batch_size_default_pairs_small_patches():
    # two patches per pass up to 24^3 voxels (the demo model's 20, the CPU profile's 16) ...
    assert batch_size(None, (20, 20, 20)) == 2
    assert batch_size(None, (16, 16, 16)) == 2
    assert batch_size(None, (24, 24, 24)) == 2
    assert batch_size(None, (48, 24, 12)) == 2
    # ... one above, as for the authors' 60-voxel patches
    assert batch_size(None, (25, 24, 24)) == 1
    assert batch_size(None, (AUTHORS_PATCH_SIZE,) * 3) == 1
    # a given value wins, whatever the patch
    assert batch_size(1, (20, 20, 20)) == 1
    assert batch_size(6, (60, 60, 60)) == 6
    with pytest.raises(UsageError, match="--batch-size must be at least 1, got 0"):
        batch_size(0, (20, 20, 20))
