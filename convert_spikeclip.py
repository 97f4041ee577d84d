"""Convert the original SpikeCLIP LRN (the authors' bare state_dict, e.g. LRN_CALTECH.pth from
github.com/chenkang455/SpikeCLIP) into a SpikeCLIP-SNN checkpoint.

evaluate.py, test.py and train.py --teacher read the original file directly; converting is only
for users who want one file format: the result records the class set it was trained on (so
--dataset need not be passed), the source file and its SHA-256, and the original's CLIP
(OpenAI ViT-B/32). The network keeps its name and its scoring convention (see README).

    python convert_spikeclip.py models/LRN_CALTECH.pth exp/spikeclip_caltech/ckpts/checkpoint_best.pth --dataset caltech

Exit status 2: unusable input (not the original layout, unreadable, output already exists).
"""
import argparse
import os
import sys

from dataset import one_dataset
from models import CheckpointError, is_original, load_checkpoint, model_from_checkpoint
from utils import atomic_torch_save


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="the original SpikeCLIP LRN state_dict (.pth)")
    p.add_argument("output", help="where the SpikeCLIP-SNN checkpoint goes (must not exist yet)")
    p.add_argument("--dataset", "--data_type", dest="data_type", type=one_dataset, metavar="{cifar,caltech}",
                   help="class set the weights were trained on (LRN_CALTECH.pth: caltech)")
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    try:
        if os.path.exists(args.output):
            raise CheckpointError(f"{args.output}: already exists; remove it or choose another output")
        ckpt = load_checkpoint(args.input)
        # load_checkpoint wraps a bare original state_dict and names the file it read as the source
        source = ckpt.get("source", {}).get("file")
        if not is_original(ckpt["model_config"]) or source != os.path.abspath(args.input):
            raise CheckpointError(f"{args.input}: already a SpikeCLIP-SNN checkpoint, nothing to convert")
        model_from_checkpoint(ckpt, args.input)     # the weights fit the network they claim to be
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ckpt["data_type"] = args.data_type
    atomic_torch_save(ckpt, args.output)
    print(f"wrote {args.output}: {ckpt['source']['name']} from {args.input} "
          f"(sha256 {ckpt['source']['sha256'][:12]}…), data type {args.data_type or 'not recorded'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
