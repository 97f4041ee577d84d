"""Ceilings, with the ground truth in hand, of two things a reconstructor could learn to do beyond
a fitted linear filter of its window. Both pick with the ground truth, so they bound what a
network could get from the idea; they are not results.

1. Choose the temporal support per pixel: of the checkpoint's linear filter and TFP over the
   central 200 / 100 / 50 frames (/ rate), each pixel takes the one whose squared error, averaged
   over its 5x5 neighbourhood, is lowest. On the REDS pairs and on a simulated test split.
2. Follow the motion (REDS pairs): the 200-frame window as 20 runs of 10 frames, each shifted
   back along one constant velocity (px per 200 frames; the best for the pair, searched against
   the ground truth on a 4-px grid, then 1 px) and a 3x3 filter of the 20 runs fitted by least
   squares to the pair's own ground truth; beside the same fit without the shift. PSNR over the
   frame less a 12-px border (the shifted runs' edges).

    python bench/reds_ceilings.py --pairs ../shared/datasets/reds-base-sample \
        --checkpoint exp/motion_temporal/ckpts/checkpoint_best.pth --sim_test data/weights-normal/U-CALTECH/test
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset import UHSR_FRAMES, voxelize                                             # noqa: E402
from models import load_checkpoint, model_from_checkpoint                 # noqa: E402
from motion_quality import RATE, reds_pairs, sim_samples                  # noqa: E402

RUN = 10          # frames per run for the motion ceiling
BORDER = 12       # px left out of the motion ceiling's PSNR


def db(img, gt):
    return float(10 * np.log10(1 / np.mean((np.clip(img, 0, 1) - gt) ** 2)))


@torch.no_grad()
def support_ceiling(model, spk, gt):
    """{method: PSNR} of the filter, each TFP and the per-pixel oracle choice among them."""
    centre = len(spk) // 2
    candidates = {"linear filter": model.linear_path(torch.from_numpy(voxelize(spk, model.input_channels))[None])[0, 0].numpy()}
    for n in (200, 100, 50):
        candidates[f"TFP-{n}"] = spk[centre - n // 2:centre + n // 2].mean(0, dtype=np.float32) / RATE
    images = np.stack(list(candidates.values()))
    err = F.avg_pool2d(torch.from_numpy((np.clip(images, 0, 1) - gt) ** 2)[:, None], 5, 1, 2,
                       count_include_pad=False)[:, 0]
    choice = np.take_along_axis(images, err.argmin(0).numpy()[None], 0)[0]
    return {**{k: db(v, gt) for k, v in candidates.items()}, "per-pixel best of these": db(choice, gt)}


def shifted_runs(spk, velocity):
    """spikes [F, H, W] -> [F/RUN, H, W] run means, run k resampled at x + v * (t_k - t_centre),
    v in px per UHSR_FRAMES (one window) and t in frames."""
    runs = torch.from_numpy(spk.astype(np.float32)).unflatten(0, (-1, RUN)).mean(1)
    r, h, w = runs.shape
    t = (torch.arange(r) * RUN + RUN / 2 - len(spk) / 2).float() / UHSR_FRAMES     # in windows
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    gx = (xs + velocity[0] * t[:, None, None]) / (w - 1) * 2 - 1
    gy = (ys + velocity[1] * t[:, None, None]) / (h - 1) * 2 - 1
    return F.grid_sample(runs[:, None], torch.stack([gx, gy], -1), align_corners=True, padding_mode="border")[:, 0]


def best_velocity(spk, gt):
    """The constant velocity (px per window) whose shifted 100 central frames' mean is nearest gt."""
    centre = spk[len(spk) // 2 - 50:len(spk) // 2 + 50]

    def score(v):
        return db(shifted_runs(centre, v).mean(0).numpy() / RATE, gt)
    coarse = max(((x, y) for x in range(-40, 41, 4) for y in range(-40, 41, 4)), key=score)
    return max(((coarse[0] + dx, coarse[1] + dy) for dx in range(-3, 4) for dy in range(-3, 4)), key=score)


def fitted_filter_db(runs, gt):
    """PSNR of the least-squares 3x3 filter of the runs [R, H, W] fitted to gt itself."""
    x = F.unfold(runs[None], 3, padding=1)[0].T.double()                          # [H*W, 9R]
    x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    inner = torch.zeros(gt.shape, dtype=torch.bool)
    inner[BORDER:-BORDER, BORDER:-BORDER] = True
    y = torch.from_numpy(gt).double().flatten()
    weights = torch.linalg.lstsq(x[inner.flatten()], y[inner.flatten(), None]).solution
    return db((x @ weights).view(gt.shape).numpy()[BORDER:-BORDER, BORDER:-BORDER], gt[BORDER:-BORDER, BORDER:-BORDER])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="folder of REDS .dat + .png pairs")
    p.add_argument("--checkpoint", required=True, help="a checkpoint with a linear skip")
    p.add_argument("--sim_test", help="simulated test .npz folder (with gt) for the support ceiling")
    p.add_argument("--sim_limit", type=int, default=12)
    args = p.parse_args(argv)
    model = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint).eval()
    if getattr(model, "skip", None) is None:
        p.error(f"--checkpoint {args.checkpoint}: has no linear skip to compare with")
    pairs = reds_pairs(args.pairs)

    print("# 1. Temporal support chosen per pixel with the ground truth (PSNR dB)")
    rows = [(name, support_ceiling(model, spk, gt)) for name, spk, gt, _ in pairs]
    if args.sim_test:
        sims = [support_ceiling(model, spk, gt) for _, spk, gt, _ in sim_samples(args.sim_test, args.sim_limit)]
        rows.append((f"simulated test, mean of {len(sims)}", {k: float(np.mean([s[k] for s in sims])) for k in sims[0]}))
    print("| stream | " + " | ".join(rows[0][1]) + " |\n" + "|---" * (len(rows[0][1]) + 1) + "|")
    for name, row in rows:
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")

    print(f"\n# 2. Motion followed with the ground truth: 3x3 filters of {RUN}-frame runs fitted to the pair itself "
          f"(PSNR dB, {BORDER}-px border left out)")
    print("| pair | best velocity (px per window) | runs as they are | runs shifted along it |\n|---|---|---|---|")
    for name, spk, gt in pairs:
        v = best_velocity(spk, gt)
        print(f"| {name} | ({v[0]}, {v[1]}) | {fitted_filter_db(shifted_runs(spk, (0, 0)), gt):.2f} | "
              f"{fitted_filter_db(shifted_runs(spk, v), gt):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
