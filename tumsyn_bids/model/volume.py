"""NIfTI in, NIfTI out: the one place that converts between nibabel and the model's array order.

nibabel indexes voxels (i, j, k); the authors read images with SimpleITK, whose arrays are the
same voxels in (k, j, i) order. The model was trained on that order, so images are transposed
here on the way in and back on the way out, and nowhere else.

Output geometry: output voxel ``m`` along an axis with scale ``s`` is computed at input voxel
position ``(m + 0.5) / s - 0.5`` (see :mod:`.inference`), so the output affine is the input affine
composed with that map. This keeps the field of view and puts every voxel centre where the model
sampled it. The authors' writer instead keeps the input origin (a half-voxel shift for
super-resolution) and divides the (x, y, z) spacing by the (z, y, x) scales; that is wrong for
anisotropic scales and is deliberately not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .inference import InputImageError


@dataclass(frozen=True)
class Volume:
    """A 3-D image as the model sees it: data in (z, y, x) order plus its NIfTI geometry."""

    data: np.ndarray  # (k, j, i)
    affine: np.ndarray  # voxel (i, j, k) -> RAS+ mm
    header: nib.Nifti1Header

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size along (i, j, k), in mm."""
        return tuple(float(z) for z in self.header.get_zooms()[:3])


def load_volume(path: str | Path) -> Volume:
    """Read a 3-D NIfTI image, refusing what the model cannot use with a message naming why."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path}: empty file (0 bytes), not a NIfTI image")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputImageError(f"{path}: not a readable NIfTI image ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputImageError(
            f"{path}: expected a 3-D image, found shape {data.shape}; split 4-D series first"
        )
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputImageError(f"{path}: {bad} voxels are NaN or infinite")
    header = img.header.copy()
    return Volume(data=np.ascontiguousarray(data.T), affine=img.affine.copy(), header=header)


def scaled_affine(affine: np.ndarray, scale_ijk: Sequence[float]) -> np.ndarray:
    """Affine of an output grid with ``scale_ijk`` samples per input voxel along (i, j, k)."""
    scale = np.asarray(scale_ijk, dtype=np.float64)
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = np.diag(1.0 / scale)
    voxel_map[:3, 3] = 0.5 / scale - 0.5
    return np.asarray(affine, dtype=np.float64) @ voxel_map


def to_nifti(data_zyx: np.ndarray, source: Volume, scale_ijk: Sequence[float]) -> nib.Nifti1Image:
    """A float32 NIfTI of model output, on the grid the model sampled."""
    affine = scaled_affine(source.affine, scale_ijk)
    img = nib.Nifti1Image(np.asarray(data_zyx, dtype=np.float32).T, affine)
    xyzt = source.header.get_xyzt_units()
    img.header.set_xyzt_units(*xyzt)
    code = int(source.header["qform_code"]) or 1
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=int(source.header["sform_code"]) or code)
    return img
