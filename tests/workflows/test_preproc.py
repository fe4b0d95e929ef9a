"""``init_preproc_wf`` run standalone: options, outputs, and any storage order of a head."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from tests.heads import head_dataset, scan, true_mask
from tumsyn_bids.evaluation.metrics import dice
from tumsyn_bids.preproc.masks import dilate_mask
from tumsyn_bids.preproc.orientation import OrientationRecord
from tumsyn_bids.workflows.preproc import REFERENCES, init_preproc_wf

FIELDS = [
    "preproc_file",
    "brain_file",
    "mask_file",
    "synthesis_mask",
    "mask_source",
    "bias_file",
    "orientation",
    "summary",
    "warnings",
    "skull_stripped",
]


def _collect(**outputs):
    return outputs


def run(wf: pe.Workflow, base: Path, **inputs) -> dict:
    """Run ``wf`` inside an outer workflow, as the per-job workflow will, and return its outputs.

    (nipype drops an outputnode nobody reads, so a collector node reads them all.)
    """
    outer = pe.Workflow(name=f"outer_{wf.name}", base_dir=str(base))
    collect = pe.Node(
        niu.Function(input_names=FIELDS, output_names=["outputs"], function=_collect),
        name="collect",
    )
    for name, value in inputs.items():
        setattr(wf.inputs.inputnode, name, value)
    outer.connect([(wf, collect, [(f"outputnode.{f}", f) for f in FIELDS])])
    graph = outer.run(plugin="Linear")
    node = next(n for n in graph.nodes() if n.name == "collect")
    return {k: v for k, v in node.result.outputs.outputs.items() if v is not None}


def _stored_as(img: nib.Nifti1Image, codes: str, path: Path) -> str:
    current = nio.io_orientation(img.affine)
    nib.save(img.as_reoriented(nio.ornt_transform(current, nio.axcodes2ornt(tuple(codes)))), path)
    return str(path)


def _in_ras(path: str) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="skull_strip_source"):
        init_preproc_wf(skull_strip_source="sometimes")
    with pytest.raises(ValueError, match="preproc"):
        init_preproc_wf(preproc="partial")


def test_methods_paragraph_follows_the_options() -> None:
    full = init_preproc_wf().__desc__
    assert "[@deepbet]" in full and "[@n4]" in full and "RAS+" in full
    assert "already" in full  # the auto rule
    no_inu = init_preproc_wf(inu=False).__desc__
    assert "[@n4]" not in no_inu
    flair = init_preproc_wf(source_suffix="FLAIR").__desc__
    assert "T1-weighted image of the same session" in flair
    skip = init_preproc_wf(skull_strip_source="skip").__desc__
    assert "[@deepbet]" not in skip and "non-zero voxels" in skip
    assert "without" in init_preproc_wf(preproc="none").__desc__
    for key in ("deepbet", "n4", "ants"):
        assert key in REFERENCES


def test_no_preprocessing_passes_the_source_through(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5) + 1, np.eye(4))
    source = _stored_as(img, "LPS", tmp_path / "src.nii.gz")
    out = run(init_preproc_wf(preproc="none"), tmp_path, source_file=source)
    assert set(out) == {"preproc_file", "brain_file", "orientation", "summary", "warnings",
                        "skull_stripped"}  # fmt: skip
    copy = nib.load(out["preproc_file"])
    src = nib.load(source)
    np.testing.assert_array_equal(copy.get_fdata(), src.get_fdata())
    np.testing.assert_allclose(copy.affine, src.affine)
    assert copy.get_data_dtype() == np.float32
    assert out["brain_file"] == out["preproc_file"]
    assert OrientationRecord.load(out["orientation"]).is_identity
    summary = json.loads(Path(out["summary"]).read_text())
    assert summary["Steps"] == [] and summary["SkullStripped"] is False
    assert out["skull_stripped"] is False and out["warnings"] == []


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return head_dataset(tmp_path_factory.mktemp("heads") / "ds", voxel_size=2.0)


def test_flair_takes_the_t1w_mask(tmp_path: Path) -> None:
    """A FLAIR of the session on the T1w's grid: the T1w mask is reoriented, nothing estimated."""
    heads = head_dataset(tmp_path / "ds", voxel_size=3.0)
    t1w_mask = tmp_path / "t1w_mask.nii.gz"
    truth = nib.load(heads / "derivatives/simulation/sub-01/anat/sub-01_desc-brain_mask.nii.gz")
    nib.save(truth, t1w_mask)
    flair = _stored_as(nib.load(scan(heads, "FLAIR")), "PSL", tmp_path / "flair.nii.gz")
    wf = init_preproc_wf(source_suffix="FLAIR", inu=False)
    out = run(wf, tmp_path, source_file=flair, t1w_file=str(scan(heads, "T1w")),
              t1w_mask=str(t1w_mask))  # fmt: skip
    summary = json.loads(Path(out["summary"]).read_text())
    assert summary["BrainMask"]["Method"] == "t1w-same-grid"
    assert summary["Steps"] == ["conform", "brain_mask", "apply_mask"]
    assert "bias_file" not in out and out["warnings"] == []
    np.testing.assert_array_equal(_in_ras(out["mask_source"]) > 0, true_mask(heads))
    back = nib.load(out["mask_source"])
    assert np.array_equal(back.affine, nib.load(flair).affine)
    brain = nib.load(out["brain_file"]).get_fdata()
    mask = np.asarray(nib.load(out["synthesis_mask"]).dataobj) > 0  # with its margin
    assert not brain[~mask].any() and brain[mask].any()


