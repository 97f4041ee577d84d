"""Score reconstructors on real `.dat` + ground-truth pairs (e.g. the REDS_BASE pairs of the
Spike-Zoo toolbox), next to TFP and TFI on the same streams: PSNR/SSIM, full frame, the centre
200 frames (the networks' window), Spike-Zoo's convention TFP over 41 frames / rate 0.6.
For a network with a linear skip it also scores that fitted linear filter alone (the spiking
readout switched off), which shows what the spiking layers add. The scoring is evaluate.py --dat's
(evaluate.score_stream). A temporal-encoding SNN is also scored as reconstruct.py streams it
(evaluate.stateful_centre_image): stateful from the stream's first frame (stride one time
step), the output frame whose window is the centre one (its state carried from the steps before).

    python bench/reds_check.py --pairs ../shared/datasets/reds-base-sample \
        --checkpoint weights/normal.pth exp/run/ckpts/checkpoint_best.pth
"""
import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset import UHSR_FRAMES                                      # noqa: E402
import reconstruct                                                   # noqa: E402
from evaluate import (LINEAR, LINEAR_LABEL, load_stream_pair, score_stream,  # noqa: E402
                      stateful_centre_image)
from metrics import psnr, ssim                                       # noqa: E402
from models import load_checkpoint, model_from_checkpoint            # noqa: E402
from utils import InputError, positive_float, positive_int, report_input_error   # noqa: E402


def load_pairs(folder, height, width):
    """[(name, spikes [200, H, W] centre window, gt [1, 1, H, W] in [0,1], the .dat as a
    reconstruct.py stream)] of every .dat with a .png."""
    pairs = []
    for dat in sorted(glob.glob(os.path.join(folder, "*.dat"))):
        png = os.path.splitext(dat)[0] + ".png"
        if os.path.exists(png):
            spk, _, gt = load_stream_pair(dat, png, height, width)
            pairs.append((os.path.basename(dat), spk, gt, reconstruct.open_stream(dat, height, width)))
    if not pairs:
        raise InputError(f"--pairs {folder}: no .dat with a matching .png")
    return pairs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="folder of <name>.dat + <name>.png pairs")
    p.add_argument("--checkpoint", nargs="*", default=[], help="checkpoints to score")
    p.add_argument("--height", type=positive_int, default=250)
    p.add_argument("--width", type=positive_int, default=400)
    p.add_argument("--rate", type=positive_float, default=0.6, help="photo-electric rate (REDS_BASE: 0.6)")
    p.add_argument("--tfp_window", type=positive_int, default=41)
    args = p.parse_args(argv)
    args.tfp_window = min(args.tfp_window, UHSR_FRAMES)   # the window TFP can average, as labelled below
    try:
        pairs = load_pairs(args.pairs, args.height, args.width)
        models = {path: load_checkpoint(path) for path in args.checkpoint}
        models = {path: (model_from_checkpoint(ckpt, path).eval(), ckpt["model_config"])
                  for path, ckpt in models.items()}
    except InputError as e:
        return report_input_error(e)
    baselines = {"tfp": f"TFP ({args.tfp_window} frames / {args.rate})", "tfi": f"TFI (/ {args.rate})"}
    rows = {}   # label -> [(PSNR, SSIM) per pair]
    for _, spk, gt, stream in pairs:
        scored = [score_stream(spk, gt, model, config, args.rate, args.tfp_window)[0]
                  for model, config in models.values()] or [score_stream(spk, gt, None, None, args.rate, args.tfp_window)[0]]
        labels = [(baselines[m], scored[0][m]) for m in baselines]
        for path, (_, config), scores in zip(models, models.values(), scored):
            labels.append((path, scores[config["arch"]]))
            if LINEAR in scores:
                labels.append((f"{path}: {LINEAR_LABEL}", scores[LINEAR]))
        for path, (model, _) in models.items():
            if reconstruct.is_stateful(model, sliding=False):
                image, carried = stateful_centre_image(model, stream)
                labels.append((f"{path}: stateful, {carried} window{'s' * (carried != 1)} carried",
                               {"psnr": float(psnr(image, gt)[0]), "ssim": float(ssim(image, gt)[0])}))
        for label, s in labels:
            rows.setdefault(label, []).append((s["psnr"], s["ssim"]))
    names = [n for n, *_ in pairs]
    print(f"# {args.pairs}: centre {UHSR_FRAMES} frames, full {args.height}x{args.width} frame")
    print("| method | " + " | ".join(f"{n} PSNR dB / SSIM" for n in names) + " | mean PSNR dB |")
    print("|---" * (len(names) + 2) + "|")
    best_baseline = max(np.mean([r[0] for r in rows[label]]) for label in baselines.values())
    for label, scores in rows.items():
        mean = np.mean([s[0] for s in scores])
        delta = "" if label in baselines.values() else f" ({mean - best_baseline:+.2f} vs best baseline)"
        print(f"| {label} | " + " | ".join(f"{a:.2f} / {b:.3f}" for a, b in scores) + f" | {mean:.2f}{delta} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
