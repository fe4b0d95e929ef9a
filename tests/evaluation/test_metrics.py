"""The scores against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tumsyn_bids.evaluation.metrics import (
    dice,
    histogram_match,
    psnr,
    ssim,
    tissue_ratio,
)


def test_psnr_by_hand():
    truth = np.zeros((4, 4, 4))
    pred = truth.copy()
    pred[0, 0, 0] = 0.5  # one voxel off by 0.5 among 64 -> MSE = 0.25 / 64
    mask = np.ones_like(truth, bool)
    assert psnr(pred, truth, mask) == pytest.approx(10 * np.log10(64 / 0.25))
    mask[0, 0, 0] = False  # the error is outside the mask now
    assert psnr(pred, truth, mask) == float("inf")


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    rng = np.random.default_rng(0)
    img = rng.random((16, 16, 16))
    mask = np.ones(img.shape, bool)
    assert ssim(img, img, mask) == pytest.approx(1.0)
    noisy = np.clip(img + rng.normal(0, 0.3, img.shape), 0, 1)
    assert ssim(noisy, img, mask) < 0.9
    # two equal constant images: zero variance and equal means give exactly 1
    flat = np.full(img.shape, 0.3)
    assert ssim(flat, flat, mask) == pytest.approx(1.0)


def test_histogram_match_takes_the_reference_distribution_but_keeps_order():
    rng = np.random.default_rng(1)
    src = rng.random((8, 8, 8))
    ref = rng.normal(5, 2, (8, 8, 8))
    mask = np.ones(src.shape, bool)
    out = histogram_match(src, ref, mask)
    np.testing.assert_allclose(np.sort(out.ravel()), np.sort(ref.ravel()))
    # monotonic: the brightest source voxel gets the brightest reference value
    assert out.ravel()[src.argmax()] == pytest.approx(ref.max())
    assert out.ravel()[src.argmin()] == pytest.approx(ref.min())


def test_tissue_ratio():
    img = np.array([[[1.0, 2.0, 4.0, 4.0]]])
    a = np.array([[[False, False, True, True]]])
    b = np.array([[[True, True, False, False]]])
    assert tissue_ratio(img, a, b) == pytest.approx(4.0 / 1.5)


def test_dice_by_hand():
    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros((4, 4, 4), bool)
    a[0, :, :] = 1  # 16 voxels
    b[0, :2, :] = True  # 8 voxels, all inside a
    assert dice(a, b) == pytest.approx(2 * 8 / (16 + 8))
    assert dice(a, a) == 1.0
    assert dice(a, ~a.astype(bool)) == 0.0
    assert dice(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="different shapes"):
        dice(a, b[:2])
