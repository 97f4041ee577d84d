"""Measure how fast content moves in real spike streams (e.g. the shared REDS_BASE pairs), from
the spikes alone: two TFP images of `--window` frames, `--gap` frames apart, are block-matched
(blocks of `--block` px, integer search over +-`--search` px, best normalised cross-correlation;
flat blocks are skipped). Prints the distribution of displacement scaled to 200 frames (the networks'
window; the default gap of 50 frames keeps the fastest blocks inside the search range), which sets the simulator's speed range (generate_synthetic_data.LIGHT["normal"]).

    python bench/reds_motion.py ../shared/datasets/reds-base-sample/*.dat
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset import read_dat       # noqa: E402
from metrics import block_motion    # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dat", nargs="+")
    p.add_argument("--height", type=int, default=250)
    p.add_argument("--width", type=int, default=400)
    p.add_argument("--window", type=int, default=41, help="TFP frames per image")
    p.add_argument("--gap", type=int, default=50, help="frames between the two images' centres")
    p.add_argument("--block", type=int, default=24)
    p.add_argument("--search", type=int, default=16)
    args = p.parse_args(argv)
    for path in args.dat:
        spk = read_dat(path, args.height, args.width).astype(np.float32)
        c = spk.shape[0] // 2
        half = args.window // 2
        t0, t1 = c - args.gap // 2, c + args.gap // 2
        if t0 - half < 0 or t1 + half + 1 > spk.shape[0]:
            raise SystemExit(f"{path}: {spk.shape[0]} frames are too few for --gap {args.gap} --window {args.window}")
        a = spk[t0 - half:t0 + half + 1].mean(0)
        b = spk[t1 - half:t1 + half + 1].mean(0)
        d = block_motion(a, b, args.block, args.search)
        speed = np.hypot(d[:, 0], d[:, 1]) * 200.0 / args.gap       # px per 200 frames
        spread = np.hypot(*(d - np.median(d, 0)).T) * 200.0 / args.gap if len(d) else np.array([np.nan])
        q = np.percentile(speed, [10, 25, 50, 75, 90, 100]) if len(speed) else [np.nan] * 6
        print(f"{os.path.basename(path)}: {len(d)} textured blocks of {args.block} px; displacement per "
              f"200 frames (px): p10 {q[0]:.1f}  p25 {q[1]:.1f}  median {q[2]:.1f}  p75 {q[3]:.1f}  "
              f"p90 {q[4]:.1f}  max {q[5]:.1f}; non-rigid part (distance of each block's motion from "
              f"the median motion, px per 200 frames): median {np.median(spread):.1f}, p90 {np.percentile(spread, 90):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
