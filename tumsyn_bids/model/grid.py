"""The output grid of a synthesis job: one record, computed by one numpy-only function.

Every consumer reads the same :class:`OutputGrid`: the plan table (one per job), the target
prompt's ``Voxel size``, the sidecar, the workflow, the synthesis engine (where to sample) and
the post-processing check (what the written header must say). Nothing here imports torch.

Axis order is nibabel's (i, j, k) throughout; sizes are in mm.

**The rule (default mode).** For an input of ``n`` voxels of size ``z`` along an axis (``z`` the
column norm of the affine, i.e. the spacing nibabel's affine puts between voxel centres) and a
requested voxel size ``v``:

* the output has ``m = floor(n * z / v + 1/2)`` voxels (the field of view ``n * z`` divided by
  the voxel size, rounded half up to a whole voxel; at least 1), each exactly ``v`` mm;
* the output field of view is centred on the input's: output voxel ``q`` sits at input voxel
  position ``x(q) = (n - 1) / 2 + (q - (m - 1) / 2) * v / z``;
* the output affine is the input affine composed with that map, so every output voxel centre is
  where the engine sampled it, and its column norms are exactly the requested ``v``.

Worked example: a 1 mm input of 31 voxels, request 0.7 mm: ``31 / 0.7 = 44.29`` -> 44 voxels of
0.7 mm (30.8 mm centred in 31 mm: 0.1 mm margin each side); voxel 0 sits at input position
``15 - 21.5 * 0.7 = -0.05``. With an integer scale (``n * z / v`` whole) this reduces to
``x(q) = (q + 1/2) * v / z - 1/2``, the grid the authors' loop samples for integer scales.

**Reference mode** (``--reference``) keeps the authors' arithmetic: per-patch query counts
``round(p * z / v)`` for a patch of ``p`` voxels, an effective scale ``s = query / p``,
``int(n * s)`` output voxels placed at ``x(q) = (q + 1/2) / s - 1/2`` (demo.py ``_get_pred``);
the voxel size is then ``z / s``, which differs from the request when ``p * z / v`` is not whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Triple = tuple[float, float, float]


class GridError(ValueError):
    """A requested output grid cannot be made (non-positive size, degenerate affine)."""


@dataclass(frozen=True)
class OutputGrid:
    """Where a synthesized image's voxels are: shape, voxel size, affine, and the input map.

    ``shape`` (i, j, k) voxels; ``voxel_size`` (i, j, k) mm; ``affine`` 4x4 voxel -> RAS+ mm as
    nested tuples (hashable, JSON-friendly); ``origin`` and ``step`` (i, j, k) map output voxel
    ``q`` to input voxel position ``origin + q * step``; ``query_size`` is the authors' per-patch
    query count (reference mode only, else None).
    """

    shape: tuple[int, int, int]
    voxel_size: Triple
    affine: tuple[tuple[float, ...], ...]
    origin: Triple
    step: Triple
    query_size: tuple[int, int, int] | None = None

    @property
    def affine_array(self) -> np.ndarray:
        """The affine as a float64 (4, 4) array."""
        return np.asarray(self.affine, dtype=np.float64)

    @property
    def scale(self) -> Triple:
        """Output samples per input voxel along (i, j, k)."""
        return tuple(1.0 / s for s in self.step)

    @property
    def is_identity(self) -> bool:
        """True when the output grid is the input grid (same shape, origin 0, step 1)."""
        return all(o == 0.0 for o in self.origin) and all(s == 1.0 for s in self.step)

    def record(self) -> dict:
        """JSON-ready dict (``shape``, ``voxel_size``, ``affine``) for plans and sidecars."""
        return {
            "shape": list(self.shape),
            "voxel_size": list(self.voxel_size),
            "affine": [list(row) for row in self.affine],
        }


def voxel_sizes(affine: np.ndarray | Sequence[Sequence[float]]) -> Triple:
    """Voxel size (i, j, k) in mm: the column norms of the affine's 3x3 part.

    This is the spacing between voxel centres that the affine nibabel uses for the data implies,
    whatever the header's ``pixdim`` says (the two can disagree in a malformed header).
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise GridError(f"affine must be 4x4, got shape {a.shape}")
    sizes = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise GridError(f"the affine has a zero or non-finite voxel axis: {a[:3, :3].tolist()}")
    return tuple(float(s) for s in sizes)


def _triple(values: Sequence[float] | float, what: str) -> Triple:
    if isinstance(values, int | float):
        values = (values,) * 3
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise GridError(f"{what} takes three values (i, j, k), got {len(out)}")
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise GridError(f"{what} must be positive, got {out}")
    return out


def _affine_tuple(a: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in a)


