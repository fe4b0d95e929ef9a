#!/usr/bin/env bash
# Everything issue 21 asks of a GPU, in one command: benchmarks/gpu.sh [OUT]
#   1. the CUDA tests (pytest -k cuda: bf16 vs fp32, the fused network and the --speed presets
#      on CUDA);
#   2. the network micro-benchmarks at published size on CUDA (benchmarks/bench_network.py);
#   3. the whole-head benchmark at published size on CUDA: the authors' loop, reference (fp32),
#      default (fp32) and fast (bf16) on a simulated head with its brain mask
#      (benchmarks/bench_inference.py --whole-head);
#   4. `tumsyn ... participant` on CUDA through nipype's GPU slot, with --speed default and with
#      --speed fast, on a simulated two-subject dataset with the bundled demo model; the
#      sidecars must record the device, the preset and the precision.
# Each step writes JSON or a log under OUT (default gpu-results/) and has its own time limit; a
# failing step is recorded and the script goes on, exiting non-zero at the end. Results go to
# OUT/summary.json too.
#
# Assumes: a Linux machine with one CUDA GPU, bash, coreutils `timeout`, and a Python whose
# torch is a CUDA build and which has tumsyn-bids' dependencies (setup.cfg install_requires:
# nibabel, nipype, pybids, nilearn, scipy, pandas, ...) and pytest. tumsyn-bids itself need not
# be installed: the script runs it from this checkout (PYTHONPATH, `python -m`). Nothing is
# downloaded: the demo model ships in the package, the head is simulated from nilearn's bundled
# template, and the published-size model has random weights. PYTHON selects the interpreter
# (default: .venv/bin/python if present, else python3). HEAD_MM sets the head's voxel size.
# SMOKE=1 runs the same steps on the CPU with small models (tiny, mid at 16^3, 4 mm heads), to
# check the script itself on a machine without a GPU; its figures mean nothing, and its time
# limits are LIMIT_SCALE (default 6 with SMOKE=1, else 1) times the GPU's: two `tumsyn`
# participants with preprocessing took 351 s on 2 CPU cores at load average 8.
#
# Time (estimated from FLOP counts; one modern GPU, e.g. an H100 or H200): a 60^3 patch of the
# published model is 48 TFLOP (41.8 encoder + fusion, 6.2 decoder). float32 without TF32 runs
# at roughly 40 TFLOP/s, bf16 at roughly 300. At HEAD_MM=1.5 (the default here) the head is
# 133 x 157 x 139 voxels, 80 patches of 60^3: authors' loop and reference about 100 s each,
# default about 80 s, fast about 15 s, with model set-up about 5 minutes for step 3; steps 1, 2
# and 4 about 2 minutes; under 8 minutes in all. At HEAD_MM=1 (252 patches) step 3 alone takes
# about 12 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
HEAD_MM=${HEAD_MM:-1.5}
DEVICE=cuda SIZE=published NET=(--model published --patch 60 --repeats 3) DATA_MM=2
if [ "${SMOKE:-0}" = 1 ]; then
    DEVICE=cpu SIZE=tiny HEAD_MM=4 NET=(--model mid --patch 16 --repeats 1) DATA_MM=4
    LIMIT_SCALE=${LIMIT_SCALE:-6}
fi
LIMIT_SCALE=${LIMIT_SCALE:-1}
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} NIPYPE_NO_ET=1
failed=()
started=$SECONDS

step() {  # step NAME LIMIT_S COMMAND... : run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$(($2 * LIMIT_SCALE))
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s)"
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - start)) s"
        echo "$name ok $((SECONDS - start))" >>"$OUT/steps.txt"
    else
        echo "   FAILED (exit $?) after $((SECONDS - start)) s; see $OUT/$name.log"
        echo "$name FAILED $((SECONDS - start))" >>"$OUT/steps.txt"
        tail -n 20 "$OUT/$name.log"
        failed+=("$name")
    fi
}
: >"$OUT/steps.txt"

# 0. the device and the environment, recorded with the results; missing modules named at once
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/device.csv" 2>&1 || true
"$PYTHON" - >"$OUT/environment.json" <<'EOF' || { cat "$OUT/environment.json"; exit 1; }
import importlib.util, json, os, sys
missing = [m for m in ("torch", "numpy", "scipy", "pandas", "nibabel", "nipype", "bids",
                       "nilearn", "pytest", "tumsyn_bids") if importlib.util.find_spec(m) is None]
