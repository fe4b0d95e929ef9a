"""What a report shows, gathered from a derivatives folder.

The source of truth is the output folder itself: every synthesized image with its sidecar
(``*_desc-tumsynFrom*``), plus each participant's ``sub-XX/log/jobs.tsv`` (status and compute
time of every job, written by :mod:`tumsyn_bids.pipeline`) and crash files. Reading files
rather than the in-memory plan is what lets ``--reports-only`` and the group level work on
outputs of earlier runs, including runs of other participants on other machines.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import pandas as pd

from ..bids.names import DESC_PREFIX, RAW_LINK, subject_log_dir

_BIDS_URI = re.compile(rf"^bids:{RAW_LINK}:(?P<path>.+)$")
_SUBJECT_DIR = re.compile(r"^sub-(?P<label>[A-Za-z0-9]+)$")


@dataclass
class OutputRecord:
    """One job of a participant: a synthesized image, or a job that did not produce one."""

    subject: str
    session: str | None
    output: str  # relative to the output folder (or the source, for a job without output)
    status: str  # done, failed, error, planned (never finished), ...
    source: str | None = None  # relative to the input dataset
    target_suffix: str | None = None
    message: str = ""
    seconds: float | None = None
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def has_image(self) -> bool:
        return bool(self.sidecar)

    @property
    def stem(self) -> str:
        """The output's file name without extension (figure names are built on it)."""
        name = PurePath(self.output).name
        for ext in (".nii.gz", ".nii"):
            if name.endswith(ext):
                return name[: -len(ext)]
        return name


def source_from_sidecar(sidecar: dict[str, Any]) -> str | None:
    """The input-relative path of the source image, from the sidecar's BIDS URI."""
    for uri in sidecar.get("Sources") or []:
        match = _BIDS_URI.match(str(uri))
        if match:
            return match.group("path")
    return None


def list_subjects(output_dir: str | os.PathLike[str]) -> list[str]:
    """Labels of the participants with a folder in the output (sorted)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    labels = [m.group("label") for p in root.iterdir() if (m := _SUBJECT_DIR.match(p.name))]
    return sorted(labels)


def _entity(name: str, key: str) -> str | None:
    match = re.search(rf"(?:^|_){key}-([A-Za-z0-9]+)", name)
    return match.group(1) if match else None


def read_jobs(output_dir: str | os.PathLike[str], subject: str) -> pd.DataFrame:
    """The participant's ``jobs.tsv`` (empty when the participant never ran here)."""
    path = subject_log_dir(output_dir, subject) / "jobs.tsv"
    if not path.is_file():
        return pd.DataFrame(columns=["output", "status", "message", "seconds"])
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def crash_files(output_dir: str | os.PathLike[str], subject: str) -> list[Path]:
    """Crash files nipype wrote for the participant (oldest first)."""
    folder = subject_log_dir(output_dir, subject)
    return sorted(folder.glob("crash-*"), key=lambda p: (p.stat().st_mtime, p.name))


