"""Reconstruct images and video from a spike stream with a trained network.

    python reconstruct.py --checkpoint weights/normal.pth --input capture.dat --output capture.mp4
    python reconstruct.py --checkpoint CKPT --input data/U-CIFAR/test/5.npz --output 5.png --side_by_side
    python reconstruct.py --checkpoint CKPT --input recording/ --output frames/ --start 40000 --end 80000

Every output frame is the network's image of one window of UHSR_FRAMES (200) spike frames, the
window it was trained on; from one output frame to the next the window moves --stride frames.
- A temporal-encoding SNN runs *stateful*: each new slice of 200/T frames is one time step, the
  membranes carry on from the step before, and an output frame is the mean readout of the last
  T steps (from zero membranes that is exactly forward() on its window). --reset_every restarts
  the membranes.
- Stateless models (direct-encoding SNN, the plain CNN of --arch ann), and a temporal SNN with
  --sliding, run every window on its own from zero, --batch windows per device call.
The stream is read a window (or a chunk of steps) at a time and unpacked on the device, so
memory does not grow with its length. Images keep the full frame (250x400 for a Vidar .dat);
--crop takes the centre.

Input: a Vidar .dat (--height/--width), a folder of .dat files (one recording in parts, in
numeric order), or a UHSR .npz. The suffix of --output picks the format: .mp4 (H.264), .png
(one image: the window in the middle of [--start, --end)), .npy (float32 [N, H, W] in [0, 1]),
no suffix or an existing folder: a PNG per output frame.

Exit status 2: unusable input (checkpoint, stream, options). A stream that ends in a partial
frame is reconstructed up to it and then reported, also with status 2.
"""
import argparse
import collections
import contextlib
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dataset import (UHSR_FRAMES, SpikeDataError, center_crop, load_npz, numeric_sort_key,
                     voxelize_on_device)
from models import (PRECISIONS, SpikingLRN, default_precision, load_checkpoint, model_from_checkpoint, model_name,
                    prepare_for_inference, to_image)
from utils import (InputError, atomic_write, non_negative_int, pick_device, positive_float, positive_int,
                   report_input_error, tfi, tfp)

WINDOW = UHSR_FRAMES    # spike frames behind one output frame: the networks' training window
VIDEO_QUALITY = 7       # imageio-ffmpeg's 0-10 scale; 7 is libx264 -crf 15, near lossless


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    p.add_argument("--input", required=True, help="a Vidar .dat, a folder of .dat files, or a UHSR .npz")
    p.add_argument("--output", required=True, help="OUT.mp4 | OUT.png | OUT.npy | a folder (PNG sequence)")
    g = p.add_argument_group("stream")
    g.add_argument("--height", type=positive_int, default=250, help=".dat frame height")
    g.add_argument("--width", type=positive_int, default=400, help=".dat frame width (416: the 16 extra "
                                                                   "columns of a raw capture are dropped)")
    g.add_argument("--start", type=non_negative_int, default=0, help="first spike frame used")
    g.add_argument("--end", type=positive_int, help="spike frame where the input ends (default: the stream's end)")
    g.add_argument("--crop", type=positive_int, help="reconstruct only the centre CROP x CROP pixels")
    g.add_argument("--camera_hz", type=positive_float, default=40000.0,
                   help="the camera's frame rate, for the 'x real time' figure")
    g = p.add_argument_group("time")
    g.add_argument("--stride", type=positive_int, default=50,
                   help="spike frames between output frames (50: 800 output frames per second of a "
                        "40 kHz recording); a stateful SNN needs a multiple of its 200/T frames a step")
    g.add_argument("--fps", type=positive_float, default=30.0, help="frame rate of the written .mp4")
    g.add_argument("--reset_every", type=positive_int,
                   help="stateful SNN: restart the membranes every N output frames (default: never)")
    g.add_argument("--sliding", action="store_true",
                   help="run a temporal-encoding SNN on independent windows (each from zero membranes) "
                        "instead of carrying its state; stateless models always do")
    g = p.add_argument_group("output and device")
    g.add_argument("--side_by_side", action="store_true",
                   help="each image gets TFP and TFI of the same window as columns on its left "
                        "(and an .npz sample's ground truth on its right)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--dtype", choices=PRECISIONS,
                   help="fp32: the exact network; bf16: BatchNorm folded into bf16 convolutions, ~2.8x faster on "
                        "a CPU with AVX512-BF16 (default where the device computes bf16 natively)")
    g.add_argument("--batch", type=positive_int,
                   help="windows (stateful: time steps) per device call (default: 16 on CUDA, 1 on the CPU)")
    args = p.parse_args(argv)
    if args.end is not None and args.end <= args.start:
        p.error(f"--end {args.end} must be after --start {args.start}")
    return args


