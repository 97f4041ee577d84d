"""Reconstruct images and video from a spike stream with a trained network.

    python reconstruct.py --checkpoint weights/normal.pth --input capture.dat --output capture.mp4
    python reconstruct.py --checkpoint CKPT --input data/U-CIFAR/test/5.npz --output 5.png --side_by_side
    python reconstruct.py --checkpoint CKPT --input recording/ --output frames/ --start 40000 --end 80000

Every output frame is the network's image of one window of UHSR_FRAMES (200) spike frames, the
window it was trained on; from one output frame to the next the window moves --stride frames.
- A temporal-encoding SNN runs *stateful*: each new slice of 200/T frames is one time step, the
  membranes carry on from the step before, and an output frame is the mean readout of the last
  T steps plus the linear skip of their window (from zero membranes that is exactly forward() on
  its window); with an image gate (train.py --image_gate) that image is blended into the
  previous frame, pixel by pixel as the gate says (SpikingLRN.stream_frames). --reset_every N
  starts every N-th output frame from rest: the frames after it are exactly those of a fresh
  run there.
- Stateless models (direct-encoding SNN, the plain CNN of --arch ann), and a temporal SNN with
  --sliding, run every window on its own from zero, --batch windows per device call.
The stream is read a window (or a chunk of steps) at a time and unpacked on the device, so
memory does not grow with its length. Images keep the full frame (250x400 for a Vidar .dat);
--crop takes the centre.

Input: a Vidar .dat (--height/--width), a folder of .dat files (one recording in parts, in
numeric order), or a UHSR .npz. The suffix of --output picks the format: .mp4 (H.264), .png
(one image: the window in the middle of [--start, --end)), .npy (float32 [N, H, W] in [0, 1]),
no suffix or an existing folder: a PNG per output frame. An existing output is replaced only
with --overwrite.

Exit status 2: unusable input (checkpoint, stream, options). A stream that ends in a partial
frame is reconstructed up to it and then reported, also with status 2.
"""
import argparse
import contextlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dataset import (UHSR_FRAMES, SpikeDataError, center_crop, dat_frame_bytes, dat_frame_count, load_npz,
                     numeric_sort_key, unpack_dat_frames, voxelize)
from models import (PRECISIONS, SpikingLRN, check_lens_px, default_precision, load_checkpoint, model_from_checkpoint,
                    model_name, prepare_for_inference, to_image)
from utils import (InputError, atomic_output, atomic_write, check_output_folder, non_negative_float, non_negative_int,
                   pick_device, positive_float, positive_int, remove_stale_temp_files, report_input_error, tfi, tfp)

WINDOW = UHSR_FRAMES    # spike frames behind one output frame: the networks' training window
VIDEO_CRF = 15          # libx264 quality (0 lossless - 51): 15 is near lossless


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
    g.add_argument("--lens_px", type=non_negative_float,
                   help="the camera's lens blur, Gaussian std in px, for a network trained with train.py --lens_input "
                        "(default: the network's reference lens, as the REDS streams read)")
    g.add_argument("--camera_hz", type=positive_float, default=40000.0,
                   help="the camera's frame rate, for the 'x real time' figure")
    g = p.add_argument_group("time")
    g.add_argument("--stride", type=positive_int, default=50,
                   help="spike frames between output frames (50: 800 output frames per second of a "
                        "40 kHz recording); a stateful SNN needs a multiple of its 200/T frames a step")
    g.add_argument("--fps", type=positive_float, default=30.0, help="frame rate of the written .mp4")
    g.add_argument("--reset_every", type=positive_int,
                   help="stateful SNN: start every N-th output frame from rest (zero membranes, no kept "
                        "readouts, no carried image), exactly as a fresh run from its window (default: never)")
    g.add_argument("--sliding", action="store_true",
                   help="run a temporal-encoding SNN on independent windows (each from zero membranes) "
                        "instead of carrying its state; stateless models always do")
    g = p.add_argument_group("output and device")
    g.add_argument("--side_by_side", action="store_true",
                   help="each image gets TFP and TFI of the same window as columns on its left "
                        "(and an .npz sample's ground truth on its right)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output (a folder: its PNG frames are removed first)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--dtype", choices=PRECISIONS,
                   help="fp32: the exact network; bf16: BatchNorm folded into bf16 convolutions (default on GPUs, "
                        "and on CPUs with AVX512-BF16 but no VNNI); int8 (CPU): as bf16, the SNN's convs that "
                        "take spikes in int8 (default on CPUs with AVX512-BF16 and VNNI; bench/cpu_inference.py)")
    g.add_argument("--batch", type=positive_int,
                   help="windows (stateful: time steps) per device call (default: 16 on CUDA, 1 on the CPU)")
    args = p.parse_args(argv)
    if args.end is not None and args.end <= args.start:
        p.error(f"--end {args.end} must be after --start {args.start}")
    return args


