"""The authors' training-patch sampling (``SRImplicitPaired``), re-implemented without BIDS."""

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from tumsyn_bids.model.patches import (
    crop_to_source,
    cube_size,
    make_coord_grid,
    nonzero_bounds,
    sample_training_patch,
)


def _authors_make_coord(shape):
    """utils.make_coord(shape, flatten=True) from the authors' repository, for comparison."""
    seqs = []
    for n in shape:
        r = (1 - -1) / (2 * n)
        seqs.append(-1 + r + (2 * r) * torch.arange(n).float())
    return torch.stack(torch.meshgrid(*seqs, indexing="ij"), dim=-1).view(-1, len(shape))


def _pair(shape=(30, 34, 28), box=((4, 26), (5, 30), (3, 25)), seed=0):
    """A random source that is non-zero only inside ``box``, and a target non-zero everywhere."""
    rng = np.random.default_rng(seed)
    src = np.zeros(shape, dtype=np.float32)
    inner = tuple(slice(a, b) for a, b in box)
    src[inner] = rng.uniform(0.05, 1.0, size=[b - a for a, b in box])
    tgt = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
    return src, tgt


def _indices(coord: np.ndarray, size: int) -> np.ndarray:
    """Voxel index of each cell-centre coordinate on [-1, 1] of a cube of ``size``."""
    idx = np.rint((coord.astype(np.float64) + 1) * size / 2 - 0.5).astype(int)
    # The coordinate really is that voxel's centre (up to float32 rounding).
    np.testing.assert_allclose(coord, (2 * idx + 1) / size - 1, atol=1e-6)
    return idx


@pytest.mark.parametrize("shape", [(3, 4, 5), (20, 20, 20), (7, 1, 9)])
def test_coord_grid_is_the_authors_make_coord(shape):
    grid = make_coord_grid(shape)
    assert grid.dtype == np.float32 and grid.shape == (int(np.prod(shape)), 3)
    assert np.array_equal(grid, _authors_make_coord(shape).numpy())


def test_scale_one_copies_the_crop_and_hr_values_sit_at_their_coordinates():
    src, tgt = _pair()
    p = sample_training_patch(src, tgt, np.random.default_rng(3), 1.0, 1.0, lr_size=8, sample_q=200)
    assert p["size"] == 8 and p["scale"] == 1.0
    box = tuple(slice(c, c + 8) for c in p["corner"])
    # s = 1: the LR input is exactly the HR crop, no resampling.
    assert np.array_equal(p["src_lr"], src[box])
    assert np.array_equal(p["tgt_lr"], tgt[box])
    idx = _indices(p["coord"], 8)
    assert len({tuple(i) for i in idx}) == 200  # drawn without replacement
    z, y, x = (p["corner"][:, None] + idx.T).tolist()
    assert np.array_equal(p["src_hr"], src[z, y, x])
    assert np.array_equal(p["tgt_hr"], tgt[z, y, x])


def test_hr_values_at_coordinates_for_a_downsampled_patch():
    src, tgt = _pair()
    p = sample_training_patch(src, tgt, np.random.default_rng(5), 2.0, 2.0, lr_size=8, sample_q=300)
    assert p["size"] == 16
    z, y, x = (p["corner"][:, None] + _indices(p["coord"], 16).T).tolist()
    assert np.array_equal(p["src_hr"], src[z, y, x])
    assert np.array_equal(p["tgt_hr"], tgt[z, y, x])
    hr = src[tuple(slice(c, c + 16) for c in p["corner"])]
    assert np.array_equal(p["src_lr"], zoom(hr, 0.5).astype(np.float32))


def test_dtypes_and_shapes():
    src, tgt = _pair()
    p = sample_training_patch(src.astype(np.float64), tgt, np.random.default_rng(0), 1, 3, 8, 64)
    for key in ("src_lr", "tgt_lr", "coord", "src_hr", "tgt_hr"):
        assert p[key].dtype == np.float32, key
    assert p["src_lr"].shape == p["tgt_lr"].shape == (8, 8, 8)
    assert p["coord"].shape == (64, 3)
    assert p["src_hr"].shape == p["tgt_hr"].shape == (64,)


def test_cube_side_is_truncated_like_the_authors():
    # (8 * 1.2).astype(int) == 9, not round(9.6) == 10
    assert cube_size(1.2, 8) == 9
    assert cube_size(2.9, 20) == 58 and cube_size(1.0, 20) == 20
    src, tgt = _pair()
    p = sample_training_patch(src, tgt, np.random.default_rng(0), 1.2, 1.2, lr_size=8, sample_q=64)
    assert p["size"] == 9


