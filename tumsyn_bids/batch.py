"""Running the workflow through nipype's SLURM plugins (``--use-plugin`` with ``plugin: SLURM``
or ``plugin: SLURMGraph``): what tumsyn-bids adds to nipype's own behaviour.

Read from nipype 1.11's ``SLURMPlugin`` and ``SLURMGraphPlugin`` (``nipype/pipeline/plugins``):

* **Per-node sbatch options.** Both plugins append a node's ``plugin_args["sbatch_args"]`` to
  the global ``plugin_args["sbatch_args"]`` of the YAML file, unless the node's ``plugin_args``
  has ``overwrite: True`` (then the node's replace the global ones: partition and account would
  be lost, so we never set it). SLURM joins the two with a space, SLURMGraph does not, so a
  node's options start with one. A GPU node (:func:`node_plugin_args`) asks for
  :data:`GPU_SBATCH_ARGS`; CPU nodes add nothing.
* **LOGNAME.** SLURMPlugin names jobs after ``os.environ["LOGNAME"]`` and raises ``KeyError``
  without it (batch environments and ``apptainer --cleanenv`` may lack it):
  :func:`prepare_environment` sets it from the password database when it is missing.
* **SLURMGraph returns at submission.** It writes one ``sbatch`` line per node, with
  ``--dependency=afterok`` between them, runs them and returns while the jobs are still
  queued. :func:`graph_plugin_args` tags every job of this run with ``--comment`` and
  :func:`wait_for_graph_jobs` polls ``squeue`` until none of them is left, cancelling jobs whose
  dependency failed (SLURM would keep them pending for ever), so that the run's outcome, records
  and reports are written after the jobs, as with every other plugin.

Jobs run ``sys.executable`` with a pickled node, so the submitting Python environment (or the
container) and the work directory must be reachable from the compute nodes (a shared file
system). The settings are documented in docs/hpc.md.
"""

from __future__ import annotations

import getpass
import logging
import os
import pwd
import shlex
import subprocess
import time
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BATCH_PLUGINS",
    "GPU_SBATCH_ARGS",
    "LOCAL_PLUGINS",
    "graph_plugin_args",
    "node_plugin_args",
    "prepare_environment",
    "wait_for_graph_jobs",
]

LOGGER = logging.getLogger("tumsyn_bids.batch")

#: Plugins that run nodes in this process or its children (the node sees this machine's GPUs).
LOCAL_PLUGINS = frozenset({"Linear", "MultiProc", "LegacyMultiProc"})
#: nipype's SLURM plugins: every node becomes an sbatch job.
BATCH_PLUGINS = frozenset({"SLURM", "SLURMGraph"})
#: The sbatch options a GPU node adds (one GPU of any type, SLURM's generic resource syntax).
GPU_SBATCH_ARGS = "--gres=gpu:1"
#: Job reasons of a SLURMGraph job that will never start: one of its dependencies failed.
_NEVER = ("DependencyNeverSatisfied",)


def node_plugin_args(use_gpu: bool) -> dict[str, Any]:
    """``plugin_args`` of one node for nipype's batch plugins: a GPU for a GPU node only."""
    return {"sbatch_args": f" {GPU_SBATCH_ARGS}"} if use_gpu else {}


def prepare_environment(plugin: str) -> None:
    """Set ``LOGNAME`` (from the password database) for the SLURM plugins when it is unset."""
    if plugin not in BATCH_PLUGINS or os.environ.get("LOGNAME"):
        return
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a container user without a passwd entry
        name = getpass.getuser() if os.environ.get("USER") else str(os.getuid())
    os.environ["LOGNAME"] = name
    LOGGER.info("LOGNAME was not set: using %s for nipype's SLURM job names", name)


def graph_plugin_args(plugin: str, plugin_args: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """``plugin_args`` for ``workflow.run``, and the tag of this run's jobs ("" if untagged).

    For SLURMGraph the global ``sbatch_args`` get ``--comment=<tag>``; other plugins' arguments
    are returned unchanged.
    """
    args = dict(plugin_args)
    if plugin != "SLURMGraph":
        return args, ""
    tag = f"tumsyn-{uuid.uuid4().hex[:12]}"
    args["sbatch_args"] = f"{args.get('sbatch_args', '')} --comment={tag}".strip()
    return args, tag


def _queued(tag: str) -> list[tuple[str, str, str]]:
    """(job id, state, reason) of this user's queued jobs that carry ``tag``."""
    user = pwd.getpwuid(os.getuid()).pw_name
    cmd = ["squeue", "-h", "-u", user, "-o", "%i|%k|%T|%r"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {res.stderr.strip()}")
    jobs = []
    for line in res.stdout.splitlines():
        job, comment, state, reason = (line.split("|") + ["", "", "", ""])[:4]
        if comment == tag:
            jobs.append((job, state, reason))
    return jobs


def wait_for_graph_jobs(tag: str, poll_seconds: float = 5.0, timeout: float | None = None) -> int:
    """Wait until no job tagged ``tag`` is queued; returns how many were cancelled because a
    job they depend on failed. ``timeout`` (s; None: none) raises ``TimeoutError``."""
    if not tag:
        return 0
    started = time.monotonic()
    cancelled = 0
    LOGGER.info("SLURMGraph: waiting for the jobs of this run (squeue comment %s)", tag)
    while True:
        jobs = _queued(tag)
        if not jobs:
            return cancelled
        stuck = [job for job, state, reason in jobs if state == "PENDING" and reason in _NEVER]
        if stuck:
            subprocess.run(["scancel", *stuck], capture_output=True, check=False)
            cancelled += len(stuck)
            LOGGER.warning(
                "SLURMGraph: cancelled %d job(s) whose dependencies failed: %s",
                len(stuck),
                " ".join(stuck),
            )
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"SLURMGraph jobs {tag} still queued after {timeout:g} s")
        time.sleep(poll_seconds)
