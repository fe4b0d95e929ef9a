"""Registration to MNI152NLin2009aSym and resampling into it, with ANTsPy (no mocks)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.interfaces.registration import (
    SETTINGS,
    ApplyTemplateTransform,
    RegisterToTemplate,
    apply_transform,
    dice,
    registration_args,
    transform_name,
)

COLIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
TPL = "MNI152NLin2009aSym"
IDENTITY = (
    "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
    "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n"
)


def rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    r = np.eye(4)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


def test_registration_command_line_states_the_settings():
    args = registration_args("f.nii.gz", "m.nii.gz", "out_", "default", fixed_zoom=1.0, seed=7)
    text = " ".join(args)
    assert args.count("--transform") == 3
    assert "Rigid[0.1]" in text and "Affine[0.1]" in text and "SyN[0.1,3.0,0.0]" in text
    assert "--random-seed 7" in text and "--write-composite-transform 1" in text
    assert "--initial-moving-transform [f.nii.gz,m.nii.gz,1]" in text
    assert "--use-histogram-matching 1" in text  # T1w to a T1w template
    other = " ".join(registration_args("f", "m", "o", "default", histogram_matching=False))
    assert "--use-histogram-matching 0" in other  # another contrast
    # levels in mm become shrink factors of the fixed image's voxel size
    assert "--shrink-factors 8x4x2" in text
    half = " ".join(registration_args("f", "m", "o", "default", fixed_zoom=0.5))
    assert "--shrink-factors 16x8x4" in half
    assert set(SETTINGS) >= {"default", "testing"}
    assert transform_name("T1w", TPL) == f"from-T1w_to-{TPL}_mode-image_xfm.h5"


def test_apply_transform_resamples_onto_the_reference_grid(tmp_path):
    # An image on a 1 mm grid, a coarser reference grid, an identity transform: the output has
    # the reference's grid; a linear ramp stays the same ramp; labels stay labels.
    affine = np.eye(4)
    affine[:3, 3] = -10.0
    i, j, k = np.meshgrid(*(np.arange(21.0),) * 3, indexing="ij")
    ramp = (i + 2 * j + 3 * k).astype(np.float32)
    src = tmp_path / "ramp.nii.gz"
    nib.save(nib.Nifti1Image(ramp, affine), src)
    labels = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image((i > 10).astype(np.uint8) * 3, affine), labels)
    ref_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ref_affine[:3, 3] = -6.0
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((7, 7, 7), np.uint8), ref_affine), ref)
    xfm = tmp_path / "identity.txt"
    xfm.write_text(IDENTITY)

    out = nib.load(apply_transform(src, ref, xfm, str(tmp_path / "o.nii.gz")))
    assert out.shape == (7, 7, 7) and np.allclose(out.affine, ref_affine)
    assert out.get_data_dtype() == np.float32
    # reference voxel (a, b, c) sits at world -6 + 2a, i.e. source voxel 4 + 2a
    a, b, c = np.meshgrid(*(np.arange(7.0),) * 3, indexing="ij")
    expected = (4 + 2 * a) + 2 * (4 + 2 * b) + 3 * (4 + 2 * c)
    assert np.allclose(out.get_fdata(), expected, atol=1e-3)

    lab = nib.load(apply_transform(labels, ref, xfm, str(tmp_path / "l.nii.gz"), "genericLabel"))
    assert lab.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(lab.dataobj))) == {0, 3}


def moved_colin(tmp_path: Path, zoom: float = 2.0) -> tuple[Path, Path, np.ndarray]:
    """Colin27's brain (mricron-data) at ``zoom`` mm with its header moved by a rigid
    transform (rotations of 10 and -6 degrees, a (8, -12, 15) mm shift), and its mask."""
    from scipy import ndimage

    img = nib.load(COLIN)
    data = ndimage.zoom(img.get_fdata(dtype=np.float32), 1.0 / zoom, order=1)
    affine = img.affine.copy()
    affine[:3, :3] *= zoom
    affine[:3, 3] += (zoom - 1.0) / 2.0
    shift = np.eye(4)
    shift[:3, 3] = (8.0, -12.0, 15.0)
    affine = shift @ rotation(0, 10.0) @ rotation(2, -6.0) @ affine
    brain, mask = tmp_path / "colin.nii.gz", tmp_path / "colin_mask.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), brain)
    nib.save(nib.Nifti1Image((data > 0).astype(np.uint8), affine), mask)
    return brain, mask, affine


@pytest.mark.slow
@pytest.mark.skipif(not COLIN.is_file(), reason="mricron-data is not installed (scripts/test.sh)")
def test_colin27_registers_to_the_template(tmp_path, templateflow_home):
    brain, mask, affine = moved_colin(tmp_path)
    template_mask = templateflow_home / f"tpl-{TPL}" / f"tpl-{TPL}_res-1_desc-brain_mask.nii.gz"
    tmask = nib.load(template_mask)

    # Without registration (the moved header as it is) the brains overlap poorly ...
    identity = tmp_path / "identity.txt"
    identity.write_text(IDENTITY)
    unregistered = apply_transform(
        mask, template_mask, identity, str(tmp_path / "u.nii.gz"), "genericLabel"
    )
    before = dice(np.asanyarray(nib.load(unregistered).dataobj), np.asanyarray(tmask.dataobj))
    assert before < 0.85

    # ... and after rigid -> affine -> SyN (the CI settings: finest level 4 mm) they match.
    work = tmp_path / "reg"
    work.mkdir()
    res = RegisterToTemplate(
        moving_image=str(brain), moving_mask=str(mask), settings="testing", num_threads=2
    ).run(cwd=str(work))
    out = res.outputs
    assert out.dice >= 0.90, f"Dice {out.dice:.3f} (unregistered {before:.3f})"
    assert Path(out.forward_transform).name == f"from-T1w_to-{TPL}_mode-image_xfm.h5"
    assert Path(out.reverse_transform).name == f"from-{TPL}_to-T1w_mode-image_xfm.h5"
    for name in ("warped_image", "warped_mask"):
        warped = nib.load(getattr(out, name))
        assert warped.shape == tmask.shape and np.allclose(warped.affine, tmask.affine)
    warped_mask = np.asanyarray(nib.load(out.warped_mask).dataobj)
    assert dice(warped_mask, np.asanyarray(tmask.dataobj)) == pytest.approx(out.dice)

    # The reverse transform brings the template mask back onto the subject's grid.
    back = apply_transform(
        template_mask, mask, out.reverse_transform, str(tmp_path / "b.nii.gz"), "genericLabel"
    )
    back_img = nib.load(back)
    assert np.allclose(back_img.affine, affine)
    assert dice(np.asanyarray(back_img.dataobj), np.asanyarray(nib.load(mask).dataobj)) >= 0.90

    # Output spaces: the image resampled once onto the template's res-2 grid (derived, 2 mm).
    node = ApplyTemplateTransform(
        in_file=str(brain), transform=out.forward_transform, resolution=2
    ).run(cwd=str(tmp_path))
    res2 = nib.load(node.outputs.out_file)
    assert res2.shape == (97, 115, 97) and np.allclose(np.diag(res2.affine)[:3], 2.0)
    assert "derived" in node.outputs.grid_source


def blob(shape, centre, radii) -> np.ndarray:
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return (100.0 * np.exp(-r2) + 50.0 * (r2 < 1.0)).astype(np.float32)


@pytest.mark.slow
def test_registration_reruns_give_identical_transforms(tmp_path):
    # Fixed seed, one ITK thread: two runs of antsRegistration give the same result to the bit.
    from tumsyn_bids.interfaces.registration import run_ants_registration

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed, moving = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"
    nib.save(nib.Nifti1Image(blob((40, 44, 36), (20, 22, 18), (9, 11, 7)), affine), fixed)
    nib.save(nib.Nifti1Image(blob((40, 44, 36), (22, 20, 17), (10, 10, 8)), affine), moving)
    warped = []
    for run in range(2):
        prefix = str(tmp_path / f"run{run}_")
        args = registration_args(str(fixed), str(moving), prefix, "testing", fixed_zoom=2.0)
        wall, cpu = run_ants_registration(args, 1, tmp_path / f"run{run}.log")
        assert wall > 0 and cpu > 0
        out = apply_transform(moving, fixed, prefix + "Composite.h5", prefix + "warped.nii.gz")
        warped.append(np.asanyarray(nib.load(out).dataobj))
    assert np.array_equal(warped[0], warped[1])
    assert not np.array_equal(warped[0], np.asanyarray(nib.load(moving).dataobj))
