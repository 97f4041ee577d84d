#!/usr/bin/env bash
# The GPU check, in one call of a fresh H100/H200 machine (<= 8 minutes):
# correctness of the CUDA fast path against the snnTorch reference (same weights; fp32 and bf16),
# bench/snn_speed.py (every variant, torch.compile and CUDA graphs included), test.py --benchmark
# with NVML energy, the streaming benchmark when it exists, the data loader on that machine's
# cores; then one table, against the goals (T=4, 224x224, bf16): >= 5000 img/s at batch 32,
# <= 0.5 ms at batch 1, <= 120 mJ/image (NVML), >= 900 training samples/s with ViT-B/32.
#
#   bash bench/gpu_check.sh download   # here, with a package index: the wheels that machine
#                                      # lacks -> .whl/ (gitignored; name it in the call's carry)
#   bash bench/gpu_check.sh            # there, from the repository root
#
# The machine has its own python3 with torch (not this project's pins) and no network: what is
# missing (snntorch, open_clip and its ftfy) is installed from .whl/ into /tmp/site. Every section
# has a time cap and is skipped when the budget left (BUDGET_S, default 470 s) is below what it
# needs; a failing section does not stop the others. Logs and JSON go to $OUT (the device tool's
# folder that comes back) or bench_runs/gpu_check/.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(snntorch==1.0.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4)   # 2.5 MB in all

if [ "${1:-}" = download ]; then
  pybuild=${PYTHON:-venv/bin/python}
  exec "$pybuild" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
elif [ $# -gt 0 ]; then
  echo "usage: bash bench/gpu_check.sh [download]" >&2
  exit 2
fi

PY=${PYTHON:-python3}
OUTDIR=${OUT:-bench_runs/gpu_check}
BUDGET_S=${BUDGET_S:-470}
mkdir -p "$OUTDIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
START=$SECONDS
STATUS=()   # "section|status|seconds"

# section NAME CAP_S MIN_S COMMAND...: run COMMAND under a cap, log to $OUTDIR/NAME.log
section() {
  local name=$1 cap=$2 min=$3 left t rc
  shift 3
  left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt "$min" ]; then
    STATUS+=("$name|skipped: ${left} s of the budget left, needs ${min} s|0")
    return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo
  echo "== $name (cap ${cap} s)"
  t=$SECONDS
  timeout --kill-after=10 "$cap" "$@" 2>&1 | tee "$OUTDIR/$name.log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) STATUS+=("$name|ok|$((SECONDS - t))") ;;
    124|137) STATUS+=("$name|TIMEOUT after ${cap} s|$((SECONDS - t))") ;;
    *) STATUS+=("$name|FAILED (exit $rc; see $name.log)|$((SECONDS - t))") ;;
  esac
}

# -- environment and missing packages (in this shell: PYTHONPATH must reach the sections) -------
echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader 2>&1 | tee "$OUTDIR/env.log"
if ! "$PY" -c "import snntorch, open_clip" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1 &&
     "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target /tmp/site .whl/*.whl; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
if "$PY" -c "import snntorch, open_clip" 2>>"$OUTDIR/env.log"; then
  STATUS+=("install|ok|$((SECONDS - START))")
else
  STATUS+=("install|FAILED: snntorch/open_clip missing (run 'bash bench/gpu_check.sh download' here and carry .whl)|0")
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$OUTDIR/env.log"
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, device: "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE (no CUDA)'}")
EOF

# gpu_section: a section that needs CUDA (skipped, and said so, where there is none)
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
gpu_section() {
  if [ "$CUDA" = 1 ]; then section "$@"; else STATUS+=("$1|skipped: no CUDA device|0"); fi
}

# -- 1. same function: fast path vs snnTorch reference, fp32 (bf16 diffs come with section 2) ----
gpu_section correctness_fp32 90 30 \
  "$PY" bench/snn_speed.py --device cuda --dtype fp32 --batch 8 --runs 10 --train_batch 0 \
    --compile off --json "$OUTDIR/snn_fp32.json"

# -- 2. speed: every variant, bf16, batch 32, training step with the ViT-B/32 tower ------------------
gpu_section snn_speed_bf16 300 150 \
  "$PY" bench/snn_speed.py --device cuda --dtype bf16 --batch 32 --train_batch 32 \
    --json "$OUTDIR/snn_bf16.json"

# -- 3. test.py --benchmark: latency, throughput, NVML energy on a T=4 direct checkpoint -------------
bench_checkpoint() {
  "$PY" - "$1" <<'EOF'
import os, sys, torch
sys.path.insert(0, os.getcwd())
from models import CHECKPOINT_FORMAT, SpikingLRN
path = sys.argv[1]
torch.manual_seed(0)
model = SpikingLRN(time_steps=4, encoding="direct")
with torch.no_grad():   # BN statistics of UHSR-like input, so deep layers spike as in a trained net
    for bn in model.bns:
        bn.momentum = 1.0
    model.train()((torch.rand(2, 50, 64, 64) < 0.08).float() * 2)
    for bn in model.bns:
        bn.momentum = 0.1
os.makedirs(os.path.dirname(path), exist_ok=True)
torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model_config": model.config(),
            "model": model.state_dict(), "data_type": "CIFAR", "crop_size": 224,
            "opt": {"data_type": "CIFAR", "crop_size": 224}, "clip": {}}, path)
