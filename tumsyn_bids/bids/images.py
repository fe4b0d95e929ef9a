"""Cheap NIfTI header probing that reports problems as text instead of raising.

Indexing a dataset must survive unreadable images: example datasets ship 0-byte placeholders,
DataLad clones hold broken symlinks or git-annex pointer files until content is fetched, and
real datasets contain the odd truncated download. One bad image must not hide the others, so
:func:`probe_image` returns an :class:`ImageInfo` whose ``error`` says which file is wrong and
how, and the caller decides what to do with it (the plan skips it, ``--dry-run`` shows it).

Only the header is read (``nibabel.load`` maps the data lazily), so probing a large dataset
costs one small read per file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

__all__ = ["ImageInfo", "probe_image"]

_ANNEX_MARKERS = (b"/annex/objects/", b".git/annex/objects/")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: voxel size in mm along the array axes (i, j, k), the array shape.

    The voxel size is ``header.get_zooms()[:3]``, the same numbers SimpleITK reports as the
    (x, y, z) spacing that TUMSyn's own code reads. ``error`` is None for a usable 3D image.
    """

    voxel_size: tuple[float, float, float] | None = None
    shape: tuple[int, ...] | None = None
    #: The 4x4 voxel (i, j, k) -> RAS+ mm affine nibabel uses for the data, as nested tuples.
    affine: tuple[tuple[float, ...], ...] | None = None
    error: str | None = None


def _looks_like_annex_pointer(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return False
    return any(marker in head for marker in _ANNEX_MARKERS)


def probe_image(path: str | os.PathLike[str], display_name: str | None = None) -> ImageInfo:
    """Read a NIfTI header; never raises for a bad file.

    ``display_name`` (default: the path) starts every error message, e.g.
    ``"sub-01/anat/sub-01_T1w.nii.gz: empty file (0 bytes) — not a readable NIfTI image"``.
    """
    path = Path(path)
    name = display_name if display_name is not None else str(path)

    def fail(message: str) -> ImageInfo:
        return ImageInfo(error=f"{name}: {message}")

    if not path.exists():
        if path.is_symlink():
            return fail(
                "broken symbolic link — the image content is not present "
                "(in a DataLad dataset, run `datalad get` on it)"
            )
        return fail("file not found")
    if not path.is_file():
        return fail("not a regular file")
    size = path.stat().st_size
    if size == 0:
        return fail("empty file (0 bytes) — not a readable NIfTI image")
    if size < 1024 and _looks_like_annex_pointer(path):
        return fail(
            "git-annex pointer file — the image content is not present "
            "(in a DataLad dataset, run `datalad get` on it)"
        )
    try:
        image = nib.load(path)
        header = image.header
        shape = tuple(int(n) for n in image.shape)
        zooms = tuple(float(z) for z in header.get_zooms())
        affine = tuple(tuple(float(v) for v in row) for row in image.affine)
    except Exception as exc:  # noqa: BLE001 - any header failure is this image's problem only
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return fail(f"not a readable NIfTI image ({detail})")
    if len(shape) < 3:
        return fail(f"image has {len(shape)} dimension(s), shape {shape}; a 3D volume is needed")
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        return ImageInfo(
            voxel_size=zooms[:3],  # type: ignore[arg-type]
            shape=shape,
            error=f"{name}: 4D image of shape {shape}; a single 3D volume is needed",
        )
    voxel_size = zooms[:3]
    if any(not (z > 0) for z in voxel_size):
        return ImageInfo(
            shape=shape,
            error=f"{name}: header voxel size {voxel_size} is not positive",
        )
    return ImageInfo(voxel_size=voxel_size, shape=shape, affine=affine)  # type: ignore[arg-type]
