"""Checks of a plan before anything runs, so that a data problem is one line, not a crash.

:func:`tumsyn_bids.plan.build_plan` refuses what the BIDS index shows (unreadable headers,
implausible sidecars, impossible grids, prompts too long). Two more checks need more than the
index:

* :func:`check_memory` (every run): a job whose images would need more memory than the run may
  use is refused from the header alone, before anything is allocated (a corrupt header can
  announce billions of voxels).
* :func:`check_source_data` (``--dry-run``): the voxel checks the workflow's ``CheckImage``
  node applies (:func:`tumsyn_bids.bids.images.read_image_data`: unreadable or truncated data,
  mostly non-finite, empty, constant, NaN inside the head), so that a dry run exits as the real
  run would. It reads each source image once.

Both return a copy of the plan in which the refused jobs have status ``error`` and a message
that starts with the source's dataset-relative path. Nothing here imports torch or nipype.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .bids.images import ImageDataError, read_image_data

__all__ = [
    "BYTES_PER_OUTPUT_VOXEL",
    "BYTES_PER_SOURCE_VOXEL",
    "check_memory",
    "check_source_data",
    "job_memory_bytes",
    "memory_limit_bytes",
]

LOGGER = logging.getLogger(__name__)

#: Memory a synthesis job holds per voxel of its source (float32 copies: the file's data, the
#: conformed image, the normalised model input, the foreground mask's share) ...
BYTES_PER_SOURCE_VOXEL = 16
#: ... and per voxel of its output grid (float32 sum of patch predictions, sum of weights, the
#: output image). Patches themselves are small (a few MB), so these two terms dominate.
BYTES_PER_OUTPUT_VOXEL = 12


def memory_limit_bytes(mem_gb: float | None = None) -> int:
    """What one job may use: ``--mem-gb`` when given, else the machine's physical memory."""
    if mem_gb:
        return int(mem_gb * 2**30)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit known
        return 2**62


def job_memory_bytes(source_shape: Sequence[int], output_shape: Sequence[int]) -> int:
    """Estimated peak memory (bytes) of one synthesis job from the two grids' shapes."""
    return BYTES_PER_SOURCE_VOXEL * math.prod(int(n) for n in source_shape[:3]) + (
        BYTES_PER_OUTPUT_VOXEL * math.prod(int(n) for n in output_shape[:3])
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(
    plan: pd.DataFrame,
    source_shapes: Mapping[str, Sequence[int] | None],
    limit_bytes: int,
    limit_name: str = "this machine has",
) -> pd.DataFrame:
    """Refuse planned jobs whose estimate (:func:`job_memory_bytes`) exceeds ``limit_bytes``.

    ``source_shapes`` maps a source's relative path to its header shape (the index's
    ``ScanRecord.shape``); ``limit_name`` says where the limit comes from in the message.
    """
    final = plan.copy()
    for i, row in final[final["status"] == "planned"].iterrows():
        shape = source_shapes.get(row["source"])
        grid = row["output_grid"]
        if shape is None or grid is None:
            continue
        need = job_memory_bytes(shape, grid.shape)
        if need > limit_bytes:
            final.at[i, "status"] = "error"
            final.at[i, "message"] = (
                f"{row['source']}: synthesizing it needs about {_gib(need)} of memory "
                f"(grid {tuple(int(n) for n in shape[:3])} -> {tuple(grid.shape)}), more than "
                f"the {_gib(limit_bytes)} {limit_name}; check the header's dimensions, crop "
                "or resample the image, or allow more with --mem-gb"
            )
    return final


def check_source_data(plan: pd.DataFrame, bids_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Apply the workflow's voxel checks to every planned job's source (each read once).

    A refused source turns its planned jobs into ``error`` rows with the check's one line; a
    repaired one (non-finite background) keeps them planned, with the warning as message
    (also logged).
    """
    final = plan.copy()
    planned = final["status"] == "planned"
    for source in dict.fromkeys(final.loc[planned, "source"]):
        rows = planned & (final["source"] == source)
        try:
            image = read_image_data(Path(bids_dir) / source, source)
        except ImageDataError as exc:
            final.loc[rows, "status"] = "error"
            final.loc[rows, "message"] = str(exc)
            continue
        if image.warning:
            LOGGER.warning("%s", image.warning)
            final.loc[rows, "message"] = image.warning
    return final
