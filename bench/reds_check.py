"""Score reconstructors on real `.dat` + ground-truth pairs (e.g. the REDS_BASE pairs of the
Spike-Zoo toolbox), next to TFP and TFI on the same streams: PSNR/SSIM, full frame, the centre
200 frames (the networks' window), Spike-Zoo's convention TFP over 41 frames / rate 0.6.
For a network with a linear skip it also scores the linear path alone (the spiking readout
switched off), which shows what the spiking layers add. A temporal-encoding SNN is also scored as
reconstruct.py streams it: stateful from the stream's first frame (stride one time step), the
output frame whose window is the centre one (its membranes carried from the steps before).

    python bench/reds_check.py --pairs ../shared/datasets/reds-base-sample \
        --checkpoint weights/normal.pth exp/run/ckpts/checkpoint_best.pth
"""
import argparse
import glob
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reconstruct                                                    # noqa: E402
from dataset import UHSR_FRAMES, center_window, read_dat, voxelize   # noqa: E402
from metrics import psnr, ssim                                        # noqa: E402
from models import load_checkpoint, model_from_checkpoint, to_image   # noqa: E402
from utils import tfi, tfp                                            # noqa: E402


def load_pairs(folder, height, width):
    """[(name, spikes [200, H, W] centre window, gt [1, 1, H, W] in [0,1], the .dat's stream)] of
    every .dat with a .png."""
    pairs = []
    for dat in sorted(glob.glob(os.path.join(folder, "*.dat"))):
        png = os.path.splitext(dat)[0] + ".png"
        if not os.path.exists(png):
            continue
        spk = center_window(read_dat(dat, height, width), UHSR_FRAMES, dat)
        with Image.open(png) as img:
            gt = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None, None]
        pairs.append((os.path.basename(dat), spk, gt, reconstruct.open_stream(dat, height, width)))
    if not pairs:
        raise SystemExit(f"--pairs {folder}: no .dat with a matching .png")
    return pairs


@torch.inference_mode()
def network_images(path, spk, stream):
    """{label: image [1, 1, H, W]} for a checkpoint (and its linear path alone, if it has one)."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).eval()
    voxel = torch.from_numpy(voxelize(spk, model.input_channels))[None]
    images = {path: to_image(model(voxel))}
    if getattr(model, "skip", None) is not None:
        images[f"{path} (linear path only)"] = to_image(model.skip(voxel))
    if reconstruct.is_stateful(model, sliding=False):
        step = UHSR_FRAMES // model.time_steps
        centre = (stream.num_frames - UHSR_FRAMES) // 2          # the window center_window takes
        first = centre % step
        frames = list(reconstruct.stateful_frames(model, stream, first, (centre - first) // step + 1, step, None,
                                                  1, "cpu", torch.no_grad))
        images[f"{path} (stateful from frame {first}, {len(frames) - 1} windows carried)"] = frames[-1][None, None]
    return images


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="folder of <name>.dat + <name>.png pairs")
    p.add_argument("--checkpoint", nargs="*", default=[], help="checkpoints to score")
    p.add_argument("--height", type=int, default=250)
    p.add_argument("--width", type=int, default=400)
    p.add_argument("--rate", type=float, default=0.6, help="photo-electric rate (REDS_BASE: 0.6)")
    p.add_argument("--tfp_window", type=int, default=41)
    args = p.parse_args(argv)
    pairs = load_pairs(args.pairs, args.height, args.width)
    rows = {}
    for name, spk, gt, stream in pairs:
        images = {f"TFP ({args.tfp_window} frames / {args.rate})": torch.from_numpy(tfp(spk, args.tfp_window, args.rate)),
                  f"TFI (/ {args.rate})": torch.from_numpy(tfi(spk, rate=args.rate))}
        images = {k: v.clamp(0, 1)[None, None] for k, v in images.items()}
        for path in args.checkpoint:
            images.update(network_images(path, spk, stream))
        for label, img in images.items():
            rows.setdefault(label, []).append((float(psnr(img, gt)[0]), float(ssim(img, gt)[0])))
    names = [n for n, *_ in pairs]
    print(f"# {args.pairs}: centre {UHSR_FRAMES} frames, full {args.height}x{args.width} frame")
    print("| method | " + " | ".join(f"{n} PSNR dB / SSIM" for n in names) + " | mean PSNR dB |")
    print("|---" * (len(names) + 2) + "|")
    best_baseline = max(np.mean([r[0] for r in v]) for k, v in rows.items() if k.startswith(("TFP", "TFI")))
    for label, scores in rows.items():
        mean = np.mean([s[0] for s in scores])
        delta = "" if label.startswith(("TFP", "TFI")) else f" ({mean - best_baseline:+.2f} vs best baseline)"
        print(f"| {label} | " + " | ".join(f"{a:.2f} / {b:.3f}" for a, b in scores) + f" | {mean:.2f}{delta} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
