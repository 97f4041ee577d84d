"""How sharp are the training scenes next to real video frames? Mean absolute neighbour
difference (metrics.neighbour_difference) of: the REDS ground truths; Caltech photos as the
rigid-drift simulator used them (upscaled to fill a 250x400 frame, dimmed by the mean of
U(0.5, 1)); and the clean frames of the normal-light simulator's training captures (64x64).

    python bench/photo_sharpness.py --pairs ../shared/datasets/reds-base-sample \
        --photos ../shared/datasets/caltech101-subset
"""
import argparse
import glob
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generate_synthetic_data as gen               # noqa: E402
from metrics import neighbour_difference            # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True)
    p.add_argument("--photos", required=True, help="Caltech-101 class folders")
    p.add_argument("--samples", type=int, default=60)
    args = p.parse_args(argv)
    for png in sorted(glob.glob(os.path.join(args.pairs, "*.png"))):
        with Image.open(png) as img:
            grey = np.asarray(img.convert("L"), np.float32) / 255
        print(f"REDS ground truth {os.path.basename(png)}: {neighbour_difference(grey):.4f} (mean {grey.mean():.3f})")
    files = sorted(glob.glob(os.path.join(args.photos, "*", "*.jpg")))[::20][:args.samples]
    upscaled = []
    for f in files:
        with Image.open(f) as img:
            upscaled.append(neighbour_difference(gen.image_to_canvas(img, (250, 400), 19)) * 0.75)
    print(f"photos upscaled to 250x400, x0.75 (rigid-drift simulator): {np.mean(upscaled):.4f}")
    ds = gen.SimulatedStreams(args.photos, "CALTECH", gen.LIGHT["normal"], 64, 50, length=1)
    rng = np.random.default_rng(1)
    clean = [ds.capture(rng, 8)[1][0].astype(np.float32) / 255 for _ in range(args.samples)]
    print(f"normal-light training captures, 64x64 clean frames: {np.mean([neighbour_difference(c) for c in clean]):.4f} "
          f"(mean {np.mean(clean):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
