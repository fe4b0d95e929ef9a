#!/usr/bin/env bash
# Install tumsyn-bids into ./.venv, write the bundled example BIDS dataset and run the BIDS App on
# it (participant level, CPU). Until the demo model ships (issue 4), the model is the small
# random-weight reference checkpoint pair from tests/data: the pipeline, derivatives and
# provenance are real, the synthesized intensities are not meaningful.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet -c requirements-pins.txt torch
python -m pip install --quiet -c requirements-pins.txt -e .
OUT=${1:-demo}
tumsyn-example-data "$OUT/bids" --force
MODEL=tests/data/tumsyn-reference-small
tumsyn "$OUT/bids" "$OUT/derivatives" participant -w "$OUT/work" \
    --checkpoint "$MODEL/synthesis.pth" --text-encoder "$MODEL/text_encoder.pt" --text-heads 2 \
    --patch-size 20 --target missing
echo "outputs in $OUT/derivatives"