# ----------------------------------------------------------------------------------------------
# Streams: whole frames on demand, unpacked on the device

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
        self.height, self.width = height, width
        self.full_shape = (height, 400 if width == 416 else width)
        self.frame_bytes = dat_frame_bytes(height, width)
        self.parts, self.problems, self.num_frames = [], [], 0     # parts: (path, first, count)
        for path in paths:
            count, extra = dat_frame_count(path, height, width)
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

def sliding_frames(model, stream, first, num_out, stride, batch, device, lens_px=None):
    """Every window on its own, `batch` windows per call (lens_px: for a network with a lens input)."""
    starts = [first + j * stride for j in range(num_out)]
    for i in range(0, num_out, batch):
        voxel = voxelize(read_windows(stream, starts[i:i + batch], device), model.input_channels, torch.uint8, 1)
        with torch.inference_mode():
            images = to_image(model(voxel, lens_px=lens_px).float())
        yield from images[:, 0]


def stateful_frames(model, stream, first, num_out, stride, reset_every, batch, device):
    """A temporal-encoding SNN over consecutive slices of WINDOW / T frames, one time step each,
    membranes carried; `batch` steps per call. Output frame j is the frame of its window of T
    steps (SpikingLRN.stream_frames: the image forward() computes there from zero membranes, and
    with an image gate blended into the frame before). With reset_every N, output frames
    kN.. kN+N-1 are exactly those of a fresh run that starts at frame kN's window: membranes, kept
    readouts and the carried image start from zero there (a window that overlaps the previous
    segment's is run again from rest)."""
    segment = reset_every or num_out
    for j in range(0, num_out, segment):
        yield from carried_frames(model, stream, first + j * stride, min(segment, num_out - j), stride,
                                  batch, device)


def carried_frames(model, stream, first, num_out, stride, batch, device):
    """stateful_frames() from rest at spike frame `first`, never restarting."""
    step_frames = WINDOW // model.time_steps
    steps_per_out = stride // step_frames
    num_steps = (num_out - 1) * steps_per_out + model.time_steps
    h, w = stream.frame_shape
    carry = model.init_stream(1, h, w, device=device)
    window = 0                          # the window (= its first step) of the next frame computed
    for s in range(0, num_steps, batch):
        k = min(batch, num_steps - s)
        frames = stream.read(first + s * step_frames, first + (s + k) * step_frames, device)
        voxel = voxelize(frames.reshape(k, step_frames, h, w), model.in_bins, torch.uint8, 1)[:, None]  # [k, 1, bins, H, W]
        with torch.inference_mode():
            images, carry = model.stream_frames(voxel, carry)                 # [m, 1, 1, H, W]
        for image in images:
            if window % steps_per_out == 0:
                yield to_image(image[0, 0].float())
            window += 1


def is_stateful(model, sliding):
    return isinstance(model, SpikingLRN) and model.encoding == "temporal" and not sliding


# ----------------------------------------------------------------------------------------------
# Writers: .mp4, .npy and a single .png go through utils.atomic_output (they appear complete
# under their name, or not at all); a PNG sequence writes each frame atomically.

FRAME_NAME = re.compile(r"\d{6}\.png")                       # a frame of a PNG sequence
FRAME_TEMP = re.compile(r"\d{6}\.png\.[a-z0-9_]{8}\.tmp")     # one a killed run left half-written


def to_uint8(image):
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(path, image):
    atomic_write(path, lambda f: Image.fromarray(to_uint8(image)).save(f, format="PNG"))


class Mp4Encoder:
    """H.264 .mp4 by the ffmpeg binary that the imageio-ffmpeg wheel ships, fed raw grey frames
    on its stdin. ffmpeg's exit status is checked (imageio-ffmpeg's writer ignores it: a full
    disk gave a truncated video and no error)."""

    def __init__(self, path, height, width, fps):
        import imageio_ffmpeg
        self.path = path
        self.pad = ((0, height % 2), (0, width % 2))        # yuv420p needs even sides: repeat an edge
        self.log = tempfile.TemporaryFile()                 # ffmpeg's messages (a pipe could fill up)
        self.process = subprocess.Popen(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
             "-pix_fmt", "gray", "-s", f"{width + width % 2}x{height + height % 2}", "-r", f"{fps}",
             "-i", "-", "-an", "-c:v", "libx264", "-crf", str(VIDEO_CRF), "-pix_fmt", "yuv420p",
             "-f", "mp4", path], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.log)

    def write(self, image):
        try:
            self.process.stdin.write(np.ascontiguousarray(np.pad(to_uint8(image), self.pad, mode="edge")))
        except BrokenPipeError:       # ffmpeg stopped: finish() says why
            self.finish()

    def finish(self):
        """Wait for ffmpeg to write the file; OSError naming the output when it failed."""
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        status = self.process.wait()
        self.log.seek(0)
        message = " ".join(self.log.read().decode(errors="replace").split())[-300:]
        self.log.close()
        if status != 0:
            raise OSError(f"{self.path}: ffmpeg failed (exit status {status}): {message or 'no message'}")

    def kill(self):
        self.process.kill()
        self.process.wait()
        self.log.close()


def output_kind(path):
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) or ext == "":
        return "folder"
    if ext not in (".mp4", ".png", ".npy"):
        raise InputError(f"--output {path}: unknown suffix {ext!r} (use .mp4, .png, .npy or a folder)")
    return ext[1:]


