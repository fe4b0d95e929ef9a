"""Conversions between nibabel images and ANTsPy images (the one place that does them).

ANTsPy works in ITK's LPS+ physical space; :func:`ants.from_nibabel_nifti` converts a NIfTI
affine into ITK's origin, spacing and direction, and ``ANTsImage.numpy()`` gives the voxels back
in the same (i, j, k) order nibabel uses, so results are written with nibabel on the input's own
header. ANTsPy is imported on first use, not when :mod:`tumsyn_bids.preproc` is imported, and
ANTs runs single-threaded in a child process (:func:`single_threaded`) so that its results do
not depend on the machine.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
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


def _child() -> None:
    """Entry point of :func:`single_threaded`'s child: ``argv[1]`` holds the pickled call,
    ``argv[2]`` receives the pickled ``(ok, result or exception)``."""
    with open(sys.argv[1], "rb") as f:
        fn, args = pickle.load(f)
    try:
        outcome = (True, fn(*args))
    except Exception as exc:  # handed back to the parent, which raises it
        outcome = (False, exc)
    with open(sys.argv[2], "wb") as f:
        pickle.dump(outcome, f)


def single_threaded(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` in a fresh Python process with one ITK thread and ANTs' fixed seed; its
    result (an exception raised there is raised here).

    ANTs' results depend on the thread count (N4 differs between 1 and 2 threads; with more than
    one, antsRegistration differs from run to run), and ITK reads its thread count only once
    per process, at first use. A fresh interpreter with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``
    gives the same bytes on every run and machine. It is started with ``python -c``, not by
    multiprocessing's spawn or fork server, which import the parent's ``__main__`` again (a
    nipype SLURM job script has no ``__main__`` guard, so its child re-ran the node). ``fn``
    must be a module-level function and ``args`` picklable (numpy arrays, not file-backed
    images). Raises ``RuntimeError`` naming the exit status when the child dies.
    """
    env = dict(
        os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", ANTS_RANDOM_SEED=str(ANTS_SEED)
    )
    code = "from tumsyn_bids.preproc._ants import _child; _child()"
    with tempfile.TemporaryDirectory(prefix="tumsyn-ants-") as tmp:
        call, result = os.path.join(tmp, "call.pkl"), os.path.join(tmp, "result.pkl")
        with open(call, "wb") as f:
            pickle.dump((fn, args), f)
        proc = subprocess.run(
            [sys.executable, "-c", code, call, result], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0 or not os.path.exists(result):
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])
            raise RuntimeError(
                f"ANTs child process for {fn.__name__} exited with status {proc.returncode}: {tail}"
            )
        with open(result, "rb") as f:
            ok, value = pickle.load(f)
    if not ok:
        raise value
    return value