# ----------------------------------------------------------------------------------------------
# Streams: whole frames on demand, unpacked on the device

def unpack_dat_frames(packed, height, width):
    """Packed Vidar frames uint8 [n, H*W/8] -> spikes uint8 [n, H, W'] on packed's device.

    The layout of dataset.read_dat: pixel p = row*W + col of the vertically flipped frame, in
    byte p>>3 at bit p&7, least significant bit first; width 416 drops the 16 extra columns."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1                      # [n, H*W/8, 8]
    spk = bits.view(-1, height, width).flip(1)                       # first stored row = bottom
    return spk[:, :, :400] if width == 416 else spk


class Stream:
    """Spike frames on demand: read(start, stop, device) -> uint8 [n, H, W], the centre
    crop x crop pixels once `crop` is set."""
    crop = None

    @property
    def frame_shape(self):
        return (self.crop, self.crop) if self.crop else self.full_shape

    def cropped(self, x):
        return center_crop(x, self.crop, self.name) if self.crop else x


class DatStream(Stream):
    """One Vidar recording in one or more .dat files, read with plain buffered reads: a read
    touches only the frames asked for, so memory does not grow with the recording.

    A file that ends in a partial frame contributes its whole frames; `problems` says so."""

    def __init__(self, paths, height, width):
        if (height * width) % 8:
            raise InputError(f"--height x --width = {height * width} is not a multiple of 8 "
                             f"(a .dat frame is a whole number of bytes)")
        self.height, self.width = height, width
        self.full_shape = (height, 400 if width == 416 else width)
        self.frame_bytes = height * width // 8
        self.parts, self.problems, self.num_frames = [], [], 0     # parts: (path, first, count)
        for path in paths:
            size = os.path.getsize(path)
            count, extra = divmod(size, self.frame_bytes)
            if size == 0:
                raise SpikeDataError(f"{path}: empty file")
            if extra:
                self.problems.append(
                    f"{path}: ends in a partial frame ({extra} of {self.frame_bytes} bytes) after "
                    f"{count} whole {height}x{width} frames: truncated, or the wrong --height/--width; "
                    f"the whole frames were reconstructed")
            self.parts.append((path, self.num_frames, count))
            self.num_frames += count
        self.name = paths[0] if len(paths) == 1 else f"{os.path.dirname(paths[0])}/ ({len(paths)} files)"

    def read(self, start, stop, device):
        """Spike frames [start, stop) -> uint8 [stop - start, H, W] on `device`."""
        chunks = []
        for path, first, count in self.parts:
            lo, hi = max(start, first), min(stop, first + count)
            if lo >= hi:
                continue
            chunk = np.empty((hi - lo, self.frame_bytes), dtype=np.uint8)
            with open(path, "rb") as f:
                f.seek((lo - first) * self.frame_bytes)
                got = f.readinto(chunk)
            if got != chunk.nbytes:
                raise SpikeDataError(f"{path}: file shrank while being read")
            chunks.append(chunk)
        packed = torch.from_numpy(np.concatenate(chunks) if len(chunks) > 1 else chunks[0])
        return self.cropped(unpack_dat_frames(packed.to(device), self.height, self.width))


class NpzStream(Stream):
    """A UHSR .npz sample (200 frames, small enough to hold), with its ground truth if any."""

    def __init__(self, path):
        self.spk, _, _, self.gt = load_npz(path, with_gt=True)
        self.name, self.problems = path, []
        self.num_frames, self.full_shape = self.spk.shape[0], self.spk.shape[1:]

    def read(self, start, stop, device):
        return self.cropped(torch.from_numpy(self.spk[start:stop]).to(device))


def open_stream(path, height, width, crop=None):
    if os.path.isdir(path):
        files = sorted((f for f in os.listdir(path) if f.lower().endswith(".dat")), key=numeric_sort_key)
        if not files:
            raise InputError(f"{path}: --input folder holds no .dat files")
        stream = DatStream([os.path.join(path, f) for f in files], height, width)
    elif not os.path.isfile(path):
        raise InputError(f"{path}: --input not found")
    elif path.lower().endswith(".dat"):
        stream = DatStream([path], height, width)
    elif path.lower().endswith(".npz"):
        stream = NpzStream(path)
    else:
        raise InputError(f"{path}: --input must be a .dat file, a folder of .dat files or a .npz file")
    h, w = stream.full_shape
    if crop and (crop > h or crop > w):
        raise InputError(f"--crop {crop} is larger than the {h}x{w} frames of {path}")
    stream.crop = crop
    return stream


def read_windows(stream, starts, device):
    """uint8 spikes [B, WINDOW, H, W] of the windows that begin at `starts` (ascending). Windows
    that overlap or touch come from one read, so each frame is unpacked once."""
    if starts[-1] - starts[0] <= len(starts) * WINDOW:
        frames = stream.read(starts[0], starts[-1] + WINDOW, device)
        return torch.stack([frames[s - starts[0]:s - starts[0] + WINDOW] for s in starts])
    return torch.stack([stream.read(s, s + WINDOW, device) for s in starts])


# ----------------------------------------------------------------------------------------------
# The two ways of running a network over a stream. Both yield images [H, W] in [0, 1], the
# window of output frame j starting at spike frame first + j * stride.

def sliding_frames(model, stream, first, num_out, stride, batch, device):
    """Every window on its own, `batch` windows per call."""
    starts = [first + j * stride for j in range(num_out)]
    for i in range(0, num_out, batch):
        voxel = voxelize_on_device(read_windows(stream, starts[i:i + batch], device), model.input_channels)
        with torch.inference_mode():
            images = to_image(model(voxel).float())
        yield from images[:, 0]


def stateful_frames(model, stream, first, num_out, stride, reset_every, batch, device):
    """A temporal-encoding SNN over consecutive slices of WINDOW / T frames, one time step each,
    membranes carried; `batch` steps per call. Output frame j is the mean readout of the T steps
    of its window (the image forward() computes, there from zero membranes)."""
    steps_per_window = model.time_steps
    step_frames = WINDOW // steps_per_window
    steps_per_out = stride // step_frames
    num_steps = (num_out - 1) * steps_per_out + steps_per_window
    reset_period = reset_every * steps_per_out if reset_every else num_steps
    h, w = stream.frame_shape
    recent = collections.deque(maxlen=steps_per_window)        # readouts of the last T steps
    s = 0
    while s < num_steps:
        if s % reset_period == 0:
            state = model.init_state(1, h, w, device=device)
        k = min(batch, num_steps - s, reset_period - s % reset_period)   # a restart opens a chunk
        frames = stream.read(first + s * step_frames, first + (s + k) * step_frames, device)
        voxel = voxelize_on_device(frames.reshape(k, step_frames, h, w), model.in_bins)
        with torch.inference_mode():
            readouts, state = model.steps(voxel[:, None], state)     # [k, 1, 1, H, W]
        for t in range(s, s + k):
            recent.append(readouts[t - s, 0, 0].float())
            if t + 1 >= steps_per_window and (t + 1 - steps_per_window) % steps_per_out == 0:
                yield to_image(torch.stack(tuple(recent)).mean(0))
        s += k


def is_stateful(model, sliding):
    return isinstance(model, SpikingLRN) and model.encoding == "temporal" and not sliding


# ----------------------------------------------------------------------------------------------
# Writers: .mp4, .npy and single .png appear only when complete (temp file + rename); a PNG
# sequence writes each frame atomically.

def to_uint8(image):
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(path, image):
    atomic_write(path, lambda f: Image.fromarray(to_uint8(image)).save(f, format="PNG"))


class VideoWriter:
    """H.264 .mp4 through the ffmpeg binary that the imageio-ffmpeg wheel ships."""

    def __init__(self, path, height, width, fps):
        import imageio_ffmpeg
        folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp.mp4", dir=folder)
        os.close(fd)
        self.path = path
        self.pad = ((0, height % 2), (0, width % 2))        # yuv420p needs even sides: repeat an edge
        size = (width + width % 2, height + height % 2)
        self.encoder = imageio_ffmpeg.write_frames(self.tmp, size, pix_fmt_in="gray", fps=fps,
                                                   codec="libx264", quality=VIDEO_QUALITY,
                                                   macro_block_size=1, ffmpeg_log_level="error")
        self.encoder.send(None)

    def write(self, image):
        self.encoder.send(np.ascontiguousarray(np.pad(to_uint8(image), self.pad, mode="edge")))

    def close(self):
        self.encoder.close()
        os.replace(self.tmp, self.path)

    def discard(self):
        with contextlib.suppress(Exception):
            self.encoder.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


class NpyWriter:
    """float32 [N, H, W] written frame by frame after its header (N is known in advance)."""

    def __init__(self, path, num_frames, height, width):
        folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        self.path, self.file = path, os.fdopen(fd, "wb")
        np.lib.format.write_array_header_1_0(self.file, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
            "shape": (num_frames, height, width)})

    def write(self, image):
        self.file.write(np.ascontiguousarray(image, dtype=np.float32).tobytes())

    def close(self):
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self):
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


class PngWriter:
    """One .png (single=True) or a folder of <index>.png."""

    def __init__(self, path, single):
        self.path, self.single, self.count = path, single, 0
        if not single:
            os.makedirs(path, exist_ok=True)

    def write(self, image):
        save_png(self.path if self.single else os.path.join(self.path, f"{self.count:06d}.png"), image)
        self.count += 1

    def close(self):
        pass

    def discard(self):
        pass


def output_kind(path):
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) or ext == "":
        return "folder"
    if ext not in (".mp4", ".png", ".npy"):
        raise InputError(f"--output {path}: unknown suffix {ext!r} (use .mp4, .png, .npy or a folder)")
    return ext[1:]


def open_writer(kind, path, num_frames, height, width, fps):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if kind == "mp4":
        return VideoWriter(path, height, width, fps)
    if kind == "npy":
        return NpyWriter(path, num_frames, height, width)
    return PngWriter(path, single=kind == "png")


# ----------------------------------------------------------------------------------------------

def side_by_side(image, stream, window_start):
    """[TFP | TFI | image (| ground truth)] of one window, each the frame's width."""
    spk = stream.read(window_start, window_start + WINDOW, "cpu").numpy()
    columns = [tfp(spk), tfi(spk), image]
    if getattr(stream, "gt", None) is not None:
        columns.append(stream.cropped(stream.gt).astype(np.float32) / 255.0)
    return np.concatenate(columns, axis=1)


