"""nipype's SLURM plugins for real: ``--use-plugin`` with ``plugin: SLURM`` and ``SLURMGraph``
submits every node of the workflow through sbatch on the local cluster (issue 20 item 4)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from tumsyn_bids.batch import wait_for_graph_jobs
from tumsyn_bids.simulate import write_simulated_dataset

TUMSYN = Path(sys.prefix) / "bin" / "tumsyn"
#: Nodes of one synthesis job that SLURM runs as jobs; the sink runs in the submitting process
#: with SLURM (run_without_submitting) and as a job of its own with SLURMGraph.
#: Nodes that run as sbatch jobs, once per subject, with preprocessing (--preproc full). The
#: SLURM plugin runs nodes marked run_without_submitting (sinks, sidecars) in the controller;
#: SLURMGraph submits every node, so its list holds these and more.
SUBMITTED = ["check_image", "conform", "brain_mask", "synthesis_mask", "n4", "apply_mask",
             "mask_to_source", "preproc_report", "synthesize", "mask_output", "to_source",
             "postprocess"]  # fmt: skip


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    return write_simulated_dataset(
        tmp_path_factory.mktemp("np") / "bids",
        n_subjects=2,
        modalities=("T1w",),
        voxel_size=6.0,
        derivatives=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["SLURM", "SLURMGraph"])
def test_every_node_is_an_sbatch_job(slurm_cluster, bids, tmp_path, plugin):
    if not TUMSYN.is_file():
        pytest.skip(f"no tumsyn console script in {TUMSYN.parent}")
    settings = tmp_path / "slurm.yml"
    settings.write_text(
        f"plugin: {plugin}\nplugin_args:\n  sbatch_args: '-p debug --mem=4G -c 1'\n"
    )
    out, work = tmp_path / "out", tmp_path / "work"
    env = {k: v for k, v in slurm_cluster.env.items() if k != "LOGNAME"}  # set by tumsyn
    res = subprocess.run(
        [str(TUMSYN), str(bids), str(out), "participant", "-w", str(work),
         "--use-plugin", str(settings), "--target", "T2w", "--skip-bids-validation"],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    for label in ("01", "02"):
        image = out / f"sub-{label}" / "anat" / f"sub-{label}_desc-tumsynFromT1w_T2w.nii.gz"
        source = bids / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
        assert nib.load(image).shape == nib.load(source).shape
        assert (out / f"sub-{label}.html").is_file()
        jobs = pd.read_csv(out / f"sub-{label}" / "log" / "jobs.tsv", sep="\t")
        assert list(jobs["status"]) == ["done"]
    # the controller ran one job per node of this run (their logs are in its work dir)
    ran = [j for j in slurm_cluster.jobs() if j.get("StdOut", "").startswith(str(work))]
    names = sorted(j["JobName"] for j in ran)
    # job names: "<node>.<workflow>...root" (SLURM), "j<number>_<node>" (SLURMGraph)
    nodes = [re.sub(r"^j\d+_", "", name.split(".")[0]) for name in names]
    for node in SUBMITTED:
        assert nodes.count(node) == 2, (node, names)
    if plugin == "SLURM":
        assert len(nodes) == 2 * len(SUBMITTED), names
    else:
        assert len(nodes) > 2 * len(SUBMITTED) and nodes.count("ds_synthesized") == 2, names
    assert {(j["JobState"], j["ExitCode"]) for j in ran} == {("COMPLETED", "0:0")}
    assert not any("gpu" in j.get("TRES", "") for j in ran)  # a CPU run asks for no GPU


@pytest.mark.slow
def test_waiting_for_graph_jobs_cancels_those_whose_dependency_failed(
    slurm_cluster, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    tag = "tumsyn-test-wait"
    common = ["-o", str(tmp_path / "%j.out"), f"--comment={tag}"]
    failing = slurm_cluster.sbatch(*common, "--wrap", "sleep 2; exit 1")
    child = slurm_cluster.sbatch(*common, f"--dependency=afterok:{failing}", "--wrap", "true")
    other = slurm_cluster.sbatch("-o", str(tmp_path / "%j.out"), "--wrap", "sleep 30")
    assert wait_for_graph_jobs(tag, poll_seconds=1, timeout=120) == 1
    assert slurm_cluster.job_states(failing)[failing][0] == "FAILED"
    assert slurm_cluster.job_states(child)[child][0] == "CANCELLED"
    assert slurm_cluster.job_states(other)[other][0] in ("PENDING", "RUNNING")  # not ours
    slurm_cluster.run("scancel", other)
