"""The anatomy of the simulated subjects: tissue-fraction maps from the MNI ICBM152 2009 template.

A physics-based simulator needs, per voxel, how much grey matter (GM), white matter (WM) and
cerebrospinal fluid (CSF) it holds. We take these from the MNI ICBM152 2009 nonlinear symmetric
template, release a, at 1 mm, the copy that nilearn ships *inside its package*
(``nilearn/datasets/data/mni_icbm152_{gm,wm,t1}_tal_nlin_sym_09a_converted.nii.gz``, rescaled
to uint8). The files are read from the installed package directly, without importing nilearn
(slow) and without any of its fetchers (which may go to the network).

Template attribution
    MNI ICBM152 2009 nonlinear template. VS Fonov, AC Evans, RC McKinstry, CR Almli and
    DL Collins, "Unbiased nonlinear average age-appropriate brain templates from birth to
    adulthood", NeuroImage 47 Suppl 1:S102 (2009), doi:10.1016/S1053-8119(09)70884-5; VS Fonov,
    AC Evans, K Botteron, CR Almli, RC McKinstry, DL Collins and the Brain Development
    Cooperative Group, "Unbiased average age-appropriate atlases for pediatric studies",
    NeuroImage 54(1):313-327 (2011), doi:10.1016/j.neuroimage.2010.07.033. Copyright (C)
    1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
    McGill University (:data:`TEMPLATE_NOTICE` holds the full notice, which must accompany
    copies; the dataset writer puts it into every dataset's README).

How the maps are derived
    * GM and WM are the template's probability maps divided by 255.
    * The template has no usable CSF map in nilearn's copy, so CSF is derived: a *brain mask*
      is the support of nilearn's skull-stripped ICBM T1 template (``t1 > 0``, i.e. the ICBM
      brain mask) joined with ``GM + WM > 0.5``, with holes filled; it is softened with a
      Gaussian of 0.6 mm (so that the outer CSF boundary has partial volume like the inner
      ones), and ``CSF = clip(mask - GM - WM, 0, 1)``. Inside the mask, whatever is neither GM
      nor WM is thus CSF: ventricles, sulci and the subarachnoid space.
    * ``GM + WM + CSF <= 1`` everywhere; the remainder is "nothing" (air, or tissue the
      simulator does not model: there is no skull or scalp, the images look skull-stripped).
    * The volume is cropped to the brain's bounding box plus :data:`MARGIN_MM` on every side,
      which keeps the images small and leaves room for the subjects' deformations.

Resampling to coarser voxels (:func:`template_tissue_maps`) keeps the field of view: the new grid
covers the same box and has the same centre, with as many voxels as fit. The 1 mm maps are
first smoothed with a Gaussian whose FWHM makes up the difference in voxel size, then sampled
linearly, which approximates the partial-volume average over the larger voxel.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .tissues import TISSUES

__all__ = [
    "MARGIN_MM",
    "TEMPLATE_NAME",
    "TEMPLATE_NOTICE",
    "TEMPLATE_REFERENCES",
    "FRACTION_LEVELS",
    "TissueMaps",
    "dequantize_fractions",
    "grid_for",
    "grid_points",
    "load_template",
    "quantize_fractions",
    "sample_template",
    "template_path",
    "template_tissue_maps",
]

TEMPLATE_NAME = "MNI ICBM152 2009a nonlinear symmetric"

TEMPLATE_REFERENCES: tuple[str, ...] = (
    "Fonov V.S., Evans A.C., McKinstry R.C., Almli C.R., Collins D.L. Unbiased nonlinear "
    "average age-appropriate brain templates from birth to adulthood. NeuroImage 47 Suppl "
    "1:S102 (2009). doi:10.1016/S1053-8119(09)70884-5",
    "Fonov V.S., Evans A.C., Botteron K., Almli C.R., McKinstry R.C., Collins D.L., Brain "
    "Development Cooperative Group. Unbiased average age-appropriate atlases for pediatric "
    "studies. NeuroImage 54(1):313-327 (2011). doi:10.1016/j.neuroimage.2010.07.033",
    "https://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/",
)

TEMPLATE_NOTICE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Permission to use, copy, modify, and "
    "distribute this software and its documentation for any purpose and without fee is hereby "
    "granted, provided that the above copyright notice appear in all copies. The authors and "
    "McGill University make no representations about the suitability of this software for any "
    "purpose. It is provided 'as is' without express or implied warranty. The authors are not "
    "responsible for any data loss, equipment damage, property loss, or injury to subjects or "
    "patients resulting from the use or misuse of this software package."
)
"""The ICBM152 2009 copyright notice, which must appear in all copies of derived data."""

#: Background around the brain's bounding box, in mm: room for deformation, scale and shift.
MARGIN_MM = 10.0

#: Softening of the binary brain mask before CSF is derived from it (Gaussian sigma, mm).
_MASK_SIGMA_MM = 0.6

_FILE_PATTERN = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


@dataclass(frozen=True)
class TissueMaps:
    """GM, WM and CSF fractions (float32, in [0, 1], summing to at most 1) on a RAS grid."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.gm.shape)  # type: ignore[return-value]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        sizes = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return tuple(round(float(s), 6) for s in sizes)  # type: ignore[return-value]

    def fractions(self) -> dict[str, np.ndarray]:
        """``{"GM": ..., "WM": ..., "CSF": ...}``, the form :func:`~.signal.render` takes."""
        return {"GM": self.gm, "WM": self.wm, "CSF": self.csf}

    def brain_mask(self, threshold: float = 0.5) -> np.ndarray:
        """Voxels that are at least ``threshold`` brain tissue or CSF (boolean)."""
        return (self.gm + self.wm + self.csf) >= threshold


