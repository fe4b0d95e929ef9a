"""Indexing real-world BIDS layouts (bids-examples subsets) into ScanRecords and the frame.

Expected prompts are written by hand from the sidecars and TSVs in tests/data/bids-examples,
not produced by running the code.
"""

from __future__ import annotations

import json

import pytest

from tumsyn_bids.bids import (
    BIDSIndexError,
    ModalityTableError,
    index_anatomical,
    load_layout,
    read_bids_filter_file,
)
from tumsyn_bids.prompts.protocol import Demographics

P = "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  "
NO_VOXELS = "Voxel size: (None, None, None); "


def by_relpath(index):
    return {record.relpath: record for record in index}


# ------------------------------------------------------------------------------ ds000117


def test_ds000117_placeholders_give_clear_errors_and_prompts(examples):
    index = index_anatomical(examples / "ds000117")
    assert [r.relpath for r in index] == [
        "sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.nii.gz",
        "sub-04/ses-mri/anat/sub-04_ses-mri_acq-mprage_T1w.nii.gz",
    ]  # FLASH echoes have no TUMSyn word and are skipped
    first, second = index
    assert first.error == (
        "sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.nii.gz: "
        "empty file (0 bytes) — not a readable NIfTI image"
    )
    assert not first.ok
    assert index.errors == [first.error, second.error]
    assert [r for r in index if r.ok] == []
    assert first.voxel_size is None and first.shape is None
    # The prompt is still written (with unknown voxel size) so that --dry-run can show it.
    assert first.prompt == (
        "Age: 31; Gender: M; Scanner: 3.0 Siemens; Modality: T1w; "
        + NO_VOXELS
        + P
        + "(2250.0, 2.98, 900.0, 9.0)"
    )
    assert second.prompt == (
        "Age: 26; Gender: F; Scanner: 3.0 Siemens; Modality: T1w; "
        + NO_VOXELS
        + P
        + "(2250.0, 2.98, 900.0, 9.0)"
    )


def test_ds000117_sidecar_inheritance_from_root(examples):
    record = index_anatomical(examples / "ds000117", participant_labels=["01"])[0]
    assert (record.subject, record.session, record.suffix, record.modality) == (
        "01",
        "mri",
        "T1w",
        "T1w",
    )
    assert record.entities == {"acq": "mprage"}
    # from the dataset-level acq-mprage_T1w.json ...
    assert record.metadata["RepetitionTime"] == 2.25
    assert record.metadata["EchoTime"] == 0.00298
    assert record.metadata["InversionTime"] == 0.9
    assert record.metadata["Manufacturer"] == "Siemens"
    # ... merged with the subject-level sidecar, which only has landmarks
    assert record.metadata["AnatomicalLandmarkCoordinates"]["Nasion"] == [43, 111, 95]
    protocol = record.protocol
    assert (protocol.repetition_time, protocol.echo_time, protocol.inversion_time) == (
        2.25,
        0.00298,
        0.9,
    )
    assert (protocol.flip_angle, protocol.magnetic_field_strength, protocol.vendor) == (
        9.0,
        3.0,
        "Siemens",
    )
    assert record.demographics == Demographics(31, "M")


def test_ds000117_with_readable_headers(copy_dataset, fill_placeholders):
    root = copy_dataset("ds000117")
    fill_placeholders(root, zooms=(1.0, 1.0, 1.0))
    index = index_anatomical(root)
    assert index.errors == []
    assert len([r for r in index if r.ok]) == 2
    record = index[0]
    assert record.voxel_size == (1.0, 1.0, 1.0)
    assert record.shape == (4, 5, 6)
    assert record.prompt == (
        "Age: 31; Gender: M; Scanner: 3.0 Siemens; Modality: T1w; Voxel size: (1.0, 1.0, 1.0); "
        "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (2250.0, 2.98, 900.0, 9.0)"
    )


# ------------------------------------------------------------------------------ genetics_ukbb


