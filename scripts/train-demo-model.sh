#!/usr/bin/env bash
# Recipe of the bundled demo model (tumsyn_bids/data/demo_model): simulate phantoms, train both
# TUMSyn stages with tumsyn-train, export float16 weights into the package, score held-out
# subjects with tumsyn-eval. A GPU is used when present (--device auto).
#
# Time of the shipped run: stage 1 6 min on this project's 2-core CPU; stage 2 6.3 min on one H100
# (9,900 steps, WORKERS=12). Stage 2 on a 2-core CPU takes about 10 s per step: use a GPU.
#
#   bash scripts/train-demo-model.sh [WORK_DIR]      # needs the package installed (.venv)
#
# Environment: SEED (default 0) offsets every seed; DEVICE (auto|cpu|cuda); WORKERS (data-loader
# processes for stage 2, default 0); NPROC (>1 runs both stages under torchrun with that many
# processes).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-work/demo-model}
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
NPROC=${NPROC:-1}
WORKERS=${WORKERS:-0}
DEST=tumsyn_bids/data/demo_model
mkdir -p "$WORK"

train() {
    if [ "$NPROC" -gt 1 ]; then
        OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node "$NPROC" \
            -m tumsyn_bids.cli.train "$@"
    else
        tumsyn-train "$@"
    fi
}

# 1. Data: 24 training subjects (2 of them for validation) and 4 held-out test subjects, 2 mm.
[ -d "$WORK/train" ] || tumsyn-simulate "$WORK/train" --subjects 24 --voxel-size 2 \
    --seed $((11 + SEED)) --nprocs 2
[ -d "$WORK/test" ] || tumsyn-simulate "$WORK/test" --subjects 4 --first-subject 101 \
    --voxel-size 2 --seed $((12 + SEED))
VAL="23 24"

# 2. Stage 1: contrastive text encoder (tiny image tower on 64-voxel cubes; text tower 64 wide).
train text-encoder "$WORK/train" "$WORK/stage1" --val-participant-label $VAL \
    --image-size 64 --vision-layers 1 1 1 1 --vision-width 16 --embed-dim 64 \
    --text-width 64 --text-layers 2 --text-heads 4 \
    --batch-size 8 --lr 5e-4 --epochs ${STAGE1_EPOCHS:-40} --seed $((1 + SEED)) \
    --device "$DEVICE" --log-every 10 --quiet

# 3. Stage 2: synthesis network (text encoder frozen), the authors' patch sampling.
train synthesis "$WORK/train" "$WORK/stage2" --text-encoder "$WORK/stage1/text_encoder.pt" \
    --val-participant-label $VAL \
    --n-resblocks 4 --n-feats 32 --res-scale 1.0 --decoder-hidden 256 256 128 \
    --lr-size 20 --sample-q 8000 --scale-min 1 --scale-max 3 --patches-per-pair 4 \
    --batch-size 8 --lr 1e-3 --epochs ${STAGE2_EPOCHS:-150} --milestones 75 110 135 --gamma 0.5 \
    --epoch-val 10 --epoch-save 50 --seed $((2 + SEED)) --device "$DEVICE" --workers "$WORKERS" \
    --log-every 20 --quiet

# 4. Ship: weights only, float16, with name and intended use recorded in the files.
tumsyn-train export "$DEST" --text-encoder "$WORK/stage1/text_encoder.pt" \
    --synthesis "$WORK/stage2/epoch-best.pth" --name tumsyn-bids-demo-phantom \
    --intended-use "$(python -c 'from tumsyn_bids.model.bundled import DEMO_INTENDED_USE as u; print(u)')"

# 5. Score on the held-out subjects (the README's model card quotes this table).
mkdir -p "$WORK/eval"
tumsyn-eval "$WORK/test" "$WORK/eval" --device "$DEVICE" | tee "$WORK/eval/summary.md"
