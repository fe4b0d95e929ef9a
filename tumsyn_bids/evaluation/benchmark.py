"""Score a model on held-out simulated subjects against exact ground truth and two baselines.

For every subject that has both images of a task (e.g. a T1w and a T2w), the model synthesizes
the target from the source with the target scan's own protocol in the prompt, built exactly as
the BIDS App builds it. The simulator renders that protocol's noise-free, bias-free image from
the subject's tissue maps: the ground truth. Every image is put through TUMSyn's percentile
normalisation (the space the model predicts in) and scored inside the brain mask. Two baselines
are scored the same way:

* ``source``: the normalised source image itself (what you get by doing nothing);
* ``histmatch``: the source histogram-matched to the ground truth inside the brain mask. It
  borrows the *true* target's intensity distribution, which favours the baseline, but a
  monotonic map cannot invert a contrast.

The TE check asks whether the model reads the prompt: two T2w prompts that differ only in TE
must change the CSF/white-matter ratio the way the physics (the ground truth) does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..bids.layout import index_anatomical
from ..bids.records import ScanRecord
from ..model.inference import InputImageError, Synthesizer, percentile_normalise
from ..model.speed import preset
from ..model.volume import synthesize_nifti
from ..prompts.protocol import Protocol
from ..prompts.template import target_prompt
from ..simulate import brain_mask, load_tissue_maps, render_ground_truth
from .metrics import histogram_match, psnr, ssim, tissue_ratio

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    source: str
    target: str

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"

    @classmethod
    def parse(cls, text: str) -> Task:
        source, sep, target = text.partition(":")
        if not sep or not source or not target:
            raise ValueError(f"a task is SOURCE:TARGET, e.g. T1w:T2w; got {text!r}")
        return cls(source, target)


DEFAULT_TASKS: tuple[Task, ...] = (Task("T1w", "T2w"), Task("T1w", "FLAIR"), Task("T2w", "T1w"))
METHODS: tuple[str, ...] = ("model", "source", "histmatch")

#: The TE check's two T2w protocols (2-D TSE, 3 T): only the echo time differs.
TE_CHECK_PROTOCOL = Protocol(repetition_time=4.0, echo_time=0.08, flip_angle=150.0)
TE_CHECK_ECHO_TIMES: tuple[float, float] = (0.08, 0.14)
#: Voxels at least this pure count as CSF or white matter in the TE check.
PURE_TISSUE = 0.9


def _sessions(records: Iterable[ScanRecord]) -> dict[tuple[str, str | None], dict[str, Any]]:
    groups: dict[tuple[str, str | None], dict[str, ScanRecord]] = {}
    for record in records:
        if record.ok:
            groups.setdefault((record.subject, record.session), {}).setdefault(
                record.suffix, record
            )
    return groups


@dataclass(frozen=True)
class Patching:
    """How the evaluation cuts volumes: patch size in (i, j, k) voxels, overlap, batch, and
    the ``--speed`` preset (:mod:`tumsyn_bids.model.speed`; the synthesizer must have been
    built with its :meth:`~tumsyn_bids.model.speed.SpeedPreset.synthesizer_options`). No mask
    is given: the scores' SSIM window reads voxels just outside the brain."""

    patch_size: tuple[int, int, int] = (60, 60, 60)
    overlap: float = 0.5
    batch_size: int = 1
    speed: str = "default"


def _synthesize(
    synth: Synthesizer, source: ScanRecord, prompt: str, patching: Patching
) -> np.ndarray:
    """The model's image in nibabel (i, j, k) order, on the source grid."""
    img, _ = synthesize_nifti(
        synth,
        source.path,
        prompt,
        patch_size=patching.patch_size,
        overlap=patching.overlap,
        batch_size=patching.batch_size,
        **preset(patching.speed).engine_options(),
    )
    return np.asarray(img.dataobj, dtype=np.float64)


def _prompt(source: ScanRecord, target: str, protocol: Protocol) -> str:
    return target_prompt(
        target, protocol, source.demographics, source.voxel_size, source_protocol=source.protocol
    )


