#!/usr/bin/env bash
# Batch size and OMP_WAIT_POLICY on the CPU (docs/speed.md, "Memory and batch size"): the engine
# with the fused network (as --speed default runs it) on a 64^3 random volume, demo model
# (20^3 patches, 216 patches) and mid model (32^3 patches, 27 patches), 2 threads; each policy in
# its own process (OpenMP reads it at start-up), alternating, two repeats.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/batch-cpu
for repeat in 1 2; do
    for policy in PASSIVE ACTIVE; do
        for batch in 1 2 4; do
            for model in demo:20 mid:32; do
                OMP_WAIT_POLICY=$policy .venv/bin/python benchmarks/bench_inference.py \
                    --size "${model%:*}" --patch "${model#*:}" --volume 64 64 64 --fused \
                    --skip-baseline --threads 2 --batch-size "$batch" \
                    --json "$OUT/${model%:*}_b${batch}_${policy}_r${repeat}.json" >/dev/null
            done
        done
    done
done
