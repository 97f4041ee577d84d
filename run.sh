#!/usr/bin/env bash
# The whole pipeline on simulated data, end to end: generate -> train (three stages) ->
# evaluate -> visualise -> benchmark -> compare runs. Sets itself up on first use.
# Sized to finish within ~10 minutes on a 2-core CPU; on a GPU machine raise the sizes below.
# CLIP weights: --clip_pretrained auto = the OpenAI weights when they can be downloaded (or are
# cached in ./clip_model/), otherwise random weights, loudly flagged in every output.
set -euo pipefail
cd "$(dirname "$0")"
[ -f venv/.setup-done ] || bash setup.sh
PY=venv/bin/python
EXP=${EXP:-quickstart}
DATA=${DATA:-data}
CROP=${CROP:-96}          # the UHSR crop is 224; 96 keeps a CPU run short
CLIP=${CLIP:-auto}

$PY generate_synthetic_data.py --dataset cifar --num_train 8 --num_test 2 --light low --data_root "$DATA"
$PY train.py --data_type CIFAR --data_root "$DATA" --exp_name "$EXP" --crop_size "$CROP" \
    --epochs_coarse 2 --epochs_prompt 1 --epochs_fine 2 --batch_size 4 --time_steps 4 \
    --clip_pretrained "$CLIP" $( [ -f "exp/$EXP/ckpts/checkpoint_last.pth" ] && echo --resume )
$PY evaluate.py --checkpoint "exp/$EXP/ckpts/checkpoint_best.pth" --data_root "$DATA"
$PY test.py --checkpoint "exp/$EXP/ckpts/checkpoint_best.pth" --data_root "$DATA" --num_samples 4
$PY test.py --checkpoint "exp/$EXP/ckpts/checkpoint_best.pth" --benchmark --bench_runs 20 --bench_batches 1,4
$PY results_tracker.py