def evaluate(
    dataset_dir: str | Path,
    synth: Synthesizer,
    tasks: Sequence[Task] = DEFAULT_TASKS,
    patching: Patching | None = None,
    participant_labels: Sequence[str] | None = None,
    save_dir: Path | None = None,
) -> pd.DataFrame:
    """One row per (subject, session, task, method) with PSNR (dB) and SSIM inside the brain."""
    import nibabel as nib

    patching = patching or Patching()
    index = index_anatomical(dataset_dir, participant_labels=participant_labels)
    rows = []
    for (subject, session), scans in sorted(_sessions(index).items(), key=str):
        mask = np.asarray(brain_mask(dataset_dir, subject, session).dataobj) > 0
        for task in tasks:
            if task.source not in scans or task.target not in scans:
                continue
            source, target = scans[task.source], scans[task.target]
            truth_img = render_ground_truth(
                dataset_dir, subject, target.protocol, task.target, session
            )
            truth = percentile_normalise(np.asarray(truth_img.dataobj))
            src = np.asarray(nib.load(source.path).dataobj, dtype=np.float64)
            prompt = _prompt(source, task.target, target.protocol)
            predicted = _synthesize(synth, source, prompt, patching)
            candidates = {
                "model": predicted,
                "source": src,
                "histmatch": histogram_match(src, truth, mask),
            }
            for method, image in candidates.items():
                try:
                    norm = percentile_normalise(image)
                except InputImageError as exc:
                    raise InputImageError(
                        f"sub-{subject} {task.name}: the {method} image cannot be scored: {exc}"
                    ) from exc
                rows.append(
                    {
                        "subject": subject,
                        "session": session or "",
                        "task": task.name,
                        "method": method,
                        "psnr": psnr(norm, truth, mask),
                        "ssim": ssim(norm, truth, mask),
                    }
                )
            if save_dir is not None:
                save_dir.mkdir(parents=True, exist_ok=True)
                stem = f"sub-{subject}{'_ses-' + session if session else ''}_{task.source}to"
                nib.save(
                    nib.Nifti1Image(predicted.astype(np.float32), truth_img.affine),
                    save_dir / f"{stem}{task.target}_model.nii.gz",
                )
                nib.save(truth_img, save_dir / f"{stem}{task.target}_truth.nii.gz")
            LOGGER.info("sub-%s %s done", subject, task.name)
    return pd.DataFrame(rows, columns=["subject", "session", "task", "method", "psnr", "ssim"])


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD per task and method, plus the model's margin over the better baseline."""
    table = (
        scores.groupby(["task", "method"], sort=False)[["psnr", "ssim"]]
        .agg(["mean", "std", "count"])
        .round(4)
    )
    table.columns = ["_".join(c) for c in table.columns]
    return table.reset_index()


def margins(scores: pd.DataFrame) -> dict[str, float]:
    """Per task: mean model PSNR minus the better baseline's mean PSNR (dB)."""
    means = scores.groupby(["task", "method"])["psnr"].mean()
    out = {}
    for task in scores["task"].unique():
        base = max(means.get((task, "source"), -np.inf), means.get((task, "histmatch"), -np.inf))
        out[task] = round(float(means[(task, "model")] - base), 3)
    return out


def te_check(
    dataset_dir: str | Path,
    synth: Synthesizer,
    patching: Patching | None = None,
    participant_labels: Sequence[str] | None = None,
    source_suffix: str = "T1w",
) -> pd.DataFrame:
    """CSF/WM ratio of T2w images at two echo times: ground truth versus the model."""
    patching = patching or Patching()
    index = index_anatomical(dataset_dir, participant_labels=participant_labels)
    rows = []
    for (subject, session), scans in sorted(_sessions(index).items(), key=str):
        if source_suffix not in scans:
            continue
        source = scans[source_suffix]
        maps = load_tissue_maps(dataset_dir, subject, session)
        csf, wm = maps.csf >= PURE_TISSUE, maps.wm >= PURE_TISSUE
        for te in TE_CHECK_ECHO_TIMES:
            protocol = replace(TE_CHECK_PROTOCOL, echo_time=te)
            truth = np.asarray(
                render_ground_truth(dataset_dir, subject, protocol, "T2w", session).dataobj
            )
            predicted = _synthesize(synth, source, _prompt(source, "T2w", protocol), patching)
            rows.append(
                {
                    "subject": subject,
                    "session": session or "",
                    "echo_time": te,
                    "truth_csf_wm": tissue_ratio(truth, csf, wm),
                    "model_csf_wm": tissue_ratio(predicted, csf, wm),
                }
            )
    return pd.DataFrame(rows)


def te_followed(check: pd.DataFrame) -> dict[str, Any]:
    """Whether raising TE raised the CSF/WM ratio, in the truth and in the model, per subject."""
    lo, hi = TE_CHECK_ECHO_TIMES
    out: dict[str, Any] = {"subjects": 0, "truth_rises": 0, "model_rises": 0}
    for _, group in check.groupby(["subject", "session"]):
        by_te = group.set_index("echo_time")
        out["subjects"] += 1
        out["truth_rises"] += int(by_te.loc[hi, "truth_csf_wm"] > by_te.loc[lo, "truth_csf_wm"])
        out["model_rises"] += int(by_te.loc[hi, "model_csf_wm"] > by_te.loc[lo, "model_csf_wm"])
    return out
