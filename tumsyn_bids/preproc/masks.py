"""Brain masks without a network: the already-brain-extracted rule and mask clean-up.

An image that was brain-extracted before it reached us (HCP-style distributions, a previous
pipeline's ``desc-brain`` output) must not be stripped again: a second pass can only cut brain
away. Such images share a signature: everything outside the brain was set to exactly 0, and what
is left is the size of a brain, not of a head. :func:`check_brain_extracted` states that rule
with numbers and reports the evidence; :func:`mask_from_nonzero` turns such an image into its
brain mask.

The rule (all three must hold):

1. **Zeros**: at least :data:`MIN_ZERO_FRACTION` of the voxels are zero, i.e. ``|value| <=``
   :data:`ZERO_TOLERANCE` times the 99th percentile of ``|value|`` (exactly 0 for integer
   images; the tolerance absorbs the ringing a float resampling leaves). A raw magnitude image
   has noise in its background, so nearly no voxel is 0.
2. **Brain-sized support**: the support (largest 6-connected component of non-zero voxels,
   holes filled) is at most :data:`MAX_BRAIN_VOLUME_ML`. Adult intracranial volumes are about
   1.1-1.9 l (brain-extraction masks, which include some CSF, fall in that range); a head with
   its background zeroed (Colin27's ``ch2``, FreeSurfer's conformed heads, some scanners'
   background suppression) is 3-5 l with its scalp and skull.
3. **One piece**: the support holds at least :data:`MIN_SUPPORT_FRACTION` of all non-zero
   voxels (a brain mask has one component; scattered non-zero islands are not a brain).

Known limits: an infant's or a small child's *head* with a zeroed background passes rule 2
(use ``--skull-strip-source force``); a brain-extracted image whose background was refilled
with noise fails rule 1 (use ``--skull-strip-source skip``). For comparison, sMRIPrep's
``--skull-strip-t1w auto`` tests only the six faces of the array (the sum of their absolute
values below 10), which a head with a zeroed background whose field of view ends above the neck
would pass as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "MAX_BRAIN_VOLUME_ML",
    "MIN_SUPPORT_FRACTION",
    "MIN_ZERO_FRACTION",
    "SYNTHESIS_MARGIN_VOXELS",
    "ZERO_TOLERANCE",
    "ExtractionCheck",
    "check_brain_extracted",
    "clean_mask",
    "dilate_mask",
    "largest_component",
    "mask_from_nonzero",
    "mask_on_grid",
]

#: The synthesis mask: the brain mask grown by this many voxels (face neighbours per step).
SYNTHESIS_MARGIN_VOXELS = 1

#: Relative tolerance of "zero": a fraction of the 99th percentile of ``|value|``.
ZERO_TOLERANCE = 1e-4
#: Rule 1: the smallest fraction of zero voxels in a brain-extracted image.
MIN_ZERO_FRACTION = 0.30
#: Rule 2: the largest support volume (mL) still taken for a brain rather than a head.
MAX_BRAIN_VOLUME_ML = 2200.0
#: Rule 3: the share of non-zero voxels that the largest component must hold.
MIN_SUPPORT_FRACTION = 0.95

_SIX = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class ExtractionCheck:
    """The outcome of :func:`check_brain_extracted` and the numbers behind it."""

    brain_extracted: bool
    zero_fraction: float
    support_volume_ml: float
    support_fraction: float

    def describe(self) -> str:
        """One line for logs and reports, e.g. why an image was (not) stripped again."""
        verdict = "already brain-extracted" if self.brain_extracted else "not brain-extracted"
        return (
            f"{verdict}: {100 * self.zero_fraction:.1f}% of voxels are 0 (rule: >= "
            f"{100 * MIN_ZERO_FRACTION:.0f}%), non-zero support {self.support_volume_ml:.0f} mL "
            f"(rule: <= {MAX_BRAIN_VOLUME_ML:.0f} mL) holding "
            f"{100 * self.support_fraction:.1f}% of non-zero voxels (rule: >= "
            f"{100 * MIN_SUPPORT_FRACTION:.0f}%)"
        )


def _zeros(data: np.ndarray) -> np.ndarray:
    magnitude = np.abs(np.nan_to_num(np.asarray(data, dtype=np.float32)))
    top = float(np.percentile(magnitude, 99)) if magnitude.size else 0.0
    return magnitude <= ZERO_TOLERANCE * top


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean 3-D mask (empty stays empty)."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_SIX)
    if n == 0:
        return np.zeros(labels.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """A mask as one solid piece: its largest 6-connected component with holes filled (bool)."""
    return ndimage.binary_fill_holes(largest_component(mask), structure=_SIX)


def dilate_mask(mask: np.ndarray, voxels: int = SYNTHESIS_MARGIN_VOXELS) -> np.ndarray:
    """``mask`` (3-D, bool) grown by ``voxels`` steps of its 6 face neighbours (bool, same shape).

    The synthesis mask of the BIDS App: a brain-extraction mask's border runs through the
    partial-volume voxels of the brain's surface (GM and CSF mixed with the meninges), and a
    one-voxel margin keeps them in the network's input and in the masked output (issue 17: 0.55 %
    of the true brain of a simulated 2 mm head lay one voxel outside deepbet's mask).
    ``voxels`` 0 returns the mask itself; a negative ``voxels`` raises ``ValueError``.
    """
    if voxels < 0:
        raise ValueError(f"the margin must be >= 0 voxels, got {voxels}")
    mask = np.asarray(mask, dtype=bool)
    if voxels == 0 or not mask.any():
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=_SIX, iterations=int(voxels))


def mask_from_nonzero(data: np.ndarray) -> np.ndarray:
    """The brain mask of an already brain-extracted image: its cleaned non-zero voxels (bool).

    Non-zero as in rule 1 of the module docstring; cleaned by :func:`clean_mask`. Raises
    ``ValueError`` if every voxel is zero.
    """
    nonzero = ~_zeros(data)
    if not nonzero.any():
        raise ValueError("every voxel is zero: no brain mask can be read from the image")
    return clean_mask(nonzero)


def check_brain_extracted(
    data: np.ndarray, zooms: tuple[float, float, float] | np.ndarray
) -> ExtractionCheck:
    """Whether ``data`` (3-D, any axis order) was already brain-extracted; see the module rule.

    ``zooms`` is the voxel size in mm along the array's axes (for the support volume).
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D array, got shape {data.shape}")
    zero = _zeros(data)
    zero_fraction = float(zero.mean())
    nonzero = ~zero
    n_nonzero = int(nonzero.sum())
    if n_nonzero == 0:
        return ExtractionCheck(False, zero_fraction, 0.0, 0.0)
    largest = largest_component(nonzero)
    support_fraction = float(largest.sum()) / n_nonzero
    voxel_ml = float(np.prod(np.asarray(zooms, dtype=np.float64)[:3])) / 1000.0
    support_ml = float(ndimage.binary_fill_holes(largest, structure=_SIX).sum()) * voxel_ml
    extracted = (
        zero_fraction >= MIN_ZERO_FRACTION
        and support_ml <= MAX_BRAIN_VOLUME_ML
        and support_fraction >= MIN_SUPPORT_FRACTION
    )
    return ExtractionCheck(extracted, zero_fraction, support_ml, support_fraction)


