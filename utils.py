"""Small shared helpers: the TFP/TFI baselines (SPEC §6), atomic file writes, seeding."""
import json
import os
import random
import tempfile

import numpy as np
import torch


# ----------------------------------------------------------------------------------------------
# Baselines. Both take spikes [T, H, W] (numpy, any integer/bool/float dtype) and return a
# float32 [H, W] intensity image. With `rate` (the firing probability of a white pixel, 0.6 in
# REDS_BASE) the result is an intensity estimate; with rate=None it is normalised so that its
# 99.5th percentile maps to 1 (the rate of real dark captures is unknown), then clipped to [0, 1].

def _normalise(img, rate):
    if rate is not None:
        return (img / rate).astype(np.float32)
    scale = np.percentile(img, 99.5)
    if scale <= 0:
        scale = img.max() if img.max() > 0 else 1.0
    return np.clip(img / scale, 0.0, 1.0).astype(np.float32)


def tfp(spk, window=None, rate=None):
    """Texture from playback: mean of the `window` frames around the middle (all if None)."""
    t = spk.shape[0]
    window = t if window is None else min(window, t)
    start = (t - window) // 2
    img = spk[start:start + window].mean(0, dtype=np.float32)
    return _normalise(img, rate)


def tfi(spk, window=None, rate=None):
    """Texture from inter-spike interval, per pixel: 1 / (right - left), where left is the last
    spike at or before the middle frame and right the first spike after it, both searched within
    +-window frames (default: as far as the stream allows); no spike -> that window end."""
    t = spk.shape[0]
    mid = t // 2
    window = min(mid, t - 1 - mid) if window is None else min(window, mid, t - 1 - mid)
    if window < 1:
        raise ValueError(f"TFI needs at least 3 frames, got {t}")
    fired = np.asarray(spk[mid - window:mid + window + 1]) > 0       # [2w+1, H, W], mid at index w
    before = fired[:window + 1][::-1]                                 # mid, mid-1, ..., mid-w
    after = fired[window + 1:]                                        # mid+1, ..., mid+w
    # argmax finds the first True; where there is none, fall back to the window end.
    dist_left = np.where(before.any(0), before.argmax(0), window)
    dist_right = np.where(after.any(0), after.argmax(0) + 1, window)
    img = 1.0 / (dist_left + dist_right).astype(np.float32)
    return _normalise(img, rate)


# ----------------------------------------------------------------------------------------------
# Atomic writes: a crash mid-write never leaves a half-written checkpoint or results file.

def atomic_write(path, write_fn, mode="wb"):
    """Call write_fn(file) on a temp file next to `path`, fsync, then rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj, path):
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode="w")


# ----------------------------------------------------------------------------------------------

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    return device
