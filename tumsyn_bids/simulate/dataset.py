"""Write a simulated multi-contrast BIDS dataset (read back with :mod:`.ground_truth`).

Layout of a dataset written by :func:`write_simulated_dataset`::

    OUT/
      dataset_description.json, README, participants.tsv, participants.json
      code/tumsyn-simulate.json                   settings of the run (validator-ignored)
      sub-01/anat/sub-01_T1w.nii.gz (+ .json)     one scan per modality, int16 + scl_slope
      ...                                         (with runs=N: sub-01_run-1_T1w ... run-N)
      derivatives/simulation/                     a BIDS derivative dataset: the ground truth
        dataset_description.json, README
        sub-01/anat/sub-01_label-GM_probseg.nii.gz    tissue fractions, uint8 / 255
        sub-01/anat/sub-01_label-WM_probseg.nii.gz
        sub-01/anat/sub-01_label-CSF_probseg.nii.gz
        sub-01/anat/sub-01_desc-brain_mask.nii.gz     GM + WM + CSF >= 0.5
        sub-01/anat/sub-01_label-Bone_probseg.nii.gz  with --with-head: the head tissues
        ...                                           (ExtCSF, Bone, Fat, Muscle)

The tissue maps are the *exact* anatomy every scan was rendered from, on the scans' grid (same
shape, same affine), so :func:`~.ground_truth.render_ground_truth` gives the noise-free,
bias-free image of any protocol, which is what synthesised images can be scored against. For the
protocol a scan was acquired with, that image is the scan minus its bias field and noise. With
``with_head`` the
scans are heads (:mod:`.head`: skull, scalp, fat and extra-axial CSF around the brain) on a
wider grid; inside the brain mask the noise-free scan is still exactly that brain image.

Everything is deterministic: the same arguments give byte-identical files (gzip without time
stamps, sorted JSON). The dataset is written into a hidden temporary folder next to the output
and renamed into place at the end, so an interrupted run leaves no half-written dataset.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from ..bids.io import atomic_save_nifti, atomic_write_json, atomic_write_text
from .anatomy import (
    FRACTION_LEVELS,
    TEMPLATE_NAME,
    TEMPLATE_NOTICE,
    TEMPLATE_REFERENCES,
)
from .protocols import sample_protocol
from .signal import SUFFIXES
from .subject import SimulatedSubject, _finish_header, draw_subject
from .tissues import HEAD_TISSUES, TISSUES

__all__ = [
    "BIDS_VERSION",
    "DEFAULT_MODALITIES",
    "DERIVATIVES_RELPATH",
    "GENERATOR",
    "anat_dir",
    "subject_labels",
    "write_simulated_dataset",
]

BIDS_VERSION = "1.10.0"
#: ``GeneratedBy`` name; also how an existing output is recognised as ours (``--overwrite``).
GENERATOR = "tumsyn-simulate"
DEFAULT_MODALITIES: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "PDw")
DERIVATIVES_RELPATH = "derivatives/simulation"
SETTINGS_RELPATH = "code/tumsyn-simulate.json"

_LABEL = re.compile(r"^[A-Za-z0-9]+$")

_TISSUE_REFERENCES: tuple[str, ...] = (
    "Stanisz G.J. et al. T1, T2 relaxation and magnetization transfer in tissue at 3T. Magn "
    "Reson Med 54:507-512 (2005). doi:10.1002/mrm.20605",
    "Wansapura J.P. et al. NMR relaxation times in the human brain at 3.0 tesla. J Magn Reson "
    "Imaging 9:531-538 (1999).",
    "Gelman N. et al. MR imaging of human brain at 3.0 T: preliminary report on transverse "
    "relaxation rates and relation to estimated iron content. Radiology 210:759-767 (1999).",
)

_LICENSE = (
    "Simulated from the MNI ICBM152 2009 template, whose terms allow use, copying, modification "
    "and distribution for any purpose provided its copyright notice (see README) accompanies "
    "all copies."
)


# --------------------------------------------------------------------------------------------
# Subjects and paths
# --------------------------------------------------------------------------------------------


def subject_labels(n_subjects: int, first_subject: int = 1) -> list[str]:
    """Zero-padded numeric labels ``first_subject .. first_subject + n - 1`` (at least 2 digits)."""
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    if first_subject < 0:
        raise ValueError(f"first_subject must be non-negative, got {first_subject}")
    last = first_subject + n_subjects - 1
    width = max(2, len(str(last)))
    return [f"{i:0{width}d}" for i in range(first_subject, last + 1)]


def _strip(label: str, prefix: str) -> str:
    label = str(label)
    return label[len(prefix) :] if label.startswith(prefix) else label


def anat_dir(root: Path, subject: str, session: str | None) -> tuple[Path, str]:
    """The ``anat`` folder and file-name stem (``sub-01_ses-1``) of a subject (and session);
    labels may carry their ``sub-``/``ses-`` prefix."""
    sub = f"sub-{_strip(subject, 'sub-')}"
    if session is None:
        return root / sub / "anat", sub
    ses = f"ses-{_strip(session, 'ses-')}"
    return root / sub / ses / "anat", f"{sub}_{ses}"


# --------------------------------------------------------------------------------------------
# Metadata texts
# --------------------------------------------------------------------------------------------


def _dataset_description() -> dict[str, Any]:
    return {
        "Name": "tumsyn-simulate: physics-based multi-contrast brain MRI simulation",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": _LICENSE,
        "Authors": ["tumsyn-bids developers"],
        "Acknowledgements": (
            "Anatomy from the MNI ICBM152 2009 template, " + TEMPLATE_NOTICE.split(". ")[0] + "."
        ),
        "HowToAcknowledge": (
            "Cite the MNI ICBM152 2009 template (Fonov et al. 2009, 2011; see "
            "ReferencesAndLinks) and keep its copyright notice (README) with the data."
        ),
        "ReferencesAndLinks": [*TEMPLATE_REFERENCES, *_TISSUE_REFERENCES],
        "GeneratedBy": [
            {
                "Name": GENERATOR,
                "Version": __version__,
                "Description": "Physics-based simulation of T1w, T2w, FLAIR, PDw and T2starw "
                "images from tissue maps warped from the MNI ICBM152 2009 template.",
            }
        ],
        "SourceDatasets": [
            {
                "URL": "https://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/",
                "Version": "ICBM152 2009a nonlinear symmetric (as shipped by nilearn)",
            }
        ],
    }


def _derivative_description() -> dict[str, Any]:
    return {
        "Name": "tumsyn-simulate ground truth: tissue fractions and brain masks",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "License": _LICENSE,
        "GeneratedBy": [
            {
                "Name": GENERATOR,
                "Version": __version__,
                "Description": "The warped tissue maps every simulated scan was rendered from.",
            }
        ],
        "ReferencesAndLinks": list(TEMPLATE_REFERENCES),
    }


_TISSUE_NAMES = {"GM": "grey matter", "WM": "white matter", "CSF": "cerebrospinal fluid"}

#: Derivative ``label-`` values of the head tissues, and what they are.
_HEAD_LABELS = {"EXTCSF": "ExtCSF", "BONE": "Bone", "FAT": "Fat", "MUSCLE": "Muscle"}
_HEAD_NAMES = {
    "EXTCSF": "extra-axial cerebrospinal fluid (between the brain mask and the skull)",
    "BONE": "cortical bone of the skull (and the bone share of the diploe)",
    "FAT": "subcutaneous fat (and the fatty marrow share of the diploe)",
    "MUSCLE": "scalp muscle, galea and skin",
}

_PARTICIPANTS_JSON = {
    "age": {"Description": "age of the simulated participant", "Units": "year"},
    "sex": {
        "Description": "sex of the simulated participant (sets the expected head size)",
        "Levels": {"M": "male", "F": "female"},
    },
}


def _head_sentence(settings: Mapping[str, Any]) -> str:
    """The README's words on the head, up to the line break before "ranges;"."""
    if settings.get("with_head"):
        return (
            "Each brain is wrapped in a simulated\nhead (extra-axial CSF, skull with diploe, "
            "scalp muscle, subcutaneous fat, skin; no face\nor neck), rendered with the same "
            "equations; the brain mask in the derivatives is still exact.\nAcquisition "
            "parameters are drawn at random per scan from typical"
        )
    return (
        "There is no skull or scalp: the\nimages look skull-stripped. Acquisition parameters "
        "are drawn at random per scan from typical"
    )


