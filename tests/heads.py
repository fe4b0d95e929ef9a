"""Simulated heads for the preprocessing tests: scans with an exact brain mask, and a known bias.

Built with the simulator's public API (``tumsyn-simulate --with-head``), so the brain mask is the
ground truth the scans were rendered from.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tumsyn_bids.prompts.protocol import Protocol
from tumsyn_bids.simulate import brain_mask, write_simulated_dataset

#: A 3 T MPRAGE with the bright white matter of a typical T1w.
MPRAGE = Protocol(
    repetition_time=2.3,
    echo_time=0.003,
    inversion_time=0.9,
    flip_angle=9.0,
    magnetic_field_strength=3.0,
)


def head_dataset(root: Path, voxel_size: float = 2.0, modalities=("T1w", "FLAIR")) -> Path:
    """One simulated subject (``sub-01``) with a head, on a ``voxel_size`` mm grid."""
    return write_simulated_dataset(
        root, n_subjects=1, modalities=modalities, seed=5, voxel_size=voxel_size, with_head=True
    )


def scan(dataset: Path, suffix: str) -> Path:
    return dataset / "sub-01" / "anat" / f"sub-01_{suffix}.nii.gz"


def true_mask(dataset: Path) -> np.ndarray:
    """The exact brain mask of ``sub-01`` (bool, on the scans' grid)."""
    return np.asarray(brain_mask(dataset, "01").dataobj) > 0


def known_bias(img: nib.Nifti1Image) -> np.ndarray:
    """A smooth multiplicative field (float32, about 0.8-1.3 over a head) on ``img``'s grid.

    Linear along x and y and quadratic along z in world mm around the grid centre, like the
    receive profile of a head coil: exact, so a correction can be scored against it.
    """
    ijk = np.indices(img.shape[:3]).reshape(3, -1)
    xyz = img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]
    rel = (xyz - xyz.mean(axis=1, keepdims=True)) / 80.0
    log_field = 0.20 * rel[0] - 0.15 * rel[1] + 0.10 * rel[2] ** 2
    return np.exp(log_field).reshape(img.shape[:3]).astype(np.float32)
