"""Fixtures of the HPC tests: a real single-node SLURM cluster (:mod:`tests.local_slurm`).

The cluster is started once per test session as root (installing Debian's packages with apt-get
if needed: ``scripts/test.sh`` tries that first) and stopped by PID at the end. Elsewhere (not
root, no apt-get, ``TUMSYN_NO_SLURM=1``) the tests that need it are skipped with the reason; a
cluster that is installed but does not start fails them.
"""

from __future__ import annotations

import os

import pytest

from tests.local_slurm import LocalSlurm, SlurmUnavailable, start_cluster


@pytest.fixture(scope="session")
def slurm_cluster() -> LocalSlurm:
    if os.environ.get("TUMSYN_NO_SLURM"):
        pytest.skip("TUMSYN_NO_SLURM is set: no local SLURM cluster")
    try:
        cluster = start_cluster()
    except SlurmUnavailable as exc:
        pytest.skip(f"no local SLURM cluster: {exc}")
    yield cluster
    cluster.stop()