def _readme(settings: Mapping[str, Any]) -> str:
    refs = "\n".join(f"- {ref}" for ref in (*TEMPLATE_REFERENCES, *_TISSUE_REFERENCES))
    return f"""\
Simulated multi-contrast brain MRI (tumsyn-simulate)
====================================================

This dataset was written by `tumsyn-simulate` (tumsyn-bids {__version__}). It is NOT acquired
data. Each participant is the {TEMPLATE_NAME} template's grey-matter, white-matter and CSF
maps, warped by a smooth random deformation and a small random rotation, shift and scale. Each
image is rendered from those tissue maps with the steady-state signal equation of its sequence
(spin echo, variable-flip-angle 3-D TSE, inversion recovery, spoiled gradient echo or MPRAGE)
using literature relaxation times and proton densities at the participant's field strength,
multiplied by a smooth bias field, with Rician noise added. {_head_sentence(settings)}
ranges; each scan's sidecar holds its exact protocol (times in seconds, angles in degrees).
Variable-flip-angle 3-D TSE scans ("T2var" in TUMSyn prompts) have FlipAngle 120 (the nominal
refocusing angle; BIDS needs a number), MRAcquisitionType 3D and PulseSequenceType SPACE, CUBE
or VISTA.

Ground truth: derivatives/simulation holds, per participant, the exact tissue fractions
(label-GM/WM/CSF probseg, uint8 scaled by 1/{FRACTION_LEVELS}) and a brain mask, on the grid of
the scans. The noise-free image of ANY protocol follows from them:

    from tumsyn_bids.simulate import render_ground_truth
    img = render_ground_truth(dataset_dir, "01", sidecar_or_protocol, "T2w")

Settings of this run: {json.dumps(dict(settings), sort_keys=True)}
(also in {SETTINGS_RELPATH}).

References
----------

{refs}

Template copyright notice
-------------------------

The anatomy is derived from the MNI ICBM152 2009 template. Its copyright notice, which must
accompany all copies of this data:

{TEMPLATE_NOTICE}
"""


