#!/usr/bin/env bash
# Train one of the shipped checkpoints (weights/README.md) from scratch on a CPU:
#   bash weights/train_weights.sh normal|low|stream CALTECH101_DIR
# normal, low: direct-encoding SNNs for each light regime; stream: a temporal-encoding SNN for
# normal light, trained with its state carried through recordings (reconstruct.py runs it
# stateful: one time step per output frame).
# CALTECH101_DIR: Caltech-101 images in class folders (CC BY 4.0), e.g. torchvision's
# 101_ObjectCategories or the 30-per-class subset the shipped weights were trained on.
# 1. validation and test streams: the first image of every class -> train split (validation
#    only), the second -> test split (not for stream), written as UHSR-style .npz files under $DATA;
# 2. training on streams simulated on the fly from every other image of the folder (a new
#    capture per item: random window, motion, brightness, noise, flip, rotation), supervised by
#    the clean frame; CLIP is not used (no pretrained weights offline: its terms are off);
#    stream: each item one recording of WINDOWS consecutive windows, membranes carried;
# 3. the best checkpoint (validation L1) exported without optimizer state to weights/$NAME.pth.
# Sizes for a 2-core CPU (normal: ~27 min, low: ~35 min, stream: ~22 min, each beside other jobs); on a GPU raise
# EPOCH_SIZE/EPOCHS/BATCH/CROP (and WINDOWS).
set -euo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: bash weights/train_weights.sh normal|low|stream CALTECH101_DIR"
NAME=${1:?$USAGE}
SRC=${2:?$USAGE}
case "$NAME" in
  # normal light: 16 epochs, and validation/test streams of 128x128 frames (layered motion at the
  # photos' native resolution; full 250x400 frames would upscale the <=256-px photos)
  normal) LIGHT=normal; NETWORK=(--encoding direct); FILES=(--num_test 1 --frame_size 128)
          EPOCHS=${EPOCHS:-16}; EPOCH_SIZE=${EPOCH_SIZE:-480}; BATCH=${BATCH:-8}; CROP=${CROP:-64} ;;
  low)    LIGHT=low; NETWORK=(--encoding direct); FILES=(--num_test 1)
          EPOCHS=${EPOCHS:-7}; EPOCH_SIZE=${EPOCH_SIZE:-480}; BATCH=${BATCH:-8}; CROP=${CROP:-64} ;;
  # recordings of 19 steps (950 frames) cost the simulator ~4 s each on a CPU: small crops, and
  # validation files of 64x64 frames (no test split: the stream model is scored on REDS and by
  # bench/stream_speed.py)
  stream) LIGHT=normal; NETWORK=(--encoding temporal --stateful "${WINDOWS:-16}")
          FILES=(--num_test 0 --frame_size 64)
          EPOCHS=${EPOCHS:-4}; EPOCH_SIZE=${EPOCH_SIZE:-120}; BATCH=${BATCH:-4}; CROP=${CROP:-40} ;;
  *) echo "$USAGE" >&2; exit 2 ;;
esac
DATA=${DATA:-data/weights-$NAME}
EXP=${EXP:-weights-$NAME}
[ -f venv/.setup-done ] || bash setup.sh
PY=venv/bin/python
$PY generate_synthetic_data.py --dataset caltech --source_dir "$SRC" --light "$LIGHT" \
    --num_train 1 "${FILES[@]}" --data_root "$DATA"
$PY train.py --dataset caltech --data_root "$DATA" --simulate_from "$SRC" --light "$LIGHT" \
    --exp_name "$EXP" --arch snn --time_steps 4 "${NETWORK[@]}" --linear_skip \
    --crop_size "$CROP" --batch_size "$BATCH" --lr 1e-3 --recon_target gt \
    --epoch_size "$EPOCH_SIZE" --epochs_coarse "$EPOCHS" --epochs_prompt 0 --epochs_fine 0 \
    --clip_pretrained none --num_workers 1 $( [ -f "exp/$EXP/ckpts/checkpoint_last.pth" ] && echo --resume )
$PY -c "import models, sys; models.export_checkpoint(sys.argv[1], sys.argv[2])" \
    "exp/$EXP/ckpts/checkpoint_best.pth" "weights/$NAME.pth"
ls -l "weights/$NAME.pth"
