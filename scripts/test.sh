#!/usr/bin/env bash
# Install tumsyn-bids with its test extras into ./.venv and run the linters and the test suite.
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -c requirements-pins.txt torch
python -m pip install --quiet -c requirements-pins.txt -e '.[test]'
ruff check .
ruff format --check .
python -m pytest -q "$@"
