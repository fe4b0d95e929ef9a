"""Real-world metadata that used to be written silently wrong (issue 18, items 1-7).

Each case is the smallest dataset that showed the defect plus variants of the same kind, built
from real NIfTI files and indexed with real PyBIDS. Expected values are written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.datasets import make_dataset
from tumsyn_bids.bids.ignore import BIDSIgnore
from tumsyn_bids.bids.layout import BIDSIndexError, index_anatomical
from tumsyn_bids.plan import SynthesisRequest, build_plan

P = "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  "
T1 = "sub-01/anat/sub-01_T1w.nii.gz"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    """tests/datasets.py's two-subject dataset (real NIfTI images)."""
    return make_dataset(tmp_path / "bids")


def _record(root: Path, relpath: str):
    return {r.relpath: r for r in index_anatomical(root)}[relpath]


# ------------------------------------------------------------------ 1. timing in the wrong unit


def test_echo_time_in_ms_refuses_the_image_with_one_line(bids):
    _write_json(bids / "sub-01/anat/sub-01_T1w.json", {"RepetitionTime": 2.3, "EchoTime": 2.98})
    record = _record(bids, T1)
    assert record.error == (
        f"{T1}: unusable sidecar value: EchoTime 2.98 s is longer than RepetitionTime 2.3 s; "
        "BIDS wants seconds: was 2.98 ms meant (0.00298)?"
    )
    # the refused image's record shows what can be written (item 9): TE as None, never 2980.0
    assert record.prompt.endswith(P + "(2300.0, None, None, None)")
    plan = build_plan(index_anatomical(bids), SynthesisRequest(targets=("T2w",)))
    rows = plan[plan["subject"] == "01"]
    assert list(rows["status"]) == ["error"]
    assert list(rows["message"]) == [record.error]
    assert not any("2980" in str(p) for p in plan["target_prompt"])


def test_inversion_time_in_ms_inherited_from_the_dataset_level_sidecar(bids):
    # Variant: the wrong value comes from a sidecar higher up (BIDS inheritance).
    _write_json(bids / "T1w.json", {"InversionTime": 900})
    record = _record(bids, "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz")
    assert record.error == (
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz: unusable sidecar value: InversionTime 900 s "
        "is longer than any plausible InversionTime (10 s); BIDS wants seconds: "
        "was 900 ms meant (0.9)?"
    )
    assert _record(bids, T1).ok  # sub-01's own sidecar says InversionTime 1.0: nearer wins


def test_ge_readout_tr_with_a_longer_inversion_time_is_accepted(bids):
    # Not a unit mistake: GE/Philips report the readout TR of inversion-prepared 3-D scans.
    _write_json(
        bids / "sub-01/anat/sub-01_T1w.json",
        {"RepetitionTime": 0.0082, "EchoTime": 0.0032, "InversionTime": 0.45, "FlipAngle": 12},
    )
    record = _record(bids, T1)
    assert record.ok
    assert record.prompt.endswith(P + "(8.2, 3.2, 450.0, 12.0)")


# ------------------------------------------------------------------ 4. MP2RAGE


MP2RAGE_UNI = {
    "RepetitionTimePreparation": 5.0,
    "RepetitionTimeExcitation": 0.0072,
    "EchoTime": 0.0029,
    "InversionTime": 0.7,
    "FlipAngle": 4,
    "MagneticFieldStrength": 3,
    "Manufacturer": "Siemens",
}


def test_mp2rage_uni_uses_repetition_time_preparation(bids, write_volume):
    uni = bids / "sub-02/ses-1/anat/sub-02_ses-1_acq-UNI_T1w.nii.gz"
    write_volume(uni, (1.0, 1.0, 1.0))
    _write_json(uni.with_name("sub-02_ses-1_acq-UNI_T1w.json"), MP2RAGE_UNI)
    record = _record(bids, "sub-02/ses-1/anat/sub-02_ses-1_acq-UNI_T1w.nii.gz")
    assert record.ok
    assert record.protocol.repetition_time == 5.0
    assert record.prompt == (
        "Age: None; Gender: None; Scanner: 3.0 Siemens; Modality: T1w; "
        "Voxel size: (1.0, 1.0, 1.0); " + P + "(5000.0, 2.9, 700.0, 4.0)"
    )