def _derivative_readme(with_head: bool = False) -> str:
    head = (
        "\nSimulated heads: label-<ExtCSF|Bone|Fat|Muscle>_probseg hold the fractions of the "
        "tissues around the brain\n(extra-axial CSF, skull, fat, scalp muscle and skin), same "
        "encoding; they are 0 inside the brain mask.\n"
        if with_head
        else ""
    )
    return f"""\
tumsyn-simulate ground truth
============================

For every simulated participant: the fractions of grey matter, white matter and CSF per voxel
(sub-XX_label-<GM|WM|CSF>_probseg.nii.gz, stored as uint8 with scl_slope 1/{FRACTION_LEVELS};
GM + WM + CSF <= 1, the rest is empty space) and a brain mask (GM + WM + CSF >= 0.5). These are
exactly the maps the raw dataset's scans were rendered from, on the same grid. Derived from the
MNI ICBM152 2009 template:

{TEMPLATE_NOTICE}
{head}"""


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _probseg_image(levels: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(levels, dtype=np.uint8), affine)
    img.header.set_slope_inter(float(np.float32(1.0 / FRACTION_LEVELS)), 0.0)
    _finish_header(img, affine, "tumsyn-simulate tissue fraction")
    return img


def _mask_image(mask: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), affine)
    _finish_header(img, affine, "tumsyn-simulate brain mask")
    return img


