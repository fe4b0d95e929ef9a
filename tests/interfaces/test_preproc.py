"""The preprocessing interfaces on real heads: Colin27 (mricron-data) and simulated heads."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio
from scipy import ndimage

from tests.colin27 import BRAIN, HEAD, requires_colin27
from tests.heads import MPRAGE, head_dataset, known_bias, scan, true_mask
from tumsyn_bids.evaluation.metrics import dice
from tumsyn_bids.interfaces.preproc import (
    ApplyMask,
    BrainMask,
    Conform,
    MaskMargin,
    N4Correct,
    PreprocSummary,
    ToSourceGrid,
)
from tumsyn_bids.simulate import draw_subject, render, render_head


def _run(interface, tmp_path: Path, name: str):
    """Run a nipype interface in its own folder (as a node would) and return its outputs."""
    folder = tmp_path / name
    folder.mkdir()
    return interface.run(cwd=str(folder)).outputs


def _store(img: nib.Nifti1Image, path: Path) -> str:
    nib.save(img, path)
    return str(path)


def _reoriented(img: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    current = nio.io_orientation(img.affine)
    return img.as_reoriented(nio.ornt_transform(current, nio.axcodes2ornt(tuple(codes))))


def _ball_image(shape=(40, 44, 36), radius=12.0, zooms=(2.0, 2.0, 2.0)) -> nib.Nifti1Image:
    centre = (np.asarray(shape) - 1) / 2
    grid = np.indices(shape).reshape(3, -1).T
    ball = (np.linalg.norm(grid - centre, axis=1) <= radius).reshape(shape)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -centre * zooms
    img = nib.Nifti1Image((100.0 * ball).astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    return img


# --------------------------------------------------------------------------------------------
# Conform and back, masks without a network
# --------------------------------------------------------------------------------------------


def test_conform_and_back_through_files(tmp_path: Path) -> None:
    source = _store(_reoriented(_ball_image(), "PIL"), tmp_path / "source.nii.gz")
    out = _run(Conform(in_file=source), tmp_path, "conform")
    assert out.source_axcodes == "PIL"
    conformed = nib.load(out.out_file)
    assert "".join(nib.aff2axcodes(conformed.affine)) == "RAS"
    record = json.loads(Path(out.orientation).read_text())
    assert record["SourceAxisCodes"] == "PIL" and record["ConformedAxisCodes"] == "RAS"
    mask = _store(
        nib.Nifti1Image((conformed.get_fdata() > 0).astype(np.uint8), conformed.affine),
        tmp_path / "mask.nii.gz",
    )
    back = _run(
        ToSourceGrid(in_file=mask, orientation=out.orientation, reference=source, dtype="uint8"),
        tmp_path,
        "back",
    )
    result, src = nib.load(back.out_file), nib.load(source)
    assert np.array_equal(result.affine, src.affine)
    assert result.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(result.dataobj), src.get_fdata() > 0)


def test_conform_refuses_empty_images(tmp_path: Path) -> None:
    empty = _store(nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), np.eye(4)), tmp_path / "e.nii")
    with pytest.raises(ValueError, match="every voxel is zero"):
        _run(Conform(in_file=empty), tmp_path, "conform")


def test_brain_mask_skip_and_already_extracted(tmp_path: Path) -> None:
    brain = _ball_image()
    data = brain.get_fdata().copy()
    data[0, 0, 0] = 50.0  # an island, cleaned away
    path = _store(nib.Nifti1Image(data.astype(np.float32), brain.affine), tmp_path / "b.nii.gz")
    auto = _run(BrainMask(in_file=path, mode="auto"), tmp_path, "auto")
    assert auto.method == "already-extracted"
    assert auto.check.startswith("already brain-extracted")
    assert auto.warning == ""
    mask = nib.load(auto.mask_file)
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(mask.dataobj) > 0, brain.get_fdata() > 0)
    skip = _run(BrainMask(in_file=path, mode="skip"), tmp_path, "skip")
    assert skip.method == "skip"


def test_t1w_mask_on_the_same_grid_is_reoriented_exactly(tmp_path: Path) -> None:
    """A FLAIR stored LPS, the T1w stored RAS on the same voxels: no registration needed."""
    t1w = _ball_image()
    t1w_mask = nib.Nifti1Image((t1w.get_fdata() > 0).astype(np.uint8), t1w.affine)
    flair = nib.Nifti1Image(200.0 - t1w.get_fdata().astype(np.float32), t1w.affine)
    flair = _reoriented(flair, "LPS")
    out = _run(
        BrainMask(
            in_file=_store(flair, tmp_path / "flair.nii.gz"),
            suffix="FLAIR",
            mode="force",
            t1w_file=_store(t1w, tmp_path / "t1w.nii.gz"),
            t1w_mask=_store(t1w_mask, tmp_path / "t1w_mask.nii.gz"),
        ),
        tmp_path,
        "transfer",
    )
    assert out.method == "t1w-same-grid"
    expected = _reoriented(t1w_mask, "LPS")
    np.testing.assert_array_equal(np.asarray(nib.load(out.mask_file).dataobj), expected.dataobj)


def test_apply_mask_and_summary(tmp_path: Path) -> None:
    img = _ball_image()
    image = _store(nib.Nifti1Image(np.ones(img.shape, np.float32), img.affine), tmp_path / "i.nii")
    mask = _store(img, tmp_path / "m.nii")
    out = _run(ApplyMask(in_file=image, mask_file=mask), tmp_path, "apply")
    np.testing.assert_array_equal(nib.load(out.out_file).get_fdata(), img.get_fdata() > 0)
    grown = _run(MaskMargin(in_file=mask), tmp_path, "margin")
    margin_img = nib.load(grown.out_file)
    assert margin_img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(margin_img.affine, img.affine)
    ball = img.get_fdata() > 0
    margin = np.asarray(margin_img.dataobj) > 0
    assert margin[ball].all() and (margin & ~ball).any()  # grown ...
    assert not (margin & ~ndimage.binary_dilation(ball)).any()  # ... by at most one voxel
    other = _store(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4)), tmp_path / "o.nii")
    with pytest.raises(ValueError, match="not on the grid"):
        _run(ApplyMask(in_file=image, mask_file=other), tmp_path, "mismatch")

    summary = _run(
        PreprocSummary(
            steps=["conform", "brain_mask", "inu", "apply_mask"],
            mask_method="deepbet",
            check="not brain-extracted: ...",
            warning="FLAIR source brain-extracted with deepbet ...",
        ),
        tmp_path,
        "summary",
    )
    record = json.loads(Path(summary.out_file).read_text())
    assert record["SkullStripped"] is True and summary.skull_stripped
    assert set(record["Software"]) == {"antspyx", "deepbet", "nibabel", "torch"}
    assert record["BrainMask"] == {
        "Method": "deepbet",
        "AlreadyExtractedCheck": "not brain-extracted: ...",
        "SynthesisMarginVoxels": 1,
    }
    assert summary.warnings == ["FLAIR source brain-extracted with deepbet ..."]
    nothing = _run(PreprocSummary(steps=[]), tmp_path, "none")
    assert json.loads(Path(nothing.out_file).read_text())["SkullStripped"] is False


def test_the_synthesized_image_is_masked_on_its_own_grid(tmp_path: Path) -> None:
    """ApplyMask(resample=True): a mask on the conformed grid zeroes an image on a finer grid
    over the same axes, voxel by voxel as the centres fall (mask_on_grid's rule)."""
    from tumsyn_bids.model.grid import output_grid
    from tumsyn_bids.preproc.masks import mask_on_grid

    mask = _ball_image()  # 40 x 44 x 36 at 2 mm
    grid = output_grid(mask.shape, mask.affine, voxel_size=(1.5, 1.5, 1.5))
    values = np.full(grid.shape, 7.0, np.float32)
    image = _store(nib.Nifti1Image(values, grid.affine_array), tmp_path / "fine.nii.gz")
    mask_file = _store(mask, tmp_path / "mask.nii.gz")
    with pytest.raises(ValueError, match="not on the grid"):
        _run(ApplyMask(in_file=image, mask_file=mask_file), tmp_path, "refused")
    out = _run(
        ApplyMask(in_file=image, mask_file=mask_file, resample=True, out_name="masked.nii.gz"),
        tmp_path,
        "masked",
    )
    got = nib.load(out.out_file)
    inside = mask_on_grid(np.asarray(mask.dataobj) > 0, mask.affine, grid.shape, grid.affine_array)
    assert got.shape == grid.shape and inside.any() and (~inside).any()
    np.testing.assert_array_equal(got.get_fdata() == 7.0, inside)
    np.testing.assert_allclose(got.affine, grid.affine_array, atol=1e-5)


def test_to_source_grid_on_another_grid_restores_the_axis_order(tmp_path: Path) -> None:
    """ToSourceGrid on an image that is not on the conformed grid (a synthesized image at a
    requested voxel size): the source's axis order, the grid the plan computes."""
    from tumsyn_bids.model.grid import output_grid, same_grid
    from tumsyn_bids.preproc.orientation import (
        OrientationRecord,
        conformed_output_grid,
        to_conformed_axes,
    )

    source = _reoriented(_ball_image(zooms=(2.0, 2.5, 3.0)), "ASL")
    source_file = _store(source, tmp_path / "source.nii.gz")
    conformed = _run(Conform(in_file=source_file), tmp_path, "conform")
    record = OrientationRecord.load(conformed.orientation)
    request = (1.0, 1.5, 2.0)  # along the source's (i, j, k) = (A, S, L)
    grid = output_grid(
        record.conformed_shape,
        record.conformed_affine,
        voxel_size=to_conformed_axes(request, record),
    )
    data = np.random.default_rng(1).random(grid.shape).astype(np.float32)
    fine = nib.Nifti1Image(data, grid.affine_array)
    fine_file = _store(fine, tmp_path / "fine.nii.gz")
    out = _run(
        ToSourceGrid(in_file=fine_file, orientation=conformed.orientation, reference=source_file),
        tmp_path,
        "back",
    )
    back = nib.load(out.out_file)
    plan = conformed_output_grid(source.shape, source.affine, voxel_size=request)
    assert same_grid(back.shape, back.affine, plan)
    assert "".join(nib.aff2axcodes(back.affine)) == "ASL"
    np.testing.assert_array_equal(
        np.asarray(nib.as_closest_canonical(back).dataobj), np.asarray(nib.load(fine_file).dataobj)
    )


def test_n4_fits_on_about_6mm_voxels() -> None:
    from tumsyn_bids.preproc.inu import shrink_factor_for

    assert shrink_factor_for((1.0, 1.0, 1.0)) == 6
    assert shrink_factor_for((2.0, 2.0, 2.0)) == 3
    assert shrink_factor_for((0.8, 0.8, 0.8)) == 8
    assert shrink_factor_for((0.9, 0.9, 3.0)) == 7  # the finest axis decides
    assert shrink_factor_for((12.0, 12.0, 12.0)) == 1


def test_n4_refuses_negative_images(tmp_path: Path) -> None:
    img = _ball_image()
    neg = _store(
        nib.Nifti1Image(img.get_fdata().astype(np.float32) - 1, img.affine), tmp_path / "n.nii"
    )
    with pytest.raises(ValueError, match="non-negative"):
        _run(N4Correct(in_file=neg), tmp_path, "n4")


# --------------------------------------------------------------------------------------------
# deepbet, N4 and registration on real and simulated heads
# --------------------------------------------------------------------------------------------


@requires_colin27
@pytest.mark.slow
def test_deepbet_on_colin27_matches_its_brain(tmp_path: Path) -> None:
    conformed = _run(Conform(in_file=str(HEAD)), tmp_path, "conform").out_file
    first = _run(BrainMask(in_file=conformed, num_threads=2), tmp_path, "first")
    assert first.method == "deepbet" and first.warning == ""
    assert first.check.startswith("not brain-extracted")
    mask = nib.load(first.mask_file)
    assert mask.get_data_dtype() == np.uint8 and mask.shape == nib.load(HEAD).shape
    reference = np.asarray(nib.load(BRAIN).dataobj) != 0
    score = dice(np.asarray(mask.dataobj), reference)
    assert score >= 0.90, score
    again = _run(BrainMask(in_file=conformed, num_threads=2), tmp_path, "again")
    assert Path(again.mask_file).read_bytes() == Path(first.mask_file).read_bytes()


@requires_colin27
def test_colin27_brain_is_not_stripped_again(tmp_path: Path) -> None:
    conformed = _run(Conform(in_file=str(BRAIN)), tmp_path, "conform").out_file
    out = _run(BrainMask(in_file=conformed), tmp_path, "mask")
    assert out.method == "already-extracted"
    reference = np.asarray(nib.load(BRAIN).dataobj) != 0
    assert dice(np.asarray(nib.load(out.mask_file).dataobj), reference) > 0.999


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return head_dataset(tmp_path_factory.mktemp("heads") / "ds", voxel_size=2.0)


@pytest.mark.slow
def test_deepbet_on_a_simulated_head(heads: Path, tmp_path: Path) -> None:
    conformed = _run(Conform(in_file=str(scan(heads, "T1w"))), tmp_path, "conform").out_file
    out = _run(BrainMask(in_file=conformed, num_threads=2), tmp_path, "mask")
    assert out.method == "deepbet"
    score = dice(np.asarray(nib.load(out.mask_file).dataobj), true_mask(heads))
    assert score >= 0.95, score


@pytest.mark.slow
def test_deepbet_on_a_flair_without_t1w_warns(heads: Path, tmp_path: Path) -> None:
    conformed = _run(Conform(in_file=str(scan(heads, "FLAIR"))), tmp_path, "conform").out_file
    out = _run(BrainMask(in_file=conformed, suffix="FLAIR", num_threads=2), tmp_path, "mask")
    assert out.method == "deepbet"
    assert "FLAIR" in out.warning and "T1-weighted" in out.warning
    assert dice(np.asarray(nib.load(out.mask_file).dataobj), true_mask(heads)) >= 0.9


@pytest.mark.slow
def test_n4_removes_a_known_bias_field(tmp_path: Path) -> None:
    """A noise-free simulated head times a known field: N4 flattens white matter again."""
    subject = draw_subject("01", 5)
    maps = subject.tissue_maps(2.0, head=True)
    clean = render(maps, MPRAGE, "T1w") + render_head(subject.head_levels(2.0), MPRAGE, "T1w", 3.0)
    img = nib.Nifti1Image(clean, maps.affine)
    bias = known_bias(img)
    noise = np.random.default_rng(0).normal(0.0, 0.01 * clean[maps.wm > 0.95].mean(), clean.shape)
    biased = np.abs(clean * bias + noise.astype(np.float32))
    source = _store(nib.Nifti1Image(biased, maps.affine), tmp_path / "biased.nii.gz")
    mask = _store(
        nib.Nifti1Image(maps.brain_mask().astype(np.uint8), maps.affine), tmp_path / "mask.nii.gz"
    )
    out = _run(N4Correct(in_file=source, mask_file=mask), tmp_path, "n4")
    again = _run(N4Correct(in_file=source, mask_file=mask), tmp_path, "n4_again")
    assert Path(out.bias_file).read_bytes() == Path(again.bias_file).read_bytes()
    corrected = nib.load(out.out_file).get_fdata()
    field = nib.load(out.bias_file).get_fdata()
    np.testing.assert_allclose(corrected * field, biased, rtol=1e-4, atol=1e-3)
    wm = maps.wm > 0.95

    def cv(data: np.ndarray) -> float:
        return float(data[wm].std() / data[wm].mean())

    assert cv(biased) > 3 * cv(biased / bias)  # the bias dominates the white-matter spread
    assert cv(corrected) < 0.5 * cv(biased), (cv(biased), cv(corrected))
    # the estimated field follows the true one (up to N4's free global scale)
    ratio = (field / bias)[maps.brain_mask()]
    assert ratio.std() / ratio.mean() < 0.5 * (bias[maps.brain_mask()].std() / bias.mean())


@requires_colin27
@pytest.mark.slow
def test_t1w_mask_follows_a_moved_other_contrast(tmp_path: Path) -> None:
    """Colin27 at 2 mm as the T1w; as the target, the same head rotated (about 6 degrees),
    shifted, resampled to 2.5 mm and given an inverted (T2-like) contrast. The carried mask
    must match the moved truth, and a rerun must give the same bytes."""
    import ants
    from nibabel.processing import resample_to_output

    from tumsyn_bids.preproc._ants import to_ants

    head = resample_to_output(nib.load(HEAD), 2.0, order=1)
    brain = resample_to_output(nib.load(BRAIN), 2.0, order=0)
    rigid = ants.new_ants_transform(dimension=3, transform_type="Euler3DTransform")
    rigid.set_parameters([0.08, -0.05, 0.1, 3.0, -4.0, 2.0])  # radians, mm
    rigid.set_fixed_parameters([0.0, -20.0, 10.0])
    grid = ants.resample_image(to_ants(head), (2.5, 2.5, 2.5), use_voxels=False)
    moved = ants.to_nibabel_nifti(
        rigid.apply_to_image(to_ants(head), reference=grid, interpolation="linear")
    )
    truth = rigid.apply_to_image(to_ants(brain), reference=grid, interpolation="nearestneighbor")
    data = moved.get_fdata(dtype=np.float32)
    contrast = np.where(data > 10, 300.0 - data, 0.0).astype(np.float32)
    target = _store(nib.Nifti1Image(contrast, moved.affine), tmp_path / "t2w.nii.gz")
    t1w = _store(head, tmp_path / "t1w.nii.gz")
    t1w_mask = _store(
        nib.Nifti1Image((brain.get_fdata() > 0).astype(np.uint8), brain.affine),
        tmp_path / "t1w_mask.nii.gz",
    )
    outs = [
        _run(
            BrainMask(in_file=target, suffix="T2w", t1w_file=t1w, t1w_mask=t1w_mask),
            tmp_path,
            f"transfer{i}",
        )
        for i in range(2)
    ]
    assert outs[0].method == "t1w-rigid" and outs[0].warning == ""
    score = dice(np.asarray(nib.load(outs[0].mask_file).dataobj), truth.numpy() > 0)
    assert score >= 0.95, score
    assert Path(outs[0].mask_file).read_bytes() == Path(outs[1].mask_file).read_bytes()
