"""The shared index of --bids-database-dir: fingerprint, build once, reuse, rebuild when stale,
concurrent openers (real PyBIDS, real files, real processes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.datasets import make_dataset
from tumsyn_bids.bids.database import (
    MANIFEST,
    SQLITE,
    DatabaseError,
    Verdict,
    build_shared_index,
    fingerprint,
    open_shared_index,
)
from tumsyn_bids.bids.layout import index_anatomical


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _touch(path: Path) -> None:
    """Change a file the way an edit does: new content, new mtime."""
    path.write_bytes(path.read_bytes() + b" ")
    later = time.time() + 5
    os.utime(path, (later, later))


@pytest.fixture
def bids(tmp_path) -> Path:
    return make_dataset(tmp_path / "bids")


def test_fingerprint_changes_only_for_the_edited_part(bids):
    before = fingerprint(bids)
    assert sorted(before.subjects) == ["01", "02"]
    assert fingerprint(bids) == before  # stat only, nothing random
    (bids / "sub-01" / ".DS_Store").write_text("hidden files are not part of the dataset")
    assert fingerprint(bids) == before
    _touch(bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz")
    after = fingerprint(bids)
    assert after.differences(before) == ["sub-02"]
    assert after.differences(before, subjects=["01"]) == []
    _touch(bids / "participants.tsv")
    assert fingerprint(bids).differences(before, subjects=["01"]) == ["top-level files"]
    # one participant's fingerprint only walks that participant's folder
    assert set(fingerprint(bids, ["01"]).subjects) == {"01"}
    # a label absent on both sides is no difference (a typo must not cost a re-index)
    now = fingerprint(bids)
    assert fingerprint(bids, ["99"]).differences(now, subjects=["99"]) == []


def test_built_once_then_reused_unchanged(bids, tmp_path, caplog):
    db = tmp_path / "db"
    calls = []

    def validate():
        calls.append(1)
        return Verdict(ok=True, validator="test", validated_at="then")

    built = build_shared_index(bids, db, validate=validate)
    assert built.built and built.verdict.ok and len(calls) == 1
    manifest = json.loads((db / MANIFEST).read_text())
    assert manifest["bids_dir"] == str(bids.resolve())
    assert manifest["validation"]["ok"] is True
    assert set(manifest["fingerprint"]["subjects"]) == {"01", "02"}
    stamp, digest = (db / SQLITE).stat().st_mtime_ns, _sha(db / SQLITE)

    caplog.set_level("INFO", logger="tumsyn_bids")
    for subjects in (["01"], ["sub-02"], None):
        layout, shared = open_shared_index(bids, db, subjects=subjects, validate=validate)
        assert not shared.built and shared.verdict.ok
        # the layout is a private copy: the shared file is never opened through SQLite
        assert Path(layout.connection_manager.database_file).parent != db
        index = index_anatomical(layout, participant_labels=subjects, read_headers=False)
        assert {r.subject for r in index} == ({"01", "02"} if subjects is None else {
            s.removeprefix("sub-") for s in subjects
        })  # fmt: skip
    assert len(calls) == 1  # validated once
    assert (db / SQLITE).stat().st_mtime_ns == stamp and _sha(db / SQLITE) == digest
    assert "reusing the BIDS index" in caplog.text


def test_a_change_rebuilds_for_the_tasks_that_read_it_only(bids, tmp_path):
    db = tmp_path / "db"
    build_shared_index(bids, db)
    first = json.loads((db / MANIFEST).read_text())["built_at"]
    sidecar = bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 2.0, "EchoTime": 0.003}))
    # sub-01's task does not read sub-02: reused
    layout, shared = open_shared_index(bids, db, subjects=["01"])
    assert not shared.built
    # sub-02's task sees the new sidecar: the index is rebuilt and has it
    layout, shared = open_shared_index(bids, db, subjects=["02"])
    assert shared.built and shared.built_at >= first
    record = index_anatomical(layout, participant_labels=["02"], read_headers=False)[0]
    assert record.metadata["RepetitionTime"] == 2.0
    # and the next task reuses the rebuilt index
    assert not open_shared_index(bids, db, subjects=["02"])[1].built


def test_the_index_of_another_dataset_is_refused(bids, tmp_path):
    db = tmp_path / "db"
    build_shared_index(bids, db)
    other = make_dataset(tmp_path / "other")
    with pytest.raises(DatabaseError, match="indexes .*bids, not .*other"):
        open_shared_index(other, db)


_OPENER = textwrap.dedent(
    """
    import sys, time
    from tumsyn_bids.bids.database import open_shared_index
    from tumsyn_bids.bids.layout import index_anatomical
    time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # start together
    layout, shared = open_shared_index(sys.argv[1], sys.argv[2], subjects=["01"])
    n = len(index_anatomical(layout, participant_labels=["01"], read_headers=False))
    print("built" if shared.built else "reused", n)
    """
)


@pytest.mark.slow
def test_concurrent_tasks_build_once_and_read_safely(bids, tmp_path):
    """Four processes open an empty database at the same moment: one builds, the others wait
    for it and reuse the index; all read the same records."""
    db = tmp_path / "db"
    start = str(time.time() + 3)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(bids), str(db), start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    outcomes = sorted(out.split()[0] for out, _ in results)
    assert outcomes == ["built", "reused", "reused", "reused"], results
    assert {out.split()[1] for out, _ in results} == {"1"}
    assert not list(db.glob(".build-*"))  # no scratch folder left


def test_one_participant_reads_only_its_own_files(bids, tmp_path, monkeypatch):
    """What keeps an array task's start-up flat in N (benchmarks/bench_scale.py): no header
    of another participant is read, and no query loads every file's entities."""
    import tumsyn_bids.bids.layout as layout_module

    layout, _ = open_shared_index(bids, build_shared_index(bids, tmp_path / "db").database_dir)
    probed, id_queries = [], []
    probe = layout_module.probe_image
    monkeypatch.setattr(
        layout_module, "probe_image", lambda path, rel: probed.append(rel) or probe(path, rel)
    )
    get = layout.get

    def counting_get(**query):
        if query.get("return_type") == "id":
            id_queries.append(query)
        return get(**query)

    monkeypatch.setattr(layout, "get", counting_get)
    index = index_anatomical(layout, participant_labels=["02"], session_labels=["1"])
    assert [r.subject for r in index] == ["02"]
    assert probed == ["sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"]
    assert id_queries == []
