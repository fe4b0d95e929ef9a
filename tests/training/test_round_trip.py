"""Simulate -> train both stages -> run the BIDS App with the trained files.

Every step goes through the commands users run (tumsyn-simulate's writer, tumsyn-train,
tumsyn), so the formats written by training are the ones the app reads.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.cli.run import main as tumsyn
from tumsyn_bids.cli.train import main as train
from tumsyn_bids.model.metadata import file_sha256
from tumsyn_bids.simulate import write_simulated_dataset

TINY_STAGE1 = [
    "--image-size", "32", "--vision-layers", "1", "1", "1", "1", "--vision-width", "8",
    "--embed-dim", "16", "--text-width", "32", "--text-layers", "1", "--text-heads", "2",
]  # fmt: skip
TINY_STAGE2 = [
    "--n-resblocks", "1", "--n-feats", "8", "--decoder-hidden", "16", "16", "--lr-size", "12",
    "--sample-q", "64", "--scale-min", "1", "--scale-max", "2",
]  # fmt: skip
RUN = ["--batch-size", "2", "--max-steps", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("round_trip")
    bids = write_simulated_dataset(
        root / "bids", n_subjects=2, modalities=("T1w", "T2w"), voxel_size=3.0, seed=3
    )
    assert train(["text-encoder", str(bids), str(root / "s1"), *TINY_STAGE1, *RUN]) == 0
    text_encoder = root / "s1" / "text_encoder.pt"
    stage2 = ["synthesis", str(bids), str(root / "s2"), "--text-encoder", str(text_encoder)]
    assert train([*stage2, *TINY_STAGE2, *RUN]) == 0
    return bids, text_encoder, root / "s2" / "epoch-last.pth", root


@pytest.mark.slow
def test_trained_checkpoints_run_in_the_bids_app(trained):
    bids, text_encoder, synthesis, root = trained
    out = root / "derivatives"
    code = tumsyn(
        [str(bids), str(out), "participant", "--participant-label", "01"]
        + ["--source", "T1w", "--target", "T2w", "--nprocs", "1"]
        + ["--checkpoint", str(synthesis), "--text-encoder", str(text_encoder)]
        + ["-w", str(root / "work"), "--device", "cpu", "--preproc", "none"]
    )
    assert code == 0
    (image,) = (out / "sub-01" / "anat").glob("*_T2w.nii.gz")
    src = nib.load(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    img = nib.load(image)
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    assert np.isfinite(img.get_fdata()).all()
    sidecar = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
    # no --patch-size: the app infers on the 12-voxel patches the network was trained on
    assert sidecar["Inference"]["PatchSize"] == [12, 12, 12]
    model = sidecar["Model"]
    assert model["Checkpoints"]["Synthesis"]["SHA256"] == file_sha256(synthesis)
    assert model["Checkpoints"]["TextEncoder"]["SHA256"] == file_sha256(text_encoder)
    # what the checkpoint recorded, not the published default of 8 heads
    assert model["TextHeads"] == 2
    # trained here, so neither credited to nor linked with the published weights
    assert model["Name"] == "TUMSyn (tumsyn-train)" and "Weights" not in model
