"""NIfTI in, NIfTI out: the one place that converts between nibabel and the model's array order.

nibabel indexes voxels (i, j, k); the authors read images with SimpleITK, whose arrays are the
same voxels in (k, j, i) order. The model was trained on that order, so images are transposed
here on the way in and back on the way out, and nowhere else: :func:`synthesize_nifti` is the
NIfTI-in/NIfTI-out entry point every command uses, :func:`load_volume` and
:func:`to_model_order` serve code that needs the model's arrays (training, evaluation).

Output geometry: the output grid is :func:`tumsyn_bids.model.grid.output_grid`'s record, whose
affine places every voxel centre where the engine sampled it (exact requested voxel sizes in the
default mode, the authors' rounding with ``reference=True``). The authors' writer instead keeps
the input origin (a half-voxel shift for super-resolution) and divides the (x, y, z) spacing by
the (z, y, x) scales; that is wrong for anisotropic scales and is deliberately not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import InputImageError
from .grid import OutputGrid, output_grid, voxel_sizes
from .inference import PatchSettings, Sampling, Synthesizer


@dataclass(frozen=True)
class Volume:
    """A 3-D image as the model sees it: data in (z, y, x) order plus its NIfTI geometry."""

    data: np.ndarray  # (k, j, i)
    affine: np.ndarray  # voxel (i, j, k) -> RAS+ mm
    header: nib.Nifti1Header

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size along (i, j, k), in mm: the column norms of the affine."""
        return voxel_sizes(self.affine)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """The image's shape in nibabel's (i, j, k) order."""
        return tuple(int(n) for n in self.data.shape[::-1])


def to_model_order(data_ijk: np.ndarray) -> np.ndarray:
    """A contiguous (k, j, i) copy of an (i, j, k) array: the order the model was trained on."""
    return np.ascontiguousarray(np.asarray(data_ijk).T)


def from_model_order(data_zyx: np.ndarray) -> np.ndarray:
    """The (i, j, k) view of a (k, j, i) model array (inverse of :func:`to_model_order`)."""
    return np.asarray(data_zyx).T


def load_volume(path: str | Path) -> Volume:
    """Read a 3-D NIfTI image, refusing what the model cannot use with a message naming why.

    Raises :class:`InputImageError` (message starts with the path) for a missing, empty,
    unreadable, non-3-D or non-finite image.
    """
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
    return Volume(data=to_model_order(data), affine=img.affine.copy(), header=header)


def to_nifti(data_zyx: np.ndarray, source: Volume, grid: OutputGrid) -> nib.Nifti1Image:
    """A float32 NIfTI of model output on ``grid`` (the grid the engine sampled).

    ``data_zyx`` must have ``grid.shape`` reversed; qform/sform codes follow the source's.
    """
    data = from_model_order(np.asarray(data_zyx, dtype=np.float32))
    if data.shape != tuple(grid.shape):
        raise ValueError(f"model output {data.shape} is not on the grid {tuple(grid.shape)}")
    affine = grid.affine_array
    img = nib.Nifti1Image(data, affine)
    xyzt = source.header.get_xyzt_units()
    img.header.set_xyzt_units(*xyzt)
    code = int(source.header["qform_code"]) or 1
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=int(source.header["sform_code"]) or code)
    return img


def sampling_for(grid: OutputGrid) -> Sampling:
    """The engine's (z, y, x) :class:`Sampling` of an (i, j, k) :class:`OutputGrid`."""
    return Sampling(shape=grid.shape[::-1], origin=grid.origin[::-1], step=grid.step[::-1])


def patch_settings(
    patch_size: Sequence[int],
    grid: OutputGrid,
    *,
    overlap: float = 0.5,
    batch_size: int = 1,
    reference: bool = False,
    decoder_chunk: int | None = None,
    min_foreground: float = 0.0,
    decode_outside_mask: bool = True,
) -> PatchSettings:
    """The engine's (z, y, x) :class:`PatchSettings` for an (i, j, k) patch size and grid."""
    patch = tuple(int(p) for p in patch_size)
    extra = {} if decoder_chunk is None else {"decoder_chunk": decoder_chunk}
    return PatchSettings(
        patch_size=patch[::-1],
        query_size=(grid.query_size or patch)[::-1],
        overlap=overlap,
        batch_size=batch_size,
        reference=reference,
        min_foreground=min_foreground,
        decode_outside_mask=decode_outside_mask,
        **extra,
    )


def synthesize_nifti(
    synthesizer: Synthesizer,
    source: str | Path | Volume,
    prompt: str,
    *,
    patch_size: Sequence[int],
    voxel_size: Sequence[float] | None = None,
    scale: Sequence[float] | None = None,
    overlap: float = 0.5,
    batch_size: int = 1,
    reference: bool = False,
    mask: np.ndarray | None = None,
    progress: bool = False,
    min_foreground: float = 0.0,
    decode_outside_mask: bool = True,
) -> tuple[nib.Nifti1Image, OutputGrid]:
    """Synthesize ``source`` under ``prompt``: the NIfTI-in/NIfTI-out edge of the model.

    Everything is in nibabel's (i, j, k) order: ``patch_size`` (voxels), ``voxel_size`` (mm) or
    ``scale`` (output samples per input voxel; give at most one, neither keeps the source grid)
    and ``mask`` (a boolean (i, j, k) array on the source grid: foreground-only patches, 0
    where no computed patch reaches; ignored with ``reference``). ``min_foreground`` and
    ``decode_outside_mask`` are the :class:`PatchSettings` fields of the same names (the
    ``--speed`` presets set them: :meth:`tumsyn_bids.model.speed.SpeedPreset.engine_options`).
    Returns the float32 image and its :class:`OutputGrid`
    (:func:`tumsyn_bids.model.grid.output_grid`); ``synthesizer.last_stats`` counts the patches.

    Raises :class:`InputImageError` for an unusable image and
    :class:`tumsyn_bids.model.grid.GridError` for an impossible grid.
    """
    volume = source if isinstance(source, Volume) else load_volume(source)
    grid = output_grid(
        volume.shape_ijk,
        volume.affine,
        voxel_size=voxel_size,
        scale=scale,
        patch_size=patch_size,
        reference=reference,
    )
    settings = patch_settings(
        patch_size,
        grid,
        overlap=overlap,
        batch_size=batch_size,
        reference=reference,
        min_foreground=min_foreground,
        decode_outside_mask=decode_outside_mask,
    )
    model_mask = None if mask is None else to_model_order(np.asarray(mask, dtype=bool))
    data = synthesizer.synthesize(
        volume.data,
        prompt,
        settings,
        progress=progress,
        sampling=None if reference else sampling_for(grid),
        mask=model_mask,
    )
    return to_nifti(data, volume, grid), grid