def _write_subject(
    root: Path,
    subject: SimulatedSubject,
    modalities: Sequence[str],
    voxel_size: float,
    snr: float,
    derivatives: bool,
    runs: int = 1,
    with_head: bool = False,
) -> None:
    anat, stem = anat_dir(root, subject.label, None)
    for suffix in modalities:
        for run in range(runs):
            drawn = sample_protocol(
                suffix,
                subject.protocol_rng(suffix, run),
                subject.field_strength,
                subject.manufacturer,
            )
            img = subject.encoded_scan(
                drawn.protocol, suffix, voxel_size, snr, run=run, head=with_head
            )
            name = f"{stem}_run-{run + 1}_{suffix}" if runs > 1 else f"{stem}_{suffix}"
            atomic_save_nifti(img, anat / f"{name}.nii.gz")
            atomic_write_json(anat / f"{name}.json", drawn.sidecar)
    if derivatives:
        danat, dstem = anat_dir(root / DERIVATIVES_RELPATH, subject.label, None)
        levels = subject.tissue_levels(voxel_size, with_head)
        maps = subject.tissue_maps(voxel_size, with_head)
        sources = []
        for tissue in TISSUES:
            name = f"{dstem}_label-{tissue}_probseg"
            atomic_save_nifti(_probseg_image(levels[tissue], maps.affine), danat / f"{name}.nii.gz")
            atomic_write_json(
                danat / f"{name}.json",
                {
                    "Description": f"{_TISSUE_NAMES[tissue]} fraction per voxel: the ground truth "
                    "every simulated scan of this participant was rendered from"
                },
            )
            sources.append(f"bids::{(danat / name).relative_to(root / DERIVATIVES_RELPATH)}.nii.gz")
        name = f"{dstem}_desc-brain_mask"
        atomic_save_nifti(_mask_image(maps.brain_mask(), maps.affine), danat / f"{name}.nii.gz")
        atomic_write_json(
            danat / f"{name}.json",
            {
                "Description": "voxels whose GM + WM + CSF fraction is at least 0.5",
                "Type": "Brain",
                "Sources": sources,
            },
        )
        if with_head:
            head = subject.head_levels(voxel_size)
            for tissue in HEAD_TISSUES:
                name = f"{dstem}_label-{_HEAD_LABELS[tissue]}_probseg"
                image = _probseg_image(head[tissue], maps.affine)
                atomic_save_nifti(image, danat / f"{name}.nii.gz")
                atomic_write_json(
                    danat / f"{name}.json",
                    {"Description": f"{_HEAD_NAMES[tissue]}: fraction per voxel, simulated head"},
                )


def _write_subject_job(job: tuple) -> None:
    """:func:`_write_subject` for one subject, then free its maps (about 90 MB at 1 mm)."""
    subject = job[1]
    _write_subject(*job)
    subject.clear_cache()