def frame_range(args, stream):
    """-> (first spike frame of output frame 0, number of output frames)."""
    end = stream.num_frames if args.end is None else args.end
    if end > stream.num_frames:
        raise InputError(f"--end {end} is past the end of {stream.name} ({stream.num_frames} frames)")
    if end - args.start < WINDOW:
        raise InputError(f"{stream.name}: frames [{args.start}, {end}) of {stream.num_frames} hold "
                         f"fewer than the {WINDOW} frames of one window")
    if output_kind(args.output) == "png":        # one image: the middle window
        return args.start + (end - args.start - WINDOW) // 2, 1
    return args.start, (end - args.start - WINDOW) // args.stride + 1


def run(args):
    kind = output_kind(args.output)
    ckpt = load_checkpoint(args.checkpoint)
    device = pick_device(args.device)
    model = prepare_for_inference(model_from_checkpoint(ckpt, args.checkpoint).to(device),
                                  args.dtype or default_precision(device))
    if WINDOW % model.input_channels:
        raise InputError(f"{args.checkpoint}: the network takes {model.input_channels} bins, which "
                         f"{WINDOW} frames do not fill evenly")
    stateful = kind != "png" and is_stateful(model, args.sliding)     # one image: one window
    if args.reset_every and not stateful:
        raise InputError("--reset_every needs a stateful run (a temporal-encoding SNN, no --sliding, "
                         f"more than one output frame); here: {describe(model, stateful)}")
    step_frames = WINDOW // model.time_steps
    if stateful and args.stride % step_frames:
        raise InputError(f"--stride {args.stride}: a stateful SNN moves {step_frames} frames a step, so "
                         f"the stride must be a multiple of {step_frames} (or use --sliding)")
    batch = args.batch or (16 if device.type == "cuda" else 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    stream = open_stream(args.input, args.height, args.width, args.crop)
    first, num_out = frame_range(args, stream)
    h, w = stream.frame_shape
    columns = (2 + (getattr(stream, "gt", None) is not None)) if args.side_by_side else 0
    if stateful:
        frames = stateful_frames(model, stream, first, num_out, args.stride, args.reset_every, batch, device)
    else:
        frames = sliding_frames(model, stream, first, num_out, args.stride, batch, device)
    writer = open_writer(kind, args.output, num_out, h, w * (1 + columns), args.fps)
    t0 = time.perf_counter()
    bar = tqdm(total=num_out, unit="frame", desc=os.path.basename(stream.name.rstrip("/")) or stream.name,
               dynamic_ncols=True, mininterval=0.5)
    try:
        for j, image in enumerate(frames):
            image = image.cpu().numpy()
            if args.side_by_side:
                image = side_by_side(image, stream, first + j * args.stride)
            writer.write(image)
            bar.update(1)
            bar.set_postfix_str(f"{real_time(bar.n, args, time.perf_counter() - t0):.3g}x real time",
                                refresh=False)
        writer.close()
    except BaseException:
        writer.discard()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    print(f"{args.output}: {num_out} frame{'s' * (num_out != 1)} of {h}x{w} from spike frames "
          f"[{first}, {first + (num_out - 1) * args.stride + WINDOW}) of {stream.name} "
          f"({describe(model, stateful)}, stride {args.stride}) in {seconds:.1f} s: "
          f"{num_out / seconds:.2f} frames/s, {real_time(num_out, args, seconds):.3g}x real time "
          f"at {args.camera_hz / 1000:g} kHz")
    for problem in stream.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if stream.problems else 0


def real_time(frames_out, args, seconds):
    """Recording time covered (output frames x stride at --camera_hz) per second of wall time."""
    return frames_out * args.stride / args.camera_hz / max(seconds, 1e-9)


def describe(model, stateful):
    cfg = model.config()
    if cfg["arch"] == "ann":
        return f"{model_name(cfg)}, sliding window"     # e.g. the original SpikeCLIP LRN
    return (f"SNN T={cfg['time_steps']} {cfg['encoding']} encoding, "
            f"{'stateful' if stateful else 'sliding window'}")


def main(argv=None):
    args = get_args(argv)
    try:
        return run(args)
    except InputError as e:
        return report_input_error(e)
    except (ValueError, OSError) as e:   # e.g. a video encoder that refuses the frame size
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