def test_genetics_ukbb_prompts_from_real_sidecars(copy_dataset, write_volume):
    root = copy_dataset("genetics_ukbb")
    for subject in ("04", "05"):
        write_volume(root / f"sub-{subject}/anat/sub-{subject}_acq-MPRAGE_T1w.nii.gz", (1, 1, 1))
        write_volume(root / f"sub-{subject}/anat/sub-{subject}_FLAIR.nii.gz", (1.05, 1.0, 1.0))
    records = by_relpath(index_anatomical(root))
    assert sorted(records) == [
        "sub-04/anat/sub-04_FLAIR.nii.gz",
        "sub-04/anat/sub-04_acq-MPRAGE_T1w.nii.gz",
        "sub-05/anat/sub-05_FLAIR.nii.gz",
        "sub-05/anat/sub-05_acq-MPRAGE_T1w.nii.gz",
    ]
    assert records["sub-04/anat/sub-04_acq-MPRAGE_T1w.nii.gz"].prompt == (
        "Age: 84; Gender: F; Scanner: 3.0 Siemens; Modality: T1w; Voxel size: (1.0, 1.0, 1.0); "
        "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (2000.0, 2.01, None, 8.0)"
    )
    assert records["sub-04/anat/sub-04_FLAIR.nii.gz"].prompt == (
        "Age: 84; Gender: F; Scanner: 3.0 Siemens; Modality: FLAIR; Voxel size: (1.05, 1.0, 1.0); "
        "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (5000.0, 395.0, None, None)"
    )
    # participants.tsv says "89+" for sub-05
    assert records["sub-05/anat/sub-05_FLAIR.nii.gz"].prompt == (
        "Age: 89; Gender: M; Scanner: 3.0 Siemens; Modality: FLAIR; Voxel size: (1.05, 1.0, 1.0); "
        "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (5000.0, 395.0, None, None)"
    )
    record = records["sub-05/anat/sub-05_acq-MPRAGE_T1w.nii.gz"]
    assert record.session is None
    assert record.entities == {"acq": "MPRAGE"}
    assert record.error is None


# ------------------------------------------------------------------------------ hcp_example_bids


def test_hcp_no_participants_tsv_and_no_timing_fields(examples):
    records = list(index_anatomical(examples / "hcp_example_bids"))
    assert [(r.subject, r.session, r.modality) for r in records] == [
        ("100307", None, "T1w"),
        ("100307", None, "T2w"),
    ]
    t1w, t2w = records
    assert t1w.metadata == {"EffectiveEchoSpacing": 7.4e-06, "PhaseEncodingDirection": "k"}
    assert t1w.demographics == Demographics()
    assert t2w.prompt == (
        "Age: None; Gender: None; Scanner: None None; Modality: T2w; "
        + NO_VOXELS
        + P
        + "(None, None, None, None)"
    )
    assert t2w.error == (
        "sub-100307/anat/sub-100307_T2w.nii.gz: empty file (0 bytes) — not a readable NIfTI image"
    )


# ------------------------------------------------------------------------------ ds114 / sessions


def test_ds114_sessions_and_labels(examples):
    root = examples / "ds114"
    everything = index_anatomical(root, read_headers=False)
    assert [(r.subject, r.session) for r in everything] == [
        ("01", "retest"),
        ("01", "test"),
        ("02", "retest"),
        ("02", "test"),
    ]
    assert everything.errors == []  # headers not read
    # participants.tsv exists but has neither age nor sex; no sidecars at all
    assert all(r.demographics == Demographics() and r.metadata == {} for r in everything)

    only = index_anatomical(root, participant_labels=["sub-02"], session_labels=["ses-test"])
    assert [(r.subject, r.session) for r in only] == [("02", "test")]
    same = index_anatomical(root, participant_labels=["02"], session_labels=["test"])
    assert [r.relpath for r in same] == [r.relpath for r in only]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"participant_labels": ["sub-99"]}, "participant label"),
        ({"session_labels": ["baseline"]}, "session label"),
    ],
)
def test_unknown_labels_raise(examples, kwargs, message):
    with pytest.raises(BIDSIndexError, match=message):
        index_anatomical(examples / "ds114", **kwargs)


# ------------------------------------------------------------------------------ 7t_trt


def test_7t_trt_age_column_and_skipped_t1map(examples):
    index = index_anatomical(examples / "7t_trt")
    assert [r.relpath for r in index] == [
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
    ]
    assert [r.demographics for r in index] == [Demographics(29, "F"), Demographics(23, "F")]
    assert index[0].prompt == (
        "Age: 29; Gender: F; Scanner: None None; Modality: T1w; "
        + NO_VOXELS
        + P
        + "(None, None, None, None)"
    )


def test_session_age_overrides_participant_age(copy_dataset):
    root = copy_dataset("7t_trt")
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t30.5\n")
    record = index_anatomical(root, participant_labels=["01"], read_headers=False)[0]
    assert record.demographics == Demographics(30.5, "F")
    assert record.prompt.startswith("Age: 30.5; Gender: F;")


# ------------------------------------------------------------------------------ file variants


