"""``--output-spaces MNI152NLin2009aSym:res-2 T1w`` end to end, with the network unshared.

A simulated 2 mm head (``tumsyn-simulate --with-head``) goes through the BIDS App with the
bundled demo model: preprocessing (deepbet, N4), synthesis, registration to the template with
ANTs (the default settings), and the outputs resampled once into the template's res-2 grid.
Real pybids, nipype, deepbet, ANTsPy, TemplateFlow (a home made by ``tumsyn-templates init``)
and the BIDS validator. The expected grid and the template mask are read from the TemplateFlow
home's files here, not from the code under test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.colin27 import HEAD, requires_colin27
from tests.datasets import T1_SIDECAR, tree_digest
from tumsyn_bids.evaluation.metrics import dice
from tumsyn_bids.simulate import write_simulated_dataset

pytestmark = pytest.mark.slow

TPL = "MNI152NLin2009aSym"
SPACE = f"space-{TPL}_res-2"
SYNTH = f"sub-01/anat/sub-01_{SPACE}_desc-tumsynFromT1w_T2w.nii.gz"
NATIVE = "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.nii.gz"
MASK = f"sub-01/anat/sub-01_{SPACE}_desc-brain_mask.nii.gz"
FORWARD = f"sub-01/anat/sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5"
REVERSE = f"sub-01/anat/sub-01_from-{TPL}_to-T1w_mode-image_xfm.h5"


def unshare_prefix() -> tuple[str, ...]:
    """``unshare -n`` (an empty network namespace) when this user may create one, else ()."""
    try:
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
    except FileNotFoundError:
        return ()
    return ("unshare", "-n") if probe.returncode == 0 else ()


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())


def template_res1_mask(home: Path) -> nib.Nifti1Image:
    return nib.load(home / f"tpl-{TPL}" / f"tpl-{TPL}_res-1_desc-brain_mask.nii.gz")


@pytest.fixture(scope="module")
def space_run(tmp_path_factory, templateflow_home):
    base = tmp_path_factory.mktemp("space")
    bids = write_simulated_dataset(
        base / "bids", n_subjects=1, modalities=("T1w",), seed=7, voxel_size=2.0,
        with_head=True,
    )  # fmt: skip
    before = tree_digest(bids)
    prefix = unshare_prefix()
    cmd = [*prefix, sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(base / "out"),
           "participant", "-w", str(base / "work"), "--skip-bids-validation", "--target", "T2w",
           "--overlap", "0", "--nprocs", "2",
           "--output-spaces", f"{TPL}:res-2", "T1w"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3000)
    return base, bids, before, prefix, res


def test_outputs_on_the_template_grid(space_run, templateflow_home):
    base, bids, before, _, res = space_run
    assert res.returncode == 0, res.stderr[-3000:]
    out = base / "out"
    # the res-2 grid: 2 mm voxels over the res-1 field of view, corner-aligned (docs/templates.md)
    res1 = template_res1_mask(templateflow_home)
    expected_affine = res1.affine.copy()
    expected_affine[:3, :3] *= 2
    expected_affine[:3, 3] += res1.affine[:3, :3] @ [0.5, 0.5, 0.5]
    expected_shape = tuple(math.ceil(n / 2) for n in res1.shape)
    for rel in (SYNTH, MASK):
        img = nib.load(out / rel)
        assert img.shape == expected_shape, rel
        np.testing.assert_allclose(img.affine, expected_affine, atol=1e-5, err_msg=rel)
    # the warped brain mask against the template's, compared on the res-1 grid: each res-2
    # voxel covers 2 x 2 x 2 res-1 voxels
    mask = np.asarray(nib.load(out / MASK).dataobj)
    assert nib.load(out / MASK).get_data_dtype() == np.uint8 and set(np.unique(mask)) == {0, 1}
    up = mask.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: res1.shape[0], : res1.shape[1],
                                                     : res1.shape[2]]  # fmt: skip
    score = dice(up, np.asarray(res1.dataobj))
    assert score >= 0.90, score
    # the synthesized image: signal inside the template brain, zero far outside it
    synth = np.asarray(nib.load(out / SYNTH).dataobj)
    assert nib.load(out / SYNTH).get_data_dtype() == np.float32
    assert np.count_nonzero(synth[mask > 0]) > 0.9 * mask.sum()
    assert np.count_nonzero(synth[mask == 0]) < 0.05 * np.count_nonzero(mask == 0)
    # the source-grid output is still there, on the source grid
    source = nib.load(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    native = nib.load(out / NATIVE)
    assert native.shape == source.shape and np.array_equal(native.affine, source.affine)
    assert tree_digest(bids) == before  # the input dataset is never written to


def test_sidecars_transforms_and_validator(space_run):
    from tumsyn_bids.bids.validation import validate_bids

    base, _, _, _, res = space_run
    assert res.returncode == 0, res.stderr[-3000:]
    out = base / "out"
    side, native = _sidecar(out / SYNTH), _sidecar(out / NATIVE)
    assert side["SpatialReference"] == f"https://github.com/templateflow/tpl-{TPL}"
    assert "2" in side["Resolution"] and "derived" in side["Resolution"]["2"]
    assert side["Sources"] == [f"bids::{NATIVE}", f"bids::{FORWARD}"]
    assert side["Resampling"]["Interpolation"] == "linear"
    # everything else the source-grid sidecar says (whose SpatialReference is the source image)
    assert native["SpatialReference"] == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    for key, value in native.items():
        if key not in ("Sources", "SpatialReference"):
            assert side[key] == value, key
    mask_side = _sidecar(out / MASK)
    assert mask_side["Type"] == "Brain" and mask_side["SpatialReference"].endswith(TPL)
    assert mask_side["Resampling"]["Interpolation"] == "genericLabel"
    for rel in (FORWARD, REVERSE):
        assert (out / rel).read_bytes()[:8] == b"\x89HDF\r\n\x1a\n", rel  # ITK composite (HDF5)
    assert "*_xfm.h5" in (out / ".bidsignore").read_text().splitlines()
    result = validate_bids(out)
    assert result.ok, result.errors


def test_report_group_table_and_methods(space_run):
    base, bids, _, _, res = space_run
    assert res.returncode == 0, res.stderr[-3000:]
    out = base / "out"
    record = json.loads((out / f"sub-01/log/sub-01_T1w_space-{TPL}_registration.json").read_text())
    assert record["Dice"] >= 0.90 and record["Settings"] == "default"
    assert record["CPUTimeSeconds"] > 0
    figure = f"sub-01/figures/sub-01_T1w_space-{TPL}_registration.png"
    assert (out / figure).is_file() and figure in (out / "sub-01.html").read_text()
    page = (out / "sub-01.html").read_text()
    assert f"Registration of sub-01_T1w to {TPL}" in page
    # template-space copies are not jobs of their own in the report
    assert f"{SPACE}_desc-tumsynFromT1w_T2w_compare.png" not in page
    group = subprocess.run(
        [sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(out), "group"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert group.returncode == 0, group.stderr[-2000:]
    table = pd.read_csv(out / "group_synthesis.tsv", sep="\t")
    assert list(table["output"]) == [NATIVE]
    assert table["registration_dice"].iloc[0] == pytest.approx(record["Dice"], abs=1e-6)
    assert list(table["registration_outlier"]) == ["no"]
    citation = (out / "logs" / "CITATION.md").read_text()
    assert f"registered to the {TPL} template" in citation
    assert "resampled into the template (res-2) once" in citation


def test_run_had_no_network(space_run):
    _, _, _, prefix, res = space_run
    if not prefix:
        pytest.skip("unshare -n is not permitted here: the run above had the network")
    assert res.returncode == 0, res.stderr[-3000:]
    check = subprocess.run(
        [*prefix, sys.executable, "-c",
         "import socket; socket.create_connection(('pypi.org', 443), timeout=5)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode != 0  # the namespace the run used really has no network


# --------------------------------------------------------------------------------------------
# The Colin27 head at 1 mm (the one 1 mm case): a real head, its header moved by a rigid
# transform so that the registration has something to find
# --------------------------------------------------------------------------------------------


@requires_colin27
def test_colin27_head_registers_to_the_template(tmp_path, templateflow_home):
    from tests.interfaces.test_registration import rotation

    head = nib.load(HEAD)
    shift = np.eye(4)
    shift[:3, 3] = (8.0, -12.0, 15.0)
    affine = shift @ rotation(0, 10.0) @ rotation(2, -6.0) @ head.affine
    bids = tmp_path / "bids"
    anat = bids / "sub-colin27" / "anat"
    anat.mkdir(parents=True)
    moved = nib.Nifti1Image(np.asarray(head.dataobj, dtype=np.float32), affine)
    moved.set_qform(affine, code=1)
    moved.set_sform(affine, code=1)
    nib.save(moved, anat / "sub-colin27_T1w.nii.gz")
    (anat / "sub-colin27_T1w.json").write_text(json.dumps(T1_SIDECAR))
    (bids / "dataset_description.json").write_text('{"Name": "colin", "BIDSVersion": "1.10.0"}')
    (bids / "participants.tsv").write_text("participant_id\tage\tsex\nsub-colin27\t33\tM\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(out), "participant",
           "-w", str(tmp_path / "work"), "--skip-bids-validation", "--target", "T2w",
           "--overlap", "0", "--nprocs", "2", "--output-spaces", TPL]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3000)
    assert res.returncode == 0, res.stderr[-3000:]
    res1 = template_res1_mask(templateflow_home)
    for suffix in ("desc-tumsynFromT1w_T2w", "desc-brain_mask"):
        img = nib.load(out / f"sub-colin27/anat/sub-colin27_space-{TPL}_res-1_{suffix}.nii.gz")
        assert img.shape == res1.shape and np.allclose(img.affine, res1.affine, atol=1e-5)
    mask = nib.load(out / f"sub-colin27/anat/sub-colin27_space-{TPL}_res-1_desc-brain_mask.nii.gz")
    score = dice(np.asarray(mask.dataobj), np.asarray(res1.dataobj))
    assert score >= 0.90, score
    # the same brain mask taken into the template grid by its moved header alone (no
    # registration; nilearn's resampling) overlaps far less: the registration did the work
    from nilearn.image import resample_to_img

    native = nib.load(out / "sub-colin27/anat/sub-colin27_desc-brain_mask.nii.gz")
    unregistered = resample_to_img(native, res1, interpolation="nearest", copy_header=True,
                                   force_resample=True)  # fmt: skip
    before = dice(np.asarray(unregistered.dataobj) > 0, np.asarray(res1.dataobj))
    assert before < 0.85, before
    record = json.loads(
        (out / f"sub-colin27/log/sub-colin27_T1w_space-{TPL}_registration.json").read_text()
    )
    assert record["Dice"] >= 0.90
    print(f"Colin27 1 mm: Dice {score:.4f} (header alone {before:.4f}), antsRegistration "
          f"{record['CPUTimeSeconds']} CPU-s, {record['WallTimeSeconds']} s wall")  # fmt: skip
