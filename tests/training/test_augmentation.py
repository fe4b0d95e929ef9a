"""Random input degradation for stage 2: what it draws, and what it leaves alone."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from tumsyn_bids.training.augmentation import Degradation


def test_off_returns_the_patch_itself():
    patch = np.ones((4, 4, 4), np.float32)
    rng = np.random.default_rng(0)
    assert Degradation().apply(patch, rng) is patch
    assert rng.uniform() == np.random.default_rng(0).uniform()  # and draws nothing


def test_noise_sigma_is_drawn_up_to_the_bound():
    flat = np.full((16, 16, 16), 0.5, np.float32)
    rng = np.random.default_rng(1)
    sds = [Degradation(noise_max=0.1).apply(flat, rng).std() for _ in range(200)]
    # Rician noise on a signal five times its largest sigma has nearly Gaussian spread sigma,
    # with sigma uniform in [0, 0.1]: mean 0.05, never above the bound
    assert max(sds) < 0.1 * 1.05
    assert min(sds) < 0.01
    assert np.mean(sds) == pytest.approx(0.05, abs=0.005)


def test_noise_is_rician_so_background_stays_positive():
    zeros = np.zeros((8, 8, 8), np.float32)
    out = Degradation(noise_max=0.2).apply(zeros, np.random.default_rng(2))
    assert out.dtype == np.float32 and out.min() >= 0 and out.mean() > 0


def test_blur_sigma_is_drawn_up_to_the_bound():
    impulse = np.zeros((21, 21, 21), np.float32)
    impulse[10, 10, 10] = 1
    widest = gaussian_filter(impulse, 1.5, mode="nearest")[10, 10, 10]
    rng = np.random.default_rng(3)
    peaks = [Degradation(blur_max=1.5).apply(impulse, rng)[10, 10, 10] for _ in range(50)]
    # sigma uniform in [0, 1.5]: never wider than the bound, mostly well blurred
    assert min(peaks) >= widest * 0.999 and max(peaks) <= 1
    assert np.median(peaks) < 0.2
    out = Degradation(blur_max=1.5).apply(impulse, rng)
    assert out.sum() == pytest.approx(1.0, rel=1e-4)  # blurring moves signal, never adds it
    assert impulse[10, 10, 10] == 1  # the input is not changed in place


def test_same_generator_state_same_degradation():
    patch = np.random.default_rng(4).uniform(0, 1, (8, 8, 8)).astype(np.float32)
    aug = Degradation(blur_max=1.0, noise_max=0.05)
    a = aug.apply(patch, np.random.default_rng(7))
    b = aug.apply(patch, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, aug.apply(patch, np.random.default_rng(8)))


def test_negative_bounds_are_refused():
    with pytest.raises(ValueError, match=">= 0"):
        Degradation(noise_max=-0.1)
    with pytest.raises(ValueError, match=">= 0"):
        Degradation(blur_max=-1)
