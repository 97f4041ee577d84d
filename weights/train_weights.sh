#!/usr/bin/env bash
# Train one of the shipped checkpoints (weights/README.md) from scratch on a CPU:
#   bash weights/train_weights.sh normal|low|stream CALTECH101_DIR
# normal, low: direct-encoding SNNs for each light regime; stream: a temporal-encoding SNN for
# normal light, run stateful by reconstruct.py (one time step per output frame): first trained
# on single windows like normal, then fine-tuned with its state carried through recordings.
# CALTECH101_DIR: Caltech-101 images in class folders (CC BY 4.0), e.g. torchvision's
# 101_ObjectCategories or the 30-per-class subset the shipped weights were trained on.
# 1. validation and test streams: the first image of every class -> train split (validation
#    only), the second -> test split, written as UHSR-style .npz files under $DATA (a rerun with
#    the same settings keeps the files written, as train.py --resume keeps the run);
# 2. training on streams simulated on the fly from every other image of the folder (a new
#    capture per item: random window, motion, brightness, noise, flip, rotation), supervised by
#    the clean frame; CLIP is not used (no pretrained weights offline: its terms are off);
#    stream: then `--stateful 16 --image_gate --flicker_weight 1.5 --init` from step 2's network,
#    each item one recording of 16 consecutive windows, membranes and output image carried;
#    normal: then a second cycle of 24 epochs from step 2's best network (train.py --init, lr 5e-4,
#    new captures), and a third of 10 epochs from that one's best network told each capture's lens
#    (--lens_input, lr 2.5e-4), with thin-line lattices in front of every scene and the detail term
#    (--lattices 1 --detail_weight 0.5);
# 3. the best checkpoint (validation L1) exported without optimizer state to weights/$NAME.pth.
# Sizes for a 2-core CPU (normal: ~70 min + ~60 min + ~50 min, low: ~35 min, stream: ~60 min + ~35 min,
# each beside other jobs); on a GPU raise EPOCH_SIZE/EPOCHS/BATCH/CROP.
set -euo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: bash weights/train_weights.sh normal|low|stream CALTECH101_DIR"
NAME=${1:?$USAGE}
SRC=${2:?$USAGE}
case "$NAME" in
  # normal light: validation/test streams of 128x128 frames (layered motion at the photos' native
  # resolution; full 250x400 frames would upscale the <=256-px photos); normal 32 epochs (16 gave
  # validation L1 0.0194, 32 gave 0.0177), stream's first stage 16
  normal|stream) LIGHT=normal; FILES=(--num_test 1 --frame_size 128)
          EPOCHS=${EPOCHS:-$([ "$NAME" = normal ] && echo 32 || echo 16)}
          EPOCH_SIZE=${EPOCH_SIZE:-480}; BATCH=${BATCH:-8}; CROP=${CROP:-64} ;;
  low)    LIGHT=low; FILES=(--num_test 1)
          EPOCHS=${EPOCHS:-7}; EPOCH_SIZE=${EPOCH_SIZE:-480}; BATCH=${BATCH:-8}; CROP=${CROP:-64} ;;
  *) echo "$USAGE" >&2; exit 2 ;;
esac
# normal: direct encoding of the window as 200 one-frame bins (the dark low.pth keeps 50 bins of 4
# frames); stream: T=4 temporal encoding (one-frame bins) on single windows, then --stateful
case "$NAME" in
  normal) NETWORK=(--encoding direct --bins 200) ;;
  low)    NETWORK=(--encoding direct) ;;
  stream) NETWORK=(--encoding temporal) ;;
esac
DATA=${DATA:-data/weights-$NAME}
EXP=${EXP:-weights-$NAME}
[ -f venv/.setup-done ] || bash setup.sh
PY=venv/bin/python
COMMON=(--dataset caltech --simulate_from "$SRC" --light "$LIGHT" --arch snn --time_steps 4 --linear_skip
        --lr 1e-3 --recon_target gt --epochs_prompt 0 --epochs_fine 0 --clip_pretrained none --num_workers 1)
resume() { [ -f "exp/$1/ckpts/checkpoint_last.pth" ] && echo --resume || true; }
$PY generate_synthetic_data.py --dataset caltech --source_dir "$SRC" --light "$LIGHT" \
    --num_train 1 "${FILES[@]}" --data_root "$DATA"
$PY train.py "${COMMON[@]}" --data_root "$DATA" --exp_name "$EXP" "${NETWORK[@]}" \
    --crop_size "$CROP" --batch_size "$BATCH" --epoch_size "$EPOCH_SIZE" --epochs_coarse "$EPOCHS" $(resume "$EXP")
BEST=exp/$EXP/ckpts/checkpoint_best.pth
if [ "$NAME" = normal ]; then
  # a second cosine cycle from the first's best network, at half the learning rate, on new
  # captures (--seed 1), the skip kept
  $PY train.py "${COMMON[@]}" --data_root "$DATA" --exp_name "$EXP-cycle2" "${NETWORK[@]}" --init "$BEST" \
      --lr 5e-4 --seed 1 --crop_size "$CROP" --batch_size "$BATCH" --epoch_size "$EPOCH_SIZE" \
      --epochs_coarse "${CYCLE2_EPOCHS:-24}" $(resume "$EXP-cycle2")
  BEST=exp/$EXP-cycle2/ckpts/checkpoint_best.pth
  # a third cycle told each capture's lens (the validation files store theirs; a stream whose lens
  # is not known is read at the 0.5 px reference), lattices in every scene, the detail term
  $PY train.py "${COMMON[@]}" --data_root "$DATA" --exp_name "$EXP-cycle3" "${NETWORK[@]}" --init "$BEST" \
      --lr 2.5e-4 --seed 2 --crop_size "$CROP" --batch_size "$BATCH" --epoch_size "$EPOCH_SIZE" \
      --epochs_coarse "${CYCLE3_EPOCHS:-10}" --lens_input --lattices 1 --detail_weight 0.5 $(resume "$EXP-cycle3")
  BEST=exp/$EXP-cycle3/ckpts/checkpoint_best.pth
fi
if [ "$NAME" = stream ]; then
  # recordings of 19 steps (950 frames) cost the simulator ~4 s each on a CPU: small crops, and
  # validation files of 64x64 frames; their test split is of the same images as step 1's, so
  # that neither stage trains on a test scene
  $PY generate_synthetic_data.py --dataset caltech --source_dir "$SRC" \
      --light "$LIGHT" --num_train 1 --num_test 1 --frame_size 64 --data_root "$DATA-recordings"
  $PY train.py "${COMMON[@]}" --data_root "$DATA-recordings" --exp_name "$EXP-stateful" "${NETWORK[@]}" \
      --stateful 16 --image_gate --flicker_weight 1.5 --init "$BEST" --crop_size 40 --batch_size 4 \
      --epoch_size 120 --epochs_coarse "${STATEFUL_EPOCHS:-24}" $(resume "$EXP-stateful")
  BEST=exp/$EXP-stateful/ckpts/checkpoint_best.pth
fi
$PY -c "import models, sys; models.export_checkpoint(sys.argv[1], sys.argv[2])" "$BEST" "weights/$NAME.pth"
ls -l "weights/$NAME.pth"
