"""CPU inference and export: reconstruct.py's output frames/s with the exact fp32 network against
the fast paths (BatchNorm folded into bf16 convolutions, fused LIF; int8: the convs that take
spikes in int8 too), in the same run; the network alone in PyTorch and in onnxruntime; what each
fast path changes (PSNR on the REDS pairs, share of flipped spikes per LIF layer); the NIR export
read back and run by an independent reader; and how far the paths are from the CPU's limit.

    python bench/cpu_inference.py --checkpoint weights/normal.pth --pairs ../shared/datasets/reds-base-sample

1. Speed: `reconstruct.py --input FOLDER --output x.npy --stride 50 --dtype fp32|bf16|int8` on
   the .dat files of --pairs read as one recording (250x400), alternating the precisions for
   --rounds rounds after one warm-up run of each (the warm-ups of bf16 and int8 include compiling
   the fused LIF kernels; their time is printed). Output frames/s = output frames / wall time of the
   whole call (reading, unpacking, the network, writing); also the process's CPU seconds per
   frame. The machine may be shared: compare the ratios, not the absolute figures. Then the
   network alone on one window: PyTorch fp32, bf16 and int8, and the ONNX graph (convert.py) in
   onnxruntime.
2. Quality: every .dat/.png pair's centre 200-frame window through each precision: PSNR
   against the ground truth, and the share of spikes (all layers, steps and pixels) that differ
   from fp32's.
3. NIR: convert.py's NIR file of the checkpoint (fp32) for the centre --nir_crop pixels, read
   back by nir.read and run for T steps by nirtorch's interpreter (tests/test_convert.py):
   the share of spikes that differ from ours and the image's largest change.
4. Limit: the network's MACs per output frame (as the fast path executes them) against the
   cores' nominal rates and a large fp32 and bf16 matrix product on the same threads.
"""
import argparse
import glob
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import models  # noqa: E402
import reconstruct  # noqa: E402
from dataset import UHSR_FRAMES, center_window, read_dat, voxelize  # noqa: E402
from metrics import count_macs, psnr  # noqa: E402
from models import load_checkpoint, model_from_checkpoint, prepare_for_inference, to_image  # noqa: E402
from utils import InputError  # noqa: E402

H, W = 250, 400
FAST = ("bf16", "int8")


def cpu_clock_ghz():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        mips = [float(line.split(":")[1]) for line in out.splitlines() if line.startswith("BogoMIPS")]
        return mips[0] / 2000.0
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return float("nan")


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine(), ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    name = f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()})"
    return name, " ".join(f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags)


def timed_reconstruct(args, folder, out_dir, dtype, end=None):
    """-> (output frames, wall seconds, CPU seconds of this process) of one reconstruct.py call."""
    out = os.path.join(out_dir, f"{dtype}.npy")
    if os.path.exists(out):
        os.unlink(out)
    t0, c0 = time.perf_counter(), time.process_time()
    rc = reconstruct.main(["--checkpoint", args.checkpoint, "--input", folder, "--output", out,
                           "--stride", "50", "--dtype", dtype, "--device", "cpu"]
                          + (["--end", str(end)] if end else []))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if rc != 0:
        raise SystemExit(f"reconstruct.py --dtype {dtype} failed with status {rc}")
    return np.load(out, mmap_mode="r").shape[0], seconds, cpu


class SpikeRecorder:
    """Records the spikes [T, B, C, H, W] that every LIF layer emits, whichever path runs."""

    def __init__(self):
        self.spikes = []
        self.originals = (models.lif_sequence, models.fused_lif_spikes)

        def wrap(fn):
            def recorded(*a, **k):
                spk = fn(*a, **k)
                self.spikes.append(spk.float())
                return spk
            return recorded
        models.lif_sequence, models.fused_lif_spikes = (wrap(f) for f in self.originals)

    def close(self):
        models.lif_sequence, models.fused_lif_spikes = self.originals


@torch.inference_mode()
def image_and_spikes(model, voxel):
    recorder = SpikeRecorder()
    try:
        image = to_image(model(voxel).float())
    finally:
        recorder.close()
    return image, recorder.spikes


