"""One participant per SLURM array task, for real: containers/slurm/tumsyn-array.sbatch on the
local cluster, with the shared index and validation of --index-only, then the group level as a
dependent job (issue 20 items 2 and 3). The bundled demo model on tiny simulated heads."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from tests.local_slurm import FINAL_STATES
from tumsyn_bids.bids.validation import validate_bids
from tumsyn_bids.simulate import write_simulated_dataset

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "containers" / "slurm"
VENV = Path(sys.prefix)
TUMSYN = VENV / "bin" / "tumsyn"
LABELS = ["01", "02", "03", "04"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _label_block(script: Path) -> str:
    text = script.read_text()
    match = re.search(r"^# >>> label.*?^# <<< label$", text, flags=re.S | re.M)
    assert match, f"{script.name} has no '# >>> label' ... '# <<< label' block"
    return match.group(0)


def test_both_array_scripts_parse_and_share_the_label_code():
    scripts = sorted(SCRIPTS.glob("tumsyn-array*.sbatch"))
    assert [s.name for s in scripts] == ["tumsyn-array-apptainer.sbatch", "tumsyn-array.sbatch"]
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert _label_block(scripts[0]) == _label_block(scripts[1])


@pytest.mark.parametrize("task, expected", [(0, "01"), (1, "02"), (2, None), (-1, None)])
def test_the_label_code_picks_the_line_of_the_task(tmp_path, task, expected):
    """The shared block alone, run by bash: line task+1 of the list; 64 past its end."""
    labels = tmp_path / "labels.txt"
    labels.write_text("01\r\n02\n")
    block = _label_block(SCRIPTS / "tumsyn-array.sbatch") + '\necho "LABEL=$LABEL"\n'
    env = {"PATH": "/usr/bin:/bin", "TUMSYN_LABELS": str(labels), "SLURM_ARRAY_TASK_ID": str(task)}
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", block], env=env, capture_output=True,
                         text=True)  # fmt: skip
    if expected is None:
        assert res.returncode == 64 and "tumsyn-array:" in res.stderr, res
    else:
        assert res.returncode == 0 and f"LABEL={expected}\n" in res.stdout, res


def test_a_label_that_is_not_alphanumeric_is_refused(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("../x\n")
    block = _label_block(SCRIPTS / "tumsyn-array.sbatch")
    env = {"PATH": "/usr/bin:/bin", "TUMSYN_LABELS": str(labels), "SLURM_ARRAY_TASK_ID": "0"}
    res = subprocess.run(["bash", "-c", block], env=env, capture_output=True, text=True)
    assert res.returncode == 64 and "not a participant label" in res.stderr


def test_the_apptainer_variant_runs_the_same_command_in_the_image(tmp_path):
    """Apptainer cannot run here: a stand-in `apptainer` on PATH records its arguments, which
    must be the tumsyn command of the venv variant with container paths and bind mounts."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv.json"
    stub = bindir / "apptainer"
    stub.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
    )
    stub.chmod(0o755)
    labels = tmp_path / "labels.txt"
    labels.write_text("01\n02\n")
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "TUMSYN_LABELS": str(labels),
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_CPUS_PER_TASK": "3",
        "TUMSYN_SIF": "/images/tumsyn.sif",
        "TUMSYN_BIDS": "/data/bids",
        "TUMSYN_OUT": str(tmp_path / "out"),
        "TUMSYN_WORK": str(tmp_path / "work"),
        "TUMSYN_DB": "/scratch/db",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    script = SCRIPTS / "tumsyn-array-apptainer.sbatch"
    res = subprocess.run(["bash", str(script), "--target", "T2w"], env=env, capture_output=True,
                         text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(record.read_text()) == [
        "run", "--cleanenv", "--nv",
        "-B", "/data/bids:/data:ro", "-B", f"{tmp_path / 'out'}:/out",
        "-B", f"{tmp_path / 'work' / '02'}:/work", "-B", "/scratch/db:/db",
        "/images/tumsyn.sif", "/data", "/out", "participant", "--participant-label", "02",
        "-w", "/work", "--nprocs", "3", "--bids-database-dir", "/db", "--target", "T2w",
    ]  # fmt: skip


def _running(cluster, job: str) -> int:
    res = cluster.run("squeue", "-h", "-j", job, "-t", "RUNNING", "-o", "%i", check=False)
    return len(res.stdout.split())


@pytest.fixture(scope="module")
def array_run(slurm_cluster, tmp_path_factory):
    if not TUMSYN.is_file():
        pytest.skip(f"no tumsyn console script in {TUMSYN.parent}")
    base = tmp_path_factory.mktemp("array")
    bids = write_simulated_dataset(
        base / "bids", n_subjects=4, modalities=("T1w",), voxel_size=6.0, derivatives=False
    )
    out, work, db, logs = base / "out", base / "work", base / "db", base / "slurm-logs"
    logs.mkdir()
    labels = base / "labels.txt"
    started = time.monotonic()
    prep = subprocess.run(
        [str(TUMSYN), str(bids), str(out), "participant", "--index-only",
         "--bids-database-dir", str(db), "--list-participants", str(labels)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    before = {"mtime": (db / "layout_index.sqlite").stat().st_mtime_ns,
              "sha": _sha(db / "layout_index.sqlite"),
              "manifest": (db / "tumsyn-index.json").read_text()}  # fmt: skip
    export = ",".join(
        ["ALL", f"TUMSYN_BIDS={bids}", f"TUMSYN_OUT={out}", f"TUMSYN_WORK={work}",
         f"TUMSYN_DB={db}", f"TUMSYN_LABELS={labels}", f"TUMSYN_VENV={VENV}"]
    )  # fmt: skip
    array = slurm_cluster.sbatch(
        "--array=0-3%2", "--cpus-per-task=1", "--mem=1500M", f"--export={export}",
        "-o", str(logs / "task_%a.out"), str(SCRIPTS / "tumsyn-array.sbatch"),
        "--target", "T2w", cwd=base,
    )  # fmt: skip
    group = slurm_cluster.sbatch(
        f"--dependency=afterok:{array}", "--cpus-per-task=1", "--mem=1000M",
        "-o", str(logs / "group.out"), "--wrap", f"{TUMSYN} {bids} {out} group", cwd=base,
    )  # fmt: skip
    most, tasks = 0, {}
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        most = max(most, _running(slurm_cluster, array))
        tasks = slurm_cluster.job_states(array)
        if tasks and all(state in FINAL_STATES for state, _ in tasks.values()):
            break
        time.sleep(1)
    if any(state != "COMPLETED" for state, _ in tasks.values()):
        slurm_cluster.run("scancel", group)  # afterok can never be satisfied: do not wait
    return {
        "bids": bids, "out": out, "db": db, "logs": logs, "labels": labels, "before": before,
        "array": tasks, "group": slurm_cluster.wait(group, timeout=300),
        "group_id": group, "most_running": most, "seconds": time.monotonic() - started,
    }  # fmt: skip


def _task_logs(run) -> dict[int, str]:
    return {i: (run["logs"] / f"task_{i}.out").read_text() for i in range(4)}


@pytest.mark.slow
def test_array_tasks_and_the_dependent_group_job_finish(array_run):
    run = array_run
    assert run["labels"].read_text().split() == LABELS
    assert sorted(run["array"].values()) == [("COMPLETED", "0:0")] * 4, (
        run["array"], _task_logs(run))  # fmt: skip
    assert run["group"] == {run["group_id"]: ("COMPLETED", "0:0")}, (
        (run["logs"] / "group.out").read_text())  # fmt: skip
    assert 1 <= run["most_running"] <= 2  # --array=0-3%2: two at a time
    for task, text in _task_logs(run).items():
        assert f"sub-{LABELS[task]}" in text


@pytest.mark.slow
def test_array_outputs_reports_and_group_table(array_run):
    out = array_run["out"]
    for label in LABELS:
        image = out / f"sub-{label}" / "anat" / f"sub-{label}_desc-tumsynFromT1w_T2w.nii.gz"
        source = array_run["bids"] / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
        assert nib.load(image).shape == nib.load(source).shape
        side = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
        assert side["Sources"] and side["TargetPrompt"]
        assert (out / f"sub-{label}.html").is_file()
        jobs = pd.read_csv(out / f"sub-{label}" / "log" / "jobs.tsv", sep="\t")
        assert list(jobs["status"]) == ["done"]
    table = pd.read_csv(out / "group_synthesis.tsv", sep="\t", dtype=str)
    assert sorted({s.removeprefix("sub-") for s in table["subject"]}) == LABELS
    assert (out / "group.html").is_file()


@pytest.mark.slow
def test_array_output_is_a_valid_derivative_dataset(array_run):
    """dataset_description.json and logs/ after four tasks wrote into one output folder at
    once: valid files, and the BIDS validator passes on the output."""
    out = array_run["out"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "tumsyn-bids"
    for path in sorted((out / "logs").rglob("*")):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".tsv":
            pd.read_csv(path, sep="\t", dtype=str)
    result = validate_bids(out)
    assert result.ok, result.report()


@pytest.mark.slow
def test_array_logs_keep_every_tasks_plan(array_run):
    """Every task's plan survives in logs/ (issue 18 item 13: per-task records or appends
    under a lock, whatever their names), not only the plan of the task that finished last."""
    planned = set()
    for path in sorted((array_run["out"] / "logs").rglob("*.tsv")):
        frame = pd.read_csv(path, sep="\t", dtype=str)
        if "subject" in frame:
            planned |= {s.removeprefix("sub-") for s in frame["subject"]}
    assert sorted(planned) == LABELS, "logs/ lost the plan of some tasks"


@pytest.mark.slow
def test_array_tasks_reused_the_index_and_the_validation(array_run):
    """No task re-indexed or re-validated: the shared index is byte-identical, untouched, and
    every task says it reused both."""
    db, before = array_run["db"], array_run["before"]
    assert (db / "layout_index.sqlite").stat().st_mtime_ns == before["mtime"]
    assert _sha(db / "layout_index.sqlite") == before["sha"]
    assert (db / "tumsyn-index.json").read_text() == before["manifest"]
    for task, text in _task_logs(array_run).items():
        assert "reusing the BIDS index" in text, (task, text[-3000:])
        assert "reusing the verdict" in text, (task, text[-3000:])
        assert "indexing" not in text and "BIDS validation passed" not in text, text[-3000:]
