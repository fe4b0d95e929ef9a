"""Conform: reorient an image to RAS+ by axis permutations and flips, and map results back exactly.

Scanners store voxels in whatever order the acquisition used (sagittal-first, LPS from DICOM
converters, ...). The same head in two storage orders is the same world-space image, but an
array-based model sees two different arrays. Conforming stores the voxels in the order closest
to RAS+ (first axis towards the subject's Right, second Anterior, third Superior), chosen by
:func:`nibabel.orientations.io_orientation` from the affine. Only axis permutations and flips
are applied: no voxel is interpolated, so the conformed image holds exactly the source's values,
and an oblique acquisition stays oblique (its affine keeps the rotation that remains).

The inverse (:func:`to_source_grid`) applies the inverse permutation and flips to an image on
the conformed grid and gives it the source's own header geometry (qform, sform, their codes and
pixdim, copied verbatim), so a mask or a synthesized image goes back onto the source grid with
the source's affine bit for bit. Affines are never recomputed on the way back: the record keeps
the source affine, and a JSON record keeps every float exactly (Python writes the shortest
decimal that reads back to the same double).

Axis conventions: nibabel's voxel order ``(i, j, k)``; an *orientation* (``ornt``) is nibabel's
``(3, 2)`` array whose row ``n`` gives, for source axis ``n``, the conformed axis it becomes and
whether it is flipped (-1). This module uses numpy and nibabel only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

__all__ = [
    "RAS",
    "OrientationRecord",
    "conform",
    "conform_array",
    "conformed_output_grid",
    "orientation_of",
    "orientation_record",
    "to_conformed_axes",
    "to_source_array",
    "to_source_axes",
    "to_source_grid",
]

#: nibabel's orientation of an array already in RAS+ order (the identity).
RAS = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])


@dataclass(frozen=True)
class OrientationRecord:
    """How a source grid maps to its conformed (RAS+) grid, with both geometries.

    ``source_affine`` and ``conformed_affine`` map voxel indices (i, j, k) to RAS+ world
    coordinates in mm; ``to_ras`` is nibabel's ``(3, 2)`` orientation from source to conformed
    axes. Shapes are the three spatial dimensions.
    """

    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    to_ras: np.ndarray
    conformed_shape: tuple[int, int, int]
    conformed_affine: np.ndarray

    @property
    def source_axcodes(self) -> str:
        """Where the source axes point, e.g. ``"LPS"`` (nibabel axis codes)."""
        return "".join(nib.aff2axcodes(self.source_affine))

    @property
    def conformed_axcodes(self) -> str:
        """Axis codes of the conformed grid; ``"RAS"``."""
        return "".join(nib.aff2axcodes(self.conformed_affine))

    @property
    def is_identity(self) -> bool:
        """True when the source is already stored in RAS+ order (conforming changes nothing)."""
        return bool(np.array_equal(self.to_ras, RAS))

    @property
    def from_ras(self) -> np.ndarray:
        """The inverse orientation: conformed axes back to source axes."""
        return nio.ornt_transform(RAS, self.to_ras)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary (floats kept exactly by :mod:`json`)."""
        return {
            "SourceAxisCodes": self.source_axcodes,
            "ConformedAxisCodes": self.conformed_axcodes,
            "SourceShape": list(self.source_shape),
            "ConformedShape": list(self.conformed_shape),
            # nibabel orientation rows: [conformed axis, +1 or -1 (flip)] per source axis
            "SourceToRAS": [[int(a), int(f)] for a, f in self.to_ras],
            "SourceAffine": np.asarray(self.source_affine, dtype=float).tolist(),
            "ConformedAffine": np.asarray(self.conformed_affine, dtype=float).tolist(),
        }

    @classmethod
    def from_dict(cls, record: dict) -> OrientationRecord:
        """The record :meth:`to_dict` wrote. Raises ``ValueError`` on a malformed record."""
        try:
            to_ras = np.asarray(record["SourceToRAS"], dtype=float)
            out = cls(
                source_shape=tuple(int(n) for n in record["SourceShape"]),
                source_affine=np.asarray(record["SourceAffine"], dtype=np.float64),
                to_ras=to_ras,
                conformed_shape=tuple(int(n) for n in record["ConformedShape"]),
                conformed_affine=np.asarray(record["ConformedAffine"], dtype=np.float64),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an orientation record: {exc}") from exc
        if to_ras.shape != (3, 2) or sorted(to_ras[:, 0]) != [0, 1, 2]:
            raise ValueError(f"not an orientation record: SourceToRAS {record['SourceToRAS']}")
        if out.source_affine.shape != (4, 4) or out.conformed_affine.shape != (4, 4):
            raise ValueError("not an orientation record: affines must be 4 x 4")
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the record as JSON (sorted keys, so the bytes are reproducible)."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OrientationRecord:
        """Read a record written by :meth:`save`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def _spatial_shape(img: nib.spatialimages.SpatialImage, name: str) -> tuple[int, int, int]:
    """The three spatial dimensions; raises ``ValueError`` for anything but 3-D (+ singletons)."""
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise ValueError(
            f"{name}: expected a 3-D image, got shape {shape}; extract one volume first "
            "(e.g. nibabel.funcs.four_to_three)"
        )
    return shape[:3]  # type: ignore[return-value]


def orientation_record(
    img: nib.spatialimages.SpatialImage, name: str = "image", reorient: bool = True
) -> OrientationRecord:
    """The conforming transform of ``img`` (nothing is computed on the data).

    ``reorient=False`` gives the identity record (the conformed grid is the source grid), for
    runs that keep the stored voxel order. Raises ``ValueError`` when the image is not 3-D or
    its affine is not invertible (no axis order can be read from it).
    """
    return orientation_of(_spatial_shape(img, name), img.affine, name, reorient)


def orientation_of(
    shape: tuple[int, ...],
    affine: np.ndarray,
    name: str = "image",
    reorient: bool = True,
) -> OrientationRecord:
    """:func:`orientation_record` from a grid's (i, j, k) ``shape`` and 4x4 ``affine`` alone
    (e.g. the plan's, read from the header). Raises ``ValueError`` for a non-invertible affine.
    """
    shape = tuple(int(n) for n in shape[:3])
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{name}: the affine is not invertible; fix the header's qform/sform")
    to_ras = nio.io_orientation(affine) if reorient else RAS.copy()
    conformed_affine = affine @ nio.inv_ornt_aff(to_ras, shape)
    conformed_shape = tuple(int(shape[int(n)]) for n in np.argsort(to_ras[:, 0]))
    return OrientationRecord(
        source_shape=shape,
        source_affine=affine,
        to_ras=to_ras,
        conformed_shape=conformed_shape,  # type: ignore[arg-type]
        conformed_affine=conformed_affine,
    )


def conform_array(data: np.ndarray, record: OrientationRecord) -> np.ndarray:
    """Source-grid array (``record.source_shape``) in conformed (RAS+) voxel order; exact."""
    data = _squeeze(data, record.source_shape, "source")
    return nio.apply_orientation(data, record.to_ras)


def to_source_array(data: np.ndarray, record: OrientationRecord) -> np.ndarray:
    """Conformed-grid array in source voxel order: the exact inverse of :func:`conform_array`."""
    data = _squeeze(data, record.conformed_shape, "conformed")
    return nio.apply_orientation(data, record.from_ras)


def _squeeze(data: np.ndarray, shape: tuple[int, ...], grid: str) -> np.ndarray:
    data = np.asanyarray(data)
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if tuple(data.shape) != tuple(shape):
        raise ValueError(f"array of shape {data.shape} is not on the {grid} grid {shape}")
    return data


def conform(
    img: nib.spatialimages.SpatialImage,
    dtype: np.dtype | type | None = np.float32,
    name: str = "image",
    reorient: bool = True,
) -> tuple[nib.Nifti1Image, OrientationRecord]:
    """``img`` in RAS+ voxel order without resampling, and the record to undo it.

    The data are the scaled values (``get_fdata``) as ``dtype`` (float32 by default; None keeps
    the array as nibabel reads it, e.g. the integer type of an unscaled label image). The
    header is the source's, with zooms and ``dim_info`` permuted like the axes (nibabel's
    ``as_reoriented``), the new affine in both sform and qform under the source's codes
    (``scanner`` when the source had none), and no intensity scaling. A singleton 4th
    dimension is dropped. ``reorient=False`` keeps the voxel order (the same clean-up, with the
    identity record). Raises ``ValueError`` for non-3-D images and non-invertible affines (the
    message names ``name``).
    """
    record = orientation_record(img, name, reorient)
    if dtype is None:
        data = np.asanyarray(img.dataobj)
    else:
        data = np.asarray(img.get_fdata(dtype=np.float64 if dtype == np.float64 else np.float32))
        data = data.astype(dtype, copy=False)
    data = data.reshape(record.source_shape)
    header = _plain_header(img, data.dtype, record.source_shape)
    source = nib.Nifti1Image(data, record.source_affine, header)
    out = source.as_reoriented(record.to_ras)
    if out is source:  # already RAS: still a fresh image on our cleaned header
        out = nib.Nifti1Image(data, record.source_affine, header)
    nifti = isinstance(img.header, nib.Nifti1Header)
    sform_code = int(img.header["sform_code"]) if nifti else 0
    qform_code = int(img.header["qform_code"]) if nifti else 0
    if sform_code == 0 and qform_code == 0:
        sform_code = qform_code = 1
    out.header.set_sform(record.conformed_affine, code=sform_code or qform_code)
    out.header.set_qform(record.conformed_affine, code=qform_code or sform_code)
    out.update_header()
    return out, record


def _plain_header(
    img: nib.spatialimages.SpatialImage, dtype: np.dtype, shape: tuple[int, ...]
) -> nib.Nifti1Header:
    """A NIfTI-1 copy of ``img``'s header for unscaled ``dtype`` data of ``shape``."""
    header = nib.Nifti1Header.from_header(img.header)
    if tuple(header.get_data_shape()) != tuple(shape):  # (also resets unused pixdim entries)
        header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    return header


def to_source_grid(
    img: nib.spatialimages.SpatialImage | np.ndarray,
    record: OrientationRecord,
    source: nib.spatialimages.SpatialImage,
    dtype: np.dtype | type | None = None,
) -> nib.Nifti1Image:
    """An image on the conformed grid, mapped back onto the source grid of ``source``, exactly.

    ``img`` (a NIfTI image on ``record.conformed_*``, or its data array) is reoriented by the
    inverse permutation and flips; the result carries ``source``'s header geometry verbatim
    (qform, sform, codes, pixdim), so its affine equals ``source.affine`` bit for bit, and its
    data are ``img``'s values moved, never interpolated. ``dtype`` sets the stored type (default:
    the data's own). Raises ``ValueError`` when ``img`` is not on the record's conformed grid or
    ``source`` is not the record's source grid (tolerances: 1e-4 mm on the conformed affine,
    which a NIfTI header stores in float32; 1e-6 mm on the source affine).
    """
    if isinstance(img, np.ndarray):
        data = img
    else:
        if not np.allclose(img.affine, record.conformed_affine, rtol=0, atol=1e-4):
            raise ValueError(
                "image is not on the conformed grid of this orientation record: affine "
                f"{np.asarray(img.affine).round(4).tolist()} vs "
                f"{np.asarray(record.conformed_affine).round(4).tolist()}"
            )
        data = np.asanyarray(img.dataobj)
    if _spatial_shape(source, "source") != record.source_shape or not np.allclose(
        source.affine, record.source_affine, rtol=0, atol=1e-6
    ):
        raise ValueError("the reference image is not the source grid of this orientation record")
    out_data = to_source_array(data, record)
    if dtype is not None:
        out_data = out_data.astype(dtype, copy=False)
    header = _plain_header(source, out_data.dtype, record.source_shape)
    return nib.Nifti1Image(out_data, source.affine, header)


def to_conformed_axes(values: tuple | list, record: OrientationRecord) -> tuple:
    """A per-axis triple given along the source's (i, j, k) axes (voxel sizes, patch sizes),
    reordered along the conformed axes. Values are moved, not changed (a flip keeps them)."""
    source_of = np.argsort(record.to_ras[:, 0].astype(int))  # conformed axis -> source axis
    return tuple(values[int(a)] for a in source_of)


def conformed_output_grid(
    shape: tuple[int, ...],
    affine: np.ndarray,
    *,
    voxel_size: tuple[float, float, float] | None = None,
    patch_size: tuple[int, int, int] | None = None,
    reference: bool = False,
    reorient: bool = True,
):
    """The output grid of synthesis on the conformed image, in the source's (i, j, k) axes.

    Synthesis runs on the conformed (RAS+) array with ``voxel_size`` and ``patch_size`` (given
    along the source axes) reordered along the conformed axes
    (:func:`tumsyn_bids.model.grid.output_grid` there); the result is reoriented back by the
    inverse permutation and flips. This returns that grid as an
    :class:`~tumsyn_bids.model.grid.OutputGrid` of the source axes: output voxel ``q`` at
    source voxel position ``origin + q * step`` (a flipped axis keeps its step and counts from
    the other end), its affine the source affine composed with that map.

    The default grid rule is centred on the field of view, so it commutes with permutations
    and flips: the result equals ``output_grid`` on the source axes (to float rounding). The
    authors' rule (``reference=True``) anchors the grid at voxel 0 and does not: on a flipped
    axis the grid is anchored at the source's last voxel instead. ``reorient=False`` is the
    source grid's own rule. Raises :class:`~tumsyn_bids.model.grid.GridError` for impossible
    grids and ``ValueError`` for a non-invertible affine.
    """
    from ..model.grid import OutputGrid, output_grid

    record = orientation_of(shape, affine, reorient=reorient)
    grid = output_grid(
        record.conformed_shape,
        record.conformed_affine,
        voxel_size=None if voxel_size is None else to_conformed_axes(voxel_size, record),
        patch_size=None if patch_size is None else to_conformed_axes(patch_size, record),
        reference=reference,
    )
    sizes, out_shape, origin, step, query = [], [], [], [], []
    for target, flip in record.to_ras.astype(int):
        n, m, h = record.conformed_shape[target], grid.shape[target], grid.step[target]
        out_shape.append(m)
        step.append(h)
        sizes.append(grid.voxel_size[target])
        start = grid.origin[target]
        origin.append(start if flip > 0 else (n - 1) - start - (m - 1) * h)
        if grid.query_size is not None:
            query.append(grid.query_size[target])
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = np.diag(step)
    voxel_map[:3, 3] = origin
    out_affine = record.source_affine @ voxel_map
    return OutputGrid(
        shape=tuple(int(m) for m in out_shape),
        voxel_size=tuple(float(v) for v in sizes),
        affine=tuple(tuple(float(v) for v in row) for row in out_affine),
        origin=tuple(float(o) for o in origin),
        step=tuple(float(h) for h in step),
        query_size=tuple(int(q) for q in query) if query else None,
    )


def to_source_axes(
    img: nib.spatialimages.SpatialImage, record: OrientationRecord
) -> nib.Nifti1Image:
    """An image on a grid derived from the conformed grid (e.g. a requested output grid over the
    same field of view), put back in the source's axis order by the inverse permutation and
    flips; values moved, never interpolated.

    The affine is ``img``'s composed with the inverse reorientation (nibabel's
    ``as_reoriented``), so every voxel keeps its world position; the qform/sform codes are the
    source's. For an image on the conformed grid itself use :func:`to_source_grid`, which also
    copies the source header's geometry verbatim. Raises ``ValueError`` for a non-3-D image.
    """
    shape = _spatial_shape(img, "image")
    data = np.asanyarray(img.dataobj).reshape(shape)
    header = _plain_header(img, data.dtype, shape)
    plain = nib.Nifti1Image(data, img.affine, header)
    out = plain.as_reoriented(record.from_ras)
    codes = [int(img.header["sform_code"]), int(img.header["qform_code"])]
    sform_code, qform_code = (codes[0] or codes[1] or 1), (codes[1] or codes[0] or 1)
    out.header.set_sform(out.affine, code=sform_code)
    out.header.set_qform(out.affine, code=qform_code)
    out.update_header()
    return out