def test_uncompressed_nii_and_extra_entities(copy_dataset, write_volume, fill_placeholders):
    root = copy_dataset("ds000117")
    anat = root / "sub-01" / "ses-mri" / "anat"
    write_volume(anat / "sub-01_ses-mri_acq-mprage_rec-norm_T1w.nii", (0.8, 0.8, 0.8))
    write_volume(anat / "sub-01_ses-mri_task-rest_acq-fast_run-02_T2w.nii.gz", (0.7, 0.7, 2.0))
    write_volume(anat / "sub-01_ses-mri_ce-gadolinium_T1w.nii.gz", (1.0, 1.0, 1.0))
    fill_placeholders(root)
    records = by_relpath(index_anatomical(root, participant_labels=["01"]))

    rec = records["sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_rec-norm_T1w.nii"]
    assert rec.extension == ".nii"
    assert list(rec.entities.items()) == [("acq", "mprage"), ("rec", "norm")]  # file-name order
    assert rec.voxel_size == pytest.approx((0.8, 0.8, 0.8))
    # acq-mprage_T1w.json at the root applies to acq-mprage_rec-norm_T1w too
    assert rec.prompt == (
        "Age: 31; Gender: M; Scanner: 3.0 Siemens; Modality: T1w; Voxel size: (0.8, 0.8, 0.8); "
        "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (2250.0, 2.98, 900.0, 9.0)"
    )

    t2w = records["sub-01/ses-mri/anat/sub-01_ses-mri_task-rest_acq-fast_run-02_T2w.nii.gz"]
    assert list(t2w.entities.items()) == [("task", "rest"), ("acq", "fast"), ("run", "02")]
    assert t2w.modality == "T2w"
    assert "Voxel size: (0.7, 0.7, 2.0);" in t2w.prompt

    ce = records["sub-01/ses-mri/anat/sub-01_ses-mri_ce-gadolinium_T1w.nii.gz"]
    assert ce.modality == "T1wCE"
    assert ce.metadata == {}  # no acq-mprage: the root sidecar does not apply
    assert ce.error is None


def test_unreadable_sidecar_value_is_a_record_error(copy_dataset, fill_placeholders):
    root = copy_dataset("hcp_example_bids")
    fill_placeholders(root)
    sidecar = root / "sub-100307" / "anat" / "sub-100307_T1w.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 2300, "EchoTime": 0.002}))
    records = list(index_anatomical(root))
    t1w, t2w = records
    # the record still shows what can be written; the refused TR is None, never 2300000 ms
    assert t1w.prompt.endswith("(None, 2.0, None, None)")
    assert t1w.error == (
        "sub-100307/anat/sub-100307_T1w.nii.gz: unusable sidecar value: RepetitionTime 2300 s "
        "is longer than any plausible RepetitionTime (20 s); BIDS wants seconds: "
        "was 2300 ms meant (2.3)?"
    )
    assert t2w.ok


def test_non_numeric_sidecar_value_is_a_record_error(copy_dataset, fill_placeholders):
    root = copy_dataset("hcp_example_bids")
    fill_placeholders(root)
    sidecar = root / "sub-100307" / "anat" / "sub-100307_T2w.json"
    sidecar.write_text(json.dumps({"EchoTime": "short"}))
    t2w = index_anatomical(root)[1]
    assert "unusable sidecar value" in t2w.error
    assert t2w.prompt is not None  # written without the bad value


def test_both_problems_are_reported(copy_dataset):
    root = copy_dataset("hcp_example_bids")  # placeholders stay empty
    sidecar = root / "sub-100307" / "anat" / "sub-100307_T1w.json"
    sidecar.write_text(json.dumps({"FlipAngle": 1000}))
    error = index_anatomical(root)[0].error
    lines = error.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("empty file (0 bytes) — not a readable NIfTI image")
    assert "FlipAngle" in lines[1]


# ------------------------------------------------------------------------------ filters


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"t1w": {"acq": "MPRAGE"}}, ["FLAIR", "T1w", "FLAIR", "T1w"]),
        ({"T1w": {"acquisition": "MPRAGE", "subject": "04"}}, ["FLAIR", "T1w", "FLAIR"]),
        ({"t1w": {"acquisition": None}}, ["FLAIR", "FLAIR"]),  # null: entity must be absent
        ({"flair": {"acquisition": "*"}}, ["T1w", "T1w"]),  # "*": entity must be present
        ({"t1w": {"acq": ["other", "MPRAGE"]}}, ["FLAIR", "T1w", "FLAIR", "T1w"]),
        ({"t1w": {"acq": "other"}, "flair": {"subject": ["05"]}}, ["FLAIR"]),
    ],
)
def test_bids_filters(examples, filters, expected):
    index = index_anatomical(examples / "genetics_ukbb", bids_filters=filters, read_headers=False)
    assert [r.modality for r in index] == expected


def test_filters_and_labels_both_apply(examples):
    index = index_anatomical(
        examples / "ds114",
        bids_filters={"t1w": {"session": "test"}},
        participant_labels=["01"],
        read_headers=False,
    )
    assert [(r.subject, r.session) for r in index] == [("01", "test")]


def test_filter_keys_of_other_apps_are_ignored(examples):
    filters = {"bold": {"task": "rest"}, "fmap": {"acq": "x"}, "t1w": {"acq": "MPRAGE"}}
    index = index_anatomical(examples / "genetics_ukbb", bids_filters=filters, read_headers=False)
    assert len(index) == 4


