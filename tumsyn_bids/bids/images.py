"""Cheap NIfTI header probing that reports problems as text instead of raising.

Indexing a dataset must survive unreadable images: example datasets ship 0-byte placeholders,
DataLad clones hold broken symlinks or git-annex pointer files until content is fetched, and
real datasets contain the odd truncated download. One bad image must not hide the others, so
:func:`probe_image` returns an :class:`ImageInfo` whose ``error`` says which file is wrong and
how, and the caller decides what to do with it (the plan skips it, ``--dry-run`` shows it).

Only the header is read (``nibabel.load`` maps the data lazily), so probing a large dataset
costs one small read per file. What the header alone tells is checked here: readable, 3-D, at
least :data:`MIN_VOXELS_PER_AXIS` voxels along each axis, a usable (non-singular) affine, and for
an uncompressed ``.nii`` a file long enough for the data the header announces.

**Voxel data.** What only the data can tell (a truncated ``.nii.gz``, NaN or infinite voxels, an
empty or constant image) is checked by :func:`read_image_data` and :func:`check_voxels`, which
the workflow's ``CheckImage`` node and ``tumsyn --dry-run`` both call, so a dry run refuses what
the real run would. NaN outside the head is common (some tools write it as background) and is
treated as background (0) with a warning that counts the voxels; NaN or infinite voxels inside
the head, images that are mostly non-finite, empty or constant are refused with
:class:`ImageDataError`, one line that names the file, the problem and the fix.

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

from ..model.errors import InputImageError
from ..model.grid import GridError, voxel_sizes

__all__ = [
    "ImageData",
    "ImageDataError",
    "ImageInfo",
    "check_voxels",
    "probe_image",
    "read_image_data",
]

_ANNEX_MARKERS = (b"/annex/objects/", b".git/annex/objects/")

#: Relative difference above which two voxel sizes of one header disagree. The header stores
#: float32 (6e-8 relative) and a column norm of a rotated float32 affine carries a few times
#: that, so 1e-4 (0.1 micrometre on a 1 mm voxel) is far above float noise and far below any
#: voxel-size difference that changes a prompt (7 significant digits would show 1e-6).
VOXEL_SIZE_RTOL = 1e-4
#: Distance (mm) above which the sform and the qform place a corner voxel differently.
PLACEMENT_TOL_MM = 1e-3
#: Fewest voxels along any axis of an image TUMSyn reads: fewer is a localizer (1-3 slices) or a
#: single 2-D slice, not a volume a 3-D network can take context from.
MIN_VOXELS_PER_AXIS = 4
#: Largest share of NaN or infinite voxels an image may have (all of them in the background). A
#: skull-stripped brain with NaN outside fills 5-10% of a typical field of view, so only an image
#: with fewer than 1% finite voxels is refused as mostly undefined.
MAX_NONFINITE_FRACTION = 0.99


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
    if not os.access(path, os.R_OK):
        return fail(
            "permission denied: this user cannot read the image (make it readable, e.g. chmod a+r)"
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
    thin = [(axis, n) for axis, n in zip("ijk", shape[:3], strict=True) if n < MIN_VOXELS_PER_AXIS]
    if thin:
        axis, n = thin[0]
        return ImageInfo(
            voxel_size=zooms[:3],  # type: ignore[arg-type]
            shape=shape,
            error=f"{name}: only {n} voxel(s) along {axis} (shape {shape}); TUMSyn needs a 3-D "
            f"volume of at least {MIN_VOXELS_PER_AXIS} voxels along each axis (a localizer or "
            "a single slice? list it in .bidsignore or select other images)",
        )
    try:
        voxel_size = voxel_sizes(matrix)
    except GridError as exc:
        return ImageInfo(
            shape=shape,
            error=f"{name}: unusable header geometry: {exc}; fix the header's sform/qform",
        )
    if abs(np.linalg.det(matrix[:3, :3])) <= 1e-6 * float(np.prod(voxel_size)):
        return ImageInfo(
            shape=shape,
            error=f"{name}: unusable header geometry: the affine is singular (its voxel axes "
            f"are not independent: {np.round(matrix[:3, :3], 4).tolist()}); fix the header's "
            "sform/qform",
        )
    short = _truncated_nii(path, image)
    if short is not None:
        return ImageInfo(shape=shape, error=f"{name}: {short}")
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


def _truncated_nii(path: Path, image: nib.spatialimages.SpatialImage) -> str | None:
    """Why an uncompressed ``.nii`` is too short for the data its header announces, or None.

    A compressed file's data length is only known by decompressing it (:func:`read_image_data`).
    """
    offset = getattr(image.dataobj, "offset", None)  # where the file's voxel data start
    if not path.name.endswith(".nii") or offset is None:
        return None
    itemsize = image.header.get_data_dtype().itemsize
    needed = int(offset) + int(np.prod(image.shape, dtype=np.int64)) * itemsize
    size = path.stat().st_size
    if size >= needed:
        return None
    return (
        f"file is truncated: {size} bytes, but the header's shape and data type need {needed} "
        "(an interrupted copy or download? copy the image again)"
    )


# --------------------------------------------------------------------------------------------
# Voxel data
# --------------------------------------------------------------------------------------------


class ImageDataError(InputImageError):
    """The voxel data of an image cannot be synthesized from; the message is one line that
    starts with the image's name and ends with the fix."""


