#!/usr/bin/env bash
# Install tumsyn-bids with its test extras into ./.venv and run the linters and the test suite.
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Headless Chromium for the report rendering test (tests/cli/test_reports.py), which skips
# without it. Debian's package installs in about 35 s (113 MB); best effort, root + apt only,
# TUMSYN_NO_CHROMIUM=1 opts out.
if [ -z "${TUMSYN_NO_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
    && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1 \
        || echo "chromium not installed: the browser test will be skipped" >&2
fi
# Colin27 from Debian's mricron-data (/usr/share/mricron/templates/ch2*.nii.gz, 16 MB) for the
# brain-extraction tests (tests/colin27.py), which skip without it. Best effort, root + apt only,
# TUMSYN_NO_MRICRON=1 opts out.
if [ -z "${TUMSYN_NO_MRICRON:-}" ] && [ ! -f /usr/share/mricron/templates/ch2bet.nii.gz ] \
    && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends mricron-data; } >/dev/null 2>&1 \
        || echo "mricron-data not installed: the Colin27 tests will be skipped" >&2
fi
# A single-node SLURM cluster (munge, slurmctld, slurmd; ~13 MB) for tests/hpc: the array job
# and nipype's SLURM plugins run on it for real. The tests start the daemons themselves as root
# (tests/local_slurm.py) and skip without them; best effort, root + apt only, TUMSYN_NO_SLURM=1
# opts out.
if [ -z "${TUMSYN_NO_SLURM:-}" ] && ! command -v slurmctld >/dev/null 2>&1 \
    && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends slurmctld slurmd slurm-client munge; } >/dev/null 2>&1 \
        || echo "SLURM not installed: the tests/hpc cluster tests will be skipped" >&2
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c requirements-pins.txt torch
python -m pip install --quiet -c requirements-pins.txt -e '.[test]'
# The default template into the TemplateFlow home that runs after this install will use
# ($TEMPLATEFLOW_HOME, else TemplateFlow's default folder); the tests make their own home.
# Offline and idempotent; it never overwrites a different file (it says so, the tests still run).
tumsyn-templates init --quiet || echo "tumsyn-templates init did not complete (see above)" >&2
ruff check .
ruff format --check .
# --durations: the slowest tests are listed, to keep the whole run under ~30 minutes
python -m pytest -q --durations=25 "$@"
