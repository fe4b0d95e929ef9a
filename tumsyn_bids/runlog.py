"""Per-run logs: every ``tumsyn`` participant-level run keeps its own record.

Several runs write into one output folder (a SLURM array: one participant per task, all at the
same time; a rerun after a failure), so no run may overwrite another's record. Each run writes
only its own folder, ``<output_dir>/logs/run-<run_id>/`` (``run_id``:
:func:`tumsyn_bids.config.new_run_id`, the UTC start time and a random suffix, so folders sort
by start time):

``prompts.tsv``
    the plan (:data:`tumsyn_bids.plan.PLAN_COLUMNS`): written as planned before the workflow
    starts, rewritten with every job's final status and message when it ends.
``config.json``
    the whole run configuration (:meth:`tumsyn_bids.config.RunConfig.to_json`).
``runtime.json``
    host, wall time of the workflow, and when it finished.
``nipype.log``
    everything nipype logged, with the tracebacks of failed nodes.

A dry run writes ``prompts.tsv`` and ``config.json``; ``--reports-only`` and the group level
write no run folder. What every participant's jobs last did (merged over runs) is in
``sub-XX/log/jobs.tsv``, which the reports read; :func:`read_run_plans` joins the runs' plans
for a history.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["RUN_PREFIX", "list_runs", "read_run_configs", "read_run_plans", "run_log_dir"]

RUN_PREFIX = "run-"


def run_log_dir(output_dir: str | os.PathLike[str], run_id: str) -> Path:
    """``<output_dir>/logs/run-<run_id>`` (not created here)."""
    return Path(output_dir) / "logs" / f"{RUN_PREFIX}{run_id}"


def list_runs(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The run folders of ``output_dir``, oldest first."""
    logs = Path(output_dir) / "logs"
    if not logs.is_dir():
        return []
    return sorted(p for p in logs.iterdir() if p.is_dir() and p.name.startswith(RUN_PREFIX))


def read_run_plans(output_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Every run's ``prompts.tsv``, oldest run first, with a ``run_id`` column in front
    (strings throughout; an empty frame when no run has written one)."""
    frames = []
    for folder in list_runs(output_dir):
        path = folder / "prompts.tsv"
        if path.is_file():
            frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
            frame.insert(0, "run_id", folder.name[len(RUN_PREFIX) :])
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id"])


def read_run_configs(output_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``run_id`` -> that run's ``config.json`` (runs without one are left out)."""
    configs = {}
    for folder in list_runs(output_dir):
        path = folder / "config.json"
        if path.is_file():
            configs[folder.name[len(RUN_PREFIX) :]] = json.loads(path.read_text(encoding="utf-8"))
    return configs