def _seconds(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN -> None


def collect_subject(output_dir: str | os.PathLike[str], subject: str) -> list[OutputRecord]:
    """Every job of ``subject`` found in the output folder, sorted by output path.

    Images come from their sidecars; ``jobs.tsv`` adds status, message and run time, and
    contributes the jobs that left no image (failed, refused), so the report lists them too.
    Copies of an image in a template space (``space-`` entity, ``--output-spaces``) are not
    jobs of their own and are not listed.
    """
    root = Path(output_dir)
    jobs = read_jobs(root, subject).set_index("output", drop=False)
    records: dict[str, OutputRecord] = {}
    pattern = f"**/sub-{subject}_*desc-{DESC_PREFIX}*.json"
    for sidecar_path in sorted((root / f"sub-{subject}").glob(pattern)):
        if _entity(sidecar_path.name, "space"):
            continue  # the same job's image in a template space (--output-spaces)
        image = None
        for ext in (".nii.gz", ".nii"):
            candidate = sidecar_path.with_name(sidecar_path.name[: -len(".json")] + ext)
            if candidate.is_file():
                image = candidate
        if image is None:
            continue
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        rel = image.relative_to(root).as_posix()
        suffix = image.name.split("_")[-1].split(".")[0]
        records[rel] = OutputRecord(
            subject=subject,
            session=_entity(image.name, "ses"),
            output=rel,
            status="done",
            source=source_from_sidecar(sidecar),
            target_suffix=suffix,
            sidecar=sidecar,
        )
    for row in jobs.itertuples(index=False):
        record = records.get(row.output)
        if record is None:
            record = OutputRecord(
                subject=subject,
                session=_entity(PurePath(row.output).name, "ses"),
                output=row.output,
                status=row.status or "unknown",
                source=getattr(row, "source", None) or None,
                target_suffix=getattr(row, "target_suffix", None) or None,
            )
            records[row.output] = record
        record.message = row.message or ""
        record.seconds = _seconds(row.seconds)
        if not record.has_image and row.status:
            record.status = row.status
    return [records[k] for k in sorted(records)]


#: Figures of a source's preprocessing, by kind: the brain-mask outline and N4's bias field.
PREPROC_FIGURES = ("brainmask", "inu")


def source_stem(source_relpath: str) -> str:
    """A source image's file name without extension (``sub-01_T1w``): names its preprocessing
    figures and record."""
    name = PurePath(source_relpath).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def preproc_record_relpath(subject: str, stem: str) -> str:
    """``sub-XX/log/<source stem>_preproc.json``: what preprocessing did to one source."""
    return f"sub-{subject}/log/{stem}_preproc.json"


def preproc_figure_relpath(subject: str, stem: str, kind: str) -> str:
    """``sub-XX/figures/<source stem>_<kind>.png`` (``kind`` in :data:`PREPROC_FIGURES`)."""
    if kind not in PREPROC_FIGURES:
        raise ValueError(f"unknown preprocessing figure {kind!r}")
    return f"sub-{subject}/figures/{stem}_{kind}.png"


@dataclass
class PreprocRecord:
    """What preprocessing did to one source image (read from its record in ``sub-XX/log``)."""

    subject: str
    session: str | None
    source: str  # the source's file name without extension
    summary: dict[str, Any]
    figures: dict[str, str]  # kind -> path relative to the output folder


def collect_preproc(output_dir: str | os.PathLike[str], subject: str) -> list[PreprocRecord]:
    """Every source of ``subject`` whose preprocessing left a record, sorted by name, with the
    figures that exist."""
    root = Path(output_dir)
    records = []
    for path in sorted(subject_log_dir(root, subject).glob("*_preproc.json")):
        stem = path.name[: -len("_preproc.json")]
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        figures = {}
        for kind in PREPROC_FIGURES:
            rel = preproc_figure_relpath(subject, stem, kind)
            if (root / rel).is_file():
                figures[kind] = rel
        records.append(PreprocRecord(subject, _entity(stem, "ses"), stem, summary, figures))
    return records


def registration_relpath(subject: str, stem: str, template: str, kind: str) -> str:
    """Where the registration of one source to a template is recorded: ``kind`` ``record``
    gives ``sub-XX/log/<source stem>_space-<template>_registration.json`` (Dice, settings, run
    time), ``figure`` gives ``sub-XX/figures/<source stem>_space-<template>_registration.png``
    (the template's brain-mask outline over the warped source brain)."""
    if kind == "record":
        return f"sub-{subject}/log/{stem}_space-{template}_registration.json"
    if kind == "figure":
        return f"sub-{subject}/figures/{stem}_space-{template}_registration.png"
    raise ValueError(f"unknown registration file kind {kind!r}")


#: A registration whose warped brain mask overlaps the template's with a Dice below this is
#: flagged in the reports (the issue's acceptance bar; the default settings give 0.97-0.98 on
#: real and simulated heads, docs/templates.md).
REGISTRATION_DICE_MIN = 0.90


@dataclass
class RegistrationRecord:
    """The registration of one source image to one template (from ``sub-XX/log``)."""

    subject: str
    session: str | None
    source: str  # the source's file name without extension
    template: str
    record: dict[str, Any]
    figure: str | None  # path relative to the output folder, when it exists

    @property
    def dice(self) -> float | None:
        """Dice of the warped brain mask against the template's (None when not recorded)."""
        value = self.record.get("Dice")
        return float(value) if isinstance(value, int | float) else None


def collect_registrations(
    output_dir: str | os.PathLike[str], subject: str
) -> list[RegistrationRecord]:
    """Every registration of ``subject``'s sources to a template that left a record (sorted by
    file name), with its figure when it exists."""
    root = Path(output_dir)
    found = []
    pattern = re.compile(r"^(?P<stem>.+)_space-(?P<tpl>[A-Za-z0-9]+)_registration\.json$")
    for path in sorted(subject_log_dir(root, subject).glob("*_registration.json")):
        match = pattern.match(path.name)
        if not match:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        stem, template = match.group("stem"), match.group("tpl")
        figure = registration_relpath(subject, stem, template, "figure")
        found.append(
            RegistrationRecord(
                subject, _entity(stem, "ses"), stem, template, record,
                figure if (root / figure).is_file() else None,
            )
        )  # fmt: skip
    return found


def dataset_participants(bids_dir: str | os.PathLike[str]) -> list[str]:
    """Participant labels of an input dataset: ``sub-*`` folders and ``participants.tsv``."""
    root = Path(bids_dir)
    labels = set(list_subjects(root))
    table = root / "participants.tsv"
    if table.is_file():
        frame = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
        if "participant_id" in frame:
            labels |= {p.removeprefix("sub-") for p in frame["participant_id"] if p}
    return sorted(labels)
