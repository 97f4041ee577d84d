#!/usr/bin/env bash
# The test suite: CPU only, offline, tiny shapes and a tiny CLIP. Sets itself up on first use.
set -euo pipefail
cd "$(dirname "$0")"
[ -f venv/.setup-done ] || bash setup.sh
export HF_HUB_OFFLINE=1
exec venv/bin/python -m pytest -q tests "$@"