def template_path(name: str) -> Path:
    """Path of one of nilearn's bundled ICBM152 files (``name``: ``gm``, ``wm`` or ``t1``).

    Found through the import system's metadata only: nilearn itself is not imported.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "nilearn is not installed; the simulator reads the MNI ICBM152 template files that "
            "nilearn ships (pip install 'nilearn>=0.10')"
        )
    path = Path(next(iter(spec.submodule_search_locations)))
    path = path / "datasets" / "data" / _FILE_PATTERN.format(name)
    if not path.is_file():
        raise FileNotFoundError(f"the ICBM152 template file {path} is missing from nilearn")
    return path


def _read(name: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(template_path(name))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


@lru_cache(maxsize=1)
def load_template() -> TissueMaps:
    """The 1 mm tissue maps, derived and cropped as the module docstring says (cached).

    The arrays are read-only: the result is shared by every caller.
    """
    gm, affine = _read("gm")
    wm, _ = _read("wm")
    t1, _ = _read("t1")
    gm /= 255.0
    wm /= 255.0
    total = gm + wm
    over = total > 1.0
    if over.any():  # not the case in nilearn's copy, but keep the invariant whatever the file
        gm[over] /= total[over]
        wm[over] /= total[over]
        total = gm + wm
    mask = ndimage.binary_fill_holes((t1 > 0) | (total > 0.5))
    soft = ndimage.gaussian_filter(mask.astype(np.float32), _MASK_SIGMA_MM)
    csf = np.clip(soft - total, 0.0, 1.0).astype(np.float32)

    # Crop (and pad, where the margin leaves the template's box) by sampling on the new grid.
    inside = np.argwhere((total + csf) > 0.01)
    margin = int(math.ceil(MARGIN_MM))
    lo = inside.min(axis=0) - margin
    hi = inside.max(axis=0) + margin
    shape = tuple(int(n) for n in hi - lo + 1)
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    maps = []
    for volume in (gm, wm, csf):
        out = np.zeros(shape, dtype=np.float32)
        bounds = zip(lo, hi, volume.shape, strict=True)
        src = tuple(slice(max(a, 0), min(b + 1, n)) for a, b, n in bounds)
        dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo, strict=True))
        out[dst] = volume[src]
        out.setflags(write=False)
        maps.append(out)
    crop_affine.setflags(write=False)
    return TissueMaps(gm=maps[0], wm=maps[1], csf=maps[2], affine=crop_affine)


def grid_for(
    voxel_size: float, reference: TissueMaps | None = None, margin_mm: float = 0.0
) -> tuple[tuple, np.ndarray]:
    """Shape and affine of an isotropic ``voxel_size`` grid over the template's field of view.

    The new grid has the same centre and covers the same box as ``reference`` (default: the
    1 mm template), widened by ``margin_mm`` on every side (simulated heads need the room), to
    within one voxel: as many voxels as fit, rounded to the nearest.
    """
    if not voxel_size > 0:
        raise ValueError(f"voxel size must be positive, got {voxel_size!r}")
    reference = reference if reference is not None else load_template()
    old = np.asarray(reference.voxel_size, dtype=np.float64)
    old_shape = np.asarray(reference.shape)
    extent = old * old_shape + 2.0 * float(margin_mm)
    shape = np.maximum(np.rint(extent / voxel_size).astype(int), 1)
    centre = reference.affine[:3, :3] @ ((old_shape - 1) / 2.0) + reference.affine[:3, 3]
    direction = reference.affine[:3, :3] / old  # unit columns
    affine = np.eye(4)
    affine[:3, :3] = direction * voxel_size
    affine[:3, 3] = centre - affine[:3, :3] @ ((shape - 1) / 2.0)
    return tuple(int(s) for s in shape), affine


@lru_cache(maxsize=2)
def _smoothed_template(voxel_size: float) -> tuple[np.ndarray, ...]:
    """The 1 mm maps pre-smoothed for sampling at ``voxel_size`` (anti-aliasing), cached."""
    template = load_template()
    source = float(np.mean(template.voxel_size))
    fwhm = math.sqrt(max(voxel_size**2 - source**2, 0.0))
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / source
    out = []
    for volume in (template.gm, template.wm, template.csf):
        smooth = ndimage.gaussian_filter(volume, sigma) if sigma > 0.05 else volume
        smooth = np.asarray(smooth, dtype=np.float32)
        smooth.setflags(write=False)
        out.append(smooth)
    return tuple(out)


def sample_template(
    points_mm: np.ndarray, voxel_size: float, shape: Sequence[int], affine: np.ndarray
) -> TissueMaps:
    """Tissue maps on a grid whose voxel centres map to the template points ``points_mm``.

    ``points_mm`` (3 x N, N = prod(shape)) are the template-space positions (mm) of the grid's
    voxels in C order: the identity for plain resampling, a subject's pull-back for a warped
    anatomy. The template is smoothed for ``voxel_size`` and sampled trilinearly; outside it
    the fractions are zero. The result lives on (``shape``, ``affine``).
    """
    template = load_template()
    inverse = np.linalg.inv(template.affine)
    ijk = inverse[:3, :3] @ points_mm + inverse[:3, 3:4]
    maps = []
    for volume in _smoothed_template(round(float(voxel_size), 6)):
        values = ndimage.map_coordinates(volume, ijk, order=1, mode="constant", cval=0.0)
        maps.append(np.clip(values, 0.0, 1.0).astype(np.float32).reshape(tuple(shape)))
    gm, wm, csf = maps
    # Interpolation keeps GM + WM + CSF <= 1 up to rounding; clip that rounding away.
    total = gm + wm + csf
    over = total > 1.0
    if over.any():
        for m in maps:
            m[over] /= total[over]
    return TissueMaps(gm=gm, wm=wm, csf=csf, affine=affine)


def grid_points(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates of every voxel centre of a grid, 3 x N in C order."""
    ijk = np.indices(tuple(shape), dtype=np.float64).reshape(3, -1)
    return affine[:3, :3] @ ijk + affine[:3, 3:4]