def _compose(affine: np.ndarray, origin: Sequence[float], step: Sequence[float]) -> np.ndarray:
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = np.diag(np.asarray(step, dtype=np.float64))
    voxel_map[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine @ voxel_map


def output_grid(
    shape: Sequence[int],
    affine: np.ndarray | Sequence[Sequence[float]],
    *,
    voxel_size: Sequence[float] | float | None = None,
    scale: Sequence[float] | float | None = None,
    patch_size: Sequence[int] | None = None,
    reference: bool = False,
) -> OutputGrid:
    """The output grid for an input of ``shape`` (i, j, k) voxels and ``affine`` (4x4).

    Give at most one of ``voxel_size`` (mm, i, j, k) and ``scale`` (output samples per input
    voxel, i, j, k; ``scale = z / voxel_size``); neither keeps the input grid. Default mode
    follows the rule of the module docstring. With ``reference=True`` the authors' rounding
    applies and ``patch_size`` (i, j, k voxels) is required.

    Raises :class:`GridError` for non-positive sizes or scales, a degenerate affine, or both
    ``voxel_size`` and ``scale``.
    """
    if voxel_size is not None and scale is not None:
        raise GridError("give a voxel size or a scale, not both")
    dims = tuple(int(n) for n in shape[:3])
    if len(dims) != 3 or min(dims) < 1:
        raise GridError(f"input shape must be three positive sizes, got {tuple(shape)}")
    a = np.asarray(affine, dtype=np.float64)
    zooms = voxel_sizes(a)
    if scale is not None:
        wanted = _triple(scale, "scale")
    elif voxel_size is not None:
        wanted = tuple(z / v for z, v in zip(zooms, _triple(voxel_size, "voxel size"), strict=True))
    else:
        wanted = (1.0, 1.0, 1.0)

    if reference:
        if patch_size is None:
            raise GridError("reference mode needs the patch size to round the scale")
        patch = tuple(int(p) for p in patch_size)
        query = tuple(max(1, round(p * s)) for p, s in zip(patch, wanted, strict=True))
        eff = tuple(q / p for q, p in zip(query, patch, strict=True))
        out_shape = tuple(max(1, int(n * s)) for n, s in zip(dims, eff, strict=True))
        step = tuple(1.0 / s for s in eff)
        origin = tuple(0.5 * h - 0.5 for h in step)
        out_affine = _compose(a, origin, step)
        return OutputGrid(
            shape=out_shape,
            voxel_size=tuple(z * h for z, h in zip(zooms, step, strict=True)),
            affine=_affine_tuple(out_affine),
            origin=origin,
            step=step,
            query_size=query,
        )

    if all(s == 1.0 for s in wanted):
        return OutputGrid(
            shape=dims,
            voxel_size=zooms,
            affine=_affine_tuple(a),
            origin=(0.0, 0.0, 0.0),
            step=(1.0, 1.0, 1.0),
        )
    step = tuple(1.0 / s for s in wanted)
    if voxel_size is not None:
        sizes = _triple(voxel_size, "voxel size")
        step = tuple(v / z for v, z in zip(sizes, zooms, strict=True))
    else:
        sizes = tuple(z * h for z, h in zip(zooms, step, strict=True))
    out_shape = tuple(
        max(1, math.floor(n / h + 0.5 + 1e-9)) for n, h in zip(dims, step, strict=True)
    )
    origin = tuple(
        (n - 1) / 2 - (m - 1) * h / 2 for n, m, h in zip(dims, out_shape, step, strict=True)
    )
    return OutputGrid(
        shape=out_shape,
        voxel_size=sizes,
        affine=_affine_tuple(_compose(a, origin, step)),
        origin=origin,
        step=step,
    )


def grid_from_record(record: dict) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, affine)`` back from :meth:`OutputGrid.record` (e.g. read from a plan TSV)."""
    return tuple(int(n) for n in record["shape"]), np.asarray(record["affine"], dtype=np.float64)


#: Tolerance of grid comparisons: a NIfTI header stores its affine in float32 (relative
#: precision 6e-8), so written and planned affines agree to this, never more loosely.
GRID_RTOL = GRID_ATOL = 1e-6


def same_grid(shape: Sequence[int], affine: np.ndarray, expected: OutputGrid | dict) -> bool:
    """Whether an image of ``shape`` and ``affine`` lies on ``expected``: the same shape and
    every affine entry equal to float32 header precision (:data:`GRID_RTOL`)."""
    record = expected.record() if isinstance(expected, OutputGrid) else expected
    want_shape, want_affine = grid_from_record(record)
    return tuple(int(n) for n in shape[:3]) == want_shape and bool(
        np.allclose(
            np.asarray(affine, dtype=np.float64), want_affine, rtol=GRID_RTOL, atol=GRID_ATOL
        )
    )
