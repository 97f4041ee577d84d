#!/usr/bin/env bash
# Create ./venv, install the pinned dependencies and prepare the NIQE/BRISQUE parameter files.
# Safe to run again: it does nothing when requirements.txt and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
stamp=venv/.setup-done
want=$(cat requirements.txt setup.sh prepare_iqa_params.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup.sh: ./venv is up to date"
  exit 0
fi
[ -x venv/bin/python ] || "$PYTHON" -m venv venv
pip="venv/bin/python -m pip"
# torch first: the CUDA build (it also runs on the CPU)
$pip install torch==2.14.1 torchvision==0.29.1
$pip install -r requirements.txt
# pyiqa without its declared dependencies: they pull in ~1 GB (transformers, accelerate, ...)
# that NIQE/BRISQUE/PIQE never import (SPEC §7); requirements.txt has what they do import.
$pip install --no-deps pyiqa==0.1.16
venv/bin/python prepare_iqa_params.py
echo "$want" > "$stamp"
echo "setup.sh: done (activate with: source venv/bin/activate)"
