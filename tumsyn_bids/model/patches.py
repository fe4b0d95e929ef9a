"""Training patches for the synthesis network, sampled the way TUMSyn's authors sample them.

The authors' ``SRImplicitPaired`` dataset wrapper turns one co-registered pair of normalised
volumes into one training example:

1. crop both volumes to the bounding box of the *source's* non-zero voxels (black slices around
   the head carry nothing to learn);
2. draw a scale ``s = round(U(scale_min, scale_max), 1)`` and cut a cube of
   ``int(lr_size * s)`` voxels (truncated, as their ``(20 * s).astype(int)``) at one random place
   in both volumes: the high-resolution (HR) patches;
3. downsample each cube with a cubic spline (``scipy.ndimage.zoom``) to about ``lr_size`` voxels a
   side: the low-resolution (LR) inputs;
4. take the cell-centre coordinates of the HR cube on [-1, 1] (their ``make_coord``, array-axis
   order) and keep ``sample_q`` of them, drawn without replacement, with the HR values of both
   volumes there: the query points and their targets.

The network then learns to predict HR intensities at arbitrary coordinates from an LR patch,
which is what lets it synthesize at any resolution.

Where we differ, and why:

* The LR side is always exactly ``lr_size``. ``zoom(patch, 1 / s)`` gives ``round(size / s)``
  voxels, which for ``lr_size = 20`` and ``s`` on the 0.1 grid is always 20, but not for other
  ``lr_size`` (``lr_size = 8``, ``s = 1.1``: 7 voxels), and patches of different sizes cannot be
  batched. We pass the factor ``lr_size / size`` instead. SciPy derives the actual sampling
  positions from the input and output shapes only, so whenever the authors' call gives
  ``lr_size`` voxels the result is identical.
* A cube that already has ``lr_size`` voxels (``s = 1``) is copied rather than spline-resampled
  onto itself, which would only add float rounding.
* The authors' code fails when the cube is larger than the bounding box. We shrink the cube to
  the box's smallest side (so ``s`` becomes ``size / lr_size``, not a multiple of 0.1), and if
  even that is smaller than ``lr_size``, zero-pad the box (background after normalisation is 0).
* Randomness comes from the ``numpy.random.Generator`` passed in, not from the global streams,
  so a patch is a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import zoom

from .inference import make_coord

#: The authors' spline order for downsampling (``scipy.ndimage.zoom``'s default).
ZOOM_ORDER = 3


def make_coord_grid(shape: Sequence[int]) -> np.ndarray:
    """Cell-centre coordinates of a grid of ``shape`` on [-1, 1], flattened to (N, 3) float32.

    Row ``n`` is the coordinate of voxel ``np.unravel_index(n, shape)`` (C order), in array-axis
    order, bit-identical to the authors' ``make_coord(shape, flatten=True)``.
    """
    axes = [make_coord(int(n)).numpy() for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return np.ascontiguousarray(grid.reshape(-1, len(axes)), dtype=np.float32)


def nonzero_bounds(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last index of the non-zero voxels along each axis.

    Computed from per-axis projections, which is much cheaper than ``np.nonzero`` on a large
    volume and gives the same box.
    """
    mask = np.asarray(volume) != 0
    if not mask.any():
        raise ValueError("the source volume has no non-zero voxels to sample a patch from")
    lo, hi = [], []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        lo.append(hits[0])
        hi.append(hits[-1] + 1)
    return np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)


