"""How much blurrier than its ground truth is a REDS stream's scene? Each pair's stream is shifted
back along its best constant velocity (bench/reds_ceilings.py: 10-frame runs of the central 100
frames, the velocity searched against the ground truth) and averaged; the ground truth blurred by
a Gaussian of each std on a grid is scored against that image, and the best std read off. The
shift's interpolation, the camera's noise and any motion that is not one translation blur too, so
the same is measured on our camera (generate_synthetic_data, normal light) panning the pair's own
ground truth at the pair's velocity through a lens of known std: the real stream's reading is
placed on that calibration. Sharpness: mean neighbour difference of the aligned image relative
to the ground truth's. PSNR over the frame less a 12-px border.

    python bench/reds_lens.py --pairs ../shared/datasets/reds-base-sample
"""
import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generate_synthetic_data as gen                                    # noqa: E402
from metrics import neighbour_difference                                 # noqa: E402
from motion_quality import RATE, reds_pairs                              # noqa: E402
from reds_ceilings import BORDER, best_velocity, db, shifted_runs        # noqa: E402

SIGMAS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5)   # ground-truth blurs tried, px
LENSES = (0.0, 0.5, 0.75, 1.0)                                  # calibration lenses, px


def inner(img):
    return img[BORDER:-BORDER, BORDER:-BORDER]


def reading(spk, gt):
    """-> (velocity px per window, PSNR of the aligned image against the sharp ground truth, its
    sharpness, the ground-truth blur std that matches it best, PSNR there)."""
    v = best_velocity(spk, gt)
    centre = len(spk) // 2
    aligned = shifted_runs(spk[centre - 50:centre + 50], v).mean(0).numpy() / RATE
    scores = [(db(inner(aligned), inner(gen.lens_blur(gt[None], s)[0])), s) for s in SIGMAS]
    best_db, best_sigma = max(scores)
    return (v, db(inner(aligned), inner(gt)), neighbour_difference(inner(aligned)) / neighbour_difference(inner(gt)),
            best_sigma, best_db)


def panned_stream(gt, velocity, lens):
    """The ground truth [H, W] as a background panning at velocity (px per window) through our
    camera with a lens of std `lens` px -> spikes [200, H, W]."""
    h, w = gt.shape
    cfg = dataclasses.replace(gen.LIGHT["normal"], lens_blur_px=(lens, lens), jitter_px=0.0)
    texture = np.stack([gt, np.ones_like(gt)]).astype(np.float32)
    layer = gen.Layer(texture, np.array([w / 2, h / 2]), np.asarray(velocity, float) / gen.UHSR_FRAMES,
                      background=True)
    spk, _ = gen.simulate_layered_spikes([layer], gen.UHSR_FRAMES, cfg, gen.make_sensor(cfg, (h, w), 0, "test"),
                                         np.random.default_rng(0), (h, w))
    return spk


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="folder of REDS .dat + .png pairs")
    args = p.parse_args(argv)
    print("| pair | stream | velocity (px / 200 frames) | aligned vs sharp gt dB | sharpness | "
          "best-matching gt blur std px (dB) |\n|---|---|---|---|---|---|")
    for name, spk, gt, _ in reds_pairs(args.pairs):
        rows = [("real", reading(spk, gt))]
        for lens in LENSES:
            rows.append((f"our camera, pan at its velocity, lens {lens:g} px",
                         reading(panned_stream(gt, rows[0][1][0], lens), gt)))
        for label, (v, sharp_db, sharpness, sigma, sigma_db) in rows:
            print(f"| {name} | {label} | ({v[0]}, {v[1]}) | {sharp_db:.2f} | {sharpness:.2f} | "
                  f"{sigma:g} ({sigma_db:.2f}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