def mask_on_grid(
    mask: np.ndarray,
    mask_affine: np.ndarray,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    atol: float = 1e-6,
) -> np.ndarray:
    """``mask`` (i, j, k, on ``mask_affine``) sampled nearest-neighbour onto another grid that
    shares its axes (``shape``, ``affine``), e.g. a requested output grid over the same field
    of view.

    Each output voxel takes the value of the input voxel its centre falls in: input index
    ``floor(x + 1/2)`` along each axis, ``x`` the centre's input voxel position (clipped to the
    field of view). The synthesis engine assigns output voxels to patches by the same rule
    (``[start - 1/2, start + patch - 1/2)``), so an output voxel is inside the mask exactly when
    the input voxel whose patches decoded it is. Returns a bool array of ``shape``; raises
    ``ValueError`` when the grids' axes are not parallel (the map between them is not a
    per-axis scaling and shift, to ``atol``).
    """
    to_mask = np.linalg.inv(np.asarray(mask_affine, dtype=np.float64)) @ np.asarray(
        affine, dtype=np.float64
    )
    linear = to_mask[:3, :3]
    if np.abs(linear - np.diag(np.diag(linear))).max() > atol or np.any(np.diag(linear) <= 0):
        raise ValueError("the mask's grid and the image's grid do not share their axes")
    source = np.asarray(mask)
    index = []
    for axis in range(3):
        x = to_mask[axis, axis] * np.arange(int(shape[axis])) + to_mask[axis, 3]
        index.append(np.clip(np.floor(x + 0.5).astype(np.int64), 0, source.shape[axis] - 1))
    return source[np.ix_(*index)].astype(bool)