def quality(args, precision):
    """[(name, PSNR fp32, PSNR at `precision`, flipped spikes / all spike positions, per-layer
    shares, largest pixel change)]."""
    ckpt = load_checkpoint(args.checkpoint)
    exact = prepare_for_inference(model_from_checkpoint(ckpt, args.checkpoint), "fp32")
    fast = prepare_for_inference(model_from_checkpoint(ckpt, args.checkpoint), precision)
    rows = []
    for dat in sorted(glob.glob(os.path.join(args.pairs, "*.dat"))):
        png = os.path.splitext(dat)[0] + ".png"
        if not os.path.exists(png):
            continue
        spk = center_window(read_dat(dat, H, W), UHSR_FRAMES, dat)
        with Image.open(png) as img:
            gt = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None, None]
        voxel = torch.from_numpy(voxelize(spk, exact.input_channels))[None]
        img32, spk32 = image_and_spikes(exact, voxel)
        img16, spk16 = image_and_spikes(fast, voxel)
        layers = [float((a != b).float().mean()) for a, b in zip(spk32, spk16)]
        total = sum(float((a != b).float().sum()) for a, b in zip(spk32, spk16)) / sum(a.numel() for a in spk32)
        rows.append((os.path.basename(dat), float(psnr(img32, gt)[0]), float(psnr(img16, gt)[0]), total, layers,
                     float((img32 - img16).abs().max())))
    if not rows:
        raise SystemExit(f"--pairs {args.pairs}: no .dat with a matching .png")
    return rows


