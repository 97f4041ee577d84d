"""Spike data I/O: UHSR `.npz`, raw Vidar `.dat`, voxelisation and the UHSR Dataset.

Conventions (SPEC §2):
- spikes are uint8 in {0,1}, shape [T, H, W] (frames, rows, columns);
- a Vidar `.dat` frame is H*W/8 bytes, pixel p = row*W + col of the vertically flipped frame,
  stored in byte p>>3 at bit p&7, least significant bit first (unpack_dat_frames);
- the UHSR loader crops the centre 224x224 of the 250x250 frames ([:, 13:237, 13:237]) and bins
  200 frames into 50 bins of 4 frames each (counts 0..4, not normalised).
"""
import argparse
import functools
import json
import multiprocessing
import os
import re
import struct
import time
import zipfile
import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

from utils import InputError, atomic_write, tfi_from_interval, tfi_interval, tfp_from_counts

# Index -> class name, in the label order of the UHSR files (not torchvision's order).
UCIFAR_CLASSES = ["frog", "horse", "dog", "truck", "airplane", "automobile", "bird", "ship",
                  "cat", "deer"]
UCALTECH_CLASSES = [
    "accordion", "airplanes", "anchor", "ant", "barrel", "bass", "beaver", "binocular", "bonsai",
    "brain", "brontosaurus", "buddha", "butterfly", "camera", "cannon", "car", "ceilingfan",
    "cellphone", "chair", "chandelier", "cougarbody", "cougarface", "crab", "crayfish",
    "crocodile", "crocodilehead", "cup", "dalmatian", "dollarbill", "dolphin", "dragonfly",
    "electricguitar", "elephant", "emu", "euphonium", "ewer", "faces", "ferry", "flamingo",
    "flamingohead", "garfield", "gerenuk", "gramophone", "grandpiano", "hawksbill", "headphone",
    "hedgehog", "helicopter", "ibis", "inlineskate", "joshuatree", "kangaroo", "ketch", "lamp",
    "laptop", "Leopards", "llama", "lobster", "lotus", "mandolin", "mayfly", "menorah",
    "metronome", "minaret", "Motorbikes", "nautilus", "octopus", "okapi", "pagoda", "panda",
    "pigeon", "pizza", "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone",
    "schooner", "scissors", "scorpion", "seahorse", "snoopy", "soccerball", "stapler",
    "starfish", "stegosaurus", "stopsign", "strawberry", "sunflower", "tick", "trilobite",
    "umbrella", "watch", "waterlilly", "wheelchair", "wildcat", "windsorchair", "wrench",
    "yinyang", "background"]
CLASS_NAMES = {"CIFAR": UCIFAR_CLASSES, "CALTECH": UCALTECH_CLASSES}
DATASET_DIRS = {"CIFAR": "U-CIFAR", "CALTECH": "U-CALTECH"}
# The --dataset vocabulary of every script: cifar | caltech, and both where a script can handle
# two (generate_synthetic_data.py, fetch_data.py). Inside, a data type is "CIFAR" or "CALTECH".
DATASET_CHOICES = {"cifar": ["CIFAR"], "caltech": ["CALTECH"], "both": ["CIFAR", "CALTECH"]}

# Readable forms for CLIP prompts ("image of a ceiling fan" reads better than "ceilingfan").
_PROMPT_NAMES = {
    "airplanes": "airplane", "binocular": "binoculars", "car": "car side view",
    "ceilingfan": "ceiling fan", "cougarbody": "cougar body", "cougarface": "cougar face",
    "crocodilehead": "crocodile head", "dollarbill": "dollar bill",
    "electricguitar": "electric guitar", "faces": "face", "flamingohead": "flamingo head",
    "grandpiano": "grand piano", "hawksbill": "hawksbill turtle", "inlineskate": "inline skate",
    "joshuatree": "joshua tree", "Leopards": "leopard", "Motorbikes": "motorbike",
    "soccerball": "soccer ball", "stopsign": "stop sign", "waterlilly": "water lily",
    "windsorchair": "windsor chair", "yinyang": "yin yang symbol",
    "background": "cluttered background"}

UHSR_FRAMES = 200   # frames per UHSR sample
UHSR_BINS = 50      # voxel bins the LRN takes per time step
CROP_SIZE = 224     # UHSR loader crop (250 -> 224, offset 13)


class SpikeDataError(InputError, ValueError):
    """A spike file is unreadable, truncated or not what the reader expects."""


def one_dataset(text):
    """argparse type of --dataset (and its older spelling --data_type): cifar | caltech, in any
    case, with or without the U- prefix -> the data type, "CIFAR" or "CALTECH"."""
    key = text.upper().removeprefix("U-")
    if key not in CLASS_NAMES:
        raise argparse.ArgumentTypeError(f"{text!r}: choose cifar or caltech")
    return key