def _is_ours(root: Path) -> bool:
    try:
        description = json.loads((root / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    generated = description.get("GeneratedBy") if isinstance(description, dict) else None
    return isinstance(generated, list) and any(
        isinstance(g, dict) and g.get("Name") == GENERATOR for g in generated
    )


def _check_target(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{root} exists and is not empty; choose a new or empty folder, or overwrite "
                "a dataset that tumsyn-simulate wrote earlier (--overwrite)"
            )
        if not _is_ours(root):
            raise FileExistsError(
                f"{root} is not empty and was not written by tumsyn-simulate; refusing to "
                "replace it even with --overwrite"
            )


def write_simulated_dataset(
    out_dir: str | os.PathLike[str],
    n_subjects: int = 4,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    seed: int = 0,
    voxel_size: float = 1.5,
    snr: float = 30.0,
    *,
    derivatives: bool = True,
    first_subject: int = 1,
    labels: Sequence[str] | None = None,
    overwrite: bool = False,
    n_procs: int = 1,
    runs: int = 1,
    with_head: bool = False,
) -> Path:
    """Simulate subjects and write them as a BIDS dataset at ``out_dir``; return its path.

    ``n_subjects`` participants labelled ``first_subject``, ``first_subject + 1``, ... (or the
    given ``labels``, alphanumeric, which override both) each get a scan per suffix in
    ``modalities`` on an isotropic ``voxel_size`` mm grid, with Rician noise at ``snr`` (mean
    brain signal over noise SD). A subject depends only on ``seed`` and its label, so held-out
    subjects can be added later with new labels (``first_subject``) or another ``seed``.
    ``derivatives`` writes the ground-truth tissue maps (module docstring).

    ``out_dir`` must be new or empty; with ``overwrite`` a dataset that tumsyn-simulate wrote
    earlier is replaced (anything else is refused, ``FileExistsError``). The dataset is built
    in a temporary sibling folder and renamed into place when complete. ``n_procs`` > 1
    simulates subjects in that many processes; the files are the same.

    ``runs`` > 1 gives every subject that many scans per suffix (BIDS ``run-1`` ... ``run-N``),
    each with its own protocol, bias field and noise: the same anatomy under several protocols,
    so that a model trained on them can only tell the targets apart by their prompts. Run 1 is
    the scan a single-run dataset of the same seed holds.

    ``with_head`` wraps every brain in a simulated head (:mod:`.head`) on a grid widened by
    :data:`.head.HEAD_MARGIN_MM` per side; the derivatives add the head tissues' fractions
    (``label-ExtCSF|Bone|Fat|Muscle_probseg``) and keep the brain's maps and mask exact.
    """
    modalities = tuple(modalities)
    unknown = [m for m in modalities if m not in SUFFIXES]
    if unknown or not modalities:
        raise ValueError(
            f"unknown modalities {unknown or modalities}; choose from {', '.join(SUFFIXES)}"
        )
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities repeat: {modalities}")
    if not voxel_size > 0 or not snr > 0:
        raise ValueError("voxel_size and snr must be positive")
    if int(runs) != runs or runs < 1:
        raise ValueError(f"runs must be a positive whole number, got {runs!r}")
    if labels is None:
        labels = subject_labels(n_subjects, first_subject)
    labels = [_strip(str(label), "sub-") for label in labels]
    bad = [label for label in labels if not _LABEL.match(label)]
    if bad or len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"subject labels must be unique and alphanumeric, got {labels}")

    root = Path(out_dir)
    _check_target(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    staging = root.parent / f".{root.name}.tmp{token}"
    settings = {
        "labels": list(labels),
        "modalities": list(modalities),
        "seed": int(seed),
        "snr": float(snr),
        "voxel_size": float(voxel_size),
        "derivatives": bool(derivatives),
        "version": __version__,
    }
    if runs > 1:  # only then, so that single-run datasets stay byte-identical to earlier ones
        settings["runs"] = int(runs)
    if with_head:  # likewise
        settings["with_head"] = True
    subjects = [draw_subject(label, seed) for label in labels]
    try:
        staging.mkdir()
        atomic_write_json(staging / "dataset_description.json", _dataset_description())
        atomic_write_text(staging / "README", _readme(settings))
        atomic_write_json(staging / SETTINGS_RELPATH, settings)
        rows = "".join(f"sub-{s.label}\t{s.age}\t{s.sex}\n" for s in subjects)
        atomic_write_text(staging / "participants.tsv", "participant_id\tage\tsex\n" + rows)
        atomic_write_json(staging / "participants.json", _PARTICIPANTS_JSON)
        if derivatives:
            deriv = staging / DERIVATIVES_RELPATH
            atomic_write_json(deriv / "dataset_description.json", _derivative_description())
            atomic_write_text(deriv / "README", _derivative_readme(with_head))
        jobs = [
            (staging, s, modalities, voxel_size, snr, derivatives, int(runs), bool(with_head))
            for s in subjects
        ]
        if n_procs > 1 and len(jobs) > 1:
            # "spawn": safe even when the caller has threads (torch, BLAS) running.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(n_procs, len(jobs)), mp_context=context) as pool:
                list(pool.map(_write_subject_job, jobs))
        else:
            for job in jobs:
                _write_subject_job(job)
        _replace_folder(staging, root, token)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _replace_folder(staging: Path, root: Path, token: str) -> None:
    """Move the finished ``staging`` folder to ``root``, replacing what is there."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if root.exists():
        old = root.parent / f".{root.name}.old{token}"
        os.replace(root, old)
        os.replace(staging, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, root)
