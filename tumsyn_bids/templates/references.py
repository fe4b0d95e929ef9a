"""What registration and resampling need from a template: its brain and its voxel grids.

Files come from :func:`tumsyn_bids.templates.flow.get_template` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .flow import TemplateNotFoundError, get_template


@dataclass(frozen=True)
class TemplateBrain:
    """The template image registration aims at, and its brain mask (both on the res grid).

    ``t1w`` is brain-only when ``skull_stripped`` is True (TemplateFlow's ``desc-brain_T1w``);
    otherwise it is the whole-head ``_T1w`` and the caller masks it with ``mask``.
    """

    template: str
    resolution: int
    t1w: Path
    mask: Path
    skull_stripped: bool


def brain_reference(template: str, resolution: int = 1) -> TemplateBrain:
    """The template's T1w brain and ``desc-brain_mask`` at TemplateFlow resolution index
    ``resolution``: ``desc-brain_T1w`` when the home has it, else the whole-head ``T1w``.

    Raises :class:`TemplateNotFoundError` (one line with the fix) when the mask or both T1w
    images are missing.
    """
    mask = get_template(template, resolution, "mask", desc="brain")
    try:
        return TemplateBrain(
            template, resolution, get_template(template, resolution, "T1w", desc="brain"), mask,
            True,
        )  # fmt: skip
    except TemplateNotFoundError:
        head = get_template(template, resolution, "T1w", desc=None)
        return TemplateBrain(template, resolution, head, mask, False)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (i, j, k), ``affine`` (voxel -> RAS+ mm, 4 x 4) and where it
    comes from (``source``: the TemplateFlow file, or how it was derived)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    source: str

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(z) for z in np.linalg.norm(self.affine[:3, :3], axis=0))

    def empty_image(self) -> nib.Nifti1Image:
        """A uint8 image of zeros on this grid (a reference for resampling)."""
        img = nib.Nifti1Image(np.zeros(self.shape, np.uint8), self.affine)
        img.header.set_xyzt_units("mm")
        return img


def reference_grid(template: str, resolution: int) -> Grid:
    """The voxel grid of ``template`` at TemplateFlow resolution index ``resolution``.

    The grid of the template's ``desc-brain_mask`` at that resolution when TemplateFlow has one.
    Otherwise, when the template's res-1 grid is axis-aligned with 1 mm voxels, a derived grid of
    ``resolution`` mm voxels covering the same field of view, corner-aligned with res-1 (voxel
    (0, 0, 0) spans res-1 voxels 0..r-1 on each axis; ``ceil(n / r)`` voxels per axis). This is
    how ``MNI152NLin2009aSym:res-2`` is defined: TemplateFlow publishes only res-1 of it.

    Raises :class:`TemplateNotFoundError` when neither exists, or ``ValueError`` for a
    resolution below 1.
    """
    if resolution < 1:
        raise ValueError(f"resolution index must be >= 1, got {resolution}")
    try:
        path = get_template(template, resolution, "mask", desc="brain")
        img = nib.load(path)
        return Grid(tuple(img.shape[:3]), img.affine, f"TemplateFlow file {path.name}")
    except TemplateNotFoundError:
        if resolution == 1:
            raise
    base = reference_grid(template, 1)
    rot = base.affine[:3, :3]
    if not np.allclose(rot, np.diag(np.diag(rot))) or not np.allclose(np.abs(np.diag(rot)), 1.0):
        raise TemplateNotFoundError(
            f"template {template} has no res-{resolution} files and its res-1 grid is not "
            f"axis-aligned 1 mm, so no res-{resolution} grid can be derived"
        )
    r = int(resolution)
    affine = base.affine.copy()
    affine[:3, :3] = rot * r
    # voxel centre of the first res-r voxel: the middle of res-1 voxels 0..r-1
    affine[:3, 3] = base.affine[:3, 3] + rot @ np.full(3, (r - 1) / 2.0)
    shape = tuple(math.ceil(n / r) for n in base.shape)
    return Grid(
        shape,
        affine,
        f"derived from {template} res-1 ({base.source}): {r} mm voxels, same field of view, "
        "corner-aligned",
    )
