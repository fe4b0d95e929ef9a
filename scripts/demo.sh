#!/usr/bin/env bash
# Install tumsyn-bids into ./.venv, simulate a small multi-contrast BIDS dataset (two phantom
# subjects with a T1w and a T2w each, 2 mm, raw-looking heads: scalp, skull, fat and a bias field
# around the brain) and run the BIDS App on it with the bundled demo model (participant level,
# CPU). Each T1w is preprocessed (RAS+ axis order, N4 bias correction, deepbet brain extraction;
# docs/preprocessing.md), each subject's missing FLAIR is synthesized from the brain, put back on
# the T1w's grid and masked, and the derivatives (with the brain masks) are validator-clean. The
# report shows the brain mask and the bias field next to each synthesized image. The demo model is
# trained on simulated phantoms only: it shows the pipeline working end to end; it is not for real
# data (see docs/model-card.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet -c requirements-pins.txt torch
python -m pip install --quiet -c requirements-pins.txt -e .
OUT=${1:-demo}
[ -d "$OUT/bids" ] || tumsyn-simulate "$OUT/bids" --subjects 2 --modalities T1w T2w \
    --voxel-size 2 --seed 7 --first-subject 901 --with-head
tumsyn "$OUT/bids" "$OUT/derivatives" participant -w "$OUT/work" --source T1w --target FLAIR
echo "outputs in $OUT/derivatives (report: $OUT/derivatives/sub-901.html)"