def test_filter_key_may_be_a_modality_word(examples):
    # "mra" is the word for the angio suffix; no angiograms here, and no error either
    index = index_anatomical(
        examples / "hcp_example_bids", bids_filters={"mra": {"acq": "tof"}}, read_headers=False
    )
    assert len(index) == 2


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"t1": {"acq": "MPRAGE"}}, "names no indexed image type"),
        ({"t1w": {"suffix": "T2w"}}, "may not set"),
        ({"t1w": {"extension": ".nii"}}, "may not set"),
        ({"t1w": {"colour": "blue"}}, "invalid BIDS filter"),
        ({"t1w": "MPRAGE"}, "must be an object"),
        (["t1w"], "must be a JSON object"),
    ],
)
def test_bad_filters_raise(examples, filters, message):
    with pytest.raises(BIDSIndexError, match=message):
        index_anatomical(examples / "genetics_ukbb", bids_filters=filters, read_headers=False)


def test_read_bids_filter_file(tmp_path):
    path = tmp_path / "filters.json"
    path.write_text('{"t1w": {"acquisition": null, "session": ["pre", "post"]}}')
    assert read_bids_filter_file(path) == {"t1w": {"acquisition": None, "session": ["pre", "post"]}}
    path.write_text('{"t1w": {"acquisition": ')
    with pytest.raises(BIDSIndexError, match="not valid JSON"):
        read_bids_filter_file(path)
    path.write_text('{"t1w": 3}')
    with pytest.raises(BIDSIndexError, match="must be an object"):
        read_bids_filter_file(path)
    with pytest.raises(BIDSIndexError, match="cannot read"):
        read_bids_filter_file(tmp_path / "missing.json")


# ------------------------------------------------------------------------------ modality table


def test_modality_overrides(examples):
    root = examples / "genetics_ukbb"
    without_flair = index_anatomical(root, modalities={"FLAIR": None}, read_headers=False)
    assert {r.modality for r in without_flair} == {"T1w"}
    renamed = index_anatomical(root, modalities={"FLAIR": "T2FLAIR"}, read_headers=False)
    flair = [r for r in renamed if r.suffix == "FLAIR"]
    assert {r.modality for r in flair} == {"T2FLAIR"}
    assert "Modality: T2FLAIR;" in flair[0].prompt
    with pytest.raises(ModalityTableError):
        index_anatomical(root, modalities={"FLAIR": "T2; FLAIR"})


# ------------------------------------------------------------------------------ records


def test_record_fields(examples):
    index = index_anatomical(examples / "ds000117")
    assert len(index) == 2
    record = index[0]
    assert (record.subject, record.session, record.modality, record.suffix) == (
        "01",
        "mri",
        "T1w",
        "T1w",
    )
    assert record.entities == {"acq": "mprage"}
    assert record.extension == ".nii.gz"
    assert record.path.is_absolute()
    protocol = record.protocol
    assert protocol.repetition_time == 2.25
    assert protocol.echo_time == 0.00298
    assert protocol.flip_angle == 9.0
    assert (protocol.manufacturer, protocol.vendor) == ("Siemens", "Siemens")
    assert (record.demographics.sex, record.demographics.age) == ("M", 31.0)
    assert record.voxel_size is None
    assert record.error.endswith("not a readable NIfTI image")


def test_record_missing_values(examples):
    record = index_anatomical(examples / "hcp_example_bids", read_headers=False)[0]
    assert record.protocol.repetition_time is None and record.demographics.age is None
    assert record.session is None and record.demographics.sex is None
    assert record.protocol.flip_angle is None
    assert record.error is None


def test_empty_index(examples):
    index = index_anatomical(
        examples / "hcp_example_bids", modalities={"T1w": None, "T2w": None}, read_headers=False
    )
    assert len(index) == 0 and list(index) == [] and index.errors == []


# ------------------------------------------------------------------------------ layout


def test_load_layout_errors(tmp_path):
    with pytest.raises(BIDSIndexError, match="not a directory"):
        load_layout(tmp_path / "nowhere")
    with pytest.raises(BIDSIndexError, match="dataset_description.json"):
        load_layout(tmp_path)


def test_database_dir_is_used_and_reused(copy_dataset, tmp_path):
    root = copy_dataset("ds114")
    database = tmp_path / "pybids-db"
    first = index_anatomical(root, database_dir=database, read_headers=False)
    assert database.is_dir() and any(database.iterdir())
    layout = load_layout(root, database_dir=database)
    second = index_anatomical(layout, read_headers=False)
    assert [r.relpath for r in first] == [r.relpath for r in second]


def test_accepts_an_existing_layout(examples):
    layout = load_layout(examples / "hcp_example_bids")
    assert len(index_anatomical(layout, read_headers=False)) == 2