def test_mp2rage_preparation_time_inherited_from_the_dataset_level(bids, write_volume):
    # Variant: the field sits in a dataset-level acq-UNI_T1w.json and the image's own sidecar
    # has only the rest (BIDS inheritance); a "n/a" RepetitionTime does not hide it.
    uni = bids / "sub-02/ses-1/anat/sub-02_ses-1_acq-UNI_T1w.nii.gz"
    write_volume(uni, (0.75, 0.75, 0.75))
    _write_json(bids / "acq-UNI_T1w.json", {"RepetitionTimePreparation": 4.0})
    _write_json(
        uni.with_name("sub-02_ses-1_acq-UNI_T1w.json"),
        {"RepetitionTime": "n/a", "EchoTime": 0.003, "InversionTime": 0.8},
    )
    record = _record(bids, "sub-02/ses-1/anat/sub-02_ses-1_acq-UNI_T1w.nii.gz")
    assert record.ok
    assert record.prompt.endswith(P + "(4000.0, 3.0, 800.0, None)")


# ------------------------------------------------------------------ 6. .bidsignore


def _localizer(root: Path, relpath: str, write_volume) -> Path:
    """A 3-slice localizer: real NIfTI, an anatomical suffix, nothing a user wants used."""
    return write_volume(root / relpath, (1.0, 1.0, 8.0), (32, 32, 3))


def test_bidsignored_localizer_is_neither_acquired_nor_source(bids, write_volume):
    # The smallest input that showed it: a T2w localizer (ignored) made T2w count as acquired.
    _localizer(bids, "sub-01/anat/sub-01_acq-localizer_T2w.nii.gz", write_volume)
    (bids / ".bidsignore").write_text("*_acq-localizer_*\n")
    index = index_anatomical(bids)
    assert [r.relpath for r in index if r.subject == "01"] == [T1]
    plan = build_plan(index, SynthesisRequest())
    rows = plan[plan["subject"] == "01"]
    assert set(rows["source"]) == {T1}
    assert "T2w" in set(rows["target_suffix"])


def test_bidsignored_localizer_does_not_become_the_source(bids, write_volume):
    # Variant: the ignored file has the preferred source suffix (T1w) in a session whose real
    # scan is a T2w; a folder pattern, written with CR line ends and a byte-order mark.
    session = bids / "sub-02/ses-1/anat"
    (session / "sub-02_ses-1_T1w.nii.gz").rename(session / "sub-02_ses-1_T2w.nii.gz")
    _localizer(bids, "sub-02/ses-1/anat/localizers/sub-02_ses-1_T1w.nii.gz", write_volume)
    _localizer(bids, "sub-02/ses-1/anat/sub-02_ses-1_acq-scout_T1w.nii.gz", write_volume)
    (bids / ".bidsignore").write_bytes(b"\xef\xbb\xbfsub-*/*/anat/localizers/\r\n*acq-scout*\r\n")
    index = index_anatomical(bids, participant_labels=["02"])
    assert [r.relpath for r in index] == ["sub-02/ses-1/anat/sub-02_ses-1_T2w.nii.gz"]
    plan = build_plan(index, SynthesisRequest())
    assert set(plan["source_suffix"]) == {"T2w"}
    assert "T1w" in set(plan["target_suffix"])


def test_negated_rule_keeps_a_file(bids, write_volume):
    _localizer(bids, "sub-01/anat/sub-01_acq-scout_T2w.nii.gz", write_volume)
    write_volume(bids / "sub-01/anat/sub-01_acq-scoutlike_T2w.nii.gz", (1.0, 1.0, 1.0))
    (bids / ".bidsignore").write_text("*acq-scout*\n!*acq-scoutlike*\n")
    relpaths = [r.relpath for r in index_anatomical(bids, participant_labels=["01"])]
    assert relpaths == [T1, "sub-01/anat/sub-01_acq-scoutlike_T2w.nii.gz"]


def test_bidsignored_subject_and_sidecar(bids):
    # Variant: a whole (pilot) subject folder, and a dataset-level sidecar, are ignored: the
    # subject does not exist for label selection, and the sidecar is not inherited.
    _write_json(bids / "T1w.json", {"MagneticFieldStrength": 1.5})
    (bids / ".bidsignore").write_text("/sub-02/\n/T1w.json\n")
    index = index_anatomical(bids)
    assert [r.subject for r in index] == ["01"]
    assert index[0].protocol.magnetic_field_strength == 3.0  # its own sidecar, not the root's
    with pytest.raises(BIDSIndexError, match="participant label"):
        index_anatomical(bids, participant_labels=["02"])


def test_bidsignore_also_applies_to_a_reused_database(bids, write_volume, tmp_path):
    # A database built before the .bidsignore was written still yields no ignored image.
    _localizer(bids, "sub-01/anat/sub-01_acq-localizer_T2w.nii.gz", write_volume)
    database = tmp_path / "db"
    assert len(index_anatomical(bids, database_dir=database)) == 3
    (bids / ".bidsignore").write_text("*localizer*\n")
    assert [r.relpath for r in index_anatomical(bids, database_dir=database)] == [
        T1,
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
    ]