@pytest.mark.slow
def test_full_preprocessing_in_any_storage_order(heads: Path, tmp_path: Path) -> None:
    """The same simulated head stored RAS, LPS and sagittal (ASL): deepbet + N4 give the same
    model input bit for bit, and the same world-space mask, which matches the true brain."""
    source = nib.load(scan(heads, "T1w"))
    results = {}
    for codes in ("RAS", "LPS", "ASL"):
        path = _stored_as(source, codes, tmp_path / f"T1w_{codes}.nii.gz")
        wf = init_preproc_wf(omp_nthreads=2, name=f"preproc_{codes}_wf")
        results[codes] = (path, run(wf, tmp_path, source_file=path))
    reference = results["RAS"][1]
    truth = true_mask(heads)
    for codes, (path, out) in results.items():
        assert "".join(nib.aff2axcodes(nib.load(out["brain_file"]).affine)) == "RAS"
        for key in ("brain_file", "preproc_file", "mask_file", "synthesis_mask", "bias_file"):
            np.testing.assert_array_equal(
                np.asarray(nib.load(out[key]).dataobj),
                np.asarray(nib.load(reference[key]).dataobj),
                err_msg=f"{codes} {key}",
            )
        # the network reads the brain with a one-voxel margin around the brain mask
        mask = np.asarray(nib.load(out["mask_file"]).dataobj) > 0
        margin = np.asarray(nib.load(out["synthesis_mask"]).dataobj) > 0
        np.testing.assert_array_equal(margin, dilate_mask(mask, 1))
        brain = np.asarray(nib.load(out["brain_file"]).dataobj)
        assert not brain[~margin].any() and np.count_nonzero(brain[margin & ~mask]) > 0
        mask_source = nib.load(out["mask_source"])
        assert np.array_equal(mask_source.affine, nib.load(path).affine)  # source grid, exactly
        assert mask_source.get_data_dtype() == np.uint8
        assert dice(_in_ras(out["mask_source"]), truth) >= 0.95
        summary = json.loads(Path(out["summary"]).read_text())
        assert summary["Steps"] == ["conform", "brain_mask", "inu", "apply_mask"]
        assert summary["BrainMask"]["Method"] == "deepbet"
        assert summary["Conform"]["SourceAxisCodes"] == codes
        assert {"nibabel", "antspyx", "deepbet", "torch"} <= set(summary["Software"])
        assert out["skull_stripped"] is True and out["warnings"] == []
        bias = nib.load(out["bias_file"]).get_fdata()
        assert bias.min() > 0
