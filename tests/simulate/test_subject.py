"""Simulated subjects: deterministic, distinct, smoothly and boundedly deformed, noisy as asked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tumsyn_bids.prompts.protocol import Protocol
from tumsyn_bids.simulate.anatomy import grid_for, grid_points
from tumsyn_bids.simulate.subject import (
    AGE_RANGE,
    MANUFACTURERS,
    MAX_DISPLACEMENT_MM,
    draw_subject,
)

from .scans import acquire, ground_truth

VOXEL = 3.0
T1W = Protocol(repetition_time=2.3, echo_time=0.003, inversion_time=0.9, flip_angle=9.0)


def test_same_seed_same_subject_bit_for_bit() -> None:
    a, b = draw_subject("01", 5), draw_subject("01", 5)
    assert a == b
    for tissue, level in a.tissue_levels(VOXEL).items():
        assert np.array_equal(level, b.tissue_levels(VOXEL)[tissue])
    scan_a = a.encoded_scan(T1W, "T1w", VOXEL, snr=20).to_bytes()
    assert scan_a == b.encoded_scan(T1W, "T1w", VOXEL, snr=20).to_bytes()
    assert np.array_equal(
        acquire(a, T1W, "T1w", VOXEL, snr=20).get_fdata(),
        acquire(b, T1W, "T1w", VOXEL, snr=20).get_fdata(),
    )


def test_seeds_and_labels_give_different_subjects() -> None:
    base = draw_subject("01", 5).tissue_maps(VOXEL).gm
    for other in (draw_subject("01", 6), draw_subject("02", 5)):
        assert not np.array_equal(base, other.tissue_maps(VOXEL).gm)
        # ... but still the same kind of brain.
        assert other.tissue_maps(VOXEL).gm.sum() == pytest.approx(base.sum(), rel=0.35)


def test_demographics_are_in_range() -> None:
    subjects = [draw_subject(f"{i:02d}", 0) for i in range(1, 21)]
    assert all(AGE_RANGE[0] <= s.age <= AGE_RANGE[1] for s in subjects)
    assert {s.sex for s in subjects} == {"M", "F"}
    assert {s.field_strength for s in subjects} == {1.5, 3.0}
    assert {s.manufacturer for s in subjects} <= set(MANUFACTURERS)
    assert draw_subject("01", 0, field_strength=3.0).field_strength == 3.0


def test_deformation_is_bounded_and_smooth() -> None:
    deformation = draw_subject("03", 1).deformation
    rng = np.random.default_rng(0)
    points = rng.uniform(-100, 100, size=(3, 2000))
    displacement = deformation.displacement(points)
    assert np.abs(displacement).max() <= MAX_DISPLACEMENT_MM + 1e-9
    assert np.abs(displacement).max() > 0.2  # it does deform
    # Jacobian by central differences: every entry within the bound 2 pi A / 60 mm, and the
    # whole matrix smaller than 1 (Frobenius), so the warp cannot fold.
    h = 0.01
    bound = 2 * math.pi * MAX_DISPLACEMENT_MM / 60.0
    for axis in range(3):
        step = np.zeros((3, 1))
        step[axis] = h
        column = deformation.displacement(points + step) - deformation.displacement(points - step)
        column /= 2 * h
        assert np.abs(column).max() <= bound + 1e-6
    jac = np.stack(
        [
            (deformation.displacement(points + e[:, None] * h) - deformation.displacement(points))
            / h
            for e in np.eye(3)
        ],
        axis=1,
    )
    assert np.sqrt((jac**2).sum(axis=(0, 1))).max() < 1.0


def test_grid_evaluation_matches_pointwise() -> None:
    deformation = draw_subject("03", 1).deformation
    shape, affine = grid_for(VOXEL)
    np.testing.assert_allclose(
        deformation.on_grid(shape, affine), deformation(grid_points(shape, affine)), atol=1e-9
    )


def test_scan_noise_matches_the_snr_and_grid_matches_the_truth() -> None:
    subject = draw_subject("04", 2)
    truth = ground_truth(subject, T1W, "T1w", VOXEL)
    scan = acquire(subject, T1W, "T1w", VOXEL, snr=25)
    np.testing.assert_array_equal(scan.affine, subject.tissue_maps(VOXEL).affine)
    assert scan.get_data_dtype() == np.int16
    data = scan.get_fdata()
    maps = subject.tissue_maps(VOXEL)
    mask = maps.brain_mask()
    sigma = truth[mask].mean() / 25
    # Background (no tissue at all): Rayleigh noise with mean sigma * sqrt(pi / 2).
    empty = (maps.gm + maps.wm + maps.csf) == 0
    assert data[empty].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.1)
    assert np.corrcoef(data[mask], truth[mask])[0, 1] > 0.9


def test_field_strength_of_the_protocol_wins() -> None:
    subject = draw_subject("05", 0, field_strength=1.5)
    at3 = Protocol(2.3, 0.003, 0.9, 9.0, magnetic_field_strength=3.0)
    a = acquire(subject, at3, "T1w", VOXEL, snr=20).get_fdata()
    b = acquire(subject, T1W, "T1w", VOXEL, snr=20).get_fdata()
    assert not np.array_equal(a, b)


def test_snr_must_be_positive() -> None:
    with pytest.raises(ValueError, match="snr"):
        draw_subject("01", 0).encoded_scan(T1W, "T1w", VOXEL, snr=0)