def model_only(args):
    """Seconds per 250x400 window of the network alone: PyTorch fp32, bf16 and int8, and the fp32
    ONNX graph in onnxruntime (convert.py --to onnx), alternating."""
    import onnxruntime as ort

    import convert
    ckpt = load_checkpoint(args.checkpoint)
    # the graph of a lens-input network at its reference lens, as reconstruct.py reads a stream
    # whose lens is not known (fix_lens there adds exactly zero to the readout)
    exact = prepare_for_inference(model_from_checkpoint(ckpt, args.checkpoint).fix_lens(), "fp32")
    fast = {p: prepare_for_inference(model_from_checkpoint(ckpt, args.checkpoint), p) for p in FAST}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(convert.onnx_model(exact).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    dat = sorted(glob.glob(os.path.join(args.pairs, "*.dat")))[0]
    spk = center_window(read_dat(dat, H, W), UHSR_FRAMES, dat)
    voxel = torch.from_numpy(voxelize(spk, exact.input_channels))[None]
    runs = {"PyTorch fp32": lambda: exact(voxel), "PyTorch bf16": lambda: fast["bf16"](voxel),
            "PyTorch int8": lambda: fast["int8"](voxel),
            "onnxruntime fp32": lambda: session.run(["image"], {"voxel": voxel.numpy()})}
    seconds = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():        # warm-up (compiling, onnxruntime's graph optimisation)
            fn()
        for _ in range(args.rounds):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                seconds[k].append(time.perf_counter() - t0)
    with torch.inference_mode():
        difference = np.abs(session.run(["image"], {"voxel": voxel.numpy()})[0] - exact(voxel).numpy())
    print(f"\n## the network alone, one {H}x{W} window ({os.path.basename(dat)}), {args.rounds} alternating rounds")
    print(f"onnxruntime vs PyTorch fp32 output: max abs difference {difference.max():.2e}, "
          f"{100 * (difference > 1e-4).mean():.3f}% of pixels differ by more than 1e-4")
    print("| runtime | seconds per window | best | vs PyTorch fp32 (best) |")
    print("|---|---|---|---|")
    base = min(seconds["PyTorch fp32"])
    for k, v in seconds.items():
        print(f"| {k} | {' '.join(f'{x:.3f}' for x in v)} | {min(v):.3f} | {base / min(v):.2f}x |")


def nir_round_trip(args):
    """The checkpoint as NIR (convert.py --to nir, fp32) for the centre --nir_crop pixels of each
    REDS window, read back and run for T steps by tests/test_convert.py's independent reader
    (nir.read + nirtorch's interpreter): spikes that differ from ours, the image's largest change."""
    import convert
    from tests.test_convert import read_back, run_reader
    ckpt = load_checkpoint(args.checkpoint)
    model = prepare_for_inference(model_from_checkpoint(ckpt, args.checkpoint).fix_lens(), "fp32")
    c = args.nir_crop
    print(f"\n## NIR round trip, fp32: centre {c}x{c} of each REDS window, {model.time_steps} steps")
    print("| pair | flipped spikes (all) | per LIF layer | image max change |")
    print("|---|---|---|---|")
    work = tempfile.mkdtemp(prefix="nir_round_trip.")
    try:
        path = os.path.join(work, "model.nir")
        try:
            convert.export_nir(model, path, c, c)
        except InputError as e:   # e.g. a temporal SNN's whole-window skip: no NIR graph of it
            print(f"| (no NIR export: {e}) | | | |")
            return
        graph, reader = read_back(path, torch.float32)
        for dat in sorted(glob.glob(os.path.join(args.pairs, "*.dat"))):
            spk = center_window(read_dat(dat, H, W), UHSR_FRAMES, dat)
            top, left = (H - c) // 2, (W - c) // 2
            voxel = torch.from_numpy(voxelize(spk[:, top:top + c, left:left + c], model.input_channels))[None]
            ours, our_spikes = image_and_spikes(model, voxel)
            with torch.inference_mode():
                image, spikes = run_reader(reader, graph, list(model._step_inputs(voxel)), model.time_steps)
            layers = [float((a != b).float().mean()) for a, b in zip(our_spikes, spikes)]
            total = sum(float((a != b).float().sum()) for a, b in zip(our_spikes, spikes)) / sum(
                a.numel() for a in spikes)
            print(f"| {os.path.basename(dat)} | {100 * total:.4f}% | " + " ".join(f"{100 * x:.4f}%" for x in layers)
                  + f" | {float((to_image(image) - ours).abs().max()):.2e} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def matmul_gmacs(dtype, n=2048, seconds=2.0):
    """Multiply-accumulates per second (1e9) of an n x n matrix product: the cores' best."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        calls += 1
    return calls * n ** 3 / (time.perf_counter() - t0) / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "weights", "normal.pth"))
    p.add_argument("--pairs", default=os.path.join(ROOT, "..", "shared", "datasets", "reds-base-sample"),
                   help="folder of <name>.dat (250x400) + <name>.png pairs")
    p.add_argument("--rounds", type=int, default=2, help="timed runs of each precision, alternating")
    p.add_argument("--nir_crop", type=int, default=64, help="frame size of the NIR round trip (NIR stores "
                                                                  "parameters per neuron: 22 MB at 64x64)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name, flags = cpu_model()
    print(f"# CPU inference, {args.checkpoint}: {name}, {args.threads} threads, flags: {flags}; "
          f"torch {torch.__version__}; default precision here: {models.default_precision(torch.device('cpu'))}")

    # -- 1. speed --------------------------------------------------------------------------------
    dats = sorted(glob.glob(os.path.join(args.pairs, "*.dat")))
    work = tempfile.mkdtemp(prefix="cpu_inference.")
    try:
        folder = os.path.join(work, "recording")
        os.makedirs(folder)
        for i, dat in enumerate(dats):     # the parts of one recording, in numeric order
            shutil.copy(dat, os.path.join(folder, f"{i}.dat"))
        for dtype in ("fp32",) + FAST:
            n, sec, _ = timed_reconstruct(args, folder, work, dtype, end=UHSR_FRAMES)
            print(f"warm-up {dtype}: {n} frame in {sec:.1f} s (bf16, int8: includes compiling the fused LIF kernels)")
        fps, cpu = {p: [] for p in ("fp32",) + FAST}, {p: [] for p in ("fp32",) + FAST}
        for r in range(args.rounds):
            for dtype in ("fp32",) + FAST:
                n, sec, cpu_sec = timed_reconstruct(args, folder, work, dtype)
                fps[dtype].append(n / sec)
                cpu[dtype].append(cpu_sec / n)
        frames = n
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: max(v) for k, v in fps.items()}
    print(f"\n## reconstruct.py output frames/s, {H}x{W}, stride 50, {frames} frames a run, "
          f"{args.rounds} alternating rounds")
    print("| path | frames/s per round | best | CPU seconds per frame (all threads) |")
    print("|---|---|---|---|")
    labels = {"fp32": "fp32 (exact: --dtype fp32)", "bf16": "bf16 (BN folded, bf16 convs, fused LIF)",
              "int8": "int8 (as bf16, the convs that take spikes in int8)"}
    for dtype, label in labels.items():
        print(f"| {label} | {' '.join(f'{v:.3f}' for v in fps[dtype])} | {best[dtype]:.3f} | "
              f"{' '.join(f'{v:.2f}' for v in cpu[dtype])} |")
    for dtype in FAST:
        ratios = [b / a for a, b in zip(fps["fp32"], fps[dtype])]
        cpu_ratios = [a / b for a, b in zip(cpu["fp32"], cpu[dtype])]
        print(f"speed-up {dtype} / fp32 in wall time, per round: {' '.join(f'{r:.2f}x' for r in ratios)} "
              f"(median {np.median(ratios):.2f}x); in CPU time: {' '.join(f'{r:.2f}x' for r in cpu_ratios)} "
              f"(median {np.median(cpu_ratios):.2f}x)")

    model_only(args)

    # -- 2. quality ------------------------------------------------------------------------------
    print("\n## REDS pairs: centre 200 frames, full 250x400 frame")
    print("| pair | precision | PSNR fp32 dB | PSNR dB | change dB | max pixel change | flipped spikes (all) "
          "| per LIF layer |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in FAST:
        rows = quality(args, dtype)
        for name_, a, b, total, layers, maxdiff in rows:
            print(f"| {name_} | {dtype} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {maxdiff:.4f} | {100 * total:.3f}% | "
                  + " ".join(f"{100 * x:.3f}%" for x in layers) + " |")
        print(f"mean PSNR change {dtype}: {np.mean([b - a for _, a, b, *_ in rows]):+.4f} dB")

    nir_round_trip(args)

    # -- 3. the limit ------------------------------------------------------------------------------
    model = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)
    if reconstruct.is_stateful(model, sliding=False):
        print("\n## limit: not computed: reconstruct.py runs this network stateful, one time step per output "
              "frame, not the window's MACs that count_macs gives")
        return 0
    macs = count_macs(model, (model.input_channels, H, W))["executed_fast"]
    peak = {"fp32": matmul_gmacs(torch.float32), "bf16": matmul_gmacs(torch.bfloat16)}
    print(f"\n## limit: {macs / 1e9:.1f} GMAC per output frame ({H}x{W}, T={model.time_steps}, as the fast "
          f"path executes them)")
    # Zen 5 (family 26): two 512-bit FMA pipes per core = 32 fp32 MAC/cycle, and VDPBF16PS doubles
    # that for bf16; the clock is an assumption: the TSC rate (BogoMIPS / 2), no boost
    clock = cpu_clock_ghz()
    theory = {"fp32": 32 * args.threads * clock, "bf16": 64 * args.threads * clock}
    print(f"theoretical peak assumed: {args.threads} cores x 32 fp32 / 64 bf16 MAC per cycle x {clock:.2f} GHz")
    print("| precision | theoretical peak GMAC/s (frames/s) | matrix product here GMAC/s (frames/s) | "
          "measured frames/s | share of theoretical | share of matrix product |")
    print("|---|---|---|---|---|---|")
    for dtype in ("fp32", "bf16"):
        bound, gemm = theory[dtype] * 1e9 / macs, peak[dtype] * 1e9 / macs
        print(f"| {dtype} | {theory[dtype]:.0f} ({bound:.2f}) | {peak[dtype]:.0f} ({gemm:.2f}) | {best[dtype]:.3f} | "
              f"{100 * best[dtype] / bound:.0f}% | {100 * best[dtype] / gemm:.0f}% |")
    # int8: the convs that take spikes at VPDPBUSD's 4 int8 MAC per 32-bit lane (128 per cycle
    # on the two pipes, assumed as for bf16), the first conv at the bf16 rate
    layers = count_macs(model, (model.input_channels, H, W))["layers"]
    spike_convs = model.time_steps * sum(layer["macs"] for layer in layers[1:-1])   # conv2..L, every step
    int8_seconds = ((macs - spike_convs) / (64 * args.threads * clock)
                    + spike_convs / (128 * args.threads * clock)) / 1e9
    print(f"| int8 (first conv bf16) | - ({1 / int8_seconds:.2f}) | - | {best['int8']:.3f} | "
          f"{100 * best['int8'] * int8_seconds:.0f}% | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
