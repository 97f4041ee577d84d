"""Stream checkpoints on smooth synthetic content: the 72x72 procedural scene of
tests/test_weights.py, still (1200 frames) and moving 30 px per 200 frames (200 frames), run
stateful as reconstruct.py runs them; PSNR of the last output frame against the clean frame,
next to TFP over 41 frames and TFI of the same window (both / rate 0.6).

    python bench/procedural_check.py --checkpoint weights/stream.pth OLD_STREAM.pth
"""
import argparse
import dataclasses
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generate_synthetic_data as gen                    # noqa: E402
import reconstruct                                       # noqa: E402
from dataset import write_dat                            # noqa: E402
from metrics import psnr                                 # noqa: E402
from models import load_checkpoint, model_from_checkpoint   # noqa: E402
from utils import tfi, tfp                               # noqa: E402

SIZE = (72, 72)


def scene(motion, num_frames):
    """-> (spikes [num_frames, 72, 72], clean frame at the centre [1, 1, 72, 72], rate)."""
    cfg = dataclasses.replace(gen.LIGHT["normal"], motion_px=(motion, motion), jitter_px=0.0)
    rng = np.random.default_rng(7)
    canvas = gen.scene_canvas(gen.procedural_image(12, rng, size=160), SIZE, cfg, rng)
    spk, gt = gen.simulate_spikes(canvas, num_frames, cfg, gen.make_sensor(cfg, SIZE, 3), rng, SIZE)
    return spk, torch.from_numpy(gt.astype(np.float32) / 255)[None, None], cfg.rate


def score(image, gt):
    return float(psnr(torch.as_tensor(image).clamp(0, 1).reshape(gt.shape), gt)[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, help="temporal-encoding SNN checkpoints")
    args = p.parse_args(argv)
    models = {path: model_from_checkpoint(load_checkpoint(path), path).eval() for path in args.checkpoint}
    print("| scene | " + " | ".join(args.checkpoint) + " | TFP (41 frames) | TFI |")
    print("|---" * (len(models) + 3) + "|")
    with tempfile.TemporaryDirectory() as work:
        for motion, num_frames in ((0.0, 1200), (30.0, 200)):
            spk, gt, rate = scene(motion, num_frames)
            dat = os.path.join(work, "scene.dat")
            write_dat(dat, spk)
            stream = reconstruct.open_stream(dat, *SIZE)
            num_out = (num_frames - 200) // 50 + 1
            row = [score(list(reconstruct.stateful_frames(m, stream, 0, num_out, 50, None, 4, "cpu"))[-1], gt)
                   for m in models.values()]
            row += [score(tfp(spk[-200:], 41, rate), gt), score(tfi(spk[-200:], rate=rate), gt)]
            print(f"| {'still' if motion == 0 else f'moving {motion:g} px'} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
