"""Quality under motion: reconstructors scored on real `.dat` + ground-truth pairs (the shared
REDS_BASE pairs) and on a held-out simulated test split with motion of its own (.npz files with
`gt`), next to TFP (41 frames), TFI and, for a checkpoint with a linear skip, its linear path
alone. Per method: PSNR / SSIM over the full frame; sharpness (mean absolute neighbour difference
relative to the ground truth's: < 1 = blurred); PSNR on the moving regions only
(metrics.moving_mask: pixels whose 5x5-blurred 41-frame brightness changes by > 0.08 between
two instants 100 frames apart -- moving edges and texture, where window averaging blurs).
A network with a lens input (train.py --lens_input) is told the lens of each simulated file that
stores it; the REDS streams, whose lens is not known, are read at its reference lens; --lens_px
tells it one lens for every stream instead (what it does when the lens is not known).

    python bench/motion_quality.py --pairs ../shared/datasets/reds-base-sample \
        --sim_test data/motion/U-CALTECH/test --checkpoint weights/normal.pth exp/x/ckpts/checkpoint_best.pth
"""
import argparse
import glob
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset import UHSR_FRAMES, center_window, load_npz, read_dat, voxelize        # noqa: E402
from metrics import masked_psnr, moving_mask, neighbour_difference, psnr, ssim       # noqa: E402
from models import load_checkpoint, model_from_checkpoint, to_image                  # noqa: E402
from utils import non_negative_float, tfi, tfp                                      # noqa: E402

RATE = 0.6   # the normal-light camera's (and REDS_BASE's) white-pixel firing rate


def reds_pairs(folder):
    """[(name, spikes [200, H, W], gt [H, W] float in [0,1], lens None)] of every .dat with a .png."""
    pairs = []
    for dat in sorted(glob.glob(os.path.join(folder, "*.dat"))):
        png = os.path.splitext(dat)[0] + ".png"
        if os.path.exists(png):
            with Image.open(png) as img:
                gt = np.asarray(img.convert("L"), np.float32) / 255.0
            pairs.append((os.path.basename(dat), center_window(read_dat(dat), UHSR_FRAMES, dat), gt, None))
    return pairs


def sim_samples(folder, limit):
    """[(name, spikes, gt [H, W] float in [0,1], lens blur std px or None)] of the files with gt."""
    files = sorted(glob.glob(os.path.join(folder, "*.npz")))[:limit]
    out = []
    for f in files:
        spk, _, _, gt, lens_px = load_npz(f, with_gt=True, with_lens=True)
        if gt is not None:
            out.append((os.path.basename(f), spk, gt.astype(np.float32) / 255.0, lens_px))
    return out


@torch.inference_mode()
def method_images(spk, networks, lens_px=None):
    """{method: image [H, W] in [0,1]} for one stream (lens_px: its lens, None when unknown)."""
    images = {"TFP (41 frames / rate)": np.clip(tfp(spk, 41, RATE), 0, 1),
              "TFI (/ rate)": np.clip(tfi(spk, rate=RATE), 0, 1)}
    for name, model in networks:
        voxel = torch.from_numpy(voxelize(spk, model.input_channels))[None]
        images[name] = to_image(model(voxel, lens_px=lens_px))[0, 0].numpy()
        if getattr(model, "skip", None) is not None:
            images[f"{name}: linear path alone"] = to_image(model.linear_path(voxel))[0, 0].numpy()
    return images


def score(streams, networks, lens_override=None):
    """{method: [psnr, ssim, sharpness ratio, moving psnr] averaged over the streams}
    (lens_override: the lens a lens-input network is told for every stream, else each stream's)."""
    rows = {}
    for _, spk, gt, lens_px in streams:
        lens_px = lens_px if lens_override is None else lens_override
        mask = moving_mask(spk, RATE)
        gt_t = torch.from_numpy(gt)[None, None]
        for method, img in method_images(spk, networks, lens_px).items():
            img_t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
            rows.setdefault(method, []).append([
                float(psnr(img_t, gt_t)[0]), float(ssim(img_t, gt_t)[0]),
                neighbour_difference(img) / max(neighbour_difference(gt), 1e-6),
                masked_psnr(img, gt, mask) if mask.any() else float("nan")])
    return {m: np.array(v) for m, v in rows.items()}


def print_table(title, streams, rows, per_stream):
    print(f"\n# {title}")
    if per_stream:
        names = [s[0] for s in streams]
        print("| method | " + " | ".join(f"{n}: PSNR / SSIM / sharpness / moving PSNR" for n in names)
              + " | mean PSNR |")
        print("|---" * (len(names) + 2) + "|")
        for m, v in rows.items():
            cells = " | ".join(f"{a:.2f} / {b:.3f} / {c:.2f} / {d:.2f}" for a, b, c, d in v)
            print(f"| {m} | {cells} | {v[:, 0].mean():.2f} |")
    else:
        print("| method | PSNR dB | SSIM | sharpness vs gt | PSNR on moving regions |")
        print("|---|---|---|---|---|")
        for m, v in rows.items():
            mean = np.nanmean(v, 0)
            print(f"| {m} | {mean[0]:.2f} | {mean[1]:.3f} | {mean[2]:.2f} | {mean[3]:.2f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", help="folder of <name>.dat + <name>.png pairs (250x400)")
    p.add_argument("--sim_test", help="folder of simulated .npz files with gt: a test split, or the "
                                      "validation files that choose a recipe")
    p.add_argument("--sim_limit", type=int, default=40, help="score at most this many simulated files")
    p.add_argument("--checkpoint", nargs="*", default=[])
    p.add_argument("--lens_px", type=non_negative_float, help="tell networks with a lens input this lens blur (std px) for "
                                                 "every stream, not the one a file stores")
    args = p.parse_args(argv)
    networks = []
    for path in args.checkpoint:
        networks.append((path, model_from_checkpoint(load_checkpoint(path), path).eval()))
    if args.pairs:
        pairs = reds_pairs(args.pairs)
        print_table(f"{args.pairs}: centre 200 frames, full frame (these pairs chose earlier recipes: "
                    f"not an independent check)", pairs, score(pairs, networks, args.lens_px), per_stream=True)
    if args.sim_test:
        sims = sim_samples(args.sim_test, args.sim_limit)
        print_table(f"{args.sim_test}: {len(sims)} simulated streams with ground truth, full frame", sims,
                    score(sims, networks, args.lens_px), per_stream=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