if missing:
    print(json.dumps({"error": f"missing Python modules: {', '.join(missing)}"}))
    sys.exit(1)
import torch
if os.environ.get("SMOKE") != "1" and not torch.cuda.is_available():
    print(json.dumps({"error": "torch.cuda.is_available() is False", "torch": torch.__version__}))
    sys.exit(1)
print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__,
                  "cuda": torch.version.cuda, "smoke": os.environ.get("SMOKE") == "1",
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"},
                 indent=2))
EOF
cat "$OUT/environment.json"

# 1. CUDA tests (skipped without a GPU everywhere else)
step cuda-tests 240 "$PYTHON" -m pytest -q -k cuda -p no:cacheprovider tests/model

# 2. network micro-benchmarks at published size (fold, fusion block, decoder orders)
step bench-network 120 "$PYTHON" benchmarks/bench_network.py --device "$DEVICE" "${NET[@]}" \
    --batch-size 1 --cases fold fusion decode --json "$OUT/bench_network_published.json"

# 3. whole-head benchmark at published size: authors' loop and reference (fp32, TF32 off),
#    default (fp32), fast (bf16)
step bench-whole-head 420 "$PYTHON" benchmarks/bench_inference.py --device "$DEVICE" \
    --size "$SIZE" --whole-head --voxel-size "$HEAD_MM" --head-dir "$OUT/head" \
    --json "$OUT/bench_whole_head_published.json"

# 4. the BIDS App on CUDA through nipype's GPU slot (demo model, two simulated subjects)
DATA="$OUT/bids-app"
rm -rf "$DATA"
step simulate 90 "$PYTHON" -m tumsyn_bids.cli.simulate "$DATA/bids" --subjects 2 \
    --modalities T1w T2w --voxel-size "$DATA_MM" --seed 7 --first-subject 901
for speed in default fast; do
    step "participant-cuda-$speed" 150 "$PYTHON" -m tumsyn_bids.cli.run "$DATA/bids" \
        "$DATA/derivatives-$speed" participant -w "$DATA/work-$speed" --source T1w \
        --target FLAIR --device "$DEVICE" --speed "$speed"
done
"$PYTHON" - "$DATA" "$DEVICE" >"$OUT/participant_cuda.json" <<'EOF' || failed+=("participant-check")
import json, pathlib, sys
root, device = pathlib.Path(sys.argv[1]), sys.argv[2]
report = {}
for speed, precision in (("default", "fp32"), ("fast", "bf16" if device == "cuda" else "fp32")):
    out = root / f"derivatives-{speed}"
    outputs = sorted(str(p.relative_to(out)) for p in out.rglob("*_FLAIR.nii.gz"))
    records = [json.loads(p.read_text()).get("Inference", {}) for p in out.rglob("*_FLAIR.json")]
    seen = sorted({(r.get("Device"), r.get("Speed"), r.get("Precision")) for r in records})
    report[speed] = {"outputs": outputs, "device_speed_precision": seen}
    assert len(outputs) == 2, f"--speed {speed}: expected 2 synthesized FLAIR images: {outputs}"
    assert seen == [(device, speed, precision)], f"--speed {speed}: sidecars record {seen}"
print(json.dumps(report, indent=2))
EOF
cat "$OUT/participant_cuda.json" 2>/dev/null

"$PYTHON" - "$OUT" $((SECONDS - started)) "${failed[@]}" >"$OUT/summary.json" <<'EOF'
import json, pathlib, sys
out, seconds, failed = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
steps = [line.split() for line in (out / "steps.txt").read_text().splitlines() if line]
print(json.dumps({"seconds": seconds, "failed": failed,
                  "steps": {name: {"status": status, "seconds": int(s)} for name, status, s in steps},
                  "environment": load("environment.json"),
                  "whole_head": load("bench_whole_head_published.json"),
                  "participant": load("participant_cuda.json")}, indent=2))
EOF
echo "total $((SECONDS - started)) s; summary in $OUT/summary.json"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed steps: ${failed[*]}"
    exit 1
fi
echo "all GPU steps passed; results in $OUT/"
