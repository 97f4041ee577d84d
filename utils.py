"""Small shared helpers: the error type users can act on, the TFP/TFI baselines (SPEC §6),
atomic file writes, seeding, device choice."""
import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile

import numpy as np
import torch


class InputError(Exception):
    """Bad input the user can fix (a file, a flag, a folder): every entry point prints it as one
    line, `error: <message naming the file or flag>`, and exits with status 2, no traceback.
    The project's specific errors (SpikeDataError, CheckpointError, ...) derive from it."""


def report_input_error(e):
    """Print an InputError the way every entry point does -> exit status 2."""
    print(f"error: {input_error_message(e)}", file=sys.stderr)
    return 2


def input_error_message(e):
    """The message of an InputError, also of one raised in a DataLoader worker: the loader
    re-raises it in the main process as the same type with the worker's whole traceback as its
    message ("Caught SpikeDataError in DataLoader worker process 0." and "Original Traceback"
    on the next lines); the original message follows the exception's name on its last line."""
    text = str(e)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    cls = type(e)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    start = text.rfind(f"\n{name}: ")
    return text[start + len(name) + 3:].strip() if start >= 0 else text.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------
# Baselines. Both take spikes [T, H, W] (numpy, any integer/bool/float dtype) and return a
# float32 [H, W] intensity image. With `rate` (the firing probability of a white pixel, 0.6 in
# REDS_BASE) the result is an intensity estimate; with rate=None it is normalised so that its
# 99.5th percentile maps to 1 (the rate of real dark captures is unknown), then clipped to [0, 1].

NORM_PERCENTILE = 99.5


def _normalise(img, rate, scale=None):
    """img / rate, or img / scale clipped to [0, 1]; scale defaults to the NORM_PERCENTILE of img."""
    if rate is not None:
        return (img / rate).astype(np.float32)
    if scale is None:
        scale = np.percentile(img, NORM_PERCENTILE)
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


def _percentile_points(values, descending=False):
    """For non-negative integers `values`: the two order statistics np.percentile interpolates
    between for NORM_PERCENTILE, and the weight of the second -> (a, b, weight). By a histogram,
    O(n): on a 224x224 image ~10x cheaper than np.percentile's selection, the largest cost of a
    cached training item. descending=True ranks the values high to low, as a decreasing function
    of them (1/x) ranks low to high."""
    n = values.size
    pos = NORM_PERCENTILE / 100 * (n - 1)
    lo, hi = int(pos), min(int(pos) + 1, n - 1)
    ranks = [n - 1 - lo, n - 1 - hi] if descending else [lo, hi]
    a, b = np.searchsorted(np.cumsum(np.bincount(values.ravel())), ranks, side="right")
    return a, b, pos - lo


def tfp_from_counts(counts, frames, rate=None):
    """tfp() from integer per-pixel spike counts over `frames` frames (a voxel summed over its bins)."""
    img = counts.astype(np.float32) / np.float32(frames)
    if rate is not None:
        return _normalise(img, rate)
    a, b, weight = _percentile_points(counts)
    return _normalise(img, None, (a + (b - a) * weight) / frames)


def tfi(spk, window=None, rate=None):
    """Texture from inter-spike interval, per pixel: 1 / (right - left), where left is the last
    spike at or before the middle frame and right the first spike after it, both searched within
    +-window frames (default: as far as the stream allows); no spike -> that window end."""
    return tfi_from_interval(tfi_interval(spk, window), rate)


def tfi_from_interval(interval, rate=None):
    """TFI from the per-pixel intervals (right - left) that tfi_interval returns."""
    img = 1.0 / interval.astype(np.float32)
    if rate is not None:
        return _normalise(img, rate)
    a, b, weight = _percentile_points(interval, descending=True)
    return _normalise(img, None, 1 / a + (1 / b - 1 / a) * weight)


def tfi_interval(spk, window=None):
    """Per pixel, right - left of tfi(): integers [H, W] in [1, 2 * window]. Each pixel's value
    depends on that pixel alone, so the map of whole frames can be cropped later (the training
    cache stores it)."""
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
    return dist_left + dist_right


# ----------------------------------------------------------------------------------------------
# Atomic writes: a crash mid-write never leaves a half-written checkpoint, video or results file.

