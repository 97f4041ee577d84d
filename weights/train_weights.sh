#!/usr/bin/env bash
# Train one of the shipped checkpoints (weights/README.md) from scratch on a CPU:
#   bash weights/train_weights.sh normal|low CALTECH101_DIR
# CALTECH101_DIR: Caltech-101 images in class folders (CC BY 4.0), e.g. torchvision's
# 101_ObjectCategories or the 30-per-class subset the shipped weights were trained on.
# 1. validation and test streams: the first image of every class -> train split (validation
#    only), the second -> test split, written as UHSR-style .npz files under $DATA;
# 2. training on streams simulated on the fly from every other image of the folder (a new
#    capture per item: random window, motion, brightness, noise, flip, rotation), supervised by
#    the clean frame; CLIP is not used (no pretrained weights offline: its terms are off);
# 3. the best checkpoint (validation L1) exported without optimizer state to weights/$LIGHT.pth.
# Sizes for a 2-core CPU (~1.5 h per model); on a GPU raise EPOCH_SIZE/EPOCHS/BATCH/CROP.
set -euo pipefail
cd "$(dirname "$0")/.."
LIGHT=${1:?usage: bash weights/train_weights.sh normal|low CALTECH101_DIR}
SRC=${2:?usage: bash weights/train_weights.sh normal|low CALTECH101_DIR}
DATA=${DATA:-data/weights-$LIGHT}
EXP=${EXP:-weights-$LIGHT}
# normal light: 16 epochs, and validation/test streams of 128x128 frames (layered motion at the
# photos' native resolution; full 250x400 frames would upscale the <=256-px photos)
if [ "$LIGHT" = normal ]; then EPOCHS=${EPOCHS:-16}; FRAME=(--frame_size 128); else EPOCHS=${EPOCHS:-7}; FRAME=(); fi
EPOCH_SIZE=${EPOCH_SIZE:-480}
BATCH=${BATCH:-8}
CROP=${CROP:-64}
[ -f venv/.setup-done ] || bash setup.sh
PY=venv/bin/python
$PY generate_synthetic_data.py --dataset caltech --source_dir "$SRC" --light "$LIGHT" \
    --num_train 1 --num_test 1 --data_root "$DATA" "${FRAME[@]}"
$PY train.py --dataset caltech --data_root "$DATA" --simulate_from "$SRC" --light "$LIGHT" \
    --exp_name "$EXP" --arch snn --time_steps 4 --encoding direct --linear_skip \
    --crop_size "$CROP" --batch_size "$BATCH" --lr 1e-3 --recon_target gt \
    --epoch_size "$EPOCH_SIZE" --epochs_coarse "$EPOCHS" --epochs_prompt 0 --epochs_fine 0 \
    --clip_pretrained none --num_workers 1 $( [ -f "exp/$EXP/ckpts/checkpoint_last.pth" ] && echo --resume )
$PY -c "import models, sys; models.export_checkpoint(sys.argv[1], sys.argv[2])" \
    "exp/$EXP/ckpts/checkpoint_best.pth" "weights/$LIGHT.pth"
ls -l "weights/$LIGHT.pth"