EOF
}
CKPT=/tmp/gpu_check/exp/gpu_check/ckpts/checkpoint_best.pth
if bench_checkpoint "$CKPT" > "$OUTDIR/checkpoint.log" 2>&1; then
  gpu_section test_benchmark 150 60 \
    "$PY" test.py --checkpoint "$CKPT" --benchmark --bench_size 224 --bench_batches 1,32 \
      --data_root /tmp/gpu_check/no_data --results_file "$OUTDIR/test_benchmark.json"
else
  STATUS+=("test_benchmark|FAILED: could not write its checkpoint (see checkpoint.log)|0")
fi

# -- 4. streaming: the shipped stream model stateful vs sliding windows (goal: >= 800 output
# frames/s at 250x400, real time at stride 50 for a 40 kHz camera) ------------------------------
gpu_section stream_speed 90 30 "$PY" bench/stream_speed.py --device cuda --snn weights/stream.pth

# -- 5. the loader on this machine's cores: .npz vs decoded cache ------------------------------
section data_speed 90 45 "$PY" bench/data_speed.py --sim_samples 1 --load_files 16 --repeats 2

# -- the table ---------------------------------------------------------------------------------
printf '%s\n' "${STATUS[@]}" > "$OUTDIR/status.txt"
"$PY" - "$OUTDIR" <<'EOF' 2>&1 | tee "$OUTDIR/summary.md"
import json, math, os, sys
out = sys.argv[1]

def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def fmt(x, spec):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

def pct(row):
    moved = row.get("pixels_moved")
    return "—" if moved is None or math.isnan(moved) else f"{100 * moved:.3f}%"

print("\n| section | status | s |\n|---|---|---|")
for line in open(os.path.join(out, "status.txt")).read().splitlines():
    print("| " + " | ".join(line.split("|", 2)) + " |")

fp32, bf16 = load("snn_fp32.json"), load("snn_bf16.json")
run = (bf16 or {}).get("args") or {}
batch, size, train_batch = run.get("batch", "?"), run.get("size", "?"), run.get("train_batch", "?")
print(f"\nsnn_speed: {(bf16 or fp32 or {}).get('device', 'no result')}, {size}x{size}, "
      f"T={run.get('time_steps', '?')} {run.get('encoding', '')}; diffs against the snnTorch fp32 reference")
print(f"\n| variant | fp32: max abs diff | fp32: pixels > 1e-4 | bf16: max abs diff | bf16: pixels > 1e-4 "
      f"| bf16 b=1 ms (p90) | bf16 b={batch} img/s | train b={train_batch} samples/s | peak MiB |")
print("|---|---|---|---|---|---|---|---|---|")
names = list((bf16 or fp32 or {"rows": {}})["rows"])
for name in names:
    a = (fp32 or {"rows": {}})["rows"].get(name, {})
    b = (bf16 or {"rows": {}})["rows"].get(name, {})
    lat = f"{fmt(b.get('latency_ms'), '.3f')} ({fmt(b.get('latency_p90_ms'), '.3f')})"
    print(f"| {name} | {fmt(a.get('max_abs_diff'), '.1e')} | {pct(a)} | {fmt(b.get('max_abs_diff'), '.1e')} "
          f"| {pct(b)} | {lat} | {fmt(b.get('throughput'), '.0f')} | {fmt(b.get('train_samples_per_s'), '.1f')} "
          f"| {fmt(b.get('peak_mem_mib'), '.0f')} |")

snn = {k: v for k, v in ((bf16 or {}).get("rows") or {}).items() if "ANN" not in k}
def best(key, pick):
    vals = [(v[key], k) for k, v in snn.items() if v.get(key) is not None]
    return pick(vals) if vals else (None, "—")
bench = None
runs = (load("test_benchmark.json") or {}).get("runs") or []
if runs:
    bench = runs[-1].get("benchmark")
energy = bench.get("energy_mj_per_image_gross") if bench else None
rows = [
    (f"batch-{batch} throughput, img/s", *best("throughput", max), 5000, "ge"),
    ("batch-1 latency, ms", *best("latency_ms", min), 0.5, "le"),
    ("training step with ViT-B/32, samples/s", *best("train_samples_per_s", max), 900, "ge"),
    ("NVML energy, mJ/image (gross; test.py, batch 32)", energy, "test.py --benchmark", 120, "le"),
]
print(f"\n| goal (T=4, 224x224, bf16; measured at {size}x{size}) | measured | by | goal | met |\n|---|---|---|---|---|")
for what, value, by, goal, sense in rows:
    met = "—" if value is None else ("yes" if (value >= goal if sense == "ge" else value <= goal) else "NO")
    print(f"| {what} | {fmt(value, '.3f' if goal < 1 else '.1f')} | {by} | {'>=' if sense == 'ge' else '<='} {goal} | {met} |")
if bench:
    print(f"\ntest.py --benchmark: latency median {fmt(bench['latency_ms'].get('median'), '.3f')} ms, "
          f"throughput " + ", ".join(f"b={b}: {v:.0f} img/s" for b, v in bench["throughput"].items()) +
          f"; energy above idle {fmt(bench.get('energy_mj_per_image'), '.2f')} "
          f"mJ/image, avg power {fmt(bench.get('avg_power_w'), '.0f')} W (idle {fmt(bench.get('idle_power_w'), '.0f')} W); "
          f"{bench.get('energy_note') or ''}")
EOF
echo "gpu_check: $((SECONDS - START)) s; logs in $OUTDIR"
