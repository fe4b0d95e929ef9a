"""What preprocessing buys: synthesized images of a simulated head scored inside its brain.

A simulated head (``tumsyn-simulate --with-head``) has an exact brain: its tissue maps, brain
mask and noise-free images (:func:`tumsyn_bids.simulate.render_ground_truth`). Three inputs
can be compared through the same app run: the raw head with preprocessing (``--preproc
full``), the raw head without (``--preproc none``), and the *skull-free* head, the same scans
with every voxel outside the true brain mask set to 0 (:func:`skull_free_dataset`): what
perfect brain extraction would give the network.

Scores (:func:`score_outputs`) are PSNR inside the true brain mask after TUMSyn's percentile
normalisation of both images (:mod:`tumsyn_bids.evaluation.metrics`), with the synthesized
image restricted to the true brain first: how the arms treat the background (zero, the
network's output on skull and scalp) must not move the normalisation of the brain.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

from ..model.inference import percentile_normalise
from ..simulate import brain_mask, render_ground_truth, simulated_scans
from .metrics import psnr

__all__ = ["score_outputs", "skull_free_dataset"]


def skull_free_dataset(dataset_dir: str | Path, out_dir: str | Path) -> Path:
    """A copy of a simulated dataset whose scans are 0 outside each subject's true brain mask.

    Headers, sidecars and derivatives are copied unchanged; only the scans' voxels outside the
    mask change (float32). Raises ``FileExistsError`` when ``out_dir`` exists.
    """
    source, out = Path(dataset_dir), Path(out_dir)
    shutil.copytree(source, out)
    for scan in simulated_scans(out):
        mask = np.asarray(brain_mask(out, scan.subject, scan.session).dataobj) > 0
        img = nib.load(scan.path)
        data = np.where(mask, img.get_fdata(dtype=np.float32), np.float32(0))
        plain = nib.Nifti1Image(data.astype(np.float32), img.affine, img.header)
        plain.header.set_data_dtype(np.float32)
        plain.header.set_slope_inter(1.0, 0.0)
        nib.save(plain, scan.path)
    return out


def score_outputs(
    output_dir: str | Path,
    dataset_dir: str | Path,
    outputs: Iterable[str],
    within: np.ndarray | None = None,
) -> dict[str, float]:
    """PSNR (dB) inside the true brain of each synthesized image ``outputs`` (paths relative to
    ``output_dir``), against the noise-free image of the protocol its sidecar states
    (``TargetProtocol``), for the subject and session its name says. ``within`` (a boolean
    array on the subject's grid, i, j, k) scores only the true-brain voxels it holds, after the
    same normalisation (e.g. those inside an estimated brain mask too). Raises
    ``FileNotFoundError`` for a missing output or sidecar, ``ValueError`` for an output or
    ``within`` on another grid."""
    from ..bids.names import parse_filename

    scores = {}
    for rel in outputs:
        path = Path(output_dir) / rel
        sidecar = json.loads(path.with_name(path.name.split(".")[0] + ".json").read_text())
        entities, suffix, _ = parse_filename(path.name)
        subject, session = entities["sub"], entities.get("ses")
        protocol = {k: v for k, v in sidecar["TargetProtocol"].items() if k != "VoxelSize"}
        truth = np.asarray(
            render_ground_truth(dataset_dir, subject, protocol, suffix, session).dataobj,
            dtype=np.float64,
        )
        mask = np.asarray(brain_mask(dataset_dir, subject, session).dataobj) > 0
        image = np.asarray(nib.load(path).dataobj, dtype=np.float64)
        if image.shape != mask.shape:
            raise ValueError(f"{rel} is not on the grid of its simulated subject {mask.shape}")
        scored = mask
        if within is not None:
            if np.shape(within) != mask.shape:
                raise ValueError(f"the voxels to score are not on the grid of {rel} {mask.shape}")
            scored = mask & np.asarray(within, dtype=bool)
        scores[rel] = psnr(
            percentile_normalise(np.where(mask, image, 0.0)),
            percentile_normalise(np.where(mask, truth, 0.0)),
            scored,
        )
    return scores
