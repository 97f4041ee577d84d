"""Held-out simulated recordings for stream models: the quality of every output frame of a
recording run stateful (as reconstruct.py runs it), next to the same network on windows from rest,
its fitted linear filter alone, TFP and TFI.

    python bench/stream_quality.py --checkpoint weights/stream.pth OTHER.pth \
        --source ../shared/datasets/caltech101-subset --data_root data/weights-stream-recordings

Recordings: --recordings of --windows consecutive windows (stride one time step, 50 frames) at
--crop² pixels, simulated as train.py --stateful simulates them (layered, video-like motion,
normal light) but only from the photos of the --data_root test split's files and with the test
files' sensor, neither of which any training run sees. Half of them with a still camera (only
the cut-outs move), half with a moving one; recording i is seeded by (--seed, i), so a run with the
same --seed scores the same streams, and another --seed draws fresh ones of the same photos.
Per recording kind: mean PSNR and SSIM over all output frames (each against the clean frame at
its window's centre), and flicker, the mean |frame_j+1 - frame_j| against the clean frames' own
mean change. TFP: the 41 frames around each window's centre / rate; TFI / rate.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset import CLASS_NAMES, DATASET_DIRS, UHSR_BINS, UHSR_FRAMES, load_label_name   # noqa: E402
from generate_synthetic_data import LIGHT, SimulatedStreams   # noqa: E402
from metrics import psnr, ssim                                 # noqa: E402
from models import SpikingLRN, load_checkpoint, model_from_checkpoint, model_name   # noqa: E402
from utils import InputError, positive_int, report_input_error, tfi, tfp   # noqa: E402

RATE = LIGHT["normal"].rate


def test_photos(data_root):
    """The label names of the test split's files (the photos they show) of the one dataset there."""
    for data_type, folder in DATASET_DIRS.items():
        test = os.path.join(data_root, folder, "test")
        if os.path.isdir(test):
            names = {load_label_name(os.path.join(test, f)) for f in sorted(os.listdir(test)) if f.endswith(".npz")}
            if names:
                return data_type, names
    raise InputError(f"--data_root {data_root}: no test split with .npz files (generate_synthetic_data.py --num_test)")


def recordings(args):
    """-> [(still camera?, spikes uint8 [frames, S, S], clean frames [K, S, S] in [0, 1])]."""
    data_type, photos = test_photos(args.data_root)
    if data_type not in CLASS_NAMES:
        raise InputError(f"--data_root {args.data_root}: unknown dataset {data_type}")
    streams = SimulatedStreams(args.source, data_type, LIGHT["normal"], args.crop, UHSR_BINS, UHSR_FRAMES,
                               only=photos, seed=0, sensor="test")
    step = UHSR_FRAMES // 4
    frames = (args.windows - 1) * step + UHSR_FRAMES
    centres = [j * step + (UHSR_FRAMES - 1) / 2 for j in range(args.windows)]
    out = []
    for i in range(args.recordings):
        still = i % 2 == 0
        spk, gt, _ = streams.capture(np.random.default_rng([args.seed, i]), frames, centres, still)
        out.append((still, spk, gt.astype(np.float32) / 255.0))
    print(f"{len(out)} recordings (seed {args.seed}) of {frames} frames ({args.windows} windows), {args.crop}x{args.crop}, from "
          f"{len(streams.images)} test photos of {args.source} (test sensor)")
    return out


@torch.inference_mode()
def network_frames(model, spk):
    """-> {label: frames [K, S, S]}: stateful (stream_frames over the whole recording from rest),
    every window from rest (forward), and the linear filter alone where the network has one."""
    t, s = model.time_steps, spk.shape[-1]
    x = torch.from_numpy(spk).float().reshape(-1, 1, model.in_bins, s, s)    # [steps, 1, 50, S, S]
    stateful, _ = model.stream_frames(x, model.init_stream(1, s, s))
    windows = torch.stack([x[j:j + t, 0].flatten(0, 1) for j in range(len(x) - t + 1)])   # [K, T*50, S, S]
    out = {"stateful": stateful[:, 0, 0], "windows from rest": model(windows)[:, 0]}
    if model.skip is not None:
        out["linear filter alone"] = model.linear_path(windows)[:, 0]
    return {k: v.clamp(0, 1).numpy() for k, v in out.items()}


def baseline_frames(spk, windows):
    step = UHSR_FRAMES // 4
    tfps, tfis = [], []
    for j in range(windows):
        window = spk[j * step:j * step + UHSR_FRAMES]
        tfps.append(tfp(window, 41, RATE))
        tfis.append(tfi(window, rate=RATE))
    return {"TFP (41 frames)": np.clip(np.stack(tfps), 0, 1), "TFI": np.clip(np.stack(tfis), 0, 1)}


def scores(frames, gt):
    """frames, gt [K, S, S] -> (mean PSNR, mean SSIM, flicker)."""
    f, g = torch.from_numpy(frames)[:, None], torch.from_numpy(gt)[:, None]
    return (float(psnr(f, g).mean()), float(ssim(f, g).mean()),
            float(np.abs(np.diff(frames, axis=0)).mean()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, help="temporal-encoding SNN checkpoints")
    p.add_argument("--source", required=True, help="the photos folder the data was simulated from")
    p.add_argument("--data_root", required=True, help="data whose test split names the held-out photos")
    p.add_argument("--recordings", type=positive_int, default=24)
    p.add_argument("--windows", type=positive_int, default=24, help="output frames per recording")
    p.add_argument("--crop", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=2026, help="draws the recordings (scenes, motion, noise)")
    args = p.parse_args(argv)
    try:
        models = {}
        for path in args.checkpoint:
            model = model_from_checkpoint(load_checkpoint(path), path).eval()
            if not (isinstance(model, SpikingLRN) and model.encoding == "temporal" and model.time_steps == 4
                    and model.in_bins == UHSR_FRAMES // 4):
                raise InputError(f"{path}: {model_name(model.config())} is not a stream model of T=4 one-frame "
                                 f"bins, which these recordings are made for")
            models[path] = model
        recs = recordings(args)
    except InputError as e:
        return report_input_error(e)
    table = {}     # (kind, label) -> [(psnr, ssim, flicker)]
    clean_change = {True: [], False: []}
    for still, spk, gt in recs:
        kind = "still camera" if still else "moving camera"
        clean_change[still].append(float(np.abs(np.diff(gt, axis=0)).mean()))
        rows = baseline_frames(spk, args.windows)
        for path, model in models.items():
            rows.update({f"{path}: {k}": v for k, v in network_frames(model, spk).items()})
        for label, frames in rows.items():
            table.setdefault((kind, label), []).append(scores(frames, gt))
    for still in (True, False):
        kind = "still camera" if still else "moving camera"
        print(f"\n| {kind} ({sum(1 for s, _, _ in recs if s == still)} recordings) | PSNR dB | SSIM | flicker "
              f"(clean frames: {np.mean(clean_change[still]):.4f}) |")
        print("|---|---|---|---|")
        for (k, label), vals in table.items():
            if k == kind:
                m = np.mean(vals, axis=0)
                print(f"| {label} | {m[0]:.2f} | {m[1]:.3f} | {m[2]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
