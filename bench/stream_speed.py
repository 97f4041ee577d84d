"""Streaming reconstruction (reconstruct.py): speed, peak memory and temporal stability.

    python bench/stream_speed.py --snn exp/stream_snn/ckpts/checkpoint_best.pth     # CPU
    python bench/stream_speed.py --device cuda --speed_frames 2000 --snn CKPT --ann CKPT

All streams come from the simulator (generate_synthetic_data.py's camera, normal light) at
250x400 and are written as Vidar .dat files into a temporary folder, removed at the end.
1. Speed and latency: output frames/s and x real time (--camera_hz, stride 50) of reconstruct.py's
   paths over a moving scene -- the T=4 temporal SNN stateful (one step per output frame) and as
   sliding windows (T steps per output frame), the direct-encoding SNN (--direct) and the
   plain-CNN LRN (one pass per window each) -- reading and unpacking the .dat included, after
   one warm-up batch. Latency: from the arrival of a spike frame to the output frame that
   includes it: the wait for the rest of the frames of its device call (at most --batch x stride
   frames) plus that call's compute time; a path slower than real time falls ever further behind.
2. Peak resident memory of `reconstruct.py` in a subprocess on a 10,000 and a 40,000-frame
   stream, stateful SNN, every frame read and unpacked at 250x400; the network sees the centre
   --rss_crop pixels so that the long run fits a CPU budget. The figure is the process's own
   VmHWM (Linux), read as it ends: a child's ru_maxrss would include the RSS of this process,
   which Linux carries into the child's high-water mark across fork and exec.
3. Temporal stability on a static scene of --stability_crop² pixels: mean |frame_j+1 - frame_j|
   of the stateful SNN, the same SNN on sliding windows, the direct SNN, and TFP of the same
   windows (divided by the rate, clipped to [0, 1]);
   brightness drift: the stateful SNN's mean over output frames 1-100 relative to its frame 0
   (from rest, = the image of that window on its own).
--snn: a temporal-encoding SNN checkpoint (default: a fresh T=4 network with BN statistics from
the stream: speed and memory do not depend on the weights, so section 3 then is skipped); --ann:
a plain-CNN checkpoint (default: a fresh one); --direct: a direct-encoding SNN (default:
weights/normal.pth).
"""
import argparse
import dataclasses
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
import reconstruct  # noqa: E402
from dataset import write_dat  # noqa: E402
from generate_synthetic_data import LIGHT, make_sensor, procedural_image, simulate_spikes  # noqa: E402
from models import (CHECKPOINT_FORMAT, PlainLRN, SpikingLRN, default_precision, load_checkpoint,  # noqa: E402
                    model_from_checkpoint, prepare_for_inference)
from utils import pick_device, tfp  # noqa: E402

H, W = 250, 400
RATE = LIGHT["normal"].rate


def get_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--snn", help="temporal-encoding SNN checkpoint (default: fresh T=4 network)")
    p.add_argument("--ann", help="plain-CNN LRN checkpoint (default: fresh network)")
    p.add_argument("--direct", default=os.path.join(ROOT, "weights", "normal.pth"),
                   help="direct-encoding SNN checkpoint, the stateless comparison")
    p.add_argument("--speed_frames", type=int, help="timed output frames per variant (default: 200 on "
                                                    "CUDA, 5 on the CPU)")
    p.add_argument("--batch", type=int, help="reconstruct.py --batch (default: its own)")
    p.add_argument("--camera_hz", type=float, default=40000.0)
    p.add_argument("--rss_frames", default="10000,40000", help="stream lengths of the memory runs")
    p.add_argument("--rss_crop", type=int, default=32,
                   help="centre pixels the network sees in the memory runs (0: the full frame)")
    p.add_argument("--stability_frames", type=int, default=5200,
                   help="static-scene stream length (5200: 101 output frames at stride 50)")
    p.add_argument("--stability_crop", type=int, default=64,
                   help="side of the static scene (a multiple of 8: a .dat frame is whole bytes)")
    p.add_argument("--sections", default="speed,rss,stability", help="which of the three to run")
    a = p.parse_args()
    a.device = pick_device(a.device)
    cuda = a.device.type == "cuda"
    a.speed_frames = a.speed_frames or (200 if cuda else 5)
    a.batch = a.batch or (16 if cuda else 1)
    a.rss_frames = [int(n) for n in a.rss_frames.split(",")]
    a.sections = set(a.sections.split(","))
    if not a.sections <= {"speed", "rss", "stability"}:
        p.error(f"--sections: expected a comma-separated subset of speed,rss,stability, got {a.sections}")
    return a


