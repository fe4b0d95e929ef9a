"""``--list-participants`` and ``--index-only``: the two commands that prepare a cluster array
(real PyBIDS, the real BIDS validator)."""

from __future__ import annotations

import json

import pytest

from tests.datasets import make_dataset
from tumsyn_bids.cli.run import main


@pytest.fixture
def bids(tmp_path):
    root = make_dataset(tmp_path / "bids")
    # sub-03: a T1w ignored by .bidsignore (its only image), so not a participant to process
    anat = root / "sub-03" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-03_T1w.nii.gz").write_bytes((root / "sub-01/anat/sub-01_T1w.nii.gz").read_bytes())
    (root / ".bidsignore").write_text("sub-03/\n")
    (root / "participants.tsv").write_text(
        "participant_id\tage\tsex\nsub-01\t34\tF\nsub-02\tn/a\tn/a\nsub-03\t40\tM\n"
    )
    return root


def _list(bids, tmp_path, capsys, *extra):
    code = main([str(bids), str(tmp_path / "out"), "participant", "--list-participants",
                 "--skip-bids-validation", *map(str, extra)])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out.split(), captured.err


def test_list_participants_follows_the_selection(bids, tmp_path, capsys):
    assert _list(bids, tmp_path, capsys)[:2] == (0, ["01", "02"])
    assert _list(bids, tmp_path, capsys, "--participant-label", "sub-02")[:2] == (0, ["02"])
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"session": "1"}}))
    assert _list(bids, tmp_path, capsys, "--bids-filter-file", filters)[:2] == (0, ["02"])
    assert _list(bids, tmp_path, capsys, "--session-label", "1")[:2] == (0, ["02"])
    # no participant with an image of the source modality: 66, nothing on stdout
    code, labels, err = _list(bids, tmp_path, capsys, "--source", "FLAIR")
    assert (code, labels) == (66, [])
    assert "no participant selected" in err and "FLAIR" in err
    # a listing writes nothing into the output folder, not even the folder
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_list_participants_to_a_file(bids, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    assert _list(bids, tmp_path, capsys, "--list-participants", labels)[:2] == (0, [])
    assert labels.read_text() == "01\n02\n"


def test_index_only_needs_a_database_dir(bids, tmp_path, capsys):
    assert main([str(bids), str(tmp_path / "out"), "participant", "--index-only"]) == 64
    assert "--bids-database-dir" in capsys.readouterr().err
    code = main([str(bids), str(tmp_path / "out"), "group", "--list-participants"])
    assert code == 64


@pytest.mark.slow
def test_index_only_validates_once_for_every_task(bids, tmp_path, capsys):
    db, out = tmp_path / "db", tmp_path / "out"
    labels = tmp_path / "labels.txt"
    args = [str(bids), str(out), "participant", "--bids-database-dir", str(db)]
    assert main([*args, "--index-only", "--list-participants", str(labels)]) == 0
    assert labels.read_text() == "01\n02\n"
    manifest = json.loads((db / "tumsyn-index.json").read_text())
    assert manifest["validation"]["ok"] is True and manifest["validation"]["validator"]
    capsys.readouterr()
    # a task: reuses the index and the verdict (the validator does not run again)
    assert main([*args, "--dry-run", "--participant-label", "01", "--target", "T2w"]) == 0
    err = capsys.readouterr().err
    assert "reusing the BIDS index" in err and "reusing the verdict" in err
    assert "BIDS validation passed" not in err


@pytest.mark.slow
def test_a_recorded_failed_validation_stops_every_task(bids, tmp_path, capsys):
    (bids / "sub-01" / "anat" / "sub-01_notbids.txt").write_text("not a BIDS file")
    db, out = tmp_path / "db", tmp_path / "out"
    args = [str(bids), str(out), "participant", "--bids-database-dir", str(db)]
    assert main([*args, "--index-only"]) == 16
    assert json.loads((db / "tumsyn-index.json").read_text())["validation"]["ok"] is False
    capsys.readouterr()
    assert main([*args, "--dry-run", "--participant-label", "02"]) == 16
    err = capsys.readouterr().err
    assert "recorded in" in err and "not a valid BIDS dataset" in err
