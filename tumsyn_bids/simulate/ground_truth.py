"""Read a simulated dataset back: its scans with their exact protocols, and the ground truth.

A dataset written by :func:`tumsyn_bids.simulate.dataset.write_simulated_dataset` stores the
tissue fractions every scan was rendered from (``derivatives/simulation``), so the noise-free,
bias-free image of *any* protocol can be rendered again on the scans' grid
(:func:`render_ground_truth`): what synthesized images are scored against.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..prompts.protocol import Protocol, protocol_from_sidecar
from .anatomy import FRACTION_LEVELS, TissueMaps, dequantize_fractions
from .dataset import DERIVATIVES_RELPATH, anat_dir
from .signal import SUFFIXES, render
from .subject import _finish_header
from .tissues import TISSUES

__all__ = [
    "SimulatedScan",
    "brain_mask",
    "load_tissue_maps",
    "render_ground_truth",
    "simulated_scans",
]


@dataclass(frozen=True)
class SimulatedScan:
    """One scan of a simulated dataset with its exact protocol (voxel size included)."""

    subject: str
    session: str | None
    suffix: str
    path: Path
    protocol: Protocol


def simulated_scans(dataset_dir: str | os.PathLike[str]) -> list[SimulatedScan]:
    """Every scan of a simulated dataset (``sub-*/**/anat/*.nii.gz`` with a simulated suffix),
    sorted by path, with its protocol read from its sidecar and voxel size from its header."""
    root = Path(dataset_dir)
    pattern = re.compile(
        r"^sub-([A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?(?:_run-[0-9]+)?_([A-Za-z0-9]+)\.nii\.gz$"
    )
    scans = []
    for path in sorted(root.glob("sub-*/**/anat/*.nii.gz")):
        match = pattern.match(path.name)
        if not match or match.group(3) not in SUFFIXES:
            continue
        sidecar = json.loads(path.with_name(path.name[: -len(".nii.gz")] + ".json").read_text())
        zooms = tuple(float(z) for z in nib.load(path).header.get_zooms()[:3])
        scans.append(
            SimulatedScan(
                subject=match.group(1),
                session=match.group(2),
                suffix=match.group(3),
                path=path,
                protocol=protocol_from_sidecar(sidecar, zooms),
            )
        )
    return scans


def _derivative_anat(
    dataset_dir: str | os.PathLike[str], subject: str, session: str | None
) -> tuple[Path, str]:
    return anat_dir(Path(dataset_dir) / DERIVATIVES_RELPATH, subject, session)


def load_tissue_maps(
    dataset_dir: str | os.PathLike[str], subject: str, session: str | None = None
) -> TissueMaps:
    """A subject's stored tissue fractions, exactly as its scans were rendered from them."""
    anat, stem = _derivative_anat(dataset_dir, subject, session)
    levels: dict[str, np.ndarray] = {}
    affine = None
    for tissue in TISSUES:
        path = anat / f"{stem}_label-{tissue}_probseg.nii.gz"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: was the dataset written with derivatives (the default)?"
            )
        img = nib.load(path)
        affine = img.affine if affine is None else affine
        if img.get_data_dtype() == np.uint8:
            levels[tissue] = np.asarray(img.dataobj.get_unscaled())
        else:  # not our encoding: take the fractions as stored
            levels[tissue] = np.asarray(img.get_fdata(dtype=np.float32)) * FRACTION_LEVELS
    return dequantize_fractions(levels, affine)


def brain_mask(
    dataset_dir: str | os.PathLike[str], subject: str, session: str | None = None
) -> nib.Nifti1Image:
    """A subject's stored brain mask (uint8 0/1) on the grid of its scans."""
    anat, stem = _derivative_anat(dataset_dir, subject, session)
    path = anat / f"{stem}_desc-brain_mask.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return nib.load(path)


def _subject_field(root: Path, subject: str, session: str | None) -> float | None:
    anat, _ = anat_dir(root, subject, session)
    for sidecar in sorted(anat.glob("*.json")):
        value = json.loads(sidecar.read_text()).get("MagneticFieldStrength")
        if value is not None:
            return float(value)
    return None


def render_ground_truth(
    dataset_dir: str | os.PathLike[str],
    subject: str,
    protocol: Protocol | Mapping[str, Any],
    suffix: str,
    session: str | None = None,
) -> nib.Nifti1Image:
    """The noise-free, bias-free ``suffix`` image of ``protocol`` for a simulated subject.

    ``protocol`` is a :class:`~tumsyn_bids.prompts.protocol.Protocol` or a BIDS sidecar dictionary
    (read with :func:`tumsyn_bids.prompts.protocol.protocol_from_sidecar`). Its
    ``MagneticFieldStrength`` is used when given, otherwise the field of the subject's scans.
    The image is float32 in the scans' units, on exactly the scans' grid (same affine).
    """
    if isinstance(protocol, Mapping):
        protocol = protocol_from_sidecar(protocol)
    maps = load_tissue_maps(dataset_dir, subject, session)
    field = protocol.magnetic_field_strength
    if field is None:
        field = _subject_field(Path(dataset_dir), subject, session)
    data = render(maps, protocol, suffix, field)
    img = nib.Nifti1Image(data, maps.affine)
    _finish_header(img, maps.affine, f"tumsyn-simulate ground truth {suffix}")
    return img
