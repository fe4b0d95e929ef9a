"""A small synthetic BIDS dataset for the quick start and the end-to-end tests.

Real example data (OpenNeuro, bids-examples) is either too large to ship or holds empty
placeholder images, and nothing may be downloaded at test time. So we *generate* a dataset: a few
tiny brain-like phantoms with the BIDS layout and metadata cases the app must handle:

* ``sub-01`` (no sessions): a T1w and a T2w with complete sidecars and a ``participants.tsv`` row;
* ``sub-02`` (sessions ``1`` and ``2``): unknown age and sex (``n/a`` in ``participants.tsv``), a
  complete T1w in ``ses-1`` and, in ``ses-2``, an ``acq-fast`` T1w on a coarser anisotropic grid
  whose sidecar lacks every timing field.

The output is byte-identical on every run (fixed seeds, no timestamps, gzip with ``mtime=0``), so
tests can compare outputs and caches keyed on file hashes stay valid. The official validator
passes it with no errors (see :mod:`tumsyn_bids.bids.validation`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..bids.io import atomic_save_nifti, atomic_write_json, atomic_write_text
from ..bids.names import sidecar_relpath

__all__ = [
    "EXAMPLE_NAME",
    "ExampleImage",
    "EXAMPLE_IMAGES",
    "example_files",
    "make_phantom",
    "write_example_dataset",
]

EXAMPLE_NAME = "tumsyn-bids example"
BIDS_VERSION = "1.10.0"

#: Scanner-space position (mm, RAS) of the phantom's centre. Off zero on purpose, so code that
#: ignores the affine's translation (or assumes the origin is at the volume centre) is caught.
_CENTRE_MM = np.array([1.5, -17.0, 12.0])
#: Head semi-axes in mm (left-right, posterior-anterior, inferior-superior). Small enough to fit
#: inside every field of view below with a margin of background.
_HEAD_MM = np.array([20.0, 24.0, 20.5])

#: Nested tissue boundaries, in units of the head's normalised ellipsoid radius (1 = scalp
#: surface), from outside in. The white-matter boundary is folded per voxel (see _label_fractions).
_SCALP, _SKULL, _CSF, _GM = 1.0, 0.93, 0.86, 0.78
_WM_MEAN, _WM_FOLD = 0.58, 0.07

#: Tissue intensities per contrast, in arbitrary scanner units (int16). T1w: white matter bright,
#: CSF dark, fatty scalp bright; T2w: CSF brightest, white matter darker than grey matter. The
#: skull (cortical bone) gives almost no signal in either.
_INTENSITY: dict[str, dict[str, float]] = {
    "T1w": {"scalp": 780, "skull": 60, "csf": 180, "gm": 560, "wm": 880},
    "T2w": {"scalp": 560, "skull": 50, "csf": 1300, "gm": 720, "wm": 480},
}
_NOISE_SD = 12.0


@dataclass(frozen=True)
class ExampleImage:
    """One image of the example dataset: where it goes, its grid and its sidecar."""

    path: str
    modality: str
    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    seed: int
    #: Scales the head: the two subjects differ in size, like real ones.
    head_scale: float
    sidecar: dict[str, Any]


_T1W_FULL = {
    "Manufacturer": "Siemens",
    "ManufacturersModelName": "Prisma",
    "MagneticFieldStrength": 3,
    "MRAcquisitionType": "3D",
    "PulseSequenceType": "MPRAGE",
    "RepetitionTime": 2.5,
    "EchoTime": 0.00298,
    "InversionTime": 1.0,
    "FlipAngle": 8,
}

EXAMPLE_IMAGES: tuple[ExampleImage, ...] = (
    ExampleImage(
        path="sub-01/anat/sub-01_T1w.nii.gz",
        modality="T1w",
        shape=(40, 48, 40),
        zooms=(1.2, 1.2, 1.2),
        seed=101,
        head_scale=1.0,
        sidecar=_T1W_FULL,
    ),
    ExampleImage(
        path="sub-01/anat/sub-01_T2w.nii.gz",
        modality="T2w",
        shape=(40, 48, 40),
        zooms=(1.2, 1.2, 1.2),
        seed=102,
        head_scale=1.0,
        sidecar={
            "Manufacturer": "Siemens",
            "ManufacturersModelName": "Prisma",
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": "3D",
            "PulseSequenceType": "SPACE",
            "RepetitionTime": 3.2,
            "EchoTime": 0.563,
            # SPACE sweeps the refocusing angle; BIDS wants one number, so the nominal one.
            "FlipAngle": 120,
        },
    ),
    ExampleImage(
        path="sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
        modality="T1w",
        shape=(40, 48, 40),
        zooms=(1.2, 1.2, 1.2),
        seed=201,
        head_scale=0.94,
        sidecar=_T1W_FULL,
    ),
    ExampleImage(
        path="sub-02/ses-2/anat/sub-02_ses-2_acq-fast_T1w.nii.gz",
        modality="T1w",
        # A coarser, anisotropic grid with a different shape: resolution handling must cope.
        shape=(44, 52, 32),
        zooms=(1.0, 1.0, 1.5),
        seed=202,
        head_scale=0.94,
        # Deliberately incomplete: no timing fields, so prompts must fall back to defaults.
        sidecar={"MagneticFieldStrength": 1.5, "Manufacturer": "GE MEDICAL SYSTEMS"},
    ),
)

_DESCRIPTION = {
    "Name": EXAMPLE_NAME,
    "BIDSVersion": BIDS_VERSION,
    "DatasetType": "raw",
    "License": "CC0",
    "Authors": ["tumsyn-bids developers", "TUMSyn authors (model; not this data)"],
    # No version here: the bytes should only change when the phantoms do, not on every release.
    "GeneratedBy": [
        {
            "Name": "tumsyn-bids",
            "Description": "tumsyn-example-data: synthetic phantoms for the quick start and tests",
        }
    ],
}

_README = """\
tumsyn-bids example dataset
===========================