def simulated_clip(num_frames, moving, seed=0, height=H, width=W):
    """uint8 spikes [num_frames, height, width]: a procedural image through the camera model."""
    rng = np.random.default_rng(seed)
    margin = 8
    img = procedural_image(7, rng, size=256).resize((width + 2 * margin, height + 2 * margin), Image.BICUBIC)
    canvas = np.asarray(img, dtype=np.float32) / 255.0
    cfg = LIGHT["normal"]
    if not moving:
        cfg = dataclasses.replace(cfg, motion_px=(0.0, 0.0), jitter_px=0.0)
    spk, _ = simulate_spikes(canvas, num_frames, cfg, make_sensor(cfg, (height, width), seed), rng,
                             (height, width))
    return spk


def write_stream(path, clip_dat, num_frames, clip_frames):
    """A .dat of num_frames frames: the clip's file repeated (a long stream from a short clip)."""
    with open(clip_dat, "rb") as f:
        data = f.read()
    frame_bytes = len(data) // clip_frames
    with open(path, "wb") as f:
        for start in range(0, num_frames, clip_frames):
            f.write(data[:min(clip_frames, num_frames - start) * frame_bytes])


def save(model, path):
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model_config": model.config(),
                "model": model.state_dict()}, path)
    return path


def fresh_snn(clip):
    torch.manual_seed(0)
    model = SpikingLRN(time_steps=4, encoding="temporal")
    for bn in model.bns:            # BN statistics from the stream (a fresh BN barely spikes)
        bn.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.from_numpy(clip[None, :200, :64, :64]).float())
    return model.eval()


def load(path):
    return model_from_checkpoint(load_checkpoint(path), path)


# ----------------------------------------------------------------------------------------------

def speed(args, snn, direct, ann, dat, device):
    stream = reconstruct.open_stream(dat, H, W)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n, stride = args.speed_frames, 50
    rows = []
    for name, model, stateful in (("SNN T=4 temporal, stateful", snn, True),
                                  ("SNN T=4 temporal, sliding window", snn, False),
                                  ("SNN T=4 direct, sliding window", direct, False),
                                  ("plain-CNN LRN, sliding window", ann, False)):
        model = prepare_for_inference(model.to(device), default_precision(device))   # what reconstruct.py runs
        warm = args.batch
        num_out = warm + n
        if stateful:
            frames = reconstruct.stateful_frames(model, stream, 0, num_out, stride, None, args.batch, device)
        else:
            frames = reconstruct.sliding_frames(model, stream, 0, num_out, stride, args.batch, device)
        for _ in range(warm):
            next(frames).cpu()
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            next(frames).cpu()
        sync()
        seconds = time.perf_counter() - t0
        fps = n / seconds
        # a device call makes --batch output frames (stateful at stride 50 = one step each): a
        # spike frame waits for the call's last frame, then for the call to finish
        wait_ms = 1000 * args.batch * stride / args.camera_hz
        compute_ms = 1000 * args.batch / fps
        rows.append((name, n, seconds, fps, fps * stride / args.camera_hz, wait_ms, compute_ms))
        print(f"  {name}: {n} frames in {seconds:.1f} s", flush=True)
    base = rows[2][3]
    print(f"\n| {H}x{W}, stride {stride}, {args.camera_hz / 1000:g} kHz, batch {args.batch} | output frames timed "
          f"| s | frames/s | x real time | x direct SNN | latency ms: wait + compute = total |"
          f"\n|---|---|---|---|---|---|---|")
    for name, n, seconds, fps, rt, wait_ms, compute_ms in rows:
        behind = "" if rt >= 1 else ", falls behind"
        print(f"| {name} | {n} | {seconds:.1f} | {fps:.3g} | {rt:.3g} | {fps / base:.2f} "
              f"| {wait_ms:.3g} + {compute_ms:.3g} = {wait_ms + compute_ms:.3g}{behind} |")


