"""The test cluster itself: a real slurmctld/slurmd pair that runs what sbatch submits."""

import os
import re

import pytest


@pytest.mark.slow
def test_the_local_cluster_runs_jobs_with_the_machines_cpus(slurm_cluster, tmp_path):
    node = slurm_cluster.run("scontrol", "-o", "show", "node", "localhost").stdout
    assert re.search(rf"\bCPUTot={os.cpu_count()}\b", node), node
    assert "State=IDLE" in node, node
    out = tmp_path / "job.out"
    job = slurm_cluster.sbatch(
        "-o", str(out), "--wrap", 'echo "task=$SLURM_JOB_ID conf=$SLURM_CONF"; exit 3'
    )
    states = slurm_cluster.wait(job, timeout=120)
    # a failing job is reported as failed, with its exit status: the waits below rely on it
    assert states == {job: ("FAILED", "3:0")}, states
    assert out.read_text().strip() == f"task={job} conf={slurm_cluster.conf}"