This is a tiny synthetic dataset written by the `tumsyn-example-data` command of tumsyn-bids.
It exists so that the quick start and the end-to-end tests can run without downloading data.

The images are NOT real anatomy and NOT real MRI acquisitions: each is a simple phantom, an
ellipsoidal "head" with scalp, skull, CSF, grey-matter and white-matter-like layers (a folded
grey/white boundary and two ventricle-like cavities), with intensities chosen to mimic T1w or
T2w contrast, a smooth bias field and Gaussian noise. They are generated deterministically from
fixed random seeds. The acquisition parameters in the sidecars are plausible values for such
scans, not measurements.

Layout:

- sub-01: a T1w and a T2w image with complete sidecars; listed in participants.tsv.
- sub-02: two sessions. ses-1 holds a T1w with a complete sidecar; ses-2 holds a T1w
  (acq-fast) on a coarser anisotropic grid whose sidecar lacks the timing fields. The age and
  sex of sub-02 are unknown ("n/a" in participants.tsv).

License: CC0 (public domain dedication).
"""

#: sub-02's age and sex are unknown. The issue asked for a subject with no row at all, but the
#: validator rejects that (PARTICIPANT_ID_MISMATCH: every subject folder needs a row), so its row
#: holds BIDS's "n/a" instead, which is the valid way to say the same.
_PARTICIPANTS_TSV = "participant_id\tage\tsex\nsub-01\t34\tF\nsub-02\tn/a\tn/a\n"

_PARTICIPANTS_JSON = {
    "age": {"Description": "age of the participant at the time of scanning", "Units": "year"},
    "sex": {
        "Description": "sex of the participant as reported by the participant",
        "Levels": {"M": "male", "F": "female", "O": "other"},
    },
}


def example_files() -> list[str]:
    """Every file the example dataset consists of, as POSIX paths relative to its root."""
    files = ["dataset_description.json", "README", "participants.tsv", "participants.json"]
    for image in EXAMPLE_IMAGES:
        files += [image.path, sidecar_relpath(image.path)]
    return sorted(files)


def write_example_dataset(out_dir: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the example dataset into ``out_dir`` and return its path.

    Refuses (``FileExistsError``) to write into an existing folder that is not empty unless
    ``force``; with ``force`` the example's files are overwritten and any other files there are
    left alone (we never delete what we did not write).
    """
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise FileExistsError(
            f"{root} exists and is not empty; choose an empty or new folder, or use force "
            "(--force) to overwrite the example's files in it"
        )
    root.mkdir(parents=True, exist_ok=True)

    # The derivatives writers are reproducible (sorted JSON, gzip without a timestamp).
    atomic_write_json(root / "dataset_description.json", _DESCRIPTION)
    atomic_write_text(root / "README", _README)
    atomic_write_text(root / "participants.tsv", _PARTICIPANTS_TSV)
    atomic_write_json(root / "participants.json", _PARTICIPANTS_JSON)
    for image in EXAMPLE_IMAGES:
        img = make_phantom(
            image.shape, image.zooms, image.modality, seed=image.seed, head_scale=image.head_scale
        )
        atomic_save_nifti(img, root / image.path)
        atomic_write_json(root / sidecar_relpath(image.path), image.sidecar)
    return root


