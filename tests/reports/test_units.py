"""Report building blocks on small synthetic images: masks, windows, figures, outlier flags."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tumsyn_bids.imagestats import otsu_threshold
from tumsyn_bids.reports.figures import compare_figure
from tumsyn_bids.reports.group import flag_outliers, intensity_stats, robust_z
from tumsyn_bids.reports.masks import brain_mask, robust_window


def _ball(shape=(24, 28, 20), value=100.0, zoom=1.0, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    r = np.sqrt((((grid - centre) / (np.array(shape)[:, None, None, None] / 3)) ** 2).sum(0))
    data = np.where(r < 1, value, 0.0) + rng.normal(0, 1, shape)
    return nib.Nifti1Image(data.astype(np.float32), np.diag([zoom, zoom, zoom, 1.0]))


def test_otsu_separates_two_classes():
    values = np.concatenate([np.full(500, 10.0), np.full(300, 90.0)])
    assert 10 <= otsu_threshold(values) < 90
    mask = brain_mask(np.asarray(_ball().dataobj))
    assert 0.05 < mask.mean() < 0.5


def test_robust_window_ignores_hot_voxels():
    data = np.full((10, 10, 10), 50.0)
    data[0, 0, 0] = 1e6
    data += np.linspace(0, 1, 1000).reshape(data.shape)
    low, high = robust_window(data)
    assert high < 100 and low >= 50


@pytest.mark.slow
def test_compare_figure_on_different_grids(tmp_path):
    """A source and an output on a finer grid: one PNG with visible content."""
    from matplotlib.image import imread

    src, out = tmp_path / "src.nii.gz", tmp_path / "out.nii.gz"
    nib.save(_ball(), src)
    nib.save(_ball((48, 56, 40), value=30, zoom=0.5), out)
    png = compare_figure(src, out, tmp_path / "fig" / "x_compare.png")
    pixels = imread(png)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # slices drawn, not a blank canvas
    stats = intensity_stats(src, out)  # mask resampled to the finer grid
    assert stats["mask_voxels"] > 1000 and 25 < stats["median"] < 35


def test_robust_z_and_outlier_flag():
    values = pd.Series([1.0, 1.1, 0.9, 1.05, 0.95, 5.0])
    z = robust_z(values)
    assert abs(z.iloc[-1]) > 3.5 and (z.iloc[:-1].abs() < 3.5).all()
    frame = pd.DataFrame(
        {
            "target_suffix": ["T2w"] * 6 + ["FLAIR"] * 2,
            "status": ["done"] * 8,
            **{c: list(values) + [1.0, 9.0] for c in ("mean", "std", "p01", "median", "p99")},
        }
    )
    flagged = flag_outliers(frame)
    assert list(flagged["outlier"]) == ["no"] * 5 + ["yes"] + ["n/a"] * 2  # FLAIR: too few


@pytest.mark.parametrize("values", [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 3.0]])
def test_robust_z_with_zero_mad(values):
    z = robust_z(pd.Series(values))
    assert (z.iloc[:3] == 0).all()


@pytest.mark.slow
def test_preprocessing_figures_and_section(tmp_path):
    """PreprocReport writes the brain-mask outline and the bias field next to the derivatives,
    with the summary in sub-XX/log; the subject page shows them and the warning; a rerun
    without N4 leaves no stale bias figure."""
    import json

    from matplotlib.image import imread

    from tumsyn_bids.interfaces.reports import PreprocReport
    from tumsyn_bids.reports import build_subject_report

    image = _ball()
    mask = nib.Nifti1Image((np.asarray(image.dataobj) > 50).astype(np.uint8), image.affine)
    ramp = np.linspace(0.8, 1.2, int(np.prod(image.shape))).reshape(image.shape)
    bias = nib.Nifti1Image(ramp.astype(np.float32), image.affine)
    files = {}
    for name, img in (("image", image), ("mask", mask), ("bias", bias)):
        files[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(img, files[name])
    warning = "FLAIR source brain-extracted with deepbet, which was trained on T1-weighted images"
    summary = {"Steps": ["conform", "brain_mask", "inu", "apply_mask"], "Warnings": [warning],
               "BrainMask": {"Method": "deepbet", "SynthesisMarginVoxels": 1},
               "Software": {"deepbet": "1.0.2"},
               "Conform": {"SourceAxisCodes": "LPS"}, "SkullStripped": True}  # fmt: skip
    (tmp_path / "preproc.json").write_text(json.dumps(summary))
    out = tmp_path / "out"
    (out / "sub-02").mkdir(parents=True)
    stem = "sub-02_ses-1_FLAIR"
    common = dict(output_dir=str(out), subject="02", stem=stem, in_file=files["image"],
                  mask_file=files["mask"], summary=str(tmp_path / "preproc.json"))  # fmt: skip
    (tmp_path / "n1").mkdir()
    PreprocReport(**common, bias_file=files["bias"]).run(cwd=str(tmp_path / "n1"))
    figures = out / "sub-02" / "figures"
    for kind in ("brainmask", "inu"):
        pixels = imread(figures / f"{stem}_{kind}.png")
        assert pixels.shape[0] > 300 and pixels[..., :3].std() > 0.05, kind
    record = json.loads((out / "sub-02" / "log" / f"{stem}_preproc.json").read_text())
    assert record == summary
    page = build_subject_report(out, "02").read_text()
    assert f"figures/{stem}_brainmask.png" in page and f"figures/{stem}_inu.png" in page
    assert "Preprocessing of sub-02_ses-1_FLAIR" in page and "Session 1" in page
    assert page.count("trained on T1-weighted images") == 2  # under warnings and in its section
    assert "1 voxel around the brain mask (network input and output)" in page
    (tmp_path / "n2").mkdir()
    PreprocReport(**common).run(cwd=str(tmp_path / "n2"))  # --no-inu
    assert not (figures / f"{stem}_inu.png").exists()
    assert f"figures/{stem}_inu.png" not in build_subject_report(out, "02").read_text()


def test_registration_outliers_absolute_and_relative():
    from tumsyn_bids.reports.group import registration_outliers

    # below 0.90 is always flagged; a missing Dice is n/a
    flags = registration_outliers(pd.Series([0.97, 0.975, 0.98, 0.85, float("nan")]))
    assert list(flags) == ["no", "no", "no", "yes", "n/a"]
    # 0.93 passes 0.90 but is far below a tight group: median 0.9705, MAD 0.002, so the bound
    # is 0.9705 - 3 x 1.4826 x 0.002 = 0.9616
    flags = registration_outliers(pd.Series([0.97, 0.971, 0.972, 0.973, 0.93, 0.968]))
    assert list(flags) == ["no", "no", "no", "no", "yes", "no"]
    # fewer than 3 values: only the absolute bound
    assert list(registration_outliers(pd.Series([0.95, 0.91]))) == ["no", "no"]


def test_inference_settings_show_nested_records_readably():
    from tumsyn_bids.reports.html import _inference

    text = _inference({"Patches": {"Computed": 644, "Skipped": 346}, "Overlap": 0.5})
    assert text == "Overlap = 0.5, Patches = (Computed: 644, Skipped: 346)"
    assert "{" not in text
