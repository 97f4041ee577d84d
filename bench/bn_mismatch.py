"""Does the SNN's BatchNorm compute the same thing in training and at inference? Scores a
checkpoint on centre crops of validation files twice: BN with its running statistics (inference)
and BN with each step's batch statistics (as in training), with the firing rates of each.

    python bench/bn_mismatch.py --checkpoint CKPT --files 'data/motion/U-CALTECH/train/*.npz'
"""
import argparse
import copy
import glob
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset import center_crop, load_npz, voxelize                 # noqa: E402
from models import load_checkpoint, model_from_checkpoint           # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--files", required=True, help="glob of .npz files with gt")
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--crop", type=int, default=64)
    args = p.parse_args(argv)
    model = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint).eval()
    voxels, gts = [], []
    for f in sorted(glob.glob(args.files))[:args.limit]:
        spk, _, _, gt = load_npz(f, with_gt=True)
        voxels.append(voxelize(center_crop(spk, args.crop, f), model.input_channels))
        gts.append(center_crop(gt, args.crop, f).astype(np.float32) / 255)
    x, y = torch.from_numpy(np.stack(voxels)), torch.from_numpy(np.stack(gts))[:, None]
    with torch.no_grad():
        for label, net in (("running statistics (inference)", model),
                           ("per-step batch statistics (training)", copy.deepcopy(model).train())):
            out, rates = net(x, return_rates=True)
            print(f"{label}: L1 {float((out.clamp(0, 1) - y).abs().mean()):.4f}, "
                  f"firing rates {' '.join(f'{r:.3f}' for r in rates.tolist())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