def make_phantom(
    shape: Sequence[int],
    zooms: Sequence[float],
    modality: str = "T1w",
    *,
    seed: int = 0,
    head_scale: float = 1.0,
) -> nib.Nifti1Image:
    """A brain-like int16 phantom on a RAS grid of this shape and voxel size.

    The phantom is defined in scanner millimetres, not voxels, so images on different grids show
    the same head in the same place: a resampling or registration step can be checked against
    another image of the example. ``modality`` picks the contrast (``T1w`` or ``T2w``).
    """
    if modality not in _INTENSITY:
        raise ValueError(f"no phantom contrast for {modality!r}; choose from {sorted(_INTENSITY)}")
    shape3 = tuple(int(s) for s in shape)
    zooms3 = np.asarray(zooms, dtype=np.float64)
    if len(shape3) != 3 or zooms3.shape != (3,):
        raise ValueError("make_phantom takes a 3-D shape and three voxel sizes")

    affine = np.diag([*zooms3, 1.0])
    # Put the volume's centre at the phantom's centre.
    affine[:3, 3] = _CENTRE_MM - zooms3 * (np.asarray(shape3) - 1) / 2.0

    ijk = np.indices(shape3, dtype=np.float64).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    rel = (xyz - _CENTRE_MM[:, None]) / (_HEAD_MM[:, None] * head_scale)
    # Width of the partial-volume blur at tissue boundaries: about half a voxel, in normalised
    # radius units, so edges look like sampled anatomy rather than aliased steps.
    width = 0.5 * float(zooms3.mean()) / float(_HEAD_MM.mean() * head_scale)

    contrast = _INTENSITY[modality]
    intensity = _blend(rel, width, contrast)
    bias = 1.0 + 0.06 * rel[0] - 0.04 * rel[2]
    rng = np.random.default_rng(seed)
    noisy = np.abs(intensity * bias + rng.normal(0.0, _NOISE_SD, intensity.shape))
    data = np.clip(np.rint(noisy), 0, np.iinfo(np.int16).max).astype(np.int16)

    img = nib.Nifti1Image(data.reshape(shape3), affine)
    header = img.header
    header.set_data_dtype(np.int16)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = f"tumsyn-bids synthetic {modality} phantom".encode()
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _blend(rel: np.ndarray, width: float, contrast: dict[str, float]) -> np.ndarray:
    """Intensity from nested soft-edged layers: background, scalp, skull, CSF, GM, WM, ventricles.

    Each boundary adds the step to the next tissue's intensity through a logistic edge, which is
    a cheap stand-in for partial-volume averaging.
    """
    radius = np.sqrt((rel**2).sum(axis=0))
    # Cortical folding: the white-matter surface moves in and out with direction.
    safe = np.where(radius > 0, radius, 1.0)
    ux, uy, uz = rel / safe
    theta = np.arctan2(uy, ux)
    phi = np.arccos(np.clip(uz, -1.0, 1.0))
    wm_boundary = _WM_MEAN + _WM_FOLD * np.sin(5 * theta) * np.sin(4 * phi)

    def inside(boundary: np.ndarray | float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(boundary - radius) / width))

    value = contrast["scalp"] * inside(_SCALP)
    value += (contrast["skull"] - contrast["scalp"]) * inside(_SKULL)
    value += (contrast["csf"] - contrast["skull"]) * inside(_CSF)
    value += (contrast["gm"] - contrast["csf"]) * inside(_GM)
    value += (contrast["wm"] - contrast["gm"]) * inside(wm_boundary)

    # Two lateral ventricles: CSF-filled ellipsoids either side of the midline.
    for side in (-1.0, 1.0):
        v = (rel - np.array([[0.14 * side], [0.05], [0.12]])) / np.array([[0.08], [0.26], [0.1]])
        v_radius = np.sqrt((v**2).sum(axis=0))
        inside_v = 1.0 / (1.0 + np.exp(-(1.0 - v_radius) * 0.1 / width))
        value += (contrast["csf"] - value) * inside_v
    return value
