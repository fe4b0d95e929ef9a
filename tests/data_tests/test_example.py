"""The synthetic example dataset: valid BIDS (real validator), deterministic, indexable."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.bids.validation import validate_bids
from tumsyn_bids.cli.errors import EX_CANTCREAT
from tumsyn_bids.cli.example import main
from tumsyn_bids.data.example import (
    EXAMPLE_IMAGES,
    EXAMPLE_NAME,
    example_files,
    make_phantom,
    write_example_dataset,
)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("example") / "ds")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_lists_exactly_the_written_files(example: Path) -> None:
    assert sorted(_files(example)) == example_files()
    assert sum(len(b) for b in _files(example).values()) < 1_000_000


def test_official_validator_passes(example: Path) -> None:
    result = validate_bids(example, ignore_warnings=False)
    assert result.ok, result.report()
    assert result.errors == []
    summary = result.raw["summary"]
    assert sorted(summary["subjects"]) == ["01", "02"]
    assert sorted(summary["sessions"]) == ["1", "2"]


def test_two_writes_are_byte_identical(example: Path, tmp_path: Path) -> None:
    again = _files(write_example_dataset(tmp_path / "again"))
    first = _files(example)
    assert sorted(again) == sorted(first)
    for name, data in first.items():
        assert again[name] == data, name


def test_pybids_indexes_four_anatomical_images(example: Path) -> None:
    import bids

    layout = bids.BIDSLayout(example)
    images = layout.get(suffix=["T1w", "T2w"], extension=[".nii.gz"])
    assert len(images) == 4
    assert sorted(layout.get_subjects()) == ["01", "02"]
    assert sorted(layout.get_sessions(subject="02")) == ["1", "2"]
    fast = layout.get(
        subject="02", session="2", acquisition="fast", suffix="T1w", extension=[".nii.gz"]
    )
    assert len(fast) == 1
    assert fast[0].get_metadata() == {
        "MagneticFieldStrength": 1.5,
        "Manufacturer": "GE MEDICAL SYSTEMS",
    }
    t1 = layout.get(subject="01", suffix="T1w", extension=[".nii.gz"])[0].get_metadata()
    assert t1["RepetitionTime"] == 2.5 and t1["EchoTime"] == 0.00298
    assert t1["InversionTime"] == 1.0 and t1["FlipAngle"] == 8


def test_metadata_files(example: Path) -> None:
    description = json.loads((example / "dataset_description.json").read_text())
    assert description["Name"] == EXAMPLE_NAME
    assert description["BIDSVersion"] == "1.10.0"
    assert description["DatasetType"] == "raw"
    assert description["License"] == "CC0"
    readme = " ".join((example / "README").read_text().split()).lower()
    assert "not real anatomy" in readme and "phantom" in readme
    rows = [ln.split("\t") for ln in (example / "participants.tsv").read_text().splitlines()]
    # The validator requires a row per subject folder, so sub-02's unknowns are written as n/a.
    assert rows == [
        ["participant_id", "age", "sex"],
        ["sub-01", "34", "F"],
        ["sub-02", "n/a", "n/a"],
    ]
    columns = json.loads((example / "participants.json").read_text())
    assert set(columns) == {"age", "sex"}


def test_image_headers(example: Path) -> None:
    shapes = set()
    for spec in EXAMPLE_IMAGES:
        img = nib.load(example / spec.path)
        assert img.shape == spec.shape
        assert np.allclose(img.header.get_zooms(), spec.zooms)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert np.allclose(img.get_qform(), img.get_sform())
        assert np.abs(img.affine[:3, 3]).min() > 1.0  # a real, non-zero origin
        assert img.get_data_dtype() == np.int16
        data = np.asanyarray(img.dataobj)
        assert data.min() >= 0 and data.max() > 500
        shapes.add((spec.shape, spec.zooms))
    assert len(shapes) >= 2  # at least one image on another grid


def _tissue_means(modality: str) -> dict[str, float]:
    """Mean intensity in the middle of each layer, on a fine grid so edges do not blur them."""
    img = make_phantom((100, 110, 100), (0.5, 0.5, 0.5), modality, seed=1)
    data = np.asanyarray(img.dataobj).astype(float)
    ijk = np.indices(data.shape).reshape(3, -1)
    xyz = img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]
    centre = img.affine[:3, :3] @ ((np.array(data.shape) - 1) / 2) + img.affine[:3, 3]
    # Along the left-right axis through the centre: WM near the middle, then the outer layers.
    line = (np.abs(xyz[1] - centre[1]) < 0.3) & (np.abs(xyz[2] - centre[2]) < 0.3)
    x = xyz[0] - centre[0]
    values = data.reshape(-1)

    def at(lo: float, hi: float) -> float:
        return float(values[line & (np.abs(x) > lo) & (np.abs(x) < hi)].mean())

    return {"wm": at(0, 1), "csf": at(16.0, 16.8), "skull": at(17.6, 18.2), "bg": at(23, 25)}


@pytest.mark.slow
def test_contrast_follows_the_modality() -> None:
    t1 = _tissue_means("T1w")
    t2 = _tissue_means("T2w")
    assert t1["wm"] > t1["csf"] > t1["skull"] > t1["bg"]
    assert t2["csf"] > t2["wm"] > t2["skull"] > t2["bg"]


def test_make_phantom_rejects_unknown_contrast() -> None:
    with pytest.raises(ValueError, match="FLAIR"):
        make_phantom((4, 4, 4), (1, 1, 1), "FLAIR")


def test_command_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "ds"
    assert main([str(out)]) == 0
    assert sorted(_files(out)) == example_files()
    assert str(out) in capsys.readouterr().out


def test_command_refuses_non_empty_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    code = main([str(out)])
    assert code == EX_CANTCREAT != 0
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    assert main([str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine\n"  # force never deletes what we did not write
    assert (out / "sub-01" / "anat" / "sub-01_T1w.nii.gz").is_file()
    assert main([str(out), "--force"]) == 0  # and can be repeated


def test_command_refuses_a_file_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main([str(target)]) != 0
    assert "not a folder" in capsys.readouterr().err