def crop_to_source(src: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both volumes cropped to the source's non-zero box, and the box's first corner.

    Cropping is idempotent, so callers that sample many patches from one pair crop once and
    pass ``crop=False`` to :func:`sample_training_patch`.
    """
    if src.shape != tgt.shape:
        raise ValueError(f"source {src.shape} and target {tgt.shape} are not on one grid")
    lo, hi = nonzero_bounds(src)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return src[box], tgt[box], lo


def draw_scale(rng: np.random.Generator, scale_min: float, scale_max: float) -> float:
    """The authors' ``np.round(random.uniform(scale_min, scale_max), 1)``."""
    return float(np.round(rng.uniform(scale_min, scale_max), 1))


def cube_size(scale: float, lr_size: int) -> int:
    """HR cube side for ``scale``: truncated like the authors' ``(20 * s).astype(int)``."""
    return int(np.float64(lr_size) * np.float64(scale))


def downsample(patch: np.ndarray, lr_size: int) -> np.ndarray:
    """A cube resampled to ``lr_size`` voxels a side with the authors' cubic spline."""
    size = patch.shape[0]
    if size == lr_size:
        return patch.astype(np.float32, copy=True)
    out = zoom(patch, lr_size / size, order=ZOOM_ORDER)
    if out.shape != (lr_size,) * 3:  # float rounding in zoom's output shape; never seen
        raise AssertionError(f"zoom gave {out.shape}, expected {(lr_size,) * 3}")
    return out.astype(np.float32, copy=False)


def sample_training_patch(
    src: np.ndarray,
    tgt: np.ndarray,
    rng: np.random.Generator,
    scale_min: float = 1.0,
    scale_max: float = 3.0,
    lr_size: int = 20,
    sample_q: int = 8000,
    *,
    crop: bool = True,
) -> dict[str, np.ndarray]:
    """One training example from a co-registered, normalised (z, y, x) volume pair.

    Returns float32 ``src_lr``/``tgt_lr`` (lr_size³), ``coord`` (sample_q, 3) and
    ``src_hr``/``tgt_hr`` (sample_q,), plus where the cube was cut: ``corner`` (its first voxel
    in the arrays passed in; padding may extend past the box), ``size`` (its side) and ``scale``
    (``size / lr_size`` when the cube had to shrink, else the drawn ``s``). With ``crop=False``
    the volumes are taken to be cropped already (see :func:`crop_to_source`).
    """
    if lr_size < 1:
        raise ValueError(f"lr_size must be positive, got {lr_size}")
    if not 0 < sample_q <= lr_size**3:
        raise ValueError(
            f"sample_q={sample_q} query points cannot be drawn without replacement from a cube "
            f"of at least {lr_size}^3 = {lr_size**3} voxels"
        )
    if not 1 <= scale_min <= scale_max:
        # Below 1 the cube would be smaller than the LR patch: not super-resolution, and too few
        # voxels for sample_q.
        raise ValueError(f"need 1 <= scale_min <= scale_max, got {scale_min}, {scale_max}")
    src = np.asarray(src, dtype=np.float32)
    tgt = np.asarray(tgt, dtype=np.float32)
    if crop:
        src, tgt, offset = crop_to_source(src, tgt)
    else:
        if src.shape != tgt.shape:
            raise ValueError(f"source {src.shape} and target {tgt.shape} are not on one grid")
        offset = np.zeros(3, dtype=np.int64)

    scale = draw_scale(rng, scale_min, scale_max)
    size = cube_size(scale, lr_size)
    fits = min(src.shape)
    if size > fits:
        size = max(fits, lr_size)
        scale = size / lr_size
    if fits < size:  # the box is smaller than an LR patch: pad it with background
        pad = [(0, max(0, size - n)) for n in src.shape]
        src, tgt = np.pad(src, pad), np.pad(tgt, pad)

    start = np.array([rng.integers(0, n - size + 1) for n in src.shape], dtype=np.int64)
    box = tuple(slice(a, a + size) for a in start)
    src_hr, tgt_hr = src[box], tgt[box]

    coord = make_coord_grid(src_hr.shape)
    pick = rng.choice(coord.shape[0], sample_q, replace=False)
    return {
        "src_lr": downsample(src_hr, lr_size),
        "tgt_lr": downsample(tgt_hr, lr_size),
        "coord": coord[pick],
        "src_hr": src_hr.reshape(-1)[pick].astype(np.float32, copy=False),
        "tgt_hr": tgt_hr.reshape(-1)[pick].astype(np.float32, copy=False),
        "corner": offset + start,
        "size": np.int64(size),
        "scale": np.float32(scale),
    }