def prompt_name(class_name):
    """Readable class name for a CLIP text prompt."""
    return _PROMPT_NAMES.get(class_name, class_name)


def class_index(data_type, name):
    """Map a class name (any case, with or without '_'/' ') to its UHSR label index."""
    key = re.sub(r"[\s_\-]", "", name).lower()
    for i, n in enumerate(CLASS_NAMES[data_type]):
        if n.lower() == key:
            return i
    raise KeyError(f"'{name}' is not a U-{data_type} class")


# ----------------------------------------------------------------------------------------------
# Vidar .dat: the one description of its layout and its size checks (read_dat here, and
# reconstruct.py's streaming reader, go through dat_frame_count and unpack_dat_frames)

DAT_WIDTHS = (400, 416)   # the Vidar sensor's 400 columns; a raw capture stores 16 more a row


def dat_frame_bytes(height, width):
    """Bytes of one height x width frame (8 pixels a byte)."""
    if (height * width) % 8:
        raise InputError(f"--height x --width = {height} x {width} = {height * width} pixels is not a "
                         f"multiple of 8 (a .dat frame is a whole number of bytes)")
    return height * width // 8


def dat_frame_count(path, height, width):
    """-> (whole height x width frames in the .dat file `path`, bytes left over after them).

    Refuses a missing path, a folder, an empty file, and, asked for one Vidar width (400 or
    416), a size that is a whole number of frames of the other one but not of this one."""
    frame_bytes = dat_frame_bytes(height, width)
    if not os.path.isfile(path):
        raise SpikeDataError(f"{path}: {'a folder, not a .dat file' if os.path.isdir(path) else 'no such file'}")
    size = os.path.getsize(path)
    if size == 0:
        raise SpikeDataError(f"{path}: empty file")
    frames, extra = divmod(size, frame_bytes)
    for other in DAT_WIDTHS:
        other_bytes = height * other // 8
        if extra and width in DAT_WIDTHS and other != width and size % other_bytes == 0:
            raise SpikeDataError(
                f"{path}: {size} bytes are not a whole number of {height}x{width} frames ({frame_bytes} "
                f"bytes each) but exactly {size // other_bytes} frames {other} wide: --width {other}?")
    return frames, extra


