"""Where a normal-light reconstructor loses on the real REDS pairs: each pair's own ground truth
is run through our camera (generate_synthetic_data.simulate_spikes, normal light, a lens of
--lens_px) static and panned rigidly by --pan_px over the 200-frame window, and scored beside the
real stream. The step static -> pan is what motion costs the network; pan -> real is motion
(and camera) the simulation lacks. A network with a linear skip also gets a column of the skip
alone. PSNR dB and sharpness (mean neighbour difference relative to the ground truth's).

    python bench/reds_gap.py --pairs ../shared/datasets/reds-base-sample --checkpoint weights/normal.pth
"""
import argparse
import dataclasses
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generate_synthetic_data as gen                                    # noqa: E402
from metrics import neighbour_difference, psnr                           # noqa: E402
from models import load_checkpoint, model_from_checkpoint                # noqa: E402
from motion_quality import method_images, reds_pairs                    # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True)
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--pan_px", type=float, default=26.0, help="rigid pan over 200 frames (REDS part3: ~26)")
    p.add_argument("--lens_px", type=float, default=0.5,
                   help="the camera's lens blur, std px (the REDS streams read as ~0.5: bench/reds_lens.py)")
    args = p.parse_args(argv)
    networks = [(c, model_from_checkpoint(load_checkpoint(c), c).eval()) for c in args.checkpoint]
    # each network, then (if it has one) its fixed linear skip alone: what the spiking layers add
    methods = ["TFP (41 frames / rate)", "TFI (/ rate)"]
    for n, model in networks:
        methods += [n] + ([f"{n}: linear path alone"] if getattr(model, "skip", None) is not None else [])
    print("| pair | stream | " + " | ".join(["TFP-41", "TFI"] + methods[2:]) + " |")
    print("|---" * (len(methods) + 2) + "|")
    for name, real_spk, gt_real, _ in reds_pairs(args.pairs):
        with Image.open(os.path.join(args.pairs, os.path.splitext(name)[0] + ".png")) as img:
            streams = []
            for px in (0.0, args.pan_px):
                cfg = dataclasses.replace(gen.LIGHT["normal"], motion_px=(px, px), brightness=(1.0, 1.0),
                                          lens_blur_px=(args.lens_px, args.lens_px))
                canvas = gen.image_to_canvas(img, cfg.frame_hw, gen.motion_margin(cfg))
                spk, gt = gen.simulate_spikes(canvas, 200, cfg, gen.make_sensor(cfg, cfg.frame_hw, 0, "test"),
                                              np.random.default_rng(0), cfg.frame_hw)
                streams.append((f"simulated, {px:g} px pan", spk, gt.astype(np.float32) / 255, args.lens_px))
        streams.append(("real", real_spk, gt_real, None))   # its lens: not known
        for label, spk, gt, lens_px in streams:
            images = method_images(spk, networks, lens_px)
            cells = []
            for method in methods:
                img = images[method]
                db = float(psnr(torch.from_numpy(np.ascontiguousarray(img))[None, None], torch.from_numpy(gt)[None, None])[0])
                cells.append(f"{db:.2f} ({neighbour_difference(img) / neighbour_difference(gt):.2f})")
            print(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
