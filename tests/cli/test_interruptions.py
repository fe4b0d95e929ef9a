"""Interrupted and concurrent runs (issue 18 items 12 and 13), with real processes.

* Kill and resume: a participant run killed with SIGKILL after its first output and before its
  last, rerun with the same command, completes; no temporary or half-written file is left and
  the outputs are byte-identical to an uninterrupted run's.
* Two processes, one output dir: two one-participant runs started together into the same output
  and work folders (what a SLURM array does) both finish with the right images; each keeps its
  own plan, configuration and run time (``logs/run-<run_id>/``); ``dataset_description.json``,
  ``.bidsignore`` and the group files are valid; the BIDS validator passes.

The dataset is tests/cli/test_bad_inputs.py's (two participants); the model is the small
reference checkpoint pair, one job at a time (``--nprocs 1``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cli.test_bad_inputs import dataset, partial_files
from tests.cli.test_run import model_args
from tests.datasets import tree_digest
from tumsyn_bids.bids.io import is_stale_temporary, remove_stale_temporaries
from tumsyn_bids.locking import ClaimedError, claim, output_lock
from tumsyn_bids.runlog import list_runs, read_run_configs, read_run_plans

OUTPUTS = [
    "sub-01/anat/sub-01_desc-tumsynFromT1w_FLAIR.nii.gz",
    "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_desc-tumsynFromT1w_FLAIR.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_desc-tumsynFromT1w_T2w.nii.gz",
]
#: Files that must be byte-identical between runs: the derivatives and the shared provenance.
PRODUCTS = [
    *OUTPUTS,
    *(o.replace(".nii.gz", ".json") for o in OUTPUTS),
    "dataset_description.json",
    "logs/CITATION.md",
]


def command(bids: Path, out: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(out), "participant",
            "-w", str(work), "--skip-bids-validation", *model_args(), "--target", "T2w", "FLAIR",
            "--nprocs", "1", *extra]  # fmt: skip


def products(out: Path) -> dict[str, bytes]:
    return {rel: (out / rel).read_bytes() for rel in PRODUCTS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The dataset and the outputs of one uninterrupted run over both participants."""
    base = tmp_path_factory.mktemp("reference")
    bids = dataset(base / "bids")
    res = subprocess.run(command(bids, base / "out", base / "work"), capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return bids, products(base / "out")


@pytest.mark.slow
def test_killed_run_resumes_to_identical_outputs(reference, tmp_path):
    bids, expected = reference
    before = tree_digest(bids)
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = command(bids, out, work)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    sidecars = [out / o.replace(".nii.gz", ".json") for o in OUTPUTS]
    deadline = time.monotonic() + 300
    while not any(s.is_file() for s in sidecars):
        assert proc.poll() is None, "the run ended before its first output"
        assert time.monotonic() < deadline, "no output within 300 s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and any child it started
    proc.wait()
    finished = [s for s in sidecars if s.is_file()]
    assert 1 <= len(finished) < len(OUTPUTS), "killed after the first output, before the last"

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # the same command
    assert res.returncode == 0, res.stderr[-3000:]
    assert partial_files(out) == []
    assert products(out) == expected
    assert tree_digest(bids) == before
    plan = read_run_plans(out)
    # two runs recorded; the rerun found the killed run's finished outputs done
    assert len(list_runs(out)) == 2
    last = plan[plan["run_id"] == plan["run_id"].iloc[-1]]
    assert set(last["status"]) <= {"done"} and len(last) == len(OUTPUTS)


@pytest.mark.slow
def test_two_processes_share_one_output_dir(reference, tmp_path):
    bids, expected = reference
    out, work = tmp_path / "out", tmp_path / "work"
    procs = {
        label: subprocess.Popen(command(bids, out, work, "--participant-label", label),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for label in ("01", "02")
    }  # fmt: skip
    results = {label: proc.communicate(timeout=600) for label, proc in procs.items()}
    for label, proc in procs.items():
        assert proc.returncode == 0, (label, results[label][1][-3000:])
    assert products(out) == expected  # every image right, the shared files as one run wrote
    assert partial_files(out) == []

    # every task's plan, configuration and run time survive, each in its own folder
    runs = list_runs(out)
    assert len(runs) == 2
    configs = read_run_configs(out)
    assert sorted(c["participant_label"][0] for c in configs.values()) == ["01", "02"]
    plan = read_run_plans(out)
    for run_id, config in configs.items():
        rows = plan[plan["run_id"] == run_id]
        assert set(rows["subject"]) == set(config["participant_label"])
        assert set(rows["status"]) == {"done"} and len(rows) == 2
        runtime = json.loads((out / "logs" / f"run-{run_id}" / "runtime.json").read_text())
        assert runtime["seconds"] > 0
    for subject in ("01", "02"):
        jobs = pd.read_csv(out / f"sub-{subject}/log/jobs.tsv", sep="\t", keep_default_na=False)
        assert list(jobs["status"]) == ["done", "done"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    ignored = (out / ".bidsignore").read_text().splitlines()
    assert "logs/" in ignored and len(ignored) == len(set(ignored))

    # the group level reads both tasks' outputs; the result is a valid derivative dataset
    group = subprocess.run([sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(out),
                            "group"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert group.returncode == 0, group.stderr[-2000:]
    table = pd.read_csv(out / "group_synthesis.tsv", sep="\t")
    assert sorted(table["output"]) == sorted(OUTPUTS)
    from tumsyn_bids.bids.validation import validate_bids

    result = validate_bids(out)
    assert result.ok, result.errors


@pytest.mark.slow
def test_a_second_run_of_the_same_participant_is_refused_while_the_first_runs(tmp_path, capsys):
    """Two runs that would write the same session are not raced: the second exits 73 at once,
    naming the first; it writes nothing."""
    from tumsyn_bids.cli.run import main

    bids = dataset(tmp_path / "bids")
    out = tmp_path / "out"
    held = claim(out, ["sub-01"])  # as a running `tumsyn ... --participant-label 01` holds it
    try:
        code = main(command(bids, out, tmp_path / "w", "--participant-label", "01")[3:])
    finally:
        held.release()
    err = capsys.readouterr().err
    assert code == 73, err[-2000:]
    assert f"another tumsyn run is writing sub-01 into {out} (pid {os.getpid()} on" in err
    assert not list_runs(out) and not (out / "sub-01").exists()


# ------------------------------------------------------------------------------ the pieces


def test_claims_conflict_and_are_released(tmp_path):
    first = claim(tmp_path, ["sub-01_ses-1", "sub-02"])
    with pytest.raises(ClaimedError, match="another tumsyn run is writing sub-02 into"):
        claim(tmp_path, ["sub-02"])
    other = claim(tmp_path, ["sub-01_ses-2"])  # another session of sub-01 is free
    first.release()
    claim(tmp_path, ["sub-02"]).release()
    other.release()


def test_a_killed_holder_releases_its_claim(tmp_path):
    code = (
        "import sys, time; from tumsyn_bids.locking import claim; "
        f"claim({str(tmp_path)!r}, ['sub-01']); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(ClaimedError, match=f"pid {proc.pid}"):
        claim(tmp_path, ["sub-01"])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    claim(tmp_path, ["sub-01"]).release()  # the kernel released it with the process


def test_output_lock_serialises_read_modify_write_across_processes(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    code = (
        "import sys, time; from pathlib import Path; from tumsyn_bids.locking import output_lock\n"
        "c = Path(sys.argv[1]) / 'counter'\n"
        "for _ in range(40):\n"
        "    with output_lock(sys.argv[1]):\n"
        "        n = int(c.read_text()); time.sleep(0.001); c.write_text(str(n + 1))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert counter.read_text() == "120"  # no update lost


def test_output_lock_is_reentrant_and_excludes_threads(tmp_path):
    order = []

    def other_thread():
        with output_lock(tmp_path):
            order.append("thread")

    with output_lock(tmp_path), output_lock(tmp_path):  # nested: no deadlock
        thread = threading.Thread(target=other_thread)
        thread.start()
        time.sleep(0.2)
        order.append("main")
    thread.join(5)
    assert order == ["main", "thread"]
    with output_lock(tmp_path):  # free again
        pass


def test_stale_temporaries_are_removed_live_ones_kept(tmp_path):
    from tumsyn_bids.bids.io import temporary_name

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    live = anat / temporary_name(anat / "sub-01_desc-x_T2w.nii.gz")  # this process's
    host = live.name.split(".tmp-")[1].split("-")[0]
    stale = anat / f".sub-01_desc-x_T2w.tmp-{host}-{dead}-0123abcd.nii.gz"
    foreign_new = anat / ".sub-01_desc-y_T2w.tmp-otherhost-1-0123abcd.json"
    foreign_old = anat / ".sub-01_desc-z_T2w.tmp-otherhost-1-0123abcd.json"
    legacy_old = tmp_path / ".dataset_description.tmp0123abcd.json"
    for path in (live, stale, foreign_new, foreign_old, legacy_old):
        path.write_text("x")
    day_ago = time.time() - 2 * 86400
    os.utime(foreign_old, (day_ago, day_ago))
    os.utime(legacy_old, (day_ago, day_ago))
    assert is_stale_temporary(stale) and not is_stale_temporary(live)
    removed = remove_stale_temporaries(tmp_path, ["01"])
    assert sorted(removed) == sorted([stale, foreign_old, legacy_old])
    assert live.exists() and foreign_new.exists()