@pytest.mark.parametrize("scale", [1.1, 1.6, 2.6])
def test_lr_side_is_always_lr_size(scale):
    """The authors' zoom(patch, 1/s) would give 7 voxels for 8 * 1.1 = 8 -> 8 / 1.1 = 7.27."""
    src, tgt = _pair()
    p = sample_training_patch(src, tgt, np.random.default_rng(1), scale, scale, 8, 64)
    assert p["src_lr"].shape == p["tgt_lr"].shape == (8, 8, 8)


@pytest.mark.parametrize("scale", [1.3, 2.0, 2.9])
def test_downsampling_matches_the_authors_zoom_for_lr_size_20(scale):
    rng = np.random.default_rng(0)
    src = rng.uniform(0.1, 1, (64, 64, 64)).astype(np.float32)
    p = sample_training_patch(src, src, np.random.default_rng(2), scale, scale, 20, 100)
    assert p["size"] == int(20 * np.round(scale, 1))
    hr = src[tuple(slice(c, c + int(p["size"])) for c in p["corner"])]
    assert np.array_equal(p["src_lr"], zoom(hr, 1 / scale))


def test_crop_stays_in_the_source_bounding_box():
    box = ((4, 26), (5, 30), (3, 25))
    src, tgt = _pair(box=box)
    lo, hi = nonzero_bounds(src)
    assert lo.tolist() == [b[0] for b in box] and hi.tolist() == [b[1] for b in box]
    rng = np.random.default_rng(11)
    for _ in range(40):
        p = sample_training_patch(src, tgt, rng, 1.0, 3.0, lr_size=8, sample_q=64)
        corner, size = p["corner"], int(p["size"])
        assert (corner >= lo).all() and (corner + size <= hi).all()


def test_crop_to_source_uses_the_source_box_for_both():
    src, tgt = _pair()
    s, t, lo = crop_to_source(src, tgt)
    assert s.shape == t.shape == (22, 25, 22)
    assert np.array_equal(t, tgt[4:26, 5:30, 3:25]) and lo.tolist() == [4, 5, 3]


def test_cube_shrinks_to_fit_a_small_box():
    src, tgt = _pair(box=((2, 14), (2, 16), (2, 13)))  # smallest side 11 < 8 * 3
    p = sample_training_patch(src, tgt, np.random.default_rng(0), 3.0, 3.0, 8, 64)
    assert p["size"] == 11 and p["scale"] == pytest.approx(11 / 8)
    assert p["src_lr"].shape == (8, 8, 8)


def test_box_smaller_than_the_lr_patch_is_zero_padded():
    src, tgt = _pair(box=((2, 7), (2, 12), (2, 12)))  # 5 voxels along z
    p = sample_training_patch(src, tgt, np.random.default_rng(0), 1.0, 1.0, 8, 512)
    assert p["size"] == 8 and p["src_lr"].shape == (8, 8, 8)
    assert (p["src_lr"][5:] == 0).all() and (p["src_lr"][:5] > 0).all()


def test_same_seed_same_patch_other_seed_other_patch():
    src, tgt = _pair()
    a = sample_training_patch(src, tgt, np.random.default_rng(7), 1, 3, 8, 64)
    b = sample_training_patch(src, tgt, np.random.default_rng(7), 1, 3, 8, 64)
    c = sample_training_patch(src, tgt, np.random.default_rng(8), 1, 3, 8, 64)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in ("coord", "src_hr"))


def test_precropped_input_gives_the_same_patch():
    src, tgt = _pair()
    s, t, lo = crop_to_source(src, tgt)
    a = sample_training_patch(src, tgt, np.random.default_rng(4), 1, 3, 8, 64)
    b = sample_training_patch(s, t, np.random.default_rng(4), 1, 3, 8, 64, crop=False)
    assert np.array_equal(a["corner"], b["corner"] + lo)
    for key in ("src_lr", "tgt_lr", "coord", "src_hr", "tgt_hr"):
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sample_q": 513}, "sample_q"),
        ({"scale_min": 0.5}, "scale_min"),
        ({"scale_min": 2.0, "scale_max": 1.5}, "scale_min"),
    ],
)
def test_bad_options(kwargs, match):
    src, tgt = _pair()
    options = {"lr_size": 8, "sample_q": 64, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_training_patch(src, tgt, np.random.default_rng(0), **options)


def test_empty_source_and_mismatched_grids():
    with pytest.raises(ValueError, match="non-zero"):
        sample_training_patch(np.zeros((9, 9, 9)), np.ones((9, 9, 9)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="one grid"):
        crop_to_source(np.ones((9, 9, 9)), np.ones((9, 9, 8)))
