"""The already-brain-extracted rule and mask clean-up."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from tests.colin27 import BRAIN, HEAD, requires_colin27
from tumsyn_bids.preproc.masks import (
    MAX_BRAIN_VOLUME_ML,
    SYNTHESIS_MARGIN_VOXELS,
    check_brain_extracted,
    clean_mask,
    dilate_mask,
    mask_from_nonzero,
    mask_on_grid,
)


def _ball(shape, radius_vox, centre=None) -> np.ndarray:
    centre = np.asarray(centre if centre is not None else [(n - 1) / 2 for n in shape])
    grid = np.indices(shape).reshape(3, -1).T
    return (np.linalg.norm(grid - centre, axis=1) <= radius_vox).reshape(shape)


@requires_colin27
def test_colin27_brain_is_detected_and_the_head_is_not():
    brain = nib.load(BRAIN)
    head = nib.load(HEAD)
    on_brain = check_brain_extracted(np.asarray(brain.dataobj), brain.header.get_zooms())
    on_head = check_brain_extracted(np.asarray(head.dataobj), head.header.get_zooms())
    assert on_brain.brain_extracted, on_brain.describe()
    assert not on_head.brain_extracted, on_head.describe()
    # The head has a zero background too (42 % of its voxels): the volume rule decides.
    assert on_head.zero_fraction > 0.3
    assert on_head.support_volume_ml > 2 * MAX_BRAIN_VOLUME_ML * 0.9
    assert 1200 < on_brain.support_volume_ml < 2000
    assert "already brain-extracted" in on_brain.describe()


def test_a_brain_on_noise_is_not_extracted():
    """Skull-free but raw: the background holds noise, not zeros (the simulator's images)."""
    rng = np.random.default_rng(0)
    data = np.abs(rng.normal(0, 5, size=(60, 60, 60))) + 100 * _ball((60, 60, 60), 20)
    check = check_brain_extracted(data, (2.0, 2.0, 2.0))
    assert not check.brain_extracted
    assert check.zero_fraction < 0.01


def test_the_volume_rule_is_in_millilitres():
    """The same zero-background ball is a brain at 2 mm voxels and a head at 2.5 mm."""
    ball = 100.0 * _ball((80, 80, 80), 38)
    at_2mm = check_brain_extracted(ball, (2.0, 2.0, 2.0))  # radius 76 mm: 1.84 l
    at_25mm = check_brain_extracted(ball, (2.5, 2.5, 2.5))  # radius 95 mm: 3.6 l
    assert at_2mm.brain_extracted
    assert at_2mm.support_volume_ml == pytest.approx(4 / 3 * np.pi * 76**3 / 1000, rel=0.02)
    assert not at_25mm.brain_extracted


def test_scattered_islands_are_not_a_brain():
    rng = np.random.default_rng(1)
    data = np.where(rng.random((40, 40, 40)) > 0.9, 50.0, 0.0)
    check = check_brain_extracted(data, (1.0, 1.0, 1.0))
    assert not check.brain_extracted
    assert check.support_fraction < 0.95


def test_float_ringing_counts_as_zero():
    data = 100.0 * _ball((40, 40, 40), 12)
    data[data == 0] = 1e-4  # far below 1e-4 of the 99th percentile (100)
    assert check_brain_extracted(data, (1.0, 1.0, 1.0)).brain_extracted


def test_mask_from_nonzero_keeps_one_solid_piece():
    data = 10.0 * _ball((30, 30, 30), 10)
    data[15, 15, 15] = 0.0  # a hole (a dark voxel inside the brain)
    data[1, 1, 1] = 5.0  # an island outside
    mask = mask_from_nonzero(data)
    assert mask[15, 15, 15] and not mask[1, 1, 1]
    np.testing.assert_array_equal(mask, _ball((30, 30, 30), 10))
    np.testing.assert_array_equal(clean_mask(mask), mask)
    with pytest.raises(ValueError, match="every voxel is zero"):
        mask_from_nonzero(np.zeros((4, 4, 4)))


def test_the_synthesis_margin_adds_the_face_neighbours():
    mask = np.zeros((7, 7, 7), dtype=bool)
    mask[3, 3, 3] = True
    one = dilate_mask(mask, 1)
    assert one.sum() == 7  # the voxel and its 6 face neighbours, no edge or corner neighbour
    assert one[2, 3, 3] and one[3, 3, 4] and not one[2, 2, 3]
    assert dilate_mask(mask, 2).sum() == 25  # the 3-D "diamond" of radius 2
    np.testing.assert_array_equal(dilate_mask(mask, 0), mask)
    assert SYNTHESIS_MARGIN_VOXELS == 1
    with pytest.raises(ValueError, match=">= 0 voxels"):
        dilate_mask(mask, -1)


def test_a_mask_on_a_finer_grid_takes_the_voxel_each_centre_falls_in():
    """Output voxels at 0.5-voxel steps, centred (input positions -0.25, 0.25, ..., 3.25):
    each takes the input voxel floor(x + 1/2), so [0, 1, 1, 0] becomes
    [0, 0, 1, 1, 1, 1, 0, 0] (by hand)."""
    mask = np.array([0, 1, 1, 0], dtype=bool).reshape(4, 1, 1)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fine = affine @ np.array(
        [[0.5, 0, 0, -0.25], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float
    )
    out = mask_on_grid(mask, affine, (8, 1, 1), fine)
    np.testing.assert_array_equal(out[:, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0])
    # the grid itself: the mask unchanged; a coarser grid past the edge: clipped
    np.testing.assert_array_equal(mask_on_grid(mask, affine, (4, 1, 1), affine), mask)
    coarse = affine @ np.array(
        [[3.0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float
    )
    np.testing.assert_array_equal(mask_on_grid(mask, affine, (2, 1, 1), coarse)[:, 0, 0], [1, 0])


def test_a_mask_on_a_rotated_grid_is_refused():
    angle = np.radians(30)
    rotated = np.eye(4)
    rotated[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    with pytest.raises(ValueError, match="do not share their axes"):
        mask_on_grid(np.ones((3, 3, 3), bool), np.eye(4), (3, 3, 3), rotated)
