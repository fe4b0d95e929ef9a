"""``tumsyn-templates init``: MNI152NLin2009aSym from nilearn's wheel, in TemplateFlow's layout."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tumsyn_bids.cli.templates import main
from tumsyn_bids.templates.packaged import _skeleton_zip, nilearn_data_dir

from .conftest import run_python

TPL = "MNI152NLin2009aSym"
NAMES = {
    "t1w": f"tpl-{TPL}_res-1_desc-brain_T1w.nii.gz",
    "mask": f"tpl-{TPL}_res-1_desc-brain_mask.nii.gz",
    "gm": f"tpl-{TPL}_res-1_label-GM_probseg.nii.gz",
    "wm": f"tpl-{TPL}_res-1_label-WM_probseg.nii.gz",
}


def nilearn_volume(kind: str) -> nib.Nifti1Image:
    return nib.load(nilearn_data_dir() / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")


def skeleton_description() -> dict:
    with zipfile.ZipFile(_skeleton_zip()) as z:
        return json.loads(z.read(f"tpl-{TPL}/template_description.json"))


def test_nilearn_ships_the_symmetric_2009a_atlas_brain_only():
    # The facts docs/templates.md states, read from nilearn's files directly.
    t1 = nilearn_volume("t1")
    data = np.asanyarray(t1.dataobj)
    assert t1.shape == (197, 233, 189) and data.dtype == np.uint8
    assert np.allclose(t1.affine[:3, :3], np.eye(3))
    assert np.allclose(t1.affine[:3, 3], [-98, -134, -72])
    for kind in ("t1", "gm", "wm"):
        vol = np.asanyarray(nilearn_volume(kind).dataobj)
        # x runs from -98 to +98 mm, so flipping the first axis mirrors about x = 0
        assert np.array_equal(vol, vol[::-1]), f"{kind} is not left-right symmetric"
    brain = data > 0
    labels, n = ndimage.label(brain)
    assert n == 1 and data[brain].min() >= 28  # a masked brain, not a thresholded head


def test_init_writes_templateflow_names_on_the_declared_grid(packaged_home):
    tpl_dir = packaged_home / f"tpl-{TPL}"
    declared = skeleton_description()["res"]["1"]
    for name in NAMES.values():
        img = nib.load(tpl_dir / name)
        assert img.shape == tuple(declared["shape"])
        assert np.allclose(img.affine[:3, :3], np.diag(declared["zooms"]))
        assert np.allclose(img.affine[:3, 3], declared["origin"])
        assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 4
    description = json.loads((tpl_dir / "template_description.json").read_text())
    assert description == skeleton_description()
    assert (tpl_dir / "LICENSE").read_text().startswith("Copyright (C) 1993-2004 Louis Collins")


@pytest.mark.parametrize("kind,scale", [("t1", 1.0), ("gm", 255.0), ("wm", 255.0)])
def test_values_are_nilearns_at_the_same_world_position(packaged_home, kind, scale):
    src = nilearn_volume(kind)
    key = {"t1": "t1w", "gm": "gm", "wm": "wm"}[kind]
    out = nib.load(packaged_home / f"tpl-{TPL}" / NAMES[key])
    # output voxel -> source voxel through the two affines, sampled at integer positions
    vox2vox = np.linalg.inv(src.affine) @ out.affine
    expected = ndimage.affine_transform(
        np.asanyarray(src.dataobj).astype(np.float64),
        vox2vox[:3, :3],
        vox2vox[:3, 3],
        output_shape=out.shape,
        order=0,
        cval=0.0,
    )
    got = out.get_fdata() * scale
    assert np.allclose(got, expected, atol=1e-4)
    # the crop drops no non-zero voxel
    assert np.count_nonzero(got) == np.count_nonzero(np.asanyarray(src.dataobj))


def test_brain_mask_is_the_nonzero_t1w_and_probabilities_are_in_range(packaged_home):
    tpl_dir = packaged_home / f"tpl-{TPL}"
    t1w = np.asanyarray(nib.load(tpl_dir / NAMES["t1w"]).dataobj)
    mask = np.asanyarray(nib.load(tpl_dir / NAMES["mask"]).dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert np.array_equal(mask == 1, t1w > 0)
    for key in ("gm", "wm"):
        p = np.asanyarray(nib.load(tpl_dir / NAMES[key]).dataobj)
        assert p.dtype == np.float32 and p.min() == 0.0 and p.max() == 1.0
    assert 1.8e6 < mask.sum() < 2.0e6  # an adult brain, ~1.9 litres with CSF at 1 mm


@pytest.mark.slow
def test_init_twice_is_a_no_op(tmp_path, capsys):
    home = tmp_path / "tf"
    assert main(["init", str(home)]) == 0
    files = sorted((home / f"tpl-{TPL}").iterdir())
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    assert main(["init", str(home)]) == 0
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    assert before == after
    assert "already complete" in capsys.readouterr().out
    assert not [p for p in home.rglob(".*")]  # no temporary files left


def test_init_never_overwrites_other_content(tmp_path, capsys):
    home = tmp_path / "tf"
    tpl_dir = home / f"tpl-{TPL}"
    tpl_dir.mkdir(parents=True)
    other = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    nib.save(other, tpl_dir / NAMES["mask"])
    original = (tpl_dir / NAMES["mask"]).read_bytes()
    assert main(["init", str(home)]) == 73
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert NAMES["mask"] in err and "never overwritten" in err
    assert (tpl_dir / NAMES["mask"]).read_bytes() == original
    assert sorted(p.name for p in tpl_dir.iterdir()) == [NAMES["mask"]]  # checked before writing


@pytest.mark.slow
def test_init_fills_templateflow_placeholders_and_keeps_other_templates(tmp_path):
    home = tmp_path / "tf"
    # A home made by the TemplateFlow client itself: its skeleton of zero-byte placeholders ...
    made = run_python("import templateflow.api", home)
    assert made.returncode == 0, made.stderr
    placeholder = home / f"tpl-{TPL}" / NAMES["mask"]
    assert placeholder.stat().st_size == 0
    # ... and one file of another template, as if fetched earlier on a machine with network.
    other = home / "tpl-MNI152NLin2009cAsym" / "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.full((5, 6, 7), 3, np.int16), np.eye(4)), other)
    other_bytes = other.read_bytes()
    assert main(["init", str(home)]) == 0
    assert placeholder.stat().st_size > 0
    assert other.read_bytes() == other_bytes
    code = (
        "from tumsyn_bids.templates import get_template, list_templates\n"
        "print(get_template('MNI152NLin2009cAsym', 1, 'T1w'))\n"
        f"print(get_template('{TPL}', 1, 'mask', desc='brain'))\n"
        "print(','.join(list_templates()))\n"
    )
    got = run_python(code, home)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.split()
    assert Path(lines[0]) == other
    assert Path(lines[1]) == placeholder
    assert lines[2] == f"{TPL},MNI152NLin2009cAsym"


def test_init_reports_an_unwritable_home_with_exit_73(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["init", str(blocker / "tf")]) == 73
    err = capsys.readouterr().err
    assert "cannot write" in err and str(blocker) in err


def test_init_refuses_a_home_whose_description_declares_another_grid(tmp_path, capsys):
    home = tmp_path / "tf"
    tpl_dir = home / f"tpl-{TPL}"
    tpl_dir.mkdir(parents=True)
    description = skeleton_description()
    description["res"]["1"]["shape"] = [197, 233, 189]
    (tpl_dir / "template_description.json").write_text(json.dumps(description))
    assert main(["init", str(home)]) == 73
    assert "declares a res-1 grid other than" in capsys.readouterr().err
    assert sorted(p.name for p in tpl_dir.iterdir()) == ["template_description.json"]
