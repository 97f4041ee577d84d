"""A side-by-side video of a simulated moving scene, reconstructed as reconstruct.py streams it:

    TFP (41 frames / rate) | TFI (/ rate) | direct SNN, sliding windows | temporal SNN, stateful

one output frame per 50 spike frames (800 per second of a 40 kHz camera), each column the image of
the same 200-frame window. The scene is a procedural image drifting across the simulated camera
(generate_synthetic_data.py, normal light). Defaults: the shipped weights/normal.pth and
weights/stream.pth on a small frame, so that a CPU makes the video in about a minute.

    python bench/stream_video.py --output exp/stream.mp4
    python bench/stream_video.py --output big.mp4 --height 250 --width 400 --frames 4200 --device cuda
"""
import argparse
import dataclasses
import os
import shutil
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
from models import default_precision, load_checkpoint, model_from_checkpoint, prepare_for_inference  # noqa: E402
from utils import InputError, positive_float, positive_int, report_input_error, tfi, tfp  # noqa: E402

STRIDE = 50
RATE = LIGHT["normal"].rate
TFP_WINDOW = 41            # Spike-Zoo's TFP convention on REDS_BASE
SCENE_CLASS = 35           # the procedural image: a checkered star on a shaded background


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="the .mp4 to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--direct", default=os.path.join(ROOT, "weights", "normal.pth"),
                   help="a direct-encoding SNN checkpoint (run on sliding windows)")
    p.add_argument("--stateful", default=os.path.join(ROOT, "weights", "stream.pth"),
                   help="a temporal-encoding SNN checkpoint (run stateful)")
    p.add_argument("--frames", type=positive_int, default=2200, help="spike frames simulated (>= 200)")
    p.add_argument("--height", type=positive_int, default=96)
    p.add_argument("--width", type=positive_int, default=128)
    p.add_argument("--drift", type=positive_float, default=160.0,
                   help="pixels the scene moves over the stream (160 over 2200 frames: ~15 px a window, "
                        "REDS-like)")
    p.add_argument("--fps", type=positive_float, default=10.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.frames < 200:
        p.error(f"--frames {args.frames}: one window needs 200")
    if not args.output.lower().endswith(".mp4"):
        p.error(f"--output {args.output}: expected a .mp4 file")
    return args


def moving_scene(args):
    """uint8 spikes [frames, H, W]: a procedural image drifting along a straight line."""
    rng = np.random.default_rng(args.seed)
    margin = int(args.drift / 2) + 4
    size = (args.width + 2 * margin, args.height + 2 * margin)
    canvas = np.asarray(procedural_image(SCENE_CLASS, rng, size=256).resize(size, Image.BICUBIC), np.float32) / 255.0
    cfg = dataclasses.replace(LIGHT["normal"], motion_px=(args.drift, args.drift))
    hw = (args.height, args.width)
    return simulate_spikes(canvas, args.frames, cfg, make_sensor(cfg, hw, args.seed), rng, hw)[0]


def load(path, encoding):
    model = model_from_checkpoint(load_checkpoint(path), path).eval()
    if model.config().get("encoding") != encoding:
        raise InputError(f"{path}: expected a {encoding}-encoding SNN, got {model.config()}")
    return model


def main(argv=None):
    args = get_args(argv)
    try:
        return run(args)
    except InputError as e:
        return report_input_error(e)


def run(args):
    reconstruct.check_output(args.output, "mp4", args.overwrite)
    direct, stateful = load(args.direct, "direct"), load(args.stateful, "temporal")
    names = [os.path.relpath(path) for path in (args.direct, args.stateful)]
    device = torch.device(args.device)
    t0 = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="stream_video.")
    try:
        dat = os.path.join(folder, "scene.dat")
        write_dat(dat, moving_scene(args))
        stream = reconstruct.open_stream(dat, args.height, args.width)
        num_out = (args.frames - 200) // STRIDE + 1
        direct, stateful = (prepare_for_inference(m.to(device), default_precision(device)) for m in (direct, stateful))
        columns = zip(reconstruct.sliding_frames(direct, stream, 0, num_out, STRIDE, 1, device),
                      reconstruct.stateful_frames(stateful, stream, 0, num_out, STRIDE, None, 1, device))
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with reconstruct.open_writer("mp4", args.output, num_out, args.height, 4 * args.width, args.fps) as write:
            for j, (direct_image, stateful_image) in enumerate(columns):
                spk = stream.read(j * STRIDE, j * STRIDE + 200, "cpu").numpy()
                write(np.concatenate([tfp(spk, TFP_WINDOW, RATE), tfi(spk, rate=RATE),
                                      direct_image.cpu().numpy(), stateful_image.cpu().numpy()], axis=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.output}: {num_out} frames of {args.height}x{4 * args.width}, a simulated scene drifting "
          f"{args.drift:g} px over {args.frames} spike frames, stride {STRIDE}; columns: TFP ({TFP_WINDOW} frames "
          f"/ {RATE}) | TFI (/ {RATE}) | {names[0]} (sliding windows) | {names[1]} (stateful), "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
