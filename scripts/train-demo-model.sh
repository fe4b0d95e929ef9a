#!/usr/bin/env bash
# Recipe of the bundled demo model (tumsyn_bids/data/demo_model): simulate phantoms, train both
# TUMSyn stages with tumsyn-train, export float16 weights, score held-out subjects with
# tumsyn-eval. A GPU is used when present (--device auto).
#
#   bash scripts/train-demo-model.sh [WORK_DIR]      # needs the package installed (.venv)
#
# Two profiles (PROFILE=...), measured times in the model card (docs/model-card.md):
#   gpu (default)  the shipped model: 24 subjects, stage-2 network with 32 features, 9,900 steps;
#                  then a second stage-2 round from those weights on 48 subjects (the same 24
#                  plus 24 new ones), 4,968 steps at half the learning rate. Stage 1 takes 6 min
#                  on a 2-core CPU; stage 2 6.3 min on one H100 and round two about 4 min on one
#                  H200, but each about half a day on a 2-core CPU (5 s a step).
#   cpu            sized for a 2-core CPU (about 70 min in all there): 48 subjects, 32-dimensional
#                  prompt embedding, 16 features, 16-voxel patches with 4,096 query points,
#                  3,036 steps, no second round. Weaker than the shipped model
#                  (docs/experiments/2026-11-26-cpu-training-profile.md).
#
# Environment: SEED (default 0) offsets every seed; DEVICE (auto|cpu|cuda); WORKERS (data-loader
# processes for stage 2, default 0); NPROC (>1 runs both stages under torchrun with that many
# processes); DEST (where the exported weights go; default: the package's demo_model folder,
# i.e. the run replaces the shipped model); SUBJECTS, STAGE1_EPOCHS, STAGE2_EPOCHS override the
# profile (the last two of the subjects are the validation set); ROUND2_SUBJECTS (0: no second
# round) and ROUND2_EPOCHS size the second round (its milestones: 1/2, 3/4 and 11/12 of its
# epochs; the last two of its subjects validate); TEST_SUBJECTS (default 4) and
# VOXEL_SIZE (default 2 mm) size the simulated data (the tests run the recipe small); EVAL_PATCH
# sets tumsyn-eval's --patch-size (default: the patch side the model was trained on).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-work/demo-model}
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
NPROC=${NPROC:-1}
WORKERS=${WORKERS:-0}
TEST_SUBJECTS=${TEST_SUBJECTS:-4}
VOXEL_SIZE=${VOXEL_SIZE:-2}
PROFILE=${PROFILE:-gpu}
DEST=${DEST:-tumsyn_bids/data/demo_model}

case "$PROFILE" in
gpu)
    SUBJECTS=${SUBJECTS:-24}
    EMBED_DIM=64
    STAGE1_EPOCHS=${STAGE1_EPOCHS:-40}
    STAGE2_EPOCHS=${STAGE2_EPOCHS:-150}
    STAGE2_SIZE=(--n-resblocks 4 --n-feats 32 --decoder-hidden 256 256 128
        --lr-size 20 --sample-q 8000)
    STAGE2_SCHEDULE=(--milestones 75 110 135 --epoch-val 10 --epoch-save 50)
    ROUND2_SUBJECTS=${ROUND2_SUBJECTS:-48}
    ROUND2_EPOCHS=${ROUND2_EPOCHS:-36}
    ;;
cpu)
    # Many subjects rather than many epochs: every scan brings its own protocol. The encoder's
    # 3-D convolutions and the fusion block's depthwise convolution are most of a CPU step.
    SUBJECTS=${SUBJECTS:-48}
    EMBED_DIM=32
    STAGE1_EPOCHS=${STAGE1_EPOCHS:-20}
    STAGE2_EPOCHS=${STAGE2_EPOCHS:-22}
    STAGE2_SIZE=(--n-resblocks 4 --n-feats 16 --decoder-hidden 128 128 64
        --lr-size 16 --sample-q 4096)
    STAGE2_SCHEDULE=(--milestones 12 17 20 --epoch-val 2 --epoch-save 10)
    ROUND2_SUBJECTS=${ROUND2_SUBJECTS:-0}
    ROUND2_EPOCHS=${ROUND2_EPOCHS:-8}
    ;;
*)
    echo "PROFILE must be gpu or cpu, not '$PROFILE'" >&2
    exit 64
    ;;
esac
if [ "$SUBJECTS" -lt 3 ]; then
    echo "SUBJECTS must be at least 3 (two of them validate)" >&2
    exit 64
fi
if [ "$ROUND2_SUBJECTS" -ne 0 ] && [ "$ROUND2_SUBJECTS" -lt 3 ]; then
    echo "ROUND2_SUBJECTS must be 0 (no second round) or at least 3 (two of them validate)" >&2
    exit 64