def unpack_dat_frames(packed, height, width):
    """Packed frames as stored, uint8 tensor [n, height*width/8] on any device -> spikes uint8
    [n, height, W] on the same device, scene upright.

    The layout: pixel p = row*width + col of the vertically flipped frame (the first stored row
    is the bottom of the scene) is bit p&7 of byte p>>3, least significant bit first. A frame
    416 wide carries 16 columns beyond the sensor's 400, which are dropped (W = 400)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1                      # [n, H*W/8, 8]
    spk = bits.view(-1, height, width).flip(1)
    return spk[:, :, :400] if width == 416 else spk


def read_dat(path, height=250, width=400):
    """Read a whole raw Vidar stream -> uint8 [T, height, W] in {0,1}, scene upright (W: 400
    for a raw 416-wide capture, else width)."""
    frames, extra = dat_frame_count(path, height, width)
    if extra:
        raise SpikeDataError(
            f"{path}: size {os.path.getsize(path)} bytes is not a whole number of {height}x{width} frames "
            f"({dat_frame_bytes(height, width)} bytes each): truncated, or the wrong --height/--width")
    raw = np.fromfile(path, dtype=np.uint8).reshape(frames, -1)
    return unpack_dat_frames(torch.from_numpy(raw), height, width).contiguous().numpy()


def write_dat(path, spk):
    """Write uint8/bool [T, H, W] spikes as a raw Vidar stream (inverse of read_dat)."""
    spk = check_spikes(spk, path)
    t, h, w = spk.shape
    if (h * w) % 8:
        raise SpikeDataError(f"{path}: H*W = {h * w} is not a multiple of 8, cannot pack frames")
    # the layout of unpack_dat_frames, run backwards
    packed = np.packbits(spk[:, ::-1].reshape(t, h * w), axis=1, bitorder="little")
    atomic_write(path, packed.tofile)


# ----------------------------------------------------------------------------------------------
# UHSR .npz

def check_spikes(spk, path, min_frames=1):
    """Validate a spike array and return it as contiguous uint8 [T, H, W] in {0,1}."""
    spk = np.asarray(spk)
    if spk.ndim != 3:
        raise SpikeDataError(f"{path}: spikes must be 3-D [T, H, W], got shape {spk.shape}")
    if spk.shape[0] < min_frames:
        raise SpikeDataError(f"{path}: {spk.shape[0]} frames, the model needs at least {min_frames}")
    if spk.dtype == np.bool_:
        return np.ascontiguousarray(spk, dtype=np.uint8)
    if spk.dtype.kind not in "uif":
        raise SpikeDataError(f"{path}: spikes have dtype {spk.dtype}, expected uint8/bool/float")
    if spk.dtype != np.uint8:
        # float32/int files from other tools: accept exactly-binary values only
        if not np.all((spk == 0) | (spk == 1)):
            raise SpikeDataError(f"{path}: spikes are not binary (values other than 0 and 1)")
        return np.ascontiguousarray(spk, dtype=np.uint8)
    if spk.max(initial=0) > 1:
        raise SpikeDataError(f"{path}: spikes are not binary (max value {spk.max()})")
    return np.ascontiguousarray(spk)


def _check_zip_start(path):
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise SpikeDataError(f"{path}: not an .npz archive (a bare .npy under an .npz name?)")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):   # else numpy takes it for a pickle
        raise SpikeDataError(f"{path}: not a valid .npz file (an .npz is a zip archive; this one "
                             f"{'is empty' if not magic else 'does not start like one'})")


def _open_npz(path):
    _check_zip_start(path)
    return np.load(path, allow_pickle=False)


def check_archives(files, keys=("spk", "label")):
    """Before the long work: every .npz is a whole zip archive holding `keys`. Cheap (each
    file's zip directory, at its end, ~0.1 ms); a truncated file has lost its directory.
    SpikeDataError naming the first bad file."""
    for path in files:
        try:
            _check_zip_start(path)
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (OSError, zipfile.BadZipFile) as e:
            raise SpikeDataError(f"{path}: unreadable or truncated .npz ({e.strerror if isinstance(e, OSError) else e})") from None
        missing = [key for key in keys if f"{key}.npy" not in names]
        if missing:
            raise SpikeDataError(f"{path}: missing key '{missing[0]}' (has {sorted(n[:-4] for n in names)})")


def load_npz(path, num_classes=None, with_gt=False, with_lens=False):
    """Read a UHSR-style sample -> (spk uint8 [T,H,W], label int, label_name str | None).

    With with_gt=True a fourth item is returned: the clean grey image uint8 [H, W] or None;
    with with_lens also a fifth: the lens blur std (px) of a simulated capture, or None (the
    file does not say: a real capture, or one simulated before the files stored it).
    """
    try:
        with _open_npz(path) as f:
            keys = set(f.files)
            for key in ("spk", "label"):
                if key not in keys:
                    raise SpikeDataError(f"{path}: missing key '{key}' (has {sorted(keys)})")
            spk = f["spk"]
            label_arr = f["label"]
            label_name = str(f["label_name"]) if "label_name" in keys else None
            gt = f["gt"] if with_gt and "gt" in keys else None
            lens_px = f["lens_px"] if with_lens and "lens_px" in keys else None
    except SpikeDataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as e:
        raise SpikeDataError(f"{path}: unreadable or truncated .npz ({type(e).__name__}: {e})") from e
    spk = check_spikes(spk, path)
    if label_arr.size != 1 or label_arr.dtype.kind not in "iu":
        raise SpikeDataError(f"{path}: 'label' must be one integer, got {label_arr.dtype} {label_arr.shape}")
    label = int(label_arr.reshape(()))
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise SpikeDataError(f"{path}: label {label} out of range [0, {num_classes})")
    if lens_px is not None:
        if lens_px.size != 1 or lens_px.dtype.kind != "f" or not 0 <= float(lens_px) < 100:
            raise SpikeDataError(f"{path}: 'lens_px' must be one blur std in px, in [0, 100), got "
                                 f"{lens_px.dtype} {lens_px.shape} {lens_px.ravel()[:2].tolist()}")
        lens_px = float(lens_px)
    if not with_gt:
        return (spk, label, label_name, lens_px) if with_lens else (spk, label, label_name)
    if gt is not None:
        gt = np.asarray(gt)
        if gt.ndim == 3 and gt.shape[-1] in (1, 3):      # HWC colour -> grey
            gt = gt.astype(np.float32).mean(-1)
        if gt.shape != spk.shape[1:]:
            raise SpikeDataError(f"{path}: gt shape {gt.shape} does not match frames {spk.shape[1:]}")
        if gt.dtype != np.uint8:
            gt = np.clip(np.round(gt.astype(np.float32) * (255.0 if gt.max() <= 1 else 1.0)), 0, 255)
            gt = gt.astype(np.uint8)
    return (spk, label, label_name, gt, lens_px) if with_lens else (spk, label, label_name, gt)


def center_crop(x, size, path="<array>"):
    """Crop the centre size x size of the last two axes (UHSR: 250 -> [13:237])."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise SpikeDataError(f"{path}: frames are {h}x{w}, smaller than the {size}x{size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def random_view(arrays, size, path="<array>"):
    """Training augmentation: a random size x size crop, then a random flip and 90-degree
    rotation, the same for every array [..., H, W] of `arrays` (spikes [T, H, W], gt [H, W],
    ...; None stays None). Flips and rotations also change the direction of motion in the
    stream. Draws from torch's RNG, which the DataLoader seeds per worker (numpy's global RNG
    would repeat across workers)."""
    h, w = arrays[0].shape[-2:]
    if h < size or w < size:
        raise SpikeDataError(f"{path}: frames are {h}x{w}, smaller than the {size}x{size} crop")
    top = int(torch.randint(h - size + 1, ()))
    left = int(torch.randint(w - size + 1, ()))
    flip, turns = bool(torch.randint(2, ())), int(torch.randint(4, ()))
    views = []
    for x in arrays:
        if x is not None:
            x = x[..., top:top + size, left:left + size]
            x = np.rot90(x[..., ::-1] if flip else x, turns, axes=(-2, -1))
            x = np.ascontiguousarray(x)
        views.append(x)
    return views


def voxelize(frames, bins=UHSR_BINS, dtype=None, dim=0):
    """What a bin is, for every caller: the frames along `dim` cut into `bins` equal runs of
    consecutive frames, each run summed (counts, not normalised). numpy arrays or torch tensors
    on any device: spikes [T, H, W] -> [bins, H, W] (dim 0), a batch [B, F, H, W] ->
    [B, bins, H, W] (dim 1). Bins of bins are bins: a voxel summed into fewer bins is the voxel
    of the same frames with fewer bins (a 50-bin teacher fed a 200-bin student's voxel). A
    temporal-encoding voxel of T steps is one voxel of 50*T bins, step t its bins [50t, 50t+50)
    (models.SpikingLRN._step_inputs). dtype: float32 by default; the Dataset asks for uint8 (4x
    less to copy to the GPU, where it becomes float)."""
    n = frames.shape[dim]
    if n < bins or n % bins:
        raise SpikeDataError(f"cannot bin {n} frames into {bins} equal bins")
    if torch.is_tensor(frames):
        runs = frames.unflatten(dim, (bins, n // bins))
        if frames.dtype == torch.uint8 and n // bins <= 255 and dtype in (None, torch.float32):
            # the counts fit a byte: summing bytes is exact and ~10x faster on a CPU than into float32
            return runs.sum(dim + 1, dtype=torch.uint8).float()
        return runs.sum(dim + 1, dtype=dtype or torch.float32)
    dtype = dtype or np.float32
    if n // bins > 255 and dtype == np.uint8:
        raise SpikeDataError(f"{n // bins} frames per bin overflow uint8 counts")
    return frames.reshape(frames.shape[:dim] + (bins, n // bins) + frames.shape[dim + 1:]).sum(dim + 1, dtype=dtype)


def pack_frames(spk):
    """uint8 [T, H, W] in {0,1} -> uint8 [ceil(T/8), H, W] packed along time: byte j of a pixel
    holds its frames 8j..8j+7, frame 8j+b at bit b (= np.packbits(spk, axis=0, bitorder="little"),
    without that call's slow strided walk)."""
    packed = np.zeros((-(-spk.shape[0] // 8), *spk.shape[1:]), np.uint8)
    for bit in range(8):
        frames = spk[bit::8]
        packed[:len(frames)] |= frames << bit
    return packed


_PAIR_MASKS = {1: 0x55, 2: 0x33, 4: 0x0F}   # bit groups of width 1, 2, 4 within a byte


def voxelize_packed(packed, bins, num_frames):
    """voxelize() of pack_frames() output as uint8, without unpacking when a bin fills whole bit
    groups of a byte (1, 2, 4 or 8 frames): neighbouring groups are added in place (SWAR
    popcount: 1+1 bits -> 2-bit counts, 2+2 -> 4-bit, 4+4 -> 8-bit), then each group is one bin.
    The training cache's fast path: on a 224x224 sample ~0.35 ms against ~60 ms to unpack then
    voxelize() (2-core CPU); tests hold the two equal."""
    k = num_frames // bins                   # frames per bin
    if 8 % k:                                # bins straddle bytes: unpack to frames, then bin
        return voxelize(voxelize_packed(packed, num_frames, num_frames), bins, np.uint8)
    counts, width = packed, 1
    while width < k:
        mask = _PAIR_MASKS[width]
        counts = (counts & mask) + ((counts >> width) & mask)
        width *= 2
    per_byte = 8 // k
    voxel = np.empty((len(packed), per_byte, *packed.shape[1:]), np.uint8)
    for g in range(per_byte):
        np.bitwise_and(counts >> (g * k), (1 << k) - 1, out=voxel[:, g])
    return voxel.reshape(-1, *packed.shape[1:])[:bins]


def _load_field(path, key):
    """One array of a sample file, or None when it has no `key`; never decompresses the spikes."""
    try:
        with _open_npz(path) as f:
            return np.asarray(f[key]) if key in f.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise SpikeDataError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from e


def load_gt(path):
    """Only the clean image of a sample file (uint8 [H, W]) or None."""
    return _load_field(path, "gt")


def load_label_name(path):
    """Only the label_name of a sample file (str) or None."""
    name = _load_field(path, "label_name")
    return None if name is None else str(name)


def center_window(spk, num_frames, path="<array>", start=None):
    """num_frames frames of a longer stream: from `start`, or around the middle by default."""
    t = spk.shape[0]
    if t < num_frames:
        raise SpikeDataError(f"{path}: {t} frames, the model needs {num_frames}")
    if start is None:
        start = (t - num_frames) // 2
    if not 0 <= start <= t - num_frames:
        raise SpikeDataError(f"{path}: --start {start} is outside [0, {t - num_frames}] "
                             f"({t} frames, window {num_frames})")
    return spk[start:start + num_frames]


def numeric_sort_key(filename):
    """'10.npz' after '9.npz': sort by the integer stem, non-numeric names last by name."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


# ----------------------------------------------------------------------------------------------
# Decoded training cache: a split's .npz files decompressed once into one memory-mapped file.
# Decompressing a UHSR .npz (zlib, 12.5 MB of spikes) costs ~30 ms of a core; reading the same
# sample from the cache costs a few bitwise operations. The cache keeps whole frames (every
# pixel of the centre num_frames frames), so any crop, any number of bins and the TFP/TFI
# targets can be taken from it. Layout, one file:
#   magic | record 0 | ... | record N-1 | footer (JSON) | trailer (magic, footer length, crc32)
#   record:  TFI intervals uint16 [H, W] | gt uint8 [H, W] (zeros if none) |
#            frames packed along time, pack_frames(): uint8 [ceil(num_frames / 8), H, W]
# The footer names every source file with its size and mtime (a Dataset whose files are not all
# in it unchanged finds it stale) and holds each record's label, lens blur (or null) and crc32
# (checked when the cache is opened). Packing along time lets voxelize_packed() bin without
# unpacking. The magic at both ends marks the file as ours: train.py --cache rebuilds only a
# file of ours (stale, damaged or of other settings), never another file that happens to be at
# that path.

CACHE_MAGIC = b"SPKCACHE"
CACHE_VERSION = 3     # 3: each record's lens_px
_CACHE_TRAILER = struct.Struct("<8sQI")     # magic, footer length, crc32 of the footer


class CacheError(SpikeDataError):
    """A decoded cache is missing, stale (its .npz files changed) or damaged."""


def default_cache_path(data_root, data_type, split):
    """Where train.py --cache keeps a split's cache: beside the split's folder."""
    return os.path.join(data_root, DATASET_DIRS[data_type], f"{split}.cache")


def _source_stamps(files, cache_path):
    """[path relative to the cache's folder, size, mtime_ns] of each source file."""
    base = os.path.dirname(os.path.abspath(cache_path))
    stamps = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError as e:
            raise SpikeDataError(f"{path}: cannot read ({e.strerror})") from e
        stamps.append([os.path.relpath(os.path.abspath(path), base), st.st_size, st.st_mtime_ns])
    return stamps


def _encode_sample(path, num_frames, num_classes):
    """One .npz -> (cache record bytes, label, has gt, lens_px or None, frame shape); runs in a
    worker process."""
    spk, label, _, gt, lens_px = load_npz(path, num_classes=num_classes, with_gt=True, with_lens=True)
    spk = center_window(spk, num_frames, path)
    gt_plane = np.zeros(spk.shape[1:], np.uint8) if gt is None else gt
    record = b"".join([tfi_interval(spk).astype("<u2").tobytes(), gt_plane.tobytes(),
                       pack_frames(spk).tobytes()])
    return record, label, gt is not None, lens_px, spk.shape[1:]


def build_cache(cache_path, files, num_frames, num_classes, processes=None):
    """Decode `files` into the cache file `cache_path` (written atomically), `processes` at once
    (default: all cores)."""
    if not 3 <= num_frames < 2 ** 16:
        raise CacheError(f"{cache_path}: a cache holds 3 to 65535 frames per sample, not {num_frames}")
    stamps = _source_stamps(files, cache_path)   # taken first: a file changed meanwhile -> stale
    processes = min(processes or os.cpu_count() or 1, len(files))
    encode = functools.partial(_encode_sample, num_frames=num_frames, num_classes=num_classes)

    def write(f):
        f.write(CACHE_MAGIC)
        labels, has_gt, lenses, crcs, shape = [], [], [], [], None
        pool = multiprocessing.Pool(processes) if processes > 1 else None
        try:
            records = pool.imap(encode, files) if pool else map(encode, files)
            for path, (record, label, gt_present, lens_px, frame_shape) in zip(files, records):
                shape = shape or frame_shape
                if frame_shape != shape:
                    raise CacheError(f"{path}: frames are {frame_shape[0]}x{frame_shape[1]}, the files "
                                     f"before it {shape[0]}x{shape[1]}; a cache needs one frame size")
                f.write(record)
                labels.append(label)
                has_gt.append(gt_present)
                lenses.append(lens_px)
                crcs.append(zlib.crc32(record))
        finally:
            if pool:
                pool.terminate()
        footer = json.dumps({
            "version": CACHE_VERSION, "num_frames": num_frames, "num_classes": num_classes,
            "height": shape[0], "width": shape[1], "record_bytes": len(record),
            "sources": stamps, "labels": labels, "has_gt": has_gt, "lens_px": lenses, "crc32": crcs}).encode()
        f.write(footer)
        f.write(_CACHE_TRAILER.pack(CACHE_MAGIC, len(footer), zlib.crc32(footer)))

    try:
        atomic_write(cache_path, write)
    except OSError as e:
        raise CacheError(f"{cache_path}: cannot write the cache ({e.strerror or e})") from e


def _read_cache_footer(path):
    """The footer of a cache file, after checking its trailer, checksum and the file's size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size < _CACHE_TRAILER.size:
                raise CacheError(f"{path}: damaged cache ({size} bytes)")
            f.seek(size - _CACHE_TRAILER.size)
            magic, footer_len, footer_crc = _CACHE_TRAILER.unpack(f.read(_CACHE_TRAILER.size))
            if magic != CACHE_MAGIC or footer_len > size - _CACHE_TRAILER.size:
                raise CacheError(f"{path}: not a spike cache, or a damaged one (no valid end marker)")
            f.seek(size - _CACHE_TRAILER.size - footer_len)
            footer = f.read(footer_len)
    except FileNotFoundError:
        raise CacheError(f"{path}: no cache yet") from None
    except OSError as e:
        raise CacheError(f"{path}: unreadable cache ({e.strerror or e})") from e
    if zlib.crc32(footer) != footer_crc:
        raise CacheError(f"{path}: damaged cache (its index fails its checksum)")
    meta = json.loads(footer)
    if meta.get("version") != CACHE_VERSION:
        raise CacheError(f"{path}: cache format {meta.get('version')}, this code reads {CACHE_VERSION}")
    if len(CACHE_MAGIC) + meta["record_bytes"] * len(meta["sources"]) != size - _CACHE_TRAILER.size - footer_len:
        raise CacheError(f"{path}: damaged cache (size does not match its {len(meta['sources'])} records)")
    return meta


def is_spike_cache(path):
    """Whether the file at `path` is a cache of ours (damaged or not): the magic at its start or
    in its trailer (a format-1 cache has only the trailer)."""
    try:
        with open(path, "rb") as f:
            if f.read(len(CACHE_MAGIC)) == CACHE_MAGIC:
                return True
            size = os.fstat(f.fileno()).st_size
            if size < _CACHE_TRAILER.size:
                return False
            f.seek(size - _CACHE_TRAILER.size)
            return f.read(len(CACHE_MAGIC)) == CACHE_MAGIC
    except OSError:
        return False


_VERIFIED = {}    # (path, inode, size, mtime) -> records whose crc32 this process has checked


def _stale_reason(cached, current):
    """Why a cache cannot serve some files, or None. cached: relative path -> (record, stamp);
    current: the files' stamps now."""
    missing = [stamp[0] for stamp in current if stamp[0] not in cached]
    if missing:
        return f"stale: {len(missing)} of {len(current)} files are not in it (first: {missing[0]})"
    changed = [stamp[0] for stamp in current if cached[stamp[0]][1] != stamp]
    if changed:
        return f"stale: {len(changed)} of {len(current)} files changed since it was built (first: {changed[0]})"
    return None


class SpikeCache:
    """Read side of a cache file for `files`, which it must hold unchanged (it may hold more: a
    Dataset of part of a split reads the split's cache). Opening raises CacheError when the cache
    is damaged (a record of `files` fails its crc32), stale or built for other settings: found
    at the start, not mid-epoch."""

    def __init__(self, path, files, num_frames, num_classes):
        meta = _read_cache_footer(path)
        for key, want in (("num_frames", num_frames), ("num_classes", num_classes)):
            if meta[key] != want:
                raise CacheError(f"{path}: built for {key} {meta[key]}, the dataset needs {want}")
        cached = {stamp[0]: (record, stamp) for record, stamp in enumerate(meta["sources"])}
        current = _source_stamps(files, path)
        reason = _stale_reason(cached, current)
        if reason:
            raise CacheError(f"{path}: {reason}")
        self.record_of = [cached[stamp[0]][0] for stamp in current]   # files[i] -> its record
        self.path, self.files, self.num_frames = path, list(files), num_frames
        self.height, self.width, self.record_bytes = meta["height"], meta["width"], meta["record_bytes"]
        self.labels, self.has_gt, self.lens_px = meta["labels"], meta["has_gt"], meta["lens_px"]
        self._records = None    # uint8 [N, record_bytes], memory-mapped on first read in each process
        self._verify(meta["crc32"])

    def _verify(self, crcs):
        """Check the crc32 of every record of `files` (~1 s per GB; once per process and file)."""
        st = os.stat(self.path)
        done = _VERIFIED.setdefault((os.path.abspath(self.path), st.st_ino, st.st_size, st.st_mtime_ns), set())
        records = self._map()
        for i, r in enumerate(self.record_of):
            if r not in done:
                if zlib.crc32(records[r]) != crcs[r]:
                    raise CacheError(f"{self.path}: record {r} ({self.files[i]}) fails its checksum: the "
                                     f"cache is damaged")
                done.add(r)

    def _map(self):
        if self._records is None:
            records = np.memmap(self.path, np.uint8, "r", offset=len(CACHE_MAGIC),
                                shape=(len(self.labels), self.record_bytes))
            self._records = records.view(np.ndarray)   # plain arrays from here on: no memmap overhead
        return self._records

    def __getstate__(self):
        # DataLoader workers map the file themselves (a pickled np.memmap is a full copy)
        return {**self.__dict__, "_records": None}

    def read(self, i):
        """Sample i, whole frames -> (packed frames uint8 [ceil(num_frames / 8), H, W] as
        pack_frames() makes them, TFI intervals uint16 [H, W], label, gt uint8 [H, W] or None,
        lens_px or None)."""
        r = self.record_of[i]
        record = self._map()[r]
        h, w = self.height, self.width
        interval = record[:2 * h * w].view("<u2").reshape(h, w)
        gt = record[2 * h * w:3 * h * w].reshape(h, w) if self.has_gt[r] else None
        packed = record[3 * h * w:].reshape(-1, h, w)
        return packed, interval, self.labels[r], gt, self.lens_px[r]


class UHSRDataset(Dataset):
    """`<data_root>/U-{CIFAR,CALTECH}/{train,test}/<index>.npz` as model-ready samples.

    Each item is a dict:
      voxel   uint8 [bins, S, S]    spike counts per bin (S = crop size); .float() on the device
      label   int64 scalar          UHSR label index
      class_name str
      gt      float32 [1, S, S]     clean image in [0,1] (zeros when the file has none)
      has_gt  bool
      tfp, tfi float32 [1, S, S]    baselines / pseudo-targets (only with with_baselines=True)
      index   int                   the file's numeric index
      lens_px float32 scalar        the capture's lens blur std in px (simulated files that store
                                    it); NaN when unknown
    `bins` is 50 for direct encoding; temporal encoding with T steps asks for 50*T bins.
    `rate`: the camera's firing rate of a white pixel, when known (simulated data): TFP/TFI are
    then intensity estimates count / frames / rate; without it (real captures) they are
    normalised to their 99.5th percentile (utils.tfp).
    With `cache_path`, samples are read from that decoded cache of the files (SpikeCache: the
    same items for >10x less CPU), which is built first when missing, stale or damaged; a file
    at that path which is not a cache of ours is refused (CacheError), never replaced.
    """

    def __init__(self, data_root, data_type, split, bins=UHSR_BINS, num_frames=UHSR_FRAMES,
                 crop_size=CROP_SIZE, with_baselines=False, files=None, augment=False, cache_path=None,
                 rate=None):
        if data_type not in CLASS_NAMES:
            raise ValueError(f"data_type must be one of {sorted(CLASS_NAMES)}, got {data_type!r}")
        self.data_type = data_type
        self.class_names = CLASS_NAMES[data_type]
        self.root = os.path.join(data_root, DATASET_DIRS[data_type], split)
        if num_frames % bins:
            raise ValueError(f"{num_frames} frames do not bin into {bins} equal bins")
        if num_frames >= 2 ** 16:   # TFP counts are uint16
            raise ValueError(f"num_frames {num_frames}: at most 65535 frames per sample")
        self.bins, self.num_frames, self.crop_size = bins, num_frames, crop_size
        self.with_baselines, self.augment, self.rate = with_baselines, augment, rate
        if files is None:
            if not os.path.isdir(self.root):
                raise SpikeDataError(
                    f"{self.root}: no such folder. Generate data with generate_synthetic_data.py "
                    f"or organise UHSR archives with fetch_data.py")
            files = [f for f in os.listdir(self.root) if f.endswith(".npz")]
            files = [os.path.join(self.root, f) for f in sorted(files, key=numeric_sort_key)]
        if not files:
            raise SpikeDataError(f"{self.root}: no .npz files")
        self.files = list(files)
        check_archives(self.files)     # a truncated file is found now, not at the end of an epoch
        self.cache = self._open_cache(cache_path) if cache_path else None

    def _open_cache(self, path):
        """The cache at `path`; built when missing, rebuilt when it is ours but cannot serve."""
        settings = (self.files, self.num_frames, len(self.class_names))
        try:
            return SpikeCache(path, *settings)
        except CacheError as e:
            if os.path.lexists(path) and not is_spike_cache(path):
                raise CacheError(f"{path}: exists and is not a spike cache; it is left as it is (choose "
                                 f"another --cache FILE, or move it aside)") from None
            print(f"{e}: building it from {len(self.files)} files", flush=True)
        t0 = time.perf_counter()
        build_cache(path, *settings)
        print(f"{path}: built in {time.perf_counter() - t0:.0f} s, {os.path.getsize(path) / 1e9:.2f} GB",
              flush=True)
        return SpikeCache(path, *settings)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        index = numeric_sort_key(path)[1]
        if self.cache is None:
            spk, label, _, gt, lens_px = load_npz(path, len(self.class_names), with_gt=True, with_lens=True)
            spk, gt = self.view([center_window(spk, self.num_frames, path), gt], path)
            return make_item(spk, gt, label, self.class_names, self.bins, self.with_baselines, index, self.rate,
                             lens_px)
        packed, intervals, label, gt, lens_px = self.cache.read(i)
        packed, gt, intervals = self.view([packed, gt, intervals], path)
        voxel = voxelize_packed(packed, self.bins, self.num_frames)
        return item_from_voxel(voxel, self.num_frames, gt, label, self.class_names, index,
                               intervals if self.with_baselines else None, self.rate, lens_px)

    def view(self, arrays, path):
        """The crop of arrays [..., H, W] (None stays None) the model sees: the centre, or with
        augment a random view."""
        if self.augment:
            return random_view(arrays, self.crop_size, path)
        return [None if x is None else center_crop(x, self.crop_size, path) for x in arrays]


def make_item(spk, gt, label, class_names, bins, with_baselines, index, rate=None, lens_px=None):
    """One training/evaluation sample from spikes [T, S, S] and gt uint8 [S, S] (or None);
    the dict UHSRDataset documents."""
    return item_from_voxel(voxelize(spk, bins, np.uint8), len(spk), gt, label, class_names, index,
                           tfi_interval(spk) if with_baselines else None, rate, lens_px)


def item_from_voxel(voxel, num_frames, gt, label, class_names, index, tfi_intervals=None, rate=None,
                    lens_px=None):
    """make_item() from the voxel uint8 [bins, S, S] of num_frames frames; with the per-pixel
    TFI intervals [S, S] (utils.tfi_interval) also the TFP/TFI targets, both over all frames
    (divided by `rate` when it is given, else normalised). lens_px: the capture's lens blur std
    (px), None when unknown (stored as NaN, which a --lens_input network reads as its reference
    lens)."""
    s = voxel.shape[-1]
    item = {
        "voxel": torch.from_numpy(voxel),
        "label": torch.tensor(label, dtype=torch.int64),
        "class_name": class_names[label],
        "has_gt": gt is not None,
        "index": index,
        "gt": (torch.zeros(1, s, s) if gt is None
               else torch.from_numpy(gt.astype(np.float32) / 255.0)[None]),
        "lens_px": torch.tensor(float("nan") if lens_px is None else lens_px, dtype=torch.float32),
    }
    if tfi_intervals is not None:
        item["tfp"] = torch.from_numpy(tfp_from_counts(voxel.sum(0, dtype=np.uint16), num_frames, rate))[None]
        item["tfi"] = torch.from_numpy(tfi_from_interval(tfi_intervals, rate))[None]
    return item