def template_tissue_maps(
    voxel_size: float = 1.0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TissueMaps:
    """The template's tissue maps on the ``voxel_size`` grid of :func:`grid_for`.

    ``transform`` maps grid positions (3 x N, mm) to template positions; None is the identity.
    """
    shape, affine = grid_for(voxel_size)
    points = grid_points(shape, affine)
    if transform is not None:
        points = transform(points)
    return sample_template(points, voxel_size, shape, affine)


#: Tissue fractions are stored as uint8 multiples of 1/FRACTION_LEVELS (see quantize_fractions).
FRACTION_LEVELS = 255


def quantize_fractions(maps: TissueMaps) -> dict[str, np.ndarray]:
    """Tissue fractions as uint8 multiples of ``1/FRACTION_LEVELS``, keeping the sum <= 1.

    The simulator renders its scans from the *quantized* maps (:func:`dequantize_fractions`
    of this), and these are exactly what the dataset writer stores, so a ground-truth image
    rendered from the stored maps is the very image that was scanned, bit for bit, before bias
    and noise. WM and CSF are capped at what the classes before them leave, so that the
    rounding never makes a voxel hold more than 100 %.
    """
    out: dict[str, np.ndarray] = {}
    used = np.zeros(maps.shape, dtype=np.int16)
    for tissue in TISSUES:
        level = np.rint(maps.fractions()[tissue] * FRACTION_LEVELS).astype(np.int16)
        level = np.clip(level, 0, FRACTION_LEVELS - used)
        used += level
        out[tissue] = level.astype(np.uint8)
    return out


def dequantize_fractions(levels: dict[str, np.ndarray], affine: np.ndarray) -> TissueMaps:
    """The :class:`TissueMaps` that uint8 levels of :func:`quantize_fractions` stand for."""
    scale = np.float32(1.0 / FRACTION_LEVELS)
    gm, wm, csf = (np.asarray(levels[t], dtype=np.float32) * scale for t in TISSUES)
    return TissueMaps(gm=gm, wm=wm, csf=csf, affine=np.asarray(affine, dtype=np.float64))