fi
# The last two labels of a dataset of N simulated subjects (tumsyn-simulate's zero padding).
last_two() {
    local width=$((${#1} > 2 ? ${#1} : 2))
    printf "%0${width}d %0${width}d" $(($1 - 1)) "$1"
}
VAL=$(last_two "$SUBJECTS")
MODEL_NAME=$(python -c 'from tumsyn_bids.model.bundled import DEMO_MODEL_NAME as n; print(n)')
INTENDED_USE=$(python -c 'from tumsyn_bids.model.bundled import DEMO_INTENDED_USE as u; print(u)')
mkdir -p "$WORK"

train() {
    if [ "$NPROC" -gt 1 ]; then
        OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node "$NPROC" \
            -m tumsyn_bids.cli.train "$@"
    else
        tumsyn-train "$@"
    fi
}

# 1. Data: training subjects (the last two validate) and held-out test subjects.
[ -d "$WORK/train" ] || tumsyn-simulate "$WORK/train" --subjects "$SUBJECTS" \
    --voxel-size "$VOXEL_SIZE" --seed $((11 + SEED)) --nprocs 2
[ -d "$WORK/test" ] || tumsyn-simulate "$WORK/test" --subjects "$TEST_SUBJECTS" \
    --first-subject 101 --voxel-size "$VOXEL_SIZE" --seed $((12 + SEED))

# 2. Stage 1: contrastive text encoder (tiny image tower on 64-voxel cubes; text tower 64 wide).
#    The embedding width sets the synthesis network's fusion width.
train text-encoder "$WORK/train" "$WORK/stage1" --val-participant-label $VAL \
    --image-size 64 --vision-layers 1 1 1 1 --vision-width 16 --embed-dim "$EMBED_DIM" \
    --text-width 64 --text-layers 2 --text-heads 4 \
    --batch-size 8 --lr 5e-4 --epochs "$STAGE1_EPOCHS" --seed $((1 + SEED)) \
    --device "$DEVICE" --log-every 10 --quiet

# 3. Stage 2: synthesis network (text encoder frozen), the authors' patch sampling.
train synthesis "$WORK/train" "$WORK/stage2" --text-encoder "$WORK/stage1/text_encoder.pt" \
    --val-participant-label $VAL "${STAGE2_SIZE[@]}" --res-scale 1.0 \
    --scale-min 1 --scale-max 3 --patches-per-pair 4 \
    --batch-size 8 --lr 1e-3 --epochs "$STAGE2_EPOCHS" "${STAGE2_SCHEDULE[@]}" --gamma 0.5 \
    --seed $((2 + SEED)) --device "$DEVICE" --workers "$WORKERS" --log-every 20 --quiet

# Weights only, float16, with name and intended use recorded in the files.
export_model() {  # OUT_DIR SYNTHESIS_CHECKPOINT
    tumsyn-train export "$1" --text-encoder "$WORK/stage1/text_encoder.pt" --synthesis "$2" \
        --name "$MODEL_NAME" --intended-use "$INTENDED_USE"
}

# 4. Second round (gpu profile): the exported round-one weights trained on, with the float16
#    text encoder they ship with, on a dataset of more subjects (the same seed, so round one's
#    subjects are among them), at half the learning rate.
FINAL="$WORK/stage2/epoch-best.pth"
if [ "$ROUND2_SUBJECTS" -gt 0 ]; then
    export_model "$WORK/round1" "$FINAL"
    [ -d "$WORK/train-round2" ] || tumsyn-simulate "$WORK/train-round2" \
        --subjects "$ROUND2_SUBJECTS" --voxel-size "$VOXEL_SIZE" --seed $((11 + SEED)) --nprocs 2
    train synthesis "$WORK/train-round2" "$WORK/stage2-round2" \
        --text-encoder "$WORK/round1/text_encoder.pt" --init-from "$WORK/round1/synthesis.pth" \
        --val-participant-label $(last_two "$ROUND2_SUBJECTS") "${STAGE2_SIZE[@]}" \
        --scale-min 1 --scale-max 3 --patches-per-pair 4 --batch-size 8 --lr 5e-4 \
        --epochs "$ROUND2_EPOCHS" --gamma 0.5 --milestones $((ROUND2_EPOCHS / 2)) \
        $((ROUND2_EPOCHS * 3 / 4)) $((ROUND2_EPOCHS * 11 / 12)) --epoch-val 4 --epoch-save 12 \
        --seed $((7 + SEED)) --device "$DEVICE" --workers "$WORKERS" --log-every 20 --quiet
    FINAL="$WORK/stage2-round2/epoch-best.pth"
fi

# 5. Ship.
export_model "$DEST" "$FINAL"

# 6. Score the exported weights on the held-out subjects (docs/model-card.md quotes this).
mkdir -p "$WORK/eval"
tumsyn-eval "$WORK/test" "$WORK/eval" --device "$DEVICE" ${EVAL_PATCH:+--patch-size "$EVAL_PATCH"} \
    --checkpoint "$DEST/synthesis.pth" --text-encoder "$DEST/text_encoder.pt" |
    tee "$WORK/eval/summary.md"
