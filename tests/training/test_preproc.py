"""``tumsyn-train ... --preproc``: training reads the images the app's preprocessing makes,
from the app's own nodes, cached in the work folder (and shared with ``tumsyn`` runs)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.training.test_round_trip import RUN, TINY_STAGE2
from tumsyn_bids.cli.run import main as tumsyn
from tumsyn_bids.cli.train import main as train
from tumsyn_bids.model.bundled import demo_weights
from tumsyn_bids.simulate import write_simulated_dataset
from tumsyn_bids.training.preproc import MAP_NAME

ANAT = Path("tumsyn_wf") / "sub_01_wf"


@pytest.mark.slow
def test_training_reads_the_apps_preprocessed_images(tmp_path: Path) -> None:
    bids = write_simulated_dataset(
        tmp_path / "bids", n_subjects=1, modalities=("T1w", "T2w"), voxel_size=3.0, seed=3,
        with_head=True,
    )  # fmt: skip
    work = tmp_path / "work"
    _, text_encoder = demo_weights()
    stage2 = ["synthesis", str(bids), str(tmp_path / "s2"), "--text-encoder", str(text_encoder),
              "--preproc", "-w", str(work)]  # fmt: skip
    assert train([*stage2, *TINY_STAGE2, *RUN]) == 0
    mapping = json.loads((work / MAP_NAME).read_text())
    folders = {
        "sub-01/anat/sub-01_T1w.nii.gz": "anat_sub_01_T1w_wf",
        "sub-01/anat/sub-01_T2w.nii.gz": "anat_sub_01_T2w_wf",
    }
    assert set(mapping) == set(folders)
    masks = {}
    for rel, folder in folders.items():
        # the app's node names: the app run below finds them in the same work folder
        assert Path(mapping[rel]) == work / ANAT / folder / "preproc_wf/apply_mask/brain.nii.gz"
        brain = nib.load(mapping[rel])
        assert "".join(nib.aff2axcodes(brain.affine)) == "RAS"
        masks[rel] = np.asarray(brain.dataobj) != 0
        summary = json.loads((work / ANAT / folder / "preproc_wf/summary/preproc.json").read_text())
        method = "deepbet" if rel.endswith("T1w.nii.gz") else "t1w-same-grid"
        assert summary["BrainMask"]["Method"] == method  # the T2w takes the T1w's mask
    # one mask for both: the pair stays voxel-aligned, brain only
    t1w, t2w = masks.values()
    assert 0.1 < t1w.mean() < 0.6 and (t2w <= t1w).all() and t2w.sum() > 0.95 * t1w.sum()
    config = json.loads((tmp_path / "s2" / "config.json").read_text())
    assert config["preproc"] is True and config["skull_strip_source"] == "auto"

    # a tumsyn run on the same work folder reuses the brain mask (nipype's cache), not redoes it
    result = work / ANAT / "anat_sub_01_T1w_wf" / "preproc_wf" / "brain_mask"
    (pklz,) = result.glob("result_*.pklz")
    stamp = pklz.stat().st_mtime_ns
    code = tumsyn([str(bids), str(tmp_path / "out"), "participant", "-w", str(work),
                   "--skip-bids-validation", "--target", "FLAIR", "--nprocs", "1"])  # fmt: skip
    assert code == 0
    assert pklz.stat().st_mtime_ns == stamp
    assert (tmp_path / "out" / "sub-01/anat/sub-01_desc-brain_mask.nii.gz").is_file()
