"""Scores of synthesized images inside a simulated subject's true brain
(:func:`tumsyn_bids.evaluation.preproc.score_outputs`), against the simulator's own noise-free
image, with and without restricting them to another mask."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.evaluation.preproc import score_outputs
from tumsyn_bids.simulate import brain_mask, render_ground_truth, write_simulated_dataset

OUT = "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.nii.gz"


@pytest.mark.slow
def test_scores_inside_the_true_brain_and_within_a_mask(tmp_path):
    bids = write_simulated_dataset(
        tmp_path / "bids", n_subjects=1, modalities=("T1w", "T2w"), seed=3, voxel_size=4.0
    )
    scan = bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    protocol = json.loads(scan.with_name("sub-01_T2w.json").read_text())
    truth = render_ground_truth(bids, "01", protocol, "T2w")
    out = tmp_path / "out" / OUT
    out.parent.mkdir(parents=True)
    shutil.copy(scan.with_name("sub-01_T2w.json"), out.with_name(out.name[:-7] + ".json"))
    side = {"TargetProtocol": {**protocol, "VoxelSize": [4.0, 4.0, 4.0]}}
    out.with_name(out.name[:-7] + ".json").write_text(json.dumps(side))

    # the noise-free image itself scores infinity; outside the brain anything goes
    mask = np.asarray(brain_mask(bids, "01").dataobj) > 0
    data = np.asarray(truth.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(np.where(mask, data, 123.0), truth.affine), out)
    assert score_outputs(tmp_path / "out", bids, [OUT]) == {OUT: float("inf")}

    # an error in the lower half of the brain, on dark voxels only (so that the normalising
    # percentiles stay put): finite overall, infinite in the upper half
    half = np.zeros(mask.shape, bool)
    half[:, :, mask.shape[2] // 2 :] = True
    wrong = data.copy()
    dark = data < np.median(data[mask])
    assert (mask & ~half & dark).any()
    wrong[mask & ~half & dark] *= 0.9
    nib.save(nib.Nifti1Image(wrong, truth.affine), out)
    assert np.isfinite(score_outputs(tmp_path / "out", bids, [OUT])[OUT])
    assert score_outputs(tmp_path / "out", bids, [OUT], within=half)[OUT] == float("inf")
    assert np.isfinite(score_outputs(tmp_path / "out", bids, [OUT], within=~half)[OUT])
    with pytest.raises(ValueError, match="not on the grid"):
        score_outputs(tmp_path / "out", bids, [OUT], within=half[1:])