def test_bidsignore_rules():
    rules = BIDSIgnore(Path("/nonexistent"), ["*.tmp", "derivatives-old/", "/top.nii.gz"])
    assert rules.ignores("sub-01/anat/x.tmp")
    assert rules.ignores("derivatives-old/", is_dir=True)
    assert rules.ignores("derivatives-old/sub-01/anat/sub-01_T1w.nii.gz")
    assert rules.ignores("top.nii.gz") and not rules.ignores("sub-01/top.nii.gz")
    assert not BIDSIgnore(Path("/nonexistent")).ignores("anything")


# ------------------------------------------------------------------ 2./3. tables


def _longitudinal(root: Path, write_volume, sessions=("1", "2")) -> Path:
    """sub-01 scanned at each of ``sessions`` (a T1w each, no sidecar), dataset description."""
    _write_json(root / "dataset_description.json", {"Name": "long", "BIDSVersion": "1.10.0"})
    for session in sessions:
        write_volume(root / f"sub-01/ses-{session}/anat/sub-01_ses-{session}_T1w.nii.gz")
    return root


def _ages(root: Path) -> dict[str | None, float | None]:
    return {r.session: r.demographics.age for r in index_anatomical(root)}


def test_dataset_level_sessions_json_units_apply_to_every_sessions_tsv(tmp_path, write_volume):
    # The smallest input that showed it: ages in months, Units declared at the dataset level.
    root = _longitudinal(tmp_path / "bids", write_volume, sessions=("1",))
    (root / "sub-01/sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t10\n")
    _write_json(root / "sessions.json", {"age": {"Units": "months"}})
    record = index_anatomical(root)[0]
    assert record.demographics.age == pytest.approx(10 / 12)
    assert record.prompt.startswith("Age: 0.8; ")


@pytest.mark.parametrize(
    ("dataset_units", "subject_units", "cell", "years"),
    [
        ("weeks", None, "26", 26 * 7 / 365.25),
        ("days", None, "730.5", 2.0),
        ("months", "years", "10", 10.0),  # the subject-level sidecar overrides
        (None, "months", "18", 1.5),  # only the subject-level sidecar
        ("fortnights", None, "10", None),  # a unit we cannot convert: unknown, not wrong
    ],
)
def test_sessions_json_inheritance_variants(
    tmp_path, write_volume, dataset_units, subject_units, cell, years
):
    root = _longitudinal(tmp_path / "bids", write_volume, sessions=("1",))
    (root / "sub-01/sub-01_sessions.tsv").write_text(f"session_id\tage\nses-1\t{cell}\n")
    if dataset_units:
        _write_json(root / "sessions.json", {"age": {"Units": dataset_units}})
    if subject_units:
        _write_json(root / "sub-01/sub-01_sessions.json", {"age": {"Units": subject_units}})
    age = _ages(root)["1"]
    assert age == (None if years is None else pytest.approx(years))


def test_participants_json_units(tmp_path, write_volume):
    root = _longitudinal(tmp_path / "bids", write_volume, sessions=("1",))
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t400\tF\n")
    _write_json(root / "participants.json", {"age": {"Units": "weeks"}})
    record = index_anatomical(root)[0]
    assert record.prompt.startswith("Age: 7.7; Gender: F;")  # 400 * 7 / 365.25 = 7.67


def test_long_participants_tsv_uses_the_visit_row(tmp_path, write_volume):
    # The smallest input that showed it: every visit got the first row's age.
    root = _longitudinal(tmp_path / "bids", write_volume)
    (root / "participants.tsv").write_text(
        "participant_id\tsession_id\tage\tsex\nsub-01\tses-1\t10\tM\nsub-01\tses-2\t12\tM\n"
    )
    records = {r.session: r for r in index_anatomical(root)}
    assert records["1"].prompt.startswith("Age: 10; Gender: M;")
    assert records["2"].prompt.startswith("Age: 12; Gender: M;")
    assert records["1"].warning is None and records["2"].warning is None


def test_long_participants_tsv_without_the_visit_row(tmp_path, write_volume, caplog):
    # Variant: the visit has no row (and labels are written without the ses- prefix): the age
    # is unknown, with a warning, never the other visit's; the sex still is the participant's.
    root = _longitudinal(tmp_path / "bids", write_volume, sessions=("1", "2", "3"))
    (root / "participants.tsv").write_text(
        "participant_id\tsession_id\tage\tsex\nsub-01\t1\t10\tF\nsub-01\t2\t12\tF\n"
    )
    with caplog.at_level("WARNING"):
        records = {r.session: r for r in index_anatomical(root)}
    third = records["3"]
    assert third.demographics.age is None and third.demographics.sex == "F"
    assert third.prompt.startswith("Age: None; Gender: F;")
    message = (
        "sub-01/ses-3/anat/sub-01_ses-3_T1w.nii.gz: participants.tsv has rows for sub-01 "
        "(ses-1, ses-2) but none for sub-01 ses-3; age unknown (None), not another visit's"
    )
    assert third.warning == message
    assert message in caplog.messages
    assert records["2"].demographics.age == 12


