"""Conversions between nibabel images and ANTsPy images (the one place that does them).

ANTsPy works in ITK's LPS+ physical space; :func:`ants.from_nibabel_nifti` converts a NIfTI
affine into ITK's origin, spacing and direction, and ``ANTsImage.numpy()`` gives the voxels back
in the same (i, j, k) order nibabel uses, so results are written with nibabel on the input's own
header. ANTsPy is imported on first use, not when :mod:`tumsyn_bids.preproc` is imported, and
ANTs runs single-threaded in a child process (:func:`single_threaded`) so that its results do
not depend on the machine.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import nibabel as nib
import numpy as np

T = TypeVar("T")

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


def _call_single_threaded(fn: Callable[..., T], args: tuple) -> T:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    os.environ["ANTS_RANDOM_SEED"] = str(ANTS_SEED)
    return fn(*args)


def single_threaded(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` in a fresh process with one ITK thread and ANTs' fixed seed; its result.

    ANTs' results depend on the thread count (N4 differs between 1 and 2 threads; with more than
    one, antsRegistration differs from run to run), and ITK reads its thread count only once
    per process, at first use. A spawned child with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``
    gives the same bytes on every run and machine. ``fn`` must be a module-level function and
    ``args`` picklable (numpy arrays, not file-backed images).
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_call_single_threaded, fn, args).result()