def check_output(path, kind, overwrite):
    """Before any work: an existing output is replaced only with --overwrite. Removes the temp
    files that killed runs left for this output."""
    if kind != "folder":
        if os.path.isdir(path):
            raise InputError(f"--output {path}: is a folder, not a .{kind} file")
        if os.path.exists(path) and not overwrite:
            raise InputError(f"--output {path}: exists; pass --overwrite to replace it")
        remove_stale_temp_files(path)
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--output {path}: exists and is not a folder (a PNG sequence needs one)")
    names = os.listdir(path) if os.path.isdir(path) else []
    if any(FRAME_NAME.fullmatch(f) for f in names) and not overwrite:
        raise InputError(f"--output {path}: holds the PNG frames of an earlier run; pass --overwrite "
                         f"to replace them")
    for f in names:
        if FRAME_TEMP.fullmatch(f):
            os.remove(os.path.join(path, f))


@contextlib.contextmanager
def open_writer(kind, path, num_frames, height, width, fps):
    """-> write(image [height, width] in [0, 1]); the output is complete at `path` when the block
    ends without an exception. A PNG sequence first removes the frames of an earlier run."""
    if kind == "folder":
        os.makedirs(path, exist_ok=True)
        for f in os.listdir(path):
            if FRAME_NAME.fullmatch(f):
                os.remove(os.path.join(path, f))
        count = itertools.count()
        yield lambda image: save_png(os.path.join(path, f"{next(count):06d}.png"), image)
        return
    with atomic_output(path) as tmp:
        if kind == "mp4":
            encoder = Mp4Encoder(tmp, height, width, fps)
            try:
                yield encoder.write
            except BaseException:
                encoder.kill()
                raise
            encoder.finish()
            return
        with open(tmp, "wb") as f:
            if kind == "png":
                yield lambda image: Image.fromarray(to_uint8(image)).save(f, format="PNG")
                return
            # .npy: float32 [N, H, W] written frame by frame after its header (N is known)
            np.lib.format.write_array_header_1_0(f, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                "shape": (num_frames, height, width)})
            yield lambda image: f.write(np.ascontiguousarray(image, dtype=np.float32).tobytes())


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
    check_output_folder(args.output if kind == "folder" else os.path.dirname(os.path.abspath(args.output)),
                        "--output", args.output)
    check_output(args.output, kind, args.overwrite)
    ckpt = load_checkpoint(args.checkpoint)
    device = pick_device(args.device)
    model = prepare_for_inference(model_from_checkpoint(ckpt, args.checkpoint).to(device),
                                  args.dtype or default_precision(device))
    if WINDOW % model.input_channels:
        raise InputError(f"{args.checkpoint}: the network takes {model.input_channels} bins, which "
                         f"{WINDOW} frames do not fill evenly")
    check_lens_px(model, args.lens_px, args.checkpoint)
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
        frames = sliding_frames(model, stream, first, num_out, args.stride, batch, device, args.lens_px)
    t0 = time.perf_counter()
    bar = tqdm(total=num_out, unit="frame", desc=os.path.basename(stream.name.rstrip("/")) or stream.name,
               dynamic_ncols=True, mininterval=0.5)
    try:
        with open_writer(kind, args.output, num_out, h, w * (1 + columns), args.fps) as write:
            for j, image in enumerate(frames):
                image = image.cpu().numpy()
                if args.side_by_side:
                    image = side_by_side(image, stream, first + j * args.stride)
                write(image)
                bar.update(1)
                bar.set_postfix_str(f"{real_time(bar.n, args, time.perf_counter() - t0):.3g}x real time",
                                    refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    print(f"{args.output}: {num_out} frame{'s' * (num_out != 1)} of {h}x{w} from spike frames "
          f"[{first}, {first + (num_out - 1) * args.stride + WINDOW}) of {stream.name} "
          f"({describe(model, stateful)}{restarts(args)}, stride {args.stride}) in {seconds:.1f} s: "
          f"{num_out / seconds:.2f} frames/s, {real_time(num_out, args, seconds):.3g}x real time "
          f"at {args.camera_hz / 1000:g} kHz")
    for problem in stream.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if stream.problems else 0


def real_time(frames_out, args, seconds):
    """Recording time covered (output frames x stride at --camera_hz) per second of wall time."""
    return frames_out * args.stride / args.camera_hz / max(seconds, 1e-9)


def restarts(args):
    return f", from rest every {args.reset_every} output frames" if args.reset_every else ""


def describe(model, stateful):
    cfg = model.config()
    if cfg["arch"] == "ann":
        return f"{model_name(cfg)}, sliding window"     # e.g. the original SpikeCLIP LRN
    carried = "stateful: membranes carried from frame to frame"
    if cfg.get("image_gate"):
        carried = "stateful: membranes and, through the image gate, the image carried from frame to frame"
    return f"SNN T={cfg['time_steps']} {cfg['encoding']} encoding, {carried if stateful else 'sliding window'}"


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
