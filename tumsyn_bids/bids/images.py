"""Cheap NIfTI header probing that reports problems as text instead of raising.

Indexing a dataset must survive unreadable images: example datasets ship 0-byte placeholders,
DataLad clones hold broken symlinks or git-annex pointer files until content is fetched, and
real datasets contain the odd truncated download. One bad image must not hide the others, so
:func:`probe_image` returns an :class:`ImageInfo` whose ``error`` says which file is wrong and
how, and the caller decides what to do with it (the plan skips it, ``--dry-run`` shows it).

Only the header is read (``nibabel.load`` maps the data lazily), so probing a large dataset
costs one small read per file.

**Voxel size.** A NIfTI header describes the grid twice: the sform (a general affine) and the
qform (a rotation built from ``pixdim``, the header zooms). nibabel reads the data with the
sform when its code is set, else the qform, else ``pixdim`` alone (``get_best_affine``), and the
outputs are written on that affine, so the voxel size is the column norms of that affine (mm
along i, j, k), the only one that describes the grid the output is written on. When the header's
two descriptions agree to float noise, the header zooms themselves are reported (the same value
to within float32 rounding, but the exact numbers the file holds). When they disagree, the
affine's wins and :attr:`ImageInfo.warning` says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..model.grid import GridError, voxel_sizes

__all__ = ["ImageInfo", "probe_image"]

_ANNEX_MARKERS = (b"/annex/objects/", b".git/annex/objects/")

#: Relative difference above which two voxel sizes of one header disagree. The header stores
#: float32 (6e-8 relative) and a column norm of a rotated float32 affine carries a few times
#: that, so 1e-4 (0.1 micrometre on a 1 mm voxel) is far above float noise and far below any
#: voxel-size difference that changes a prompt (7 significant digits would show 1e-6).
VOXEL_SIZE_RTOL = 1e-4
#: Distance (mm) above which the sform and the qform place a corner voxel differently.
PLACEMENT_TOL_MM = 1e-3


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: voxel size in mm along the array axes (i, j, k), the array shape.

    The voxel size is that of :attr:`affine` (module docstring: the column norms of the affine
    nibabel uses, reported as the header zooms when both agree; these are the (x, y, z) spacing
    SimpleITK reports, which TUMSyn's own code reads). ``error`` is None for a usable 3D image;
    ``warning`` is one line when the header's sform and qform/pixdim disagree.
    """

    voxel_size: tuple[float, float, float] | None = None
    shape: tuple[int, ...] | None = None
    #: The 4x4 voxel (i, j, k) -> RAS+ mm affine nibabel uses for the data, as nested tuples.
    affine: tuple[tuple[float, ...], ...] | None = None
    error: str | None = None
    warning: str | None = None


def _mm(sizes: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.7g}" for v in sizes) + ") mm"


def _header_disagreement(header: nib.Nifti1Header, shape: tuple[int, ...]) -> str | None:
    """Why the header's sform and qform/pixdim describe different grids; None if they agree.

    Only a set sform can disagree (otherwise nibabel uses the qform, built from pixdim): its
    voxel sizes against pixdim (relative :data:`VOXEL_SIZE_RTOL`), then, when the qform is set
    too, the positions the two give the image's corners (:data:`PLACEMENT_TOL_MM`).
    """
    if not hasattr(header, "get_sform"):
        return None
    sform, sform_code = header.get_sform(coded=True)
    if sform is None or not sform_code:
        return None
    qform, qform_code = header.get_qform(coded=True)
    pixdim = tuple(float(z) for z in header.get_zooms()[:3])
    try:
        sizes = voxel_sizes(sform)
    except GridError:
        return "the header's sform has a zero voxel axis"
    other = "qform/pixdim" if qform_code else "pixdim"
    used = "the sform is used, as nibabel reads the data and the output is written with it"
    if not np.allclose(sizes, pixdim, rtol=VOXEL_SIZE_RTOL, atol=0.0):
        return (
            f"the header's sform gives voxel size {_mm(sizes)} but its {other} {_mm(pixdim)}; "
            f"{used}"
        )
    if qform is not None and qform_code:
        corners = np.array(
            [
                [i, j, k, 1.0]
                for i in (0, shape[0] - 1)
                for j in (0, shape[1] - 1)
                for k in (0, shape[2] - 1)
            ]
        ).T
        apart = float(np.max(np.linalg.norm((sform @ corners - qform @ corners)[:3], axis=0)))
        if apart > PLACEMENT_TOL_MM:
            return (
                f"the header's sform and qform place the image up to {apart:.3g} mm apart; {used}"
            )
    return None


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
        matrix = np.asarray(image.affine, dtype=float)
        affine = tuple(tuple(float(v) for v in row) for row in matrix)
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
    try:
        voxel_size = voxel_sizes(matrix)
    except GridError as exc:
        return ImageInfo(shape=shape, error=f"{name}: unusable header geometry: {exc}")
    if np.allclose(voxel_size, zooms[:3], rtol=VOXEL_SIZE_RTOL, atol=0.0):
        voxel_size = zooms[:3]  # the same grid; keep the numbers the header stores
    if any(not (z > 0) for z in voxel_size) or not all(np.isfinite(voxel_size)):
        return ImageInfo(
            shape=shape,
            error=f"{name}: header voxel size {voxel_size} is not positive",
        )
    disagreement = _header_disagreement(header, shape)
    return ImageInfo(
        voxel_size=voxel_size,  # type: ignore[arg-type]
        shape=shape,
        affine=affine,
        warning=None if disagreement is None else f"{name}: {disagreement}",
    )