@dataclass(frozen=True)
class ImageData:
    """An image's voxels as TUMSyn may read them: (i, j, k) float32, every value finite.

    ``affine`` is the voxel (i, j, k) -> RAS+ mm affine nibabel reads the data with, ``header``
    the file's header; ``warning`` is one line when something was repaired (non-finite
    background voxels set to 0), else None.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    warning: str | None = None


def read_image_data(path: str | os.PathLike[str], display_name: str | None = None) -> ImageData:
    """Read and check the voxels of a 3-D NIfTI image (a singleton 4th axis is dropped).

    ``display_name`` (default: the path) starts every message. Raises :class:`ImageDataError`
    when the data cannot be read (a truncated or corrupt file), the image is not 3-D, or
    :func:`check_voxels` refuses it.
    """
    name = display_name if display_name is not None else str(path)
    try:
        image = nib.load(os.fspath(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - EOFError, zlib.error, OSError... all one problem
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageDataError(
            f"{name}: the image data cannot be read ({detail}); the file is probably "
            "truncated or corrupt (copy or download it again)"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageDataError(
            f"{name}: expected a 3-D image, found shape {data.shape}; split 4-D series first"
        )
    data, warning = check_voxels(data, name)
    return ImageData(data, np.asarray(image.affine), image.header, warning)


def check_voxels(data: np.ndarray, name: str) -> tuple[np.ndarray, str | None]:
    """Refuse voxel data TUMSyn cannot synthesize from; set non-finite background voxels to 0.

    ``data`` is a 3-D array in any axis order. Refused, with :class:`ImageDataError`:

    * more than :data:`MAX_NONFINITE_FRACTION` of the voxels NaN or infinite (mostly undefined);
    * every finite voxel zero (an empty image) or equal to one value (a constant image);
    * NaN or infinite voxels inside the head. The head is the region above Otsu's threshold of
      the finite voxels (:func:`tumsyn_bids.imagestats.otsu_threshold`, the one the reports
      use), with its enclosed holes filled (``scipy.ndimage.binary_fill_holes``): a non-finite
      voxel there is missing anatomy, which synthesis would invent.

    Returns the float32 data, with non-finite background voxels set to 0, and a warning that
    counts them (None when every voxel was finite).
    """
    from scipy import ndimage

    from ..imagestats import otsu_threshold

    data = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(data)
    total = int(data.size)
    bad = total - int(np.count_nonzero(finite))
    if bad > MAX_NONFINITE_FRACTION * total:
        raise ImageDataError(
            f"{name}: {bad} of {total} voxels ({100.0 * bad / total:.1f}%) are NaN or infinite; "
            "the image is mostly undefined (check how it was converted or resampled)"
        )
    values = data[finite]
    low, high = float(values.min()), float(values.max())
    which = "finite voxel" if bad else "voxel"
    if low == high:
        what = "is zero (an empty image)" if low == 0 else f"has the value {low:g} (no contrast)"
        raise ImageDataError(
            f"{name}: every {which} {what}; it cannot be synthesized from (select another image)"
        )
    if not bad:
        return data, None
    filled = np.where(finite, data, low)
    head = ndimage.binary_fill_holes(filled > otsu_threshold(values))
    inside = head & ~finite
    count = int(np.count_nonzero(inside))
    if count:
        first = tuple(int(v) for v in np.argwhere(inside)[0])
        raise ImageDataError(
            f"{name}: {count} NaN or infinite voxel(s) inside the head (first at voxel {first}); "
            "only background voxels may be undefined (fill or mask them before synthesis)"
        )
    clean = np.where(finite, data, np.float32(0)).astype(np.float32)
    return clean, (
        f"{name}: {bad} NaN or infinite background voxel(s) (outside the head) are treated as 0"
    )
