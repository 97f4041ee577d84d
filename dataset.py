"""Spike data I/O: UHSR `.npz`, raw Vidar `.dat`, voxelisation and the UHSR Dataset.

Conventions (SPEC §2):
- spikes are uint8 in {0,1}, shape [T, H, W] (frames, rows, columns);
- a Vidar `.dat` frame is H*W/8 bytes, pixel p = row*W + col of the vertically flipped frame,
  stored in byte p>>3 at bit p&7, least significant bit first;
- the UHSR loader crops the centre 224x224 of the 250x250 frames ([:, 13:237, 13:237]) and bins
  200 frames into 50 bins of 4 frames each (counts 0..4, not normalised).
"""
import os
import re
import zipfile
import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

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


class SpikeDataError(ValueError):
    """A spike file is unreadable, truncated or not what the reader expects."""


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
# Vidar .dat

def read_dat(path, height=250, width=400):
    """Read a raw Vidar stream -> uint8 [T, height, width] in {0,1}, scene upright.

    A raw capture 416 columns wide carries 16 extra columns; pass width=416 and they are
    dropped (the result is 400 wide).
    """
    if (height * width) % 8:
        raise SpikeDataError(f"{path}: height*width = {height * width} is not a multiple of 8")
    frame_bytes = height * width // 8
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise SpikeDataError(f"{path}: empty file")
    if raw.size % frame_bytes:
        raise SpikeDataError(
            f"{path}: size {raw.size} bytes is not a whole number of {height}x{width} frames "
            f"({frame_bytes} bytes each): truncated, or the wrong --height/--width")
    frames = raw.reshape(-1, frame_bytes)
    bits = np.unpackbits(frames, axis=1, bitorder="little")
    spk = bits.reshape(-1, height, width)[:, ::-1]      # first stored row is the scene bottom
    if width == 416:
        spk = spk[:, :, :400]
    return np.ascontiguousarray(spk)


def write_dat(path, spk):
    """Write uint8/bool [T, H, W] spikes as a raw Vidar stream (inverse of read_dat)."""
    spk = check_spikes(spk, path)
    t, h, w = spk.shape
    if (h * w) % 8:
        raise SpikeDataError(f"{path}: H*W = {h * w} is not a multiple of 8, cannot pack frames")
    packed = np.packbits(spk[:, ::-1].reshape(t, h * w), axis=1, bitorder="little")
    tmp = f"{path}.tmp"
    packed.tofile(tmp)
    os.replace(tmp, path)


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


def _open_npz(path):
    f = np.load(path, allow_pickle=False)
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise SpikeDataError(f"{path}: not an .npz archive (a bare .npy under an .npz name?)")
    return f


