"""The simulated BIDS dataset: files, metadata, validator, ground truth, determinism, safety."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.bids.validation import validate_bids
from tumsyn_bids.prompts.protocol import Protocol
from tumsyn_bids.simulate import (
    brain_mask,
    draw_subject,
    load_tissue_maps,
    render_ground_truth,
    simulated_scans,
    subject_labels,
    write_simulated_dataset,
)

from .conftest import MODALITIES, VOXEL_MM
from .scans import ground_truth


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_writes_the_expected_files(simulated: Path) -> None:
    files = set(_files(simulated))
    top = {"dataset_description.json", "README", "participants.tsv", "participants.json"}
    assert top | {"code/tumsyn-simulate.json"} <= files
    for sub in ("01", "02"):
        for suffix in MODALITIES:
            assert f"sub-{sub}/anat/sub-{sub}_{suffix}.nii.gz" in files
            assert f"sub-{sub}/anat/sub-{sub}_{suffix}.json" in files
        deriv = f"derivatives/simulation/sub-{sub}/anat/sub-{sub}"
        for tissue in ("GM", "WM", "CSF"):
            assert f"{deriv}_label-{tissue}_probseg.nii.gz" in files
        assert f"{deriv}_desc-brain_mask.nii.gz" in files
    assert "derivatives/simulation/dataset_description.json" in files
    # Nothing left behind next to the dataset.
    assert [p.name for p in simulated.parent.iterdir()] == ["ds"]


def test_dataset_metadata_and_attribution(simulated: Path) -> None:
    description = json.loads((simulated / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.10.0" and description["DatasetType"] == "raw"
    assert any("Fonov" in ref for ref in description["ReferencesAndLinks"])
    assert "copyright notice" in description["License"]
    assert description["GeneratedBy"][0]["Name"] == "tumsyn-simulate"
    readme = (simulated / "README").read_text()
    assert "Louis Collins, McConnell Brain Imaging Centre" in readme
    derived = json.loads(
        (simulated / "derivatives/simulation/dataset_description.json").read_text()
    )
    assert derived["DatasetType"] == "derivative"
    assert derived["GeneratedBy"][0]["Name"] == "tumsyn-simulate"


def test_participants(simulated: Path) -> None:
    with open(simulated / "participants.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == ["participant_id", "age", "sex"]
    assert [r["participant_id"] for r in rows] == ["sub-01", "sub-02"]
    for row in rows:
        assert 20 <= int(row["age"]) <= 80
        assert row["sex"] in ("M", "F")
    meta = json.loads((simulated / "participants.json").read_text())
    assert meta["age"]["Units"] == "year"


def test_sidecars_in_bids_units(simulated: Path) -> None:
    for scan in simulated_scans(simulated):
        sidecar = json.loads(scan.path.with_name(scan.path.name[:-7] + ".json").read_text())
        assert sidecar["MagneticFieldStrength"] in (1.5, 3.0)
        assert sidecar["Manufacturer"] in ("Siemens", "GE", "Philips")
        assert 0.005 <= sidecar["RepetitionTime"] <= 10.0  # seconds, not ms
        assert 0.001 <= sidecar["EchoTime"] <= 0.6
        assert isinstance(sidecar["FlipAngle"], (int, float))
        has_ti = scan.suffix == "FLAIR" or (
            scan.suffix == "T1w" and sidecar["PulseSequenceType"] == "MPRAGE"
        )
        assert ("InversionTime" in sidecar) == has_ti
        assert scan.protocol.voxel_size == (VOXEL_MM,) * 3
        img = nib.load(scan.path)
        assert img.get_data_dtype() == np.int16
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1


def test_official_validator_passes(simulated: Path) -> None:
    result = validate_bids(simulated, recursive=True)
    assert result.ok, result.report()
    assert sorted(result.raw["summary"]["subjects"]) == ["01", "02"]


def test_ground_truth_of_the_scanned_protocol(simulated: Path) -> None:
    for scan in simulated_scans(simulated):
        img = nib.load(scan.path)
        truth = render_ground_truth(simulated, scan.subject, scan.protocol, scan.suffix)
        np.testing.assert_array_equal(truth.affine, img.affine)
        assert truth.shape == img.shape
        mask = np.asarray(brain_mask(simulated, scan.subject).dataobj).astype(bool)
        r = np.corrcoef(img.get_fdata()[mask], truth.get_fdata()[mask])[0, 1]
        assert r > 0.9, (scan.path.name, r)


def test_ground_truth_is_the_rendering_the_scan_came_from(simulated: Path) -> None:
    scan = next(s for s in simulated_scans(simulated) if s.suffix == "T2w")
    sidecar = json.loads(scan.path.with_name(scan.path.name[:-7] + ".json").read_text())
    from_file = render_ground_truth(simulated, "sub-" + scan.subject, sidecar, "T2w")
    subject = draw_subject(scan.subject, 7)
    direct = ground_truth(subject, scan.protocol, "T2w", VOXEL_MM)
    np.testing.assert_array_equal(from_file.get_fdata(), direct)
    maps = load_tissue_maps(simulated, scan.subject)
    np.testing.assert_array_equal(maps.gm, subject.tissue_maps(VOXEL_MM).gm)


def test_ground_truth_of_another_protocol_differs(simulated: Path) -> None:
    t1w = next(s for s in simulated_scans(simulated) if s.suffix == "T1w")
    same = render_ground_truth(simulated, t1w.subject, t1w.protocol, "T1w").get_fdata()
    flair = Protocol(repetition_time=9.0, echo_time=0.09, inversion_time=2.5, flip_angle=150.0)
    other = render_ground_truth(simulated, t1w.subject, flair, "FLAIR").get_fdata()
    mask = np.asarray(brain_mask(simulated, t1w.subject).dataobj).astype(bool)
    assert np.corrcoef(same[mask], other[mask])[0, 1] < 0.8
    # Without a field strength in the protocol, the subject's scanner is used.
    field = t1w.protocol.magnetic_field_strength
    assert field is not None
    at_field = Protocol(9.0, 0.09, 2.5, 150.0, magnetic_field_strength=field)
    np.testing.assert_array_equal(
        other, render_ground_truth(simulated, t1w.subject, at_field, "FLAIR").get_fdata()
    )


def test_a_subject_is_the_same_whatever_else_is_written(simulated: Path, tmp_path: Path) -> None:
    alone = write_simulated_dataset(
        tmp_path / "alone", modalities=MODALITIES, seed=7, voxel_size=VOXEL_MM, labels=["02"]
    )
    first, again = _files(simulated), _files(alone)
    for name, data in again.items():
        if name.startswith(("sub-02/", "derivatives/simulation/sub-02/")):
            assert first[name] == data, name
    assert not (alone / "sub-01").exists()


@pytest.mark.slow
def test_parallel_writing_gives_the_same_files(simulated: Path, tmp_path: Path) -> None:
    parallel = write_simulated_dataset(
        tmp_path / "parallel",
        n_subjects=2,
        modalities=MODALITIES,
        seed=7,
        voxel_size=VOXEL_MM,
        n_procs=2,
    )
    assert _files(parallel) == _files(simulated)


def test_several_runs_give_several_protocols_of_one_anatomy(
    simulated: Path, tmp_path: Path
) -> None:
    runs = write_simulated_dataset(
        tmp_path / "runs",
        modalities=("T1w", "FLAIR"),
        seed=7,
        voxel_size=VOXEL_MM,
        labels=["01"],
        runs=3,
    )
    names = sorted(p.name for p in (runs / "sub-01/anat").glob("*.nii.gz"))
    assert names == [f"sub-01_run-{r}_{s}.nii.gz" for r in (1, 2, 3) for s in ("FLAIR", "T1w")]
    assert validate_bids(runs, recursive=True).ok
    assert json.loads((runs / "code/tumsyn-simulate.json").read_text())["runs"] == 3
    # Run 1 is the scan of the single-run dataset; the others are new protocols and new noise.
    single, multi = _files(simulated), _files(runs)
    for suffix in ("T1w", "FLAIR"):
        for ext in (".nii.gz", ".json"):
            assert (
                multi[f"sub-01/anat/sub-01_run-1_{suffix}{ext}"]
                == single[f"sub-01/anat/sub-01_{suffix}{ext}"]
            )
    scans = [s for s in simulated_scans(runs) if s.suffix == "FLAIR"]
    assert len(scans) == 3 and len({s.protocol for s in scans}) == 3
    data = [nib.load(s.path).get_fdata() for s in scans]
    assert not np.array_equal(data[1], data[2])
    # Each run's ground truth is its own protocol rendered on the shared tissue maps.
    mask = np.asarray(brain_mask(runs, "01").dataobj).astype(bool)
    for scan, image in zip(scans, data, strict=True):
        truth = render_ground_truth(runs, "01", scan.protocol, "FLAIR").get_fdata()
        assert np.corrcoef(image[mask], truth[mask])[0, 1] > 0.9
    with pytest.raises(ValueError, match="runs"):
        write_simulated_dataset(tmp_path / "bad", labels=["01"], runs=0)


def test_held_out_subjects_get_new_labels() -> None:
    assert subject_labels(3, first_subject=11) == ["11", "12", "13"]
    assert subject_labels(2) == ["01", "02"]
    assert subject_labels(1, first_subject=100) == ["100"]


def test_refuses_to_replace_what_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError):
            write_simulated_dataset(
                out, n_subjects=1, modalities=("T1w",), voxel_size=VOXEL_MM, overwrite=overwrite
            )
    assert (out / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_an_earlier_simulation(tmp_path: Path) -> None:
    out = tmp_path / "out"
    options = dict(modalities=("PDw",), voxel_size=VOXEL_MM, derivatives=False)
    write_simulated_dataset(out, n_subjects=2, **options)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_simulated_dataset(out, n_subjects=1, **options)
    write_simulated_dataset(out, n_subjects=1, overwrite=True, **options)
    assert sorted(p.name for p in out.glob("sub-*")) == ["sub-01"]
    assert not (out / "derivatives").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown modalities"):
        write_simulated_dataset("/nonexistent/x", modalities=("dwi",))
    with pytest.raises(ValueError, match="alphanumeric"):
        write_simulated_dataset("/nonexistent/x", labels=["a_b"])
