"""Demographics lookup from participants.tsv / sessions.tsv (tumsyn_bids.bids.metadata)."""

from __future__ import annotations

import json

import pytest

from tumsyn_bids.bids.metadata import (
    ParticipantTable,
    age_in_years,
    find_age_column,
    find_sex_column,
)
from tumsyn_bids.prompts.protocol import Demographics


def test_ds000117_rows_and_na(examples):
    table = ParticipantTable(examples / "ds000117")
    assert table.lookup("01") == Demographics(31, "M")
    assert table.lookup("sub-04", "mri") == Demographics(26, "F")
    assert table.lookup("emptyroom") == Demographics(None, None)  # n/a cells
    assert table.lookup("99") == Demographics()  # no such row


def test_genetics_ukbb_extra_columns_and_censored_age(examples):
    table = ParticipantTable(examples / "genetics_ukbb")
    assert table.lookup("04") == Demographics(84, "F")
    assert table.lookup("05") == Demographics(89, "M")  # "89+"


def test_no_participants_tsv(examples):
    assert ParticipantTable(examples / "hcp_example_bids").lookup("100307") == Demographics()


def test_participants_without_age_or_sex(examples):
    assert ParticipantTable(examples / "ds114").lookup("01", "test") == Demographics()


def test_prefixed_age_column_and_sessions_without_age(examples):
    table = ParticipantTable(examples / "7t_trt")
    assert table.lookup("01", "1") == Demographics(29, "F")
    assert table.lookup("02", "ses-1") == Demographics(23, "F")


def test_participant_ids_without_prefix_and_gender_column(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tGender\tAge\n01\tfemale\t7\n")
    assert ParticipantTable(tmp_path).lookup("sub-01") == Demographics(7, "F")


def test_missing_participant_id_column(tmp_path):
    (tmp_path / "participants.tsv").write_text("subject\tage\tsex\nsub-01\t30\tM\n")
    assert ParticipantTable(tmp_path).lookup("01") == Demographics()


def test_age_units_from_sidecar(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t18\tM\n")
    (tmp_path / "participants.json").write_text(json.dumps({"age": {"Units": "months"}}))
    assert ParticipantTable(tmp_path).lookup("01") == Demographics(1.5, "M")


def test_unknown_age_unit_gives_none(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tage\nsub-01\t18\n")
    (tmp_path / "participants.json").write_text(json.dumps({"age": {"Units": "fortnights"}}))
    assert ParticipantTable(tmp_path).lookup("01").age is None


def test_session_age_wins(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t30\tF\n")
    subject = tmp_path / "sub-01"
    subject.mkdir()
    (subject / "sub-01_sessions.tsv").write_text(
        "session_id\tage_months\nses-pre\t372\nses-post\tn/a\n"
    )
    table = ParticipantTable(tmp_path)
    assert table.lookup("01", "pre") == Demographics(31, "F")
    assert table.lookup("01", "post") == Demographics(30, "F")  # n/a: participant age
    assert table.lookup("01") == Demographics(30, "F")


def test_unreadable_tsv_is_treated_as_missing(tmp_path):
    (tmp_path / "participants.tsv").write_bytes(b"")
    assert ParticipantTable(tmp_path).lookup("01") == Demographics()


@pytest.mark.parametrize(
    ("columns", "age", "sex"),
    [
        (["participant_id", "age", "sex"], "age", "sex"),
        (["participant_id", "Age", "SEX"], "Age", "SEX"),
        (["participant_id", "age_at_first_scan_years", "sex"], "age_at_first_scan_years", "sex"),
        (["participant_id", "gender", "stage"], None, "gender"),
        (["participant_id", "handedness"], None, None),
    ],
)
def test_column_detection(columns, age, sex):
    assert find_age_column(columns) == age
    assert find_sex_column(columns) == sex


@pytest.mark.parametrize(
    ("cell", "column", "sidecar", "years"),
    [
        ("16", "age", {}, 16.0),
        ("89+", "age", {"age": {"Units": "year"}}, 89.0),
        ("24", "age_months", {}, 2.0),
        ("365.25", "age_days", {}, 1.0),
        ("n/a", "age", {}, None),
        ("6", "age", {"age": {"Units": "Months"}}, 0.5),
    ],
)
def test_age_in_years(cell, column, sidecar, years):
    assert age_in_years(cell, column, sidecar) == years


def test_sessions_json_inherited_without_a_given_layout(tmp_path, caplog):
    # ParticipantTable on its own builds the PyBIDS layout it needs for the TSV sidecars.
    (tmp_path / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-a\t6\n")
    (tmp_path / "sessions.json").write_text(json.dumps({"age": {"Units": "months"}}))
    (tmp_path / "participants.tsv").write_text(
        "participant_id\tsession_id\tsex\nsub-01\tses-a\tF\nsub-01\tses-b\tM\n"
    )
    table = ParticipantTable(tmp_path)
    with caplog.at_level("WARNING"):
        assert table.lookup("01", "a") == Demographics(0.5, "F")
        assert table.lookup("01", "b") == Demographics(None, "M")
        assert table.lookup("01", "c") == Demographics(None, None)
        table.lookup("01", "c")
    warnings = [m for m in caplog.messages if "disagree on the sex" in m]
    assert warnings == [  # logged once, however often asked
        "participants.tsv: the 2 rows of sub-01 disagree on the sex (F, M); sex unknown (None)"
    ]