# runs argv[1] as __main__ with the rest as its arguments, then prints the process's peak RSS
PEAK_RSS_WRAPPER = """
import os, re, runpy, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print("VmHWM_kB", re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def peak_rss(args, ckpt, clip_dat, clip_frames, folder):
    seen = f"the centre {args.rss_crop}x{args.rss_crop}" if args.rss_crop else "the full frame"
    print(f"\n| stateful SNN, {H}x{W} frames read, network on {seen} "
          f"| output frames | s | peak RSS MB |\n|---|---|---|---|")
    results = []
    for frames in args.rss_frames:
        dat = os.path.join(folder, f"stream{frames}.dat")
        write_stream(dat, clip_dat, frames, clip_frames)
        cmd = [sys.executable, "-c", PEAK_RSS_WRAPPER, os.path.join(ROOT, "reconstruct.py"),
               "--checkpoint", ckpt, "--input", dat,
               "--output", os.path.join(folder, "rss.npy"), "--height", str(H), "--width", str(W),
               "--device", str(args.device), "--batch", str(args.batch)]
        if args.rss_crop:
            cmd += ["--crop", str(args.rss_crop)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed with status {proc.returncode}")
        mb = int(proc.stdout.split("VmHWM_kB")[-1]) / 1024
        results.append(mb)
        print(f"| {frames:,}-frame stream ({os.path.getsize(dat) / 1e6:.0f} MB) | "
              f"{(frames - 200) // 50 + 1} | {seconds:.0f} | {mb:.0f} |", flush=True)
        os.unlink(dat)
    if len(results) > 1:
        print(f"peak RSS ratio {args.rss_frames[-1]:,} / {args.rss_frames[0]:,} frames: "
              f"{results[-1] / results[0]:.3f}")


def stability(args, snn, direct, dat, device):
    stream = reconstruct.open_stream(dat, args.stability_crop, args.stability_crop)
    num_out = (args.stability_frames - 200) // 50 + 1
    # exact fp32 everywhere: the figure is about the dynamics
    snn, direct = (prepare_for_inference(m.to(device), "fp32") for m in (snn, direct))
    outputs = {
        "SNN stateful": reconstruct.stateful_frames(snn, stream, 0, num_out, 50, None, args.batch, device),
        "SNN sliding window": reconstruct.sliding_frames(snn, stream, 0, num_out, 50, args.batch, device),
        "direct SNN sliding window": reconstruct.sliding_frames(direct, stream, 0, num_out, 50, args.batch, device),
    }
    results = {name: np.stack([f.cpu().numpy() for f in frames]) for name, frames in outputs.items()}
    results["TFP (200 frames / rate)"] = np.stack([
        np.clip(tfp(stream.read(j * 50, j * 50 + 200, "cpu").numpy(), rate=RATE), 0, 1) for j in range(num_out)])
    print(f"\n| static scene, {args.stability_frames} frames, {args.stability_crop}², {num_out} output frames "
          f"| mean abs frame-to-frame difference | x TFP | mean intensity |\n|---|---|---|---|")
    tfp_flicker = np.abs(np.diff(results["TFP (200 frames / rate)"], axis=0)).mean()
    for name, frames in results.items():
        flicker = np.abs(np.diff(frames, axis=0)).mean()
        print(f"| {name} | {flicker:.4f} | {flicker / tfp_flicker:.2f} | {frames.mean():.3f} |")
    stateful = results["SNN stateful"]
    later = stateful[1:101]
    drift = later.mean() / stateful[0].mean() - 1
    worst = later.mean(axis=(1, 2)) / stateful[0].mean() - 1
    print(f"brightness drift of the stateful SNN: mean of output frames 1-{len(later)} vs frame 0 (from rest) "
          f"{stateful[0].mean():.4f} -> {later.mean():.4f}: {100 * drift:+.2f} % (frame by frame "
          f"{100 * worst.min():+.2f} to {100 * worst.max():+.2f} %)")


def main():
    args = get_args()
    device = args.device
    print(f"stream_speed: {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}, batch {args.batch}")
    folder = tempfile.mkdtemp(prefix="stream_speed.")
    try:
        t0 = time.perf_counter()
        clip_frames = max(1000, 200 + 50 * (args.batch + args.speed_frames))
        moving = simulated_clip(clip_frames, moving=True)
        clip_dat = os.path.join(folder, "moving.dat")
        write_dat(clip_dat, moving)
        static_dat = os.path.join(folder, "static.dat")
        if "stability" in args.sections and args.snn:
            write_dat(static_dat, simulated_clip(args.stability_frames, moving=False, seed=1,
                                                 height=args.stability_crop, width=args.stability_crop))
        print(f"simulated the streams in {time.perf_counter() - t0:.0f} s", flush=True)
        snn = load(args.snn) if args.snn else fresh_snn(moving)
        torch.manual_seed(0)
        ann = load(args.ann) if args.ann else PlainLRN()
        direct = load(args.direct)
        if snn.config()["encoding"] != "temporal":
            raise SystemExit(f"{args.snn}: not a temporal-encoding SNN")
        snn_ckpt = args.snn or save(snn, os.path.join(folder, "snn.pth"))
        del moving

        if "speed" in args.sections:
            speed(args, snn, direct, ann, clip_dat, device)
        if "rss" in args.sections:
            peak_rss(args, snn_ckpt, clip_dat, clip_frames, folder)
        if "stability" in args.sections and args.snn:
            stability(args, snn, direct, static_dat, device)
        elif "stability" in args.sections:
            print("\nstability: skipped (needs a trained --snn; a fresh network's flicker says nothing)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