def load_npz(path, num_classes=None, with_gt=False):
    """Read a UHSR-style sample -> (spk uint8 [T,H,W], label int, label_name str | None).

    With with_gt=True a fourth item is returned: the clean grey image uint8 [H, W] or None.
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
    if not with_gt:
        return spk, label, label_name
    if gt is not None:
        gt = np.asarray(gt)
        if gt.ndim == 3 and gt.shape[-1] in (1, 3):      # HWC colour -> grey
            gt = gt.astype(np.float32).mean(-1)
        if gt.shape != spk.shape[1:]:
            raise SpikeDataError(f"{path}: gt shape {gt.shape} does not match frames {spk.shape[1:]}")
        if gt.dtype != np.uint8:
            gt = np.clip(np.round(gt.astype(np.float32) * (255.0 if gt.max() <= 1 else 1.0)), 0, 255)
            gt = gt.astype(np.uint8)
    return spk, label, label_name, gt


def center_crop(x, size, path="<array>"):
    """Crop the centre size x size of the last two axes (UHSR: 250 -> [13:237])."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise SpikeDataError(f"{path}: frames are {h}x{w}, smaller than the {size}x{size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def random_view(spk, gt, size, path="<array>"):
    """Training augmentation: a random size x size crop, then a random flip and 90-degree
    rotation, the same for the spikes [T, H, W] and gt [H, W] (or None). Flips and rotations
    also change the direction of motion in the stream. Draws from torch's RNG, which the
    DataLoader seeds per worker (numpy's global RNG would repeat across workers)."""
    h, w = spk.shape[-2:]
    if h < size or w < size:
        raise SpikeDataError(f"{path}: frames are {h}x{w}, smaller than the {size}x{size} crop")
    top = int(torch.randint(h - size + 1, ()))
    left = int(torch.randint(w - size + 1, ()))
    flip, turns = bool(torch.randint(2, ())), int(torch.randint(4, ()))
    views = []
    for x in (spk, gt):
        if x is not None:
            x = x[..., top:top + size, left:left + size]
            x = np.rot90(x[..., ::-1] if flip else x, turns, axes=(-2, -1))
            x = np.ascontiguousarray(x)
        views.append(x)
    return views


def voxelize(spk, bins=UHSR_BINS, dtype=np.float32):
    """Sum consecutive frames: [T, H, W] -> [bins, H, W] counts (T must divide into bins).

    The Dataset asks for uint8 (4x less to copy to the GPU, where it becomes float)."""
    t = spk.shape[0]
    if t < bins or t % bins:
        raise SpikeDataError(f"cannot bin {t} frames into {bins} equal bins")
    if t // bins > 255 and dtype == np.uint8:
        raise SpikeDataError(f"{t // bins} frames per bin overflow uint8 counts")
    return spk.reshape(bins, t // bins, *spk.shape[1:]).sum(1, dtype=dtype)


def load_gt(path):
    """Only the clean image of a sample file (uint8 [H, W]) or None; skips the spikes."""
    try:
        with _open_npz(path) as f:
            return np.asarray(f["gt"]) if "gt" in f.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise SpikeDataError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from e


def load_label_name(path):
    """Only the label_name of a sample file (str) or None; skips the spikes."""
    try:
        with _open_npz(path) as f:
            return str(f["label_name"]) if "label_name" in f.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise SpikeDataError(f"{path}: unreadable .npz ({type(e).__name__}: {e})") from e


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
    `bins` is 50 for direct encoding; temporal encoding with T steps asks for 50*T bins.
    """

    def __init__(self, data_root, data_type, split, bins=UHSR_BINS, num_frames=UHSR_FRAMES,
                 crop_size=CROP_SIZE, with_baselines=False, files=None, augment=False):
        if data_type not in CLASS_NAMES:
            raise ValueError(f"data_type must be one of {sorted(CLASS_NAMES)}, got {data_type!r}")
        self.data_type = data_type
        self.class_names = CLASS_NAMES[data_type]
        self.root = os.path.join(data_root, DATASET_DIRS[data_type], split)
        if num_frames % bins:
            raise ValueError(f"{num_frames} frames do not bin into {bins} equal bins")
        self.bins, self.num_frames, self.crop_size = bins, num_frames, crop_size
        self.with_baselines, self.augment = with_baselines, augment
        if files is None:
            if not os.path.isdir(self.root):
                raise FileNotFoundError(
                    f"{self.root}: no such folder. Generate data with generate_synthetic_data.py "
                    f"or organise UHSR archives with fetch_data.py")
            files = [f for f in os.listdir(self.root) if f.endswith(".npz")]
            files = [os.path.join(self.root, f) for f in sorted(files, key=numeric_sort_key)]
        if not files:
            raise FileNotFoundError(f"{self.root}: no .npz files")
        self.files = list(files)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        spk, label, _, gt = load_npz(path, num_classes=len(self.class_names), with_gt=True)
        spk = center_window(spk, self.num_frames, path)
        if self.augment:
            spk, gt = random_view(spk, gt, self.crop_size, path)
        else:
            spk = center_crop(spk, self.crop_size, path)
            gt = None if gt is None else center_crop(gt, self.crop_size, path)
        return make_item(spk, gt, label, self.class_names, self.bins, self.with_baselines,
                         numeric_sort_key(path)[1])


def make_item(spk, gt, label, class_names, bins, with_baselines, index):
    """One training/evaluation sample from spikes [T, S, S] and gt uint8 [S, S] (or None);
    the dict UHSRDataset documents."""
    from utils import tfi, tfp  # baselines live with the other image utilities
    s = spk.shape[-1]
    item = {
        "voxel": torch.from_numpy(voxelize(spk, bins, np.uint8)),
        "label": torch.tensor(label, dtype=torch.int64),
        "class_name": class_names[label],
        "has_gt": gt is not None,
        "index": index,
        "gt": (torch.zeros(1, s, s) if gt is None
               else torch.from_numpy(gt.astype(np.float32) / 255.0)[None]),
    }
    if with_baselines:
        item["tfp"] = torch.from_numpy(tfp(spk))[None]
        item["tfi"] = torch.from_numpy(tfi(spk))[None]
    return item
