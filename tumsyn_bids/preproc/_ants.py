"""Conversions between nibabel images and ANTsPy images (the one place that does them).

ANTsPy works in ITK's LPS+ physical space; :func:`ants.from_nibabel_nifti` converts a NIfTI
affine into ITK's origin, spacing and direction, and ``ANTsImage.numpy()`` gives the voxels back
in the same (i, j, k) order nibabel uses, so results are written with nibabel on the input's own
header. ANTsPy is imported here, on first use, not when :mod:`tumsyn_bids.preproc` is imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import nibabel as nib
import numpy as np

#: Seed of ANTs' random sampling (registration metrics); ANTs reads ``ANTS_RANDOM_SEED``.
ANTS_SEED = 20250101


def ants_version() -> str:
    """The installed ANTsPy version (for provenance records)."""
    from importlib.metadata import version

    return version("antspyx")


def to_ants(img: nib.spatialimages.SpatialImage, data: np.ndarray | None = None):
    """``img`` (or ``data`` on ``img``'s grid) as a float32 ANTsPy image with its geometry.

    The header is not modified: a float32 copy with spatial units set to mm is converted (ANTsPy
    refuses images whose units are not mm and would otherwise rewrite the caller's header).
    """
    import ants

    values = np.asarray(img.get_fdata(dtype=np.float32) if data is None else data, np.float32)
    values = values.reshape(values.shape[:3])
    plain = nib.Nifti1Image(values, img.affine)
    plain.header.set_xyzt_units("mm", "sec")
    return ants.from_nibabel_nifti(plain)


@contextlib.contextmanager
def ants_environment(threads: int | None = None, seed: int | None = ANTS_SEED) -> Iterator[None]:
    """Run ANTs with ``threads`` ITK threads and a fixed random seed, restoring the environment.

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` when a filter is created, and
    ``antsRegistration`` reads ``ANTS_RANDOM_SEED`` when no seed is given on its command line
    (ANTsPy passes none unless its global deterministic mode is on).
    """
    keys = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "ANTS_RANDOM_SEED")
    saved = {key: os.environ.get(key) for key in keys}
    try:
        if threads:
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
        if seed is not None:
            os.environ["ANTS_RANDOM_SEED"] = str(int(seed))
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