@contextlib.contextmanager
def atomic_output(path):
    """Yield a temp path `<path>.<random>.tmp` in path's folder (os.replace is atomic only within
    one filesystem) for the caller, or a program it runs, to write; when the block ends without
    an exception the temp file is fsynced, gets the old file's permissions (a new one: 0o666
    less the umask, not mkstemp's 0o600) and replaces `path`, and the folder is fsynced so that
    the rename is durable. On any exception it is removed and `path` is left as it was. A run
    killed inside the block leaves the temp file: remove_stale_temp_files() finds it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path, write_fn, mode="wb", check=None):
    """Write `path` through atomic_output(): write_fn(file) writes into the temp file;
    check(temp_path), if given, may raise to keep the old file."""
    with atomic_output(path) as tmp:
        with open(tmp, mode) as f:
            write_fn(f)
        if check is not None:
            check(tmp)


def remove_stale_temp_files(path):
    """Remove the temp files atomic_output(path) left behind in runs that were killed (the name
    mkstemp gives: `<name>.` + 8 random characters + `.tmp`), nothing else -> their names."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(name) + r"\.[a-z0-9_]{8}\.tmp")
    removed = []
    for f in os.listdir(folder) if os.path.isdir(folder) else []:
        if pattern.fullmatch(f):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, f))
            removed.append(f)
    return removed


def _umask():
    mask = os.umask(0)   # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def atomic_move(src, dest):
    """Put the finished file `src` at `dest` atomically: a rename within one filesystem, else an
    atomic copy (src stays)."""
    try:
        os.replace(src, dest)
        return
    except OSError:                     # another filesystem
        pass
    with open(src, "rb") as f:
        atomic_write(dest, lambda out: shutil.copyfileobj(f, out, 1 << 20))


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
    """--device auto | cpu | cuda | cuda:N, the same in every script -> torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {name}: no CUDA device is available here (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {name}: there are {count} CUDA devices (0 to {count - 1})")
    return device


def check_output_folder(path, flag, value=None):
    """Before any long work: `path` is a folder that exists or can be created, and files can be
    written in it; else an InputError naming `flag` and its `value` (default: path). Creates
    nothing (a refused run leaves no empty folders): it tries a temporary file in the deepest
    folder of `path` that exists."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    named = f"{flag} {path if value is None else value}"
    if not os.path.isdir(existing):
        what = "is a file" if existing == os.path.abspath(path) and value is None else f"{existing} is a file"
        raise InputError(f"{named}: {what}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise InputError(f"{named}: cannot write in {existing} ({e.strerror or e})") from None


# ----------------------------------------------------------------------------------------------
# argparse types: a nonsensical flag value is refused when the command line is parsed

def folder_name(text):
    """argparse type of --exp_name: one folder name, so that the run stays inside --exp_root."""
    if text in ("", ".", "..") or "/" in text or os.sep in text or "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a single folder name (not empty, '.' or '..', "
                                         f"no '/'): the run's folder is <exp_root>/<exp_name>")
    return text


def _number_type(cast, ok, what):
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value
    parse.__name__ = what    # argparse names the type in its messages
    return parse


positive_int = _number_type(int, lambda v: v > 0, "a whole number > 0")
non_negative_int = _number_type(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _number_type(float, lambda v: v > 0, "a number > 0")
non_negative_float = _number_type(float, lambda v: v >= 0, "a number >= 0")
open_fraction = _number_type(float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")
unit_interval = _number_type(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


# ----------------------------------------------------------------------------------------------
# Images shared by the training grids, evaluate.py's grid and test.py's panels

def spike_image(voxel):
    """Spike counts [B, bins, H, W] -> their mean over bins scaled to [0, 1] per sample,
    [B, 1, H, W]: how the window's spikes look."""
    spikes = voxel.float().mean(1, keepdim=True)
    return spikes / spikes.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)


def comparison_grid(voxel, tfp, tfi, recon, gt):
    """One row per sample: spikes | TFP | TFI | reconstruction | gt (all [B, 1, H, W]; gt black
    where a sample has none) -> image [3, H', W'] for save_image or TensorBoard."""
    import torchvision
    tiles = [spike_image(voxel), tfp, tfi, recon.clamp(0, 1), gt]
    tiles = torch.stack([t.detach().float().cpu() for t in tiles], dim=1)     # [B, 5, 1, H, W]
    return torchvision.utils.make_grid(tiles.flatten(0, 1), nrow=5, padding=2)


def format_count(n):
    """11234567 -> '11.23M': parameter, MAC and operation counts read at a glance."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"
