"""The output grid rule (tumsyn_bids.model.grid): exact voxel sizes, centred field of view, and
the authors' rounding in reference mode. Expected values are computed by hand from the rule."""

import math

import numpy as np
import pytest

from tumsyn_bids.model.grid import GridError, output_grid, same_grid, voxel_sizes

# The reference fixture's input: 21 x 23 x 27 voxels of 1 x 1.2 x 1.5 mm, x axis flipped.
INPUT_AFFINE = np.array(
    [[1.0, 0, 0, -12.5], [0, -1.2000000476837158, 0, 30.25], [0, 0, 1.5, 8.0], [0, 0, 0, 1]]
)
SHAPE = (21, 23, 27)


def test_native_grid_is_the_input_grid():
    grid = output_grid(SHAPE, INPUT_AFFINE)
    assert grid.shape == SHAPE and grid.is_identity
    np.testing.assert_array_equal(grid.affine_array, INPUT_AFFINE)


def test_2x_affine_hand_computed():
    # Voxel size halves; voxel 0's centre moves a quarter input voxel towards -index:
    # x: -12.5 - 0.25*1.0; y: 30.25 - 0.25*(-1.2); z: 8 - 0.25*1.5.
    expected = np.array(
        [
            [0.5, 0, 0, -12.75],
            [0, -0.6000000238418579, 0, 30.550000011920929],
            [0, 0, 0.75, 7.625],
            [0, 0, 0, 1],
        ]
    )
    grid = output_grid(SHAPE, INPUT_AFFINE, scale=(2, 2, 2))
    assert grid.shape == (42, 46, 54)
    np.testing.assert_allclose(grid.affine_array, expected, atol=1e-12)
    # the same grid asked for as a voxel size
    by_size = output_grid(SHAPE, INPUT_AFFINE, voxel_size=(0.5, 0.6000000238418579, 0.75))
    np.testing.assert_allclose(by_size.affine_array, expected, atol=1e-12)


def test_field_of_view_is_kept_for_integer_scales():
    out = output_grid(SHAPE, INPUT_AFFINE, scale=(2, 2, 2)).affine_array
    np.testing.assert_allclose(INPUT_AFFINE @ [-0.5, -0.5, -0.5, 1], out @ [-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(INPUT_AFFINE @ [20.5, 22.5, 26.5, 1], out @ [41.5, 45.5, 53.5, 1])


def test_worked_example_of_the_docs():
    """31 voxels of 1 mm at 0.7 mm: 31 / 0.7 = 44.29 -> 44 voxels, voxel 0 at input -0.05."""
    grid = output_grid((31, 31, 31), np.eye(4), voxel_size=0.7)
    assert grid.shape == (44, 44, 44)
    np.testing.assert_allclose(grid.affine_array[:3, 3], [-0.05] * 3, atol=1e-12)
    np.testing.assert_allclose(np.diag(grid.affine_array)[:3], [0.7] * 3, atol=1e-15)


def _centres(shape, affine):
    """World coordinates of the first and last voxel centres, and of the grid's centre."""
    last = np.array([n - 1 for n in shape] + [1.0])
    first = affine @ [0, 0, 0, 1]
    end = affine @ last
    return first[:3], end[:3], (first[:3] + end[:3]) / 2


ROTATED = np.array(
    [
        [0.0, 0.0, -1.1, 80.0],  # k -> -x
        [0.96 * 0.9, 0.28 * 0.9, 0.0, -100.0],  # i, j rotated in the y-z plane
        [-0.28 * 0.9, 0.96 * 0.9, 0.0, -60.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


@pytest.mark.parametrize("request_mm", [(0.7,) * 3, (0.75,) * 3, (0.9,) * 3, (0.5, 0.6, 1.3)])
@pytest.mark.parametrize("affine", [INPUT_AFFINE, ROTATED], ids=["flipped", "oblique"])
def test_exact_voxel_size_and_centred_field_of_view(request_mm, affine):
    shape = (21, 23, 27)  # odd sizes
    grid = output_grid(shape, affine, voxel_size=request_mm)
    zooms = voxel_sizes(affine)
    # the count rule: field of view / voxel size, rounded half up
    want = tuple(
        math.floor(n * z / v + 0.5) for n, z, v in zip(shape, zooms, request_mm, strict=True)
    )
    assert grid.shape == want
    # the written zooms equal the request
    np.testing.assert_allclose(voxel_sizes(grid.affine_array), request_mm, rtol=0, atol=1e-12)
    assert grid.voxel_size == pytest.approx(request_mm, abs=1e-12)
    # the output field of view is centred on the input's
    _, _, centre_in = _centres(shape, affine)
    _, _, centre_out = _centres(grid.shape, grid.affine_array)
    np.testing.assert_allclose(centre_out, centre_in, atol=1e-9)
    # output voxel q sits at input position origin + q * step with step = v / z
    inv = np.linalg.inv(affine)
    for q in ([0, 0, 0], [g - 1 for g in grid.shape], [3, 5, 7]):
        position = (inv @ grid.affine_array @ (list(q) + [1]))[:3]
        expected = [
            (n - 1) / 2 + (qq - (m - 1) / 2) * v / z
            for n, m, qq, v, z in zip(shape, grid.shape, q, request_mm, zooms, strict=True)
        ]
        np.testing.assert_allclose(position, expected, atol=1e-9)
    # every output voxel centre lies inside the input field of view
    first = (inv @ grid.affine_array @ [0, 0, 0, 1])[:3]
    assert np.all(first > -0.5)


def test_reference_mode_keeps_the_authors_rounding():
    # 0.7 mm from 1 mm with 20-voxel patches: round(20 / 0.7) = 29 queries -> scale 1.45
    grid = output_grid((30, 30, 30), np.eye(4), voxel_size=0.7, patch_size=(20, 20, 20),
                       reference=True)  # fmt: skip
    assert grid.query_size == (29, 29, 29)
    assert grid.shape == (43, 43, 43)  # int(30 * 1.45)
    np.testing.assert_allclose(grid.voxel_size, [20 / 29] * 3, atol=1e-12)
    # the default mode gives what was asked for on the same input
    exact = output_grid((30, 30, 30), np.eye(4), voxel_size=0.7)
    assert exact.shape == (43, 43, 43)
    np.testing.assert_allclose(exact.voxel_size, [0.7] * 3, atol=1e-12)


def test_same_grid_tolerates_float32_headers_only():
    grid = output_grid(SHAPE, INPUT_AFFINE, voxel_size=0.7)
    stored = grid.affine_array.astype(np.float32).astype(np.float64)
    assert same_grid(grid.shape, stored, grid)
    shifted = stored.copy()
    shifted[0, 3] += 1e-3  # a thousandth of a mm off
    assert not same_grid(grid.shape, shifted, grid)
    assert not same_grid(tuple(n + 1 for n in grid.shape), stored, grid.record())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"voxel_size": (0.7, 0.0, 1.0)},
        {"voxel_size": (0.7, 1.0)},
        {"scale": -2},
        {"voxel_size": 1.0, "scale": 1.0},
        {"reference": True},
    ],
)
def test_bad_requests(kwargs):
    with pytest.raises(GridError):
        output_grid(SHAPE, INPUT_AFFINE, **kwargs)


def test_degenerate_affine_is_refused():
    bad = INPUT_AFFINE.copy()
    bad[:, 1] = 0
    with pytest.raises(GridError, match="zero"):
        output_grid(SHAPE, bad)