@pytest.mark.parametrize(
    ("tsv", "warning"),
    [
        (  # two rows for the same visit that disagree
            "participant_id\tsession_id\tage\nsub-01\tses-1\t10\nsub-01\tses-1\t11\n",
            "participants.tsv: the 2 rows of sub-01 ses-1 disagree on the age (10, 11); "
            "age unknown (None)",
        ),
        (  # one row per participant, but sub-01 twice
            "participant_id\tage\nsub-01\t30\nsub-01\t31\n",
            "participants.tsv: the 2 rows of sub-01 disagree on the age (30, 31); "
            "age unknown (None)",
        ),
    ],
)
def test_ambiguous_participant_rows_give_none_and_a_warning(tmp_path, write_volume, tsv, warning):
    root = _longitudinal(tmp_path / "bids", write_volume, sessions=("1",))
    (root / "participants.tsv").write_text(tsv)
    record = index_anatomical(root)[0]
    assert record.demographics.age is None
    assert record.warning == f"sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz: {warning}"


def test_ambiguous_sessions_row_does_not_fall_back_to_the_participant_age(tmp_path, write_volume):
    root = _longitudinal(tmp_path / "bids", write_volume, sessions=("1",))
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\n")
    (root / "sub-01/sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t31\nses-1\t32\n")
    record = index_anatomical(root)[0]
    assert record.demographics.age is None
    assert record.warning.endswith(
        "sub-01/sub-01_sessions.tsv: the 2 rows of ses-1 disagree on the age (31, 32); "
        "age unknown (None)"
    )


def test_long_participants_tsv_in_a_dataset_without_sessions(tmp_path, write_volume):
    root = tmp_path / "bids"
    _write_json(root / "dataset_description.json", {"Name": "flat", "BIDSVersion": "1.10.0"})
    write_volume(root / "sub-01/anat/sub-01_T1w.nii.gz")
    write_volume(root / "sub-02/anat/sub-02_T1w.nii.gz")
    (root / "participants.tsv").write_text(
        "participant_id\tsession_id\tage\nsub-01\tn/a\t40\nsub-02\tses-a\t50\nsub-02\tses-b\t51\n"
    )
    records = {r.subject: r for r in index_anatomical(root)}
    assert records["01"].demographics.age == 40  # the row without a session
    assert records["02"].demographics.age is None  # two visits, no way to choose
    assert "none for sub-02" in records["02"].warning


# ------------------------------------------------------------------ 5. sform vs qform/pixdim


def test_prompt_and_output_grid_follow_the_sform(bids, caplog):
    # sub-01's T1w: sform 0.9 mm (the affine nibabel reads the data with), qform/pixdim 1.0 mm.
    path = bids / T1
    image = nib.load(path)
    data = np.asarray(image.dataobj)
    fixed = nib.Nifti1Image(data, np.diag([0.9, 0.9, 0.9, 1.0]))
    fixed.header.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    nib.save(fixed, path)
    with caplog.at_level("WARNING"):
        index = index_anatomical(bids)
    record = {r.relpath: r for r in index}[T1]
    assert record.ok
    assert "Voxel size: (0.9, 0.9, 0.9);" in record.prompt
    warning = (
        f"{T1}: the header's sform gives voxel size (0.9, 0.9, 0.9) mm but its qform/pixdim "
        "(1, 1, 1) mm; the sform is used, as nibabel reads the data and the output is written "
        "with it"
    )
    assert record.warning == warning
    assert warning in caplog.messages
    native = build_plan(index, SynthesisRequest(targets=("T2w",)))
    row = native[native["subject"] == "01"].iloc[0]
    assert "Voxel size: (0.9, 0.9, 0.9);" in row["target_prompt"]
    finer = build_plan(
        index, SynthesisRequest(targets=("T2w",), output_resolution=(0.45, 0.45, 0.45))
    )
    row = finer[finer["subject"] == "01"].iloc[0]
    grid = row["output_grid"]
    assert grid.voxel_size == pytest.approx((0.45, 0.45, 0.45), abs=1e-12)
    assert grid.shape == tuple(2 * n for n in data.shape)  # 0.9 mm sform halved: twice the voxels
