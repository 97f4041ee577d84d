"""How much simulated data the closed-form linear skip needs: a temporal-encoding SNN's 200-bin
skip fitted (train.fit_linear_skip) on the first N batches of simulated normal-light windows,
each fit scored alone on the REDS pairs (PSNR, full frame, the centre 200 frames).

    python bench/skip_fit_data.py --photos ../shared/datasets/caltech101-subset \
        --pairs ../shared/datasets/reds-base-sample --batches 8,16,32,64
"""
import argparse
import glob
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train                                            # noqa: E402
from dataset import UHSR_FRAMES, voxelize               # noqa: E402
from evaluate import load_stream_pair                   # noqa: E402
from generate_synthetic_data import LIGHT, SimulatedStreams   # noqa: E402
from metrics import psnr                                # noqa: E402
from models import SpikingLRN                           # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", required=True, help="Caltech-101 class folders")
    p.add_argument("--pairs", required=True, help="folder of <name>.dat (250x400) + <name>.png pairs")
    p.add_argument("--batches", default="8,16,32,64", help="numbers of fit batches to compare")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=8)
    args = p.parse_args(argv)
    counts = sorted(int(n) for n in args.batches.split(","))
    torch.manual_seed(0)
    model = SpikingLRN(encoding="temporal", time_steps=4, linear_skip=True)
    streams = SimulatedStreams(args.photos, "CALTECH", LIGHT["normal"], args.crop, model.input_channels,
                               UHSR_FRAMES, length=counts[-1] * args.batch_size, seed=1)
    batches = list(torch.utils.data.DataLoader(streams, batch_size=args.batch_size, num_workers=1))
    pairs = []
    for dat in sorted(glob.glob(os.path.join(args.pairs, "*.dat"))):
        spk, _, gt = load_stream_pair(dat, os.path.splitext(dat)[0] + ".png", 250, 400)
        pairs.append((torch.from_numpy(voxelize(spk, model.input_channels))[None].float(), gt))
    print("| fit batches | fit RMSE | REDS PSNR dB per pair | mean |\n|---|---|---|---|")
    for n in counts:
        train.FIT_BATCHES = n
        with torch.no_grad():
            rmse = train.fit_linear_skip(model, batches[:n], "gt", torch.device("cpu"))
            scores = [float(psnr(model.linear_path(v).clamp(0, 1), g)) for v, g in pairs]
        print(f"| {n} | {rmse:.4f} | {' / '.join(f'{s:.2f}' for s in scores)} | {np.mean(scores):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
