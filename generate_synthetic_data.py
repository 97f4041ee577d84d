"""Simulate UHSR-style spike-camera data from still images (SPEC §3).

Camera model, per pixel p and frame t (threshold units, theta ~ 1):
    acc_p += rate * I_p(t) * (shot noise) + dark_p           integrate-and-fire
    if acc_p >= theta_p (+ jitter):  spike, acc_p -= theta_p
I_p(t) is the scene in [0,1] at frame t. Two motion models:
- low light (UHSR): one photograph fills the frame and drifts along a straight path (the UHSR
  captures show images drifting 5-6 px on a screen) -- simulate_spikes();
- normal light (video-like, REDS): layers -- a background photograph that pans, rotates and
  zooms, and 0-3 photo cut-outs (random soft-edged shapes) moving over it on their own paths, at
  their own speeds, rotating, zooming and occluding each other -- simulate_layered_spikes().
  Photos are used at (or below) their native resolution, never upscaled: upscaled photos are
  2-3x smoother than real video frames and teach a network to blur.
The accumulator starts uniform in [0, theta). Fixed-pattern noise (threshold variation, dark
current, hot pixels) belongs to the sensor: one sensor per split (train/val/test), drawn from
the seed and the split, shared by every sample of that split.

Output: `<data_root>/U-{CIFAR,CALTECH}/{train,test}/<index>.npz` with `spk` uint8 [T,250,250],
`label` int64, `label_name` (the source file, as in UHSR) and `gt` uint8 [250,250], the clean
centre frame; with a camera that has a lens (normal light) also `lens_px` float32, the capture's
lens blur std in px (what train.py --lens_input tells the network). Train files are numbered
0..N-1 and test files continue from N (as U-CALTECH).
`<data_root>/U-<type>/simulation.json` records the settings the files were made with (camera,
light, frames, seed, source, counts): a rerun with the same settings completes an interrupted
one, a rerun with other settings is refused unless --overwrite (which replaces the files).

    python generate_synthetic_data.py --dataset cifar --num_train 20 --num_test 5
    python generate_synthetic_data.py --dataset cifar --source_dir ../shared/datasets/cifar10-test
"""
import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from dataset import CLASS_NAMES, DATASET_CHOICES, DATASET_DIRS, UHSR_FRAMES, class_index, make_item
from utils import (InputError, atomic_write, atomic_write_json, check_output_folder, non_negative_int, positive_float,
                   positive_int, report_input_error)

FRAME_SIZE = 250  # UHSR frames are 250x250
DATASET_SEEDS = {"CIFAR": 10, "CALTECH": 101}   # mixed into each sample's seed


@dataclasses.dataclass
class CameraConfig:
    rate: float = 0.065                 # firing probability of a white pixel per frame
    photons_per_threshold: float = 64.0  # shot noise: Poisson photons per threshold (0 = off)
    dark_current: float = 0.002         # mean dark increment per frame (threshold units)
    dark_current_spread: float = 0.39   # its per-pixel relative std (SCSim: 0.17 / 0.44)
    threshold_std: float = 0.03         # fixed-pattern threshold variation (relative)
    threshold_jitter: float = 0.01      # temporal threshold noise (relative std per frame)
    hot_pixel_fraction: float = 2e-4    # pixels with a large dark current
    hot_pixel_rate: float = 0.3         # their extra increment per frame
    motion_px: tuple = (4.0, 7.0)       # total drift over the stream, uniform in this range
    jitter_px: float = 0.1              # per-frame positional jitter (std, px)
    frame_hw: tuple = (FRAME_SIZE, FRAME_SIZE)   # sensor size (UHSR 250x250, Vidar 250x400)
    brightness: tuple = (1.0, 1.0)      # each scene's intensity is scaled by U(lo, hi)
    # layered (video-like) motion; layers=None: the rigid drift of motion_px above
    layers: tuple = None                # number of moving cut-outs, uniform integer in [lo, hi]
    layer_px: tuple = (0.0, 0.0)        # a cut-out's displacement over 200 frames, uniform
    rotation_deg: float = 0.0           # largest rotation over 200 frames (background: a quarter)
    zoom: float = 0.0                   # largest relative scale change over 200 frames (bg: half)
    photo_scale: tuple = (0.5, 1.0)     # photos resampled by U(lo, hi) of their native size
    lens_blur_px: tuple = (0.0, 0.0)    # the lens' Gaussian point spread: std (px) U(lo, hi) per capture;
                                        # the ground truth is the scene itself, sharp


LIGHT = {
    # REDS_BASE-like: a white pixel fires on 60% of the frames. In daylight a threshold is many
    # photons, so shot noise is small (REDS_BASE itself is noise-free: its inter-spike intervals
    # match this camera's, tests/test_simulator.py). Motion: REDS video moves ~20-30 px over the
    # 200 frames a network sees (measured on the shared REDS pair), so drift up to 30 px. Scenes:
    # the REDS ground truths average 0.29-0.35 grey, photos ~0.5, so photos are dimmed by U(0.5, 1).
    # Motion (bench/reds_motion.py, block matching of 41-frame TFP images on the shared REDS
    # streams): the content moves 25-37 px per 200 frames (p10-p90), up to ~70 px, and blocks
    # depart from the common motion by a median 0-4 px, p90 up to 8 px. So a panning background
    # (0-48 px) and independently moving cut-outs (0-72 px), which the rigid drift lacked.
    # Lens (bench/reds_lens.py): the REDS streams, shifted back along their best constant velocity,
    # match their ground truth blurred by a Gaussian of std 0.8 px; our camera panning that ground
    # truth the same way reads 0.7 / 0.8 / 1.0 px through a lens of 0 / 0.5 / 0.75 px, and the
    # aligned images' PSNR and sharpness place the real streams at 0.3-0.6 px: their scene is
    # blurrier than their ground truth. So a point spread of 0.2-0.8 px, the ground truth sharp:
    # the network learns to undo it.
    "normal": CameraConfig(rate=0.6, photons_per_threshold=1000.0, motion_px=(0.0, 48.0),
                           frame_hw=(250, 400), brightness=(0.5, 1.0), layers=(0, 3),
                           layer_px=(0.0, 72.0), rotation_deg=20.0, zoom=0.2, photo_scale=(0.25, 0.75),
                           lens_blur_px=(0.2, 0.8)),
    # UHSR-like dark captures: mean firing rate ~0.03 for natural images (mean grey ~0.45)
    "low": CameraConfig(rate=0.065),
}
DEFAULT_LIGHT = "low"   # of this script and of train.py --simulate_from: the UHSR captures are dark


# ----------------------------------------------------------------------------------------------
# The camera

# One sensor per split: validation and test files must not share the training captures' hot
# pixels and fixed-pattern noise, or a network could learn the pattern and score it as skill.
SENSOR_IDS = {"train": 0, "test": 1, "on_the_fly": 2}


def make_sensor(cfg, size, seed, split="train"):
    """Fixed-pattern properties of one sensor: per-pixel threshold and dark current [H, W]."""
    rng = np.random.default_rng([seed, 0x5E750, SENSOR_IDS[split]])
    threshold = 1.0 + cfg.threshold_std * rng.standard_normal(size)
    threshold = np.clip(threshold, 0.5, 1.5).astype(np.float32)
    dark = cfg.dark_current * (1.0 + cfg.dark_current_spread * rng.standard_normal(size))
    dark = np.clip(dark, 0.0, None)
    hot = rng.random(size) < cfg.hot_pixel_fraction
    dark[hot] += cfg.hot_pixel_rate
    return threshold, dark.astype(np.float32)


def translate(canvas, dy, dx, size):
    """Bilinear crop of `size` (h, w) from the centre of `canvas`, shifted by (dy, dx) pixels."""
    y0 = (canvas.shape[0] - size[0]) // 2 + dy
    x0 = (canvas.shape[1] - size[1]) // 2 + dx
    iy, ix = int(np.floor(y0)), int(np.floor(x0))
    fy, fx = np.float32(y0 - iy), np.float32(x0 - ix)   # keep float32 images float32
    h, w = size
    a = canvas[iy:iy + h, ix:ix + w]
    b = canvas[iy:iy + h, ix + 1:ix + w + 1]
    c = canvas[iy + 1:iy + h + 1, ix:ix + w]
    d = canvas[iy + 1:iy + h + 1, ix + 1:ix + w + 1]
    return (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)


def shot_noise(photo_signal, photons_per_threshold, rng):
    """Photon shot noise on the per-frame signal (threshold units). Above ~200 photons per
    threshold even a 5%-grey pixel collects several photons a frame, where the Gaussian
    approximation of the Poisson law holds and costs a fifth of the time."""
    q = photons_per_threshold
    if q >= 200:
        noise = rng.standard_normal(photo_signal.shape, dtype=np.float32)
        return np.maximum(photo_signal + noise * np.sqrt(photo_signal / q), 0.0)
    return (rng.poisson(photo_signal * q) / q).astype(np.float32)


def simulate_spikes(canvas, num_frames, cfg, sensor, rng, size=(FRAME_SIZE, FRAME_SIZE), with_lens=False):
    """Run the camera over an image drifting along a straight path (UHSR-like motion).

    canvas: float32 [H+2m, W+2m] grey image in [0,1] with a margin m for the motion.
    Returns (spk uint8 [num_frames, H, W], gt uint8 [H, W] = the clean centre frame), with_lens
    also the capture's lens blur std in px (None without a lens).
    """
    margin = min(canvas.shape[0] - size[0], canvas.shape[1] - size[1]) // 2
    # straight drift through the centre of the stream, plus a little jitter
    angle = rng.uniform(0, 2 * np.pi)
    length = min(rng.uniform(*cfg.motion_px), 2 * (margin - 2))
    t = (np.arange(num_frames) - (num_frames - 1) / 2) / max(num_frames - 1, 1)
    dy = t * length * np.sin(angle) + cfg.jitter_px * rng.standard_normal(num_frames)
    dx = t * length * np.cos(angle) + cfg.jitter_px * rng.standard_normal(num_frames)
    dy = np.clip(dy, -(margin - 1), margin - 1)
    dx = np.clip(dx, -(margin - 1), margin - 1)
    light = np.stack([translate(canvas, dy[f], dx[f], size) for f in range(num_frames)])
    spk, lens_px = camera(light, cfg, sensor, rng)
    gt = to_uint8(translate(canvas, 0.0, 0.0, size))
    return (spk, gt, lens_px) if with_lens else (spk, gt)


def lens_blur(light, sigma):
    """light float32 [F, H, W] through a Gaussian point spread of std sigma px (separable,
    reflected at the borders) -> float32 [F, H, W]."""
    if sigma <= 0:
        return light
    r = int(np.ceil(3 * sigma))
    taps = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    x = F.pad(torch.from_numpy(np.ascontiguousarray(light, np.float32))[:, None], (r, r, r, r), mode="reflect")
    x = F.conv2d(F.conv2d(x, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
    return x[:, 0].numpy()


def camera(light, cfg, sensor, rng):
    """The integrate-and-fire camera: light float32 [F, H, W] (grey in [0,1]) -> (spikes uint8
    [F, H, W], the lens blur std drawn for this capture in px, None without a lens, as the
    files of such a camera store none). The lens blurs the light
    (cfg.lens_blur_px; no draw from rng when it is off, so such a camera's captures stay as they
    were), the noise of every frame is drawn at once (vectorised), then the sequential
    integrate-and-fire walks the frames."""
    lens_px = None
    if cfg.lens_blur_px[1] > 0:
        lens_px = float(rng.uniform(*cfg.lens_blur_px))
        light = lens_blur(light, lens_px)
    threshold, dark = sensor
    signal = light * np.float32(cfg.rate)
    if cfg.photons_per_threshold > 0:
        signal = shot_noise(signal, cfg.photons_per_threshold, rng)
    signal += dark
    theta = np.broadcast_to(threshold, signal.shape)
    if cfg.threshold_jitter > 0:
        theta = threshold * (1 + np.float32(cfg.threshold_jitter)
                             * rng.standard_normal(signal.shape, dtype=np.float32))
    acc = rng.uniform(0, 1, light.shape[1:]).astype(np.float32) * threshold
    spk = np.zeros(light.shape, dtype=np.uint8)
    for f in range(len(light)):
        acc += signal[f]
        fired = acc >= theta[f]
        spk[f] = fired
        acc -= fired * theta[f]
    return spk, lens_px


def to_uint8(img):
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Video-like scenes: layers with their own paths

@dataclasses.dataclass
class Layer:
    """One image layer of a scene, placed in view coordinates (px, origin top-left of the view).

    texture: float32 [2, h, w] -- grey in [0,1] and alpha (coverage) in [0,1];
    at frame instant f its centre is at centre + velocity * (f - t0) (+ jitter), rotated by
    angle + spin * (f - t0) and scaled by exp(log_zoom * (f - t0)); t0 is the scene's reference
    instant (the gt frame)."""
    texture: np.ndarray
    centre: np.ndarray          # (x, y) at t0
    velocity: np.ndarray        # (vx, vy) px per frame
    angle: float = 0.0          # rad at t0
    spin: float = 0.0           # rad per frame
    log_zoom: float = 0.0       # per frame
    background: bool = False    # sampled with reflection at its borders (fills the view)


def render_layers(layers, times, size, t0, jitter=None):
    """The scene at frame instants `times` [F] -> float32 [F, H, W]: each layer warped to its
    pose at that instant (bilinear), composited back to front by its alpha. jitter: optional
    [F, 2] common (dx, dy) camera shake in px."""
    h, w = size
    times = torch.as_tensor(np.asarray(times, np.float64) - t0, dtype=torch.float64)   # [F]
    out = torch.zeros(len(times), 1, h, w)
    for layer in layers:
        tex = torch.from_numpy(np.ascontiguousarray(layer.texture))                     # [2, th, tw]
        th, tw = tex.shape[1:]
        cx = layer.centre[0] + layer.velocity[0] * times                                # [F]
        cy = layer.centre[1] + layer.velocity[1] * times
        if jitter is not None:
            cx, cy = cx + torch.as_tensor(jitter[:, 0]), cy + torch.as_tensor(jitter[:, 1])
        angle = layer.angle + layer.spin * times
        zoom = torch.exp(layer.log_zoom * times)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # view pixel (x, y) -> texture pixel (u, v): rotate by -angle, scale by 1/zoom about the
        # layer's centre:  u = cos (x - cx) + sin (y - cy) + tw/2,  v = -sin (x - cx) + cos (y - cy) + th/2,
        # written for affine_grid's normalised coordinates (align_corners=False: x = (xn + 1) w / 2)
        cu = -cos * cx - sin * cy + tw / 2
        cv = sin * cx - cos * cy + th / 2
        theta = torch.stack([torch.stack([cos * w / tw, sin * h / tw, (cos * w + sin * h + 2 * cu) / tw - 1], -1),
                             torch.stack([-sin * w / th, cos * h / th, (-sin * w + cos * h + 2 * cv) / th - 1], -1)],
                            1).float()                                                  # [F, 2, 3]
        grid = F.affine_grid(theta, [len(times), 2, h, w], align_corners=False)
        pad = "reflection" if layer.background else "zeros"
        sampled = F.grid_sample(tex[None].expand(len(times), -1, -1, -1), grid, mode="bilinear",
                                padding_mode=pad, align_corners=False)                  # [F, 2, H, W]
        grey, alpha = sampled[:, :1], sampled[:, 1:].clamp(0, 1)
        out = torch.lerp(out, grey, alpha)                                              # alpha over
    return out[:, 0].numpy()


def random_shape_mask(h, w, rng):
    """A random soft-edged shape filling most of an h x w box -> float32 [h, w] in [0, 1]: an
    ellipse or a star-shaped blob (radius varying with the angle), 1.5 px of soft edge."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = (yy + 0.5 - h / 2) / (h / 2), (xx + 0.5 - w / 2) / (w / 2)
    r, a = np.hypot(x, y), np.arctan2(y, x)
    if rng.random() < 0.4:
        edge = np.ones_like(a)                                    # ellipse
    else:
        k = rng.integers(2, 6, 3)
        phases = rng.uniform(0, 2 * np.pi, 3)
        amps = rng.uniform(0.05, 0.2, 3)
        edge = 1 - amps.sum() + sum(m * np.cos(kk * a + p) for m, kk, p in zip(amps, k, phases))
    inside = (edge * 0.95 - r) * min(h, w) / 2                   # signed distance-ish, px
    return np.clip(inside / 1.5 + 0.5, 0, 1).astype(np.float32)


def photo_texture(img, rng, scale, box=None, cover=(1, 1)):
    """A PIL photograph -> grey texture [2, h, w] (alpha 1) resampled by `scale` of its native
    size, but at least `cover` (h, w); with box (h, w), a random crop of that size with a random
    shape as alpha."""
    img = img.convert("L")
    w, h = img.size
    need_h, need_w = box if box is not None else cover
    scale = max(scale, need_h / h, need_w / w)                   # the crop / the view must fit
    size = (max(need_w, round(w * scale)), max(need_h, round(h * scale)))
    grey = np.asarray(img.resize(size, Image.BICUBIC if scale > 1 else Image.LANCZOS), np.float32) / 255.0
    alpha = np.ones_like(grey)
    if box is not None:
        top, left = int(rng.integers(grey.shape[0] - need_h + 1)), int(rng.integers(grey.shape[1] - need_w + 1))
        grey = grey[top:top + need_h, left:left + need_w]
        alpha = random_shape_mask(need_h, need_w, rng)
    return np.stack([np.clip(grey, 0, 1), alpha])


def lattice_texture(h, w, rng):
    """A thin-line lattice (a fence, a scaffold, a roller coaster's frame) filling a random
    shape of an h x w box -> texture [2, h, w]: 1-3 families of parallel lines 0.8-2.2 px wide
    every 3-12 px, at random angles, bright or dark; alpha is the lines' coverage (what lies
    between them shows the layers behind), anti-aliased."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    cover = np.zeros((h, w), np.float32)
    angle = rng.uniform(0, np.pi)
    for _ in range(int(rng.integers(1, 4))):
        period, width = rng.uniform(3, 12), rng.uniform(0.8, 2.2)
        across = xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0, period)
        dist = np.abs((across + period / 2) % period - period / 2)          # px to the nearest line
        cover = np.maximum(cover, np.clip(width / 2 - dist + 0.5, 0, 1))   # box-filtered line edge
        angle += rng.uniform(np.pi / 6, np.pi / 2)
    tone = rng.uniform(0.55, 1.0) if rng.random() < 0.6 else rng.uniform(0.0, 0.3)
    grey = np.clip(tone + 0.05 * rng.standard_normal((h, w)), 0, 1)
    return np.stack([grey, cover * random_shape_mask(h, w, rng)]).astype(np.float32)


def random_scene(photos, size, cfg, rng, lattices=0.0):
    """A video-like scene for a view of `size` (h, w) -> [Layer], back to front.

    photos: PIL images; photos[0] is the background, one more per cut-out. Speeds are given
    per 200 frames in cfg (the networks' window) and stored per frame. lattices: probability
    of a thin-line lattice in front of them all, on its own path (no draw when 0, so scenes
    without stay as they were)."""
    h, w = size
    gain = rng.uniform(*cfg.brightness)
    turn = np.deg2rad(cfg.rotation_deg) / 200.0

    def motion(px_range):
        direction = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(*px_range) / 200.0
        return np.array([np.cos(direction), np.sin(direction)]) * speed

    def cutout(tex):     # a layer on its own path, turning and zooming
        return Layer(tex, np.array([rng.uniform(0, w), rng.uniform(0, h)]), motion(cfg.layer_px),
                     rng.uniform(0, 2 * np.pi), rng.uniform(-1, 1) * turn,
                     rng.uniform(-1, 1) * np.log1p(cfg.zoom) / 200.0)

    # the background covers the view (reflected beyond it as it moves); at native resolution
    # when the photo is big enough, as on the training crops
    bg = photo_texture(photos[0], rng, rng.uniform(*cfg.photo_scale), cover=size)
    bg[0] *= gain
    layers = [Layer(bg, np.array([w / 2 + rng.uniform(-0.25, 0.25) * bg.shape[2],
                                  h / 2 + rng.uniform(-0.25, 0.25) * bg.shape[1]]),
                    motion(cfg.motion_px), rng.uniform(-0.1, 0.1), rng.uniform(-1, 1) * turn / 4,
                    rng.uniform(-1, 1) * np.log1p(cfg.zoom) / 400.0, background=True)]
    for photo in photos[1:]:
        box = (int(rng.uniform(0.25, 0.7) * min(h, w)), int(rng.uniform(0.25, 0.7) * min(h, w)))
        box = tuple(max(8, b) for b in box)
        tex = photo_texture(photo, rng, rng.uniform(*cfg.photo_scale), box)
        tex[0] *= gain * rng.uniform(0.6, 1.4)
        tex[0] = np.clip(tex[0], 0, 1)
        layers.append(cutout(tex))
    if lattices > 0 and rng.random() < lattices:
        box = [max(8, int(rng.uniform(0.5, 1.0) * min(h, w))) for _ in range(2)]
        tex = lattice_texture(*box, rng)
        tex[0] *= gain
        layers.append(cutout(tex))
    return layers


def simulate_layered_spikes(layers, num_frames, cfg, sensor, rng, size, gt_frames=None, with_lens=False):
    """Run the camera over a layered scene for num_frames frames.

    Returns (spk uint8 [num_frames, H, W], gt uint8 [len(gt_frames), H, W]): the clean scene at
    the (possibly fractional) frame instants gt_frames, default the centre instant; with_lens
    also the capture's lens blur std in px (None without a lens)."""
    t0 = (num_frames - 1) / 2
    gt_frames = [t0] if gt_frames is None else list(gt_frames)
    jitter = cfg.jitter_px * rng.standard_normal((num_frames, 2)).astype(np.float32)
    chunk = max(1, 2_000_000 // (size[0] * size[1]))        # bounded memory on full frames
    light = np.concatenate([render_layers(layers, np.arange(f, min(f + chunk, num_frames)), size, t0,
                                          jitter[f:f + chunk]) for f in range(0, num_frames, chunk)])
    spk, lens_px = camera(light, cfg, sensor, rng)
    gt = to_uint8(render_layers(layers, gt_frames, size, t0))
    return (spk, gt, lens_px) if with_lens else (spk, gt)


def image_to_canvas(img, size=FRAME_SIZE, margin=8):
    """PIL image -> float32 grey canvas [H+2m, W+2m] in [0,1] filling the frame; size is H = W
    or (H, W)."""
    h_out, w_out = (size, size) if isinstance(size, int) else size
    side_h, side_w = h_out + 2 * margin, w_out + 2 * margin
    img = img.convert("L")
    w, h = img.size
    scale = max(side_w / w, side_h / h)
    img = img.resize((max(side_w, round(w * scale)), max(side_h, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - side_w) // 2, (h - side_h) // 2
    img = img.crop((left, top, left + side_w, top + side_h))
    return np.asarray(img, dtype=np.float32) / 255.0


def scene_canvas(img, frame_hw, cfg, rng):
    """The scene of one capture: the image filling the frame plus the motion margin, at a
    brightness drawn from cfg.brightness (scenes differ from capture to capture)."""
    canvas = image_to_canvas(img, frame_hw, motion_margin(cfg))
    if cfg.brightness != (1.0, 1.0):
        canvas *= np.float32(rng.uniform(*cfg.brightness))
    return canvas


def motion_margin(cfg):
    """Canvas margin (px) that holds the largest drift of cfg plus its jitter."""
    return max(8, int(np.ceil(cfg.motion_px[1] / 2 + 4 * cfg.jitter_px)) + 3)


# ----------------------------------------------------------------------------------------------
# Built-in offline source: procedural images, one (shape, texture) pair per class so that no
# two classes share a latent image. Instances vary in position, size, rotation and contrast.

SHAPES = ["disk", "square", "triangle", "ring", "cross", "star", "bar", "ellipse", "diamond",
          "hexagon"]
TEXTURES = ["solid", "hstripes", "vstripes", "checker", "diagonal", "dots", "rings", "radial",
            "grid", "waves", "blobs"]


def procedural_image(class_idx, rng, size=128):
    """A grey PIL image of class `class_idx` (shape = idx % 10, texture = idx // 10)."""
    shape = SHAPES[class_idx % len(SHAPES)]
    texture = TEXTURES[(class_idx // len(SHAPES)) % len(TEXTURES)]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    cy, cx = rng.uniform(-0.1, 0.1, 2)
    r = rng.uniform(0.22, 0.32)
    rot = rng.uniform(0, 2 * np.pi)
    y, x = yy - cy, xx - cx
    y, x = y * np.cos(rot) - x * np.sin(rot), y * np.sin(rot) + x * np.cos(rot)
    rad, ang = np.hypot(x, y), np.arctan2(y, x)
    if shape == "disk":
        mask = rad < r
    elif shape == "square":
        mask = np.maximum(abs(x), abs(y)) < r * 0.85
    elif shape == "triangle":
        mask = (y < r * 0.6) & (y > -r + 2 * abs(x) * 1.2)
    elif shape == "ring":
        mask = (rad < r) & (rad > r * 0.6)
    elif shape == "cross":
        mask = ((abs(x) < r * 0.3) & (abs(y) < r)) | ((abs(y) < r * 0.3) & (abs(x) < r))
    elif shape == "star":
        mask = rad < r * (0.55 + 0.45 * np.cos(5 * ang))
    elif shape == "bar":
        mask = (abs(x) < r * 1.3) & (abs(y) < r * 0.3)
    elif shape == "ellipse":
        mask = (x / (r * 1.3)) ** 2 + (y / (r * 0.6)) ** 2 < 1
    elif shape == "diamond":
        mask = abs(x) + abs(y) < r
    else:  # hexagon
        mask = np.max([abs(x * np.cos(a) + y * np.sin(a)) for a in np.arange(3) * np.pi / 3], 0) < r * 0.85
    f = rng.uniform(10, 16)  # texture frequency (cycles per image)
    tex = {
        "solid": np.ones_like(x),
        "hstripes": 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * f * y)),
        "vstripes": 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * f * x)),
        "checker": 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * f * x) * np.sin(2 * np.pi * f * y)),
        "diagonal": 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * f * (x + y))),
        "dots": (np.hypot((x * f) % 1 - 0.5, (y * f) % 1 - 0.5) < 0.3).astype(np.float32),
        "rings": 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * f * rad)),
        "radial": 0.35 + 0.65 * np.clip(1 - rad / max(r, 1e-3), 0, 1),   # keeps the outline visible
        "grid": ((((x * f) % 1) < 0.2) | (((y * f) % 1) < 0.2)).astype(np.float32),
        "waves": 0.5 + 0.5 * np.sin(2 * np.pi * f * x + 3 * np.sin(2 * np.pi * 3 * y)),
        "blobs": 0.5 + 0.5 * np.sin(2 * np.pi * 4 * x) * np.cos(2 * np.pi * 5 * y),
    }[texture]
    bg_lo, bg_hi = sorted(rng.uniform(0.05, 0.45, 2))
    g = rng.uniform(0, 2 * np.pi)
    background = bg_lo + (bg_hi - bg_lo) * (0.5 + np.cos(g) * xx + np.sin(g) * yy)
    fg_lo, fg_hi = rng.uniform(0.05, 0.3), rng.uniform(0.75, 1.0)
    foreground = fg_lo + (fg_hi - fg_lo) * tex
    img = np.where(mask, foreground, background)
    return Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8), "L")


# ----------------------------------------------------------------------------------------------
# Sources: lists of (label, label_name, loader) per class

def check_image(path):
    """Open and decode the image at `path` (a JPEG at 1/8 scale: ~1 ms) -> InputError naming it
    when it is not a whole image, found when its folder is opened instead of hours into a run."""
    try:
        with Image.open(path) as img:
            img.draft("L", (max(1, img.width // 8), max(1, img.height // 8)))   # only JPEG uses it
            img.load()
    except Exception as e:     # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise InputError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def folder_source(source_dir, data_type):
    """ImageFolder layout <dir>/<class>/<image>; class folders mapped to UHSR labels by name.
    Every image is decoded once here (check_image)."""
    aliases = {"carside": "car", "faceseasy": "faces", "backgroundgoogle": "background"}
    per_class, unknown = {}, []
    for folder in sorted(os.listdir(source_dir)):
        path = os.path.join(source_dir, folder)
        if not os.path.isdir(path):
            continue
        key = folder.lower().replace("_", "").replace("-", "").replace(" ", "")
        try:
            label = class_index(data_type, aliases.get(key, key))
        except KeyError:
            unknown.append(folder)
            continue
        files = sorted(f for f in os.listdir(path)
                       if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif")))
        per_class.setdefault(label, []).extend(os.path.join(path, f) for f in files)
    if unknown:
        raise InputError(f"{source_dir}: folders {unknown} are not U-{data_type} classes "
                         f"(expected names like {CLASS_NAMES[data_type][:4]}...)")
    if not per_class:
        raise InputError(f"{source_dir}: no class folders with images")
    for paths in per_class.values():
        for path in paths:
            check_image(path)
    return {label: [("file", p) for p in paths] for label, paths in per_class.items()}


def torchvision_source(data_type, download_dir):
    """CIFAR-10 test split / Caltech-101 via torchvision (needs internet the first time)."""
    import torchvision
    items = {}
    if data_type == "CIFAR":
        ds = torchvision.datasets.CIFAR10(download_dir, train=False, download=True)
        for i, (_, target) in enumerate(zip(ds.data, ds.targets)):
            label = class_index("CIFAR", ds.classes[target])
            items.setdefault(label, []).append(("cifar", (download_dir, i)))
    else:
        ds = torchvision.datasets.Caltech101(download_dir, target_type="category", download=True)
        return folder_source(os.path.join(ds.root, "101_ObjectCategories"), "CALTECH")
    return items


def load_source_image(kind, ref, label, rng):
    if kind == "file":
        with Image.open(ref) as img:
            return img.convert("L"), os.path.basename(ref)
    if kind == "cifar":
        import torchvision
        root, i = ref
        ds = _cifar_cache.get(root) or _cifar_cache.setdefault(
            root, torchvision.datasets.CIFAR10(root, train=False, download=False))
        return Image.fromarray(ds.data[i]).convert("L"), f"cifar10_test_{i}.png"
    return procedural_image(label, rng), f"procedural_{ref}.png"


_cifar_cache = {}


# ----------------------------------------------------------------------------------------------
# Training without files: every item a fresh capture

class SimulatedStreams(torch.utils.data.Dataset):
    """Streams simulated on the fly from a folder of real photographs (ImageFolder layout, class
    folders named like the dataset's classes): each item is a new capture of a random image
    window of the sensor — random image, window position, motion, brightness, noise, flip and
    rotation — so a long training run never sees the same stream twice. Only the crop_size
    window (plus the motion margin) is simulated, a few hundredths of a second per item.

    Items are the dicts of dataset.UHSRDataset. `exclude`: label_name values (as written by
    this script into .npz files) whose source images must not be used, e.g. the images that
    the validation and test files were made from; `only`: if given, the label_name values whose
    images alone are used (e.g. to simulate validation recordings of the validation files' photos).
    `length`: items per epoch. `sensor`: the sensor's split (make_sensor): by default one of its
    own, so the validation/test files' fixed pattern is never trained on. `lattices`: layered
    scenes only, the probability of a thin-line lattice in front (random_scene).
    """

    def __init__(self, source_dir, data_type, cfg, crop_size, bins, num_frames=200, exclude=(),
                 length=None, seed=0, only=None, sensor="on_the_fly", lattices=0.0):
        names = CLASS_NAMES[data_type]
        exclude = set(exclude)
        self.images = [(label, path) for label, refs in sorted(folder_source(source_dir, data_type).items())
                       for _, path in refs if sample_name(path, names[label]) not in exclude
                       and (only is None or sample_name(path, names[label]) in only)]
        if not self.images:
            raise InputError(f"{source_dir}: no images left for training after excluding the "
                             f"{len(exclude)} used by the validation/test files")
        if lattices and cfg.layers is None:
            raise InputError("lattices are layers of a layered scene; this camera drifts one photograph")
        self.data_type, self.class_names, self.cfg, self.lattices = data_type, names, cfg, lattices
        self.crop_size, self.bins, self.num_frames = crop_size, bins, num_frames
        self.length = length or len(self.images)
        self.sensor = make_sensor(cfg, cfg.frame_hw, seed, sensor)
        self.margin = motion_margin(cfg)
        h, w = cfg.frame_hw
        if min(h, w) < crop_size:
            raise InputError(f"--crop_size {crop_size} is larger than the {h}x{w} sensor")

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        # torch's RNG is seeded per DataLoader worker, so workers draw different captures
        rng = np.random.default_rng(int(torch.randint(2 ** 62, ())))
        spk, gt, label, lens_px = self.capture(rng, self.num_frames, with_lens=True)
        return make_item(spk, gt[0], label, self.class_names, self.bins, True, -1, lens_px=lens_px)

    def capture(self, rng, num_frames, gt_frames=None, still_camera=False, with_lens=False):
        """One new capture of a crop_size window: a random scene seen for num_frames frames ->
        (spk uint8 [num_frames, s, s], gt uint8 [len(gt_frames), s, s], label of the main photo),
        with_lens also the capture's lens blur std in px; gt holds the clean frames at the
        (fractional) frame instants gt_frames, by default the centre instant (num_frames - 1) / 2.
        still_camera: the background (the rigid scene) does not move, shake, turn or zoom;
        cut-outs still move, without turning or zooming."""
        cfg = self.cfg
        if still_camera:
            cfg = dataclasses.replace(cfg, motion_px=(0.0, 0.0), jitter_px=0.0, rotation_deg=0.0, zoom=0.0)
        s, h, w = self.crop_size, *cfg.frame_hw
        top, left = int(rng.integers(h - s + 1)), int(rng.integers(w - s + 1))
        sensor = tuple(x[top:top + s, left:left + s] for x in self.sensor)
        label, main = self.images[int(rng.integers(len(self.images)))]
        if cfg.layers is None:                    # one photograph drifting rigidly (UHSR)
            with Image.open(main) as img:
                canvas = scene_canvas(img, cfg.frame_hw, cfg, rng)
            window = canvas[top:top + s + 2 * self.margin, left:left + s + 2 * self.margin]
            if gt_frames is not None and list(gt_frames) != [(num_frames - 1) / 2]:
                raise ValueError("the rigid-drift camera renders only the centre frame")
            spk, gt, lens_px = simulate_spikes(window, num_frames, cfg, sensor, rng, (s, s), with_lens=True)
            gt = gt[None]
        else:                                          # a layered, video-like scene
            n_cutouts = int(rng.integers(cfg.layers[0], cfg.layers[1] + 1))
            paths = [main] + [self.images[int(rng.integers(len(self.images)))][1] for _ in range(n_cutouts)]
            photos = []
            for path in paths:
                with Image.open(path) as img:
                    photos.append(img.convert("L"))
            layers = random_scene(photos, (s, s), cfg, rng, self.lattices)
            spk, gt, lens_px = simulate_layered_spikes(layers, num_frames, cfg, sensor, rng, (s, s), gt_frames,
                                                       with_lens=True)
        # a random flip and 90-degree turn (also of the motion's direction), from rng so that a
        # capture is a function of rng
        flip, turns = bool(rng.integers(2)), int(rng.integers(4))
        spk, gt = (np.ascontiguousarray(np.rot90(x[..., ::-1] if flip else x, turns, axes=(-2, -1))) for x in (spk, gt))
        return (spk, gt, int(label), lens_px) if with_lens else (spk, gt, int(label))


def sample_name(image_path, class_name):
    """The label_name this script stores for a sample made from image_path."""
    return f"{os.path.splitext(os.path.basename(image_path))[0]}_{class_name}.png"


# ----------------------------------------------------------------------------------------------
# Writing the dataset

def save_sample(path, spk, label, label_name, gt, lens_px=None):
    """Atomic: a crash mid-write leaves <i>.npz.<random>.tmp (which no reader lists), never a
    bad .npz (a file handle also stops numpy from appending '.npz' to the name). lens_px: the
    capture's lens blur std (px), stored when given (a network trained with train.py
    --lens_input reads it)."""
    lens = {} if lens_px is None else {"lens_px": np.float32(lens_px)}
    atomic_write(path, lambda f: np.savez_compressed(f, spk=spk, label=np.int64(label),
                                                     label_name=np.str_(label_name), gt=gt, **lens))


def procedural_streams(n, size, num_frames=UHSR_FRAMES, light="low", seed=0):
    """n simulated spike streams uint8 [n, num_frames, size, size] of the procedural classes
    (for measurements that need spikes like a camera's when no data is at hand)."""
    cfg = LIGHT[light]
    rng = np.random.default_rng([seed, 0xC0FFEE])
    sensor = make_sensor(cfg, (size, size), seed, "test")
    return np.stack([simulate_spikes(scene_canvas(procedural_image(i, rng), (size, size), cfg, rng), num_frames,
                                     cfg, sensor, rng, (size, size))[0] for i in range(n)])


def _make_one(task):
    """Worker: simulate and write one sample (skipped when the file already exists)."""
    path, split, data_type, (kind, ref, label), cutouts, class_name, seed, index, cfg, num_frames, frame_hw = task
    if os.path.exists(path):
        return path
    # the dataset is part of the seed: U-CIFAR and U-CALTECH both number their files from 0
    rng = np.random.default_rng([seed, DATASET_SEEDS[data_type], index])
    img, src_name = load_source_image(kind, ref, label, rng)
    key = (seed, split, frame_hw, dataclasses.astuple(cfg))
    if key not in _sensor_cache:
        _sensor_cache[key] = make_sensor(cfg, frame_hw, seed, split)
    sensor = _sensor_cache[key]
    if cfg.layers is None:
        spk, gt, lens_px = simulate_spikes(scene_canvas(img, frame_hw, cfg, rng), num_frames, cfg, sensor, rng,
                                           frame_hw, with_lens=True)
    else:
        photos = [img] + [load_source_image(k, r, l, rng)[0] for k, r, l in cutouts]
        layers = random_scene(photos, frame_hw, cfg, rng)
        spk, gt, lens_px = simulate_layered_spikes(layers, num_frames, cfg, sensor, rng, frame_hw, with_lens=True)
        gt = gt[0]
    save_sample(path, spk, label, sample_name(src_name, class_name), gt, lens_px)
    return path


_sensor_cache = {}


def build_tasks(sources, data_type, out_root, num_train, num_test, seed, cfg, num_frames,
                frame_hw=(FRAME_SIZE, FRAME_SIZE)):
    """Per class: the first num_train images go to train, the next num_test to test."""
    names = CLASS_NAMES[data_type]
    train, test = [], []
    for label in sorted(sources):
        refs = sources[label]
        need = num_train + num_test
        if len(refs) < need:
            raise InputError(f"class '{names[label]}' has {len(refs)} images, {need} requested "
                             f"(--num_train {num_train} + --num_test {num_test})")
        train += [(label, refs[i]) for i in range(num_train)]
        test += [(label, refs[num_train + i]) for i in range(num_test)]
    tasks = []
    for split, items, offset in (("train", train, 0), ("test", test, len(train))):
        folder = os.path.join(out_root, DATASET_DIRS[data_type], split)
        os.makedirs(folder, exist_ok=True)
        for j, (label, (kind, ref)) in enumerate(items):
            index = offset + j
            # cut-outs of a layered scene: other images of the same split (a test scene shows
            # only test images)
            rng = np.random.default_rng([seed, DATASET_SEEDS[data_type], index, 1])
            n_cutouts = 0 if cfg.layers is None else int(rng.integers(cfg.layers[0], cfg.layers[1] + 1))
            others = [k for k in range(len(items)) if k != j] or [j]
            cutouts = [(items[k][1][0], items[k][1][1], items[k][0])
                       for k in rng.choice(others, n_cutouts)]
            tasks.append((os.path.join(folder, f"{index}.npz"), split, data_type, (kind, ref, label), cutouts,
                          names[label], seed, index, cfg, num_frames, tuple(frame_hw)))
    return tasks


SETTINGS_FILE = "simulation.json"
KILLED_RUN_TEMP = re.compile(r"\d+\.npz\.[a-z0-9_]{8}\.tmp")


def settings_path(data_root, data_type):
    return os.path.join(data_root, DATASET_DIRS[data_type], SETTINGS_FILE)


def read_settings(data_root, data_type):
    """The settings `<data_root>/U-<type>/` was simulated with (the dict check_settings writes),
    or None when it holds no record (real data, or no data)."""
    try:
        with open(settings_path(data_root, data_type), encoding="utf-8") as f:
            settings = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InputError(f"{settings_path(data_root, data_type)}: unreadable settings record ({e})") from None
    if not isinstance(settings, dict):
        raise InputError(f"{settings_path(data_root, data_type)}: not a settings record")
    return settings


def recorded_rate(data_root, data_type):
    """The firing rate of a white pixel of the camera `<data_root>/U-<type>/` was simulated with,
    or None (no record: real captures, whose rate is unknown)."""
    return ((read_settings(data_root, data_type) or {}).get("camera") or {}).get("rate")


def baseline_convention(rate, source):
    """One line saying how TFP/TFI are scaled."""
    if rate is None:
        return "TFP/TFI normalised to their 99.5th percentile (the camera's rate is not known)"
    return f"TFP/TFI = spike count / frames / rate {rate:g} ({source}), clipped to [0, 1]"


def changed_fields(old, new, now="now"):
    """Where two settings records (dicts as read back from JSON) differ: ['key OLD (now NEW)']."""
    return [f"{k} {old.get(k)!r} ({now} {new.get(k)!r})" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


BASE_KEYS = ["spk", "label", "label_name", "gt"]    # what files held before the record named them


def sample_keys(cfg):
    """The keys of every file this camera's samples are saved with (save_sample). In the settings
    record, so that files made before a key was added (lens_px) are not kept as if current."""
    return BASE_KEYS + (["lens_px"] if cfg.lens_blur_px[1] > 0 else [])


def camera_record(cfg):
    """A CameraConfig as a settings record holds it (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def check_settings(data_root, data_type, settings, overwrite):
    """Before any file is written: a data folder holding files made with other settings (or with
    none recorded) is refused, or with --overwrite emptied -> how many of its files are kept."""
    old = read_settings(data_root, data_type)
    if old is not None and "keys" not in old:     # recorded before the keys were: BASE_KEYS files
        old = {**old, "keys": BASE_KEYS}
    folders = [os.path.join(data_root, DATASET_DIRS[data_type], split) for split in ("train", "test")]
    names = [(d, f) for d in folders if os.path.isdir(d) for f in os.listdir(d)]
    for d, f in names:
        if KILLED_RUN_TEMP.fullmatch(f):      # utils.atomic_write's temp file of a killed run
            os.remove(os.path.join(d, f))
    files = [os.path.join(d, f) for d, f in names if f.endswith(".npz")]
    if old == settings:
        return len(files)
    if (files or old is not None) and not overwrite:
        where = os.path.join(data_root, DATASET_DIRS[data_type])
        if old is None:
            why = f"holds {len(files)} .npz files with no {SETTINGS_FILE} (real data, or an older version's)"
        else:
            why = f"was simulated with other settings: {'; '.join(changed_fields(old, settings))}"
        raise InputError(f"{where} {why}; choose another --data_root, or --overwrite to replace its files")
    for path in files:
        os.remove(path)
    return 0


def builtin_source(data_type, per_class):
    return {label: [("builtin", f"{label}_{k}") for k in range(per_class)]
            for label in range(len(CLASS_NAMES[data_type]))}


def frame_size_arg(text):
    """'250' -> (250, 250); '250x400' -> (250, 400)."""
    try:
        hw = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or HxW with sides >= 16")
    return hw


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASET_CHOICES), type=str.lower, default="cifar")
    p.add_argument("--data_root", default="data", help="output root (U-CIFAR/, U-CALTECH/ go here)")
    p.add_argument("--num_train", type=non_negative_int, default=20, help="training samples per class")
    p.add_argument("--num_test", type=non_negative_int, default=5, help="test samples per class")
    p.add_argument("--num_frames", type=positive_int, default=UHSR_FRAMES, help="spike frames per sample (UHSR: 200)")
    p.add_argument("--seed", type=int, default=0)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--source_dir", help="ImageFolder-style directory of real images "
                                         "(class folders named like the dataset's classes)")
    src.add_argument("--torchvision", metavar="DOWNLOAD_DIR",
                     help="use torchvision CIFAR-10 (test split) / Caltech-101, downloaded here")
    p.add_argument("--light", choices=sorted(LIGHT), default=DEFAULT_LIGHT,
                   help="low: UHSR-like dark captures (mean rate ~0.03); normal: REDS-like (0.6)")
    p.add_argument("--rate", type=positive_float, help="override the light regime's white-pixel firing rate")
    p.add_argument("--no_noise", action="store_true",
                   help="ideal camera: no shot/dark/threshold noise, no hot pixels")
    p.add_argument("--frame_size", type=frame_size_arg, metavar="N|HxW",
                   help="frame size: N for N x N or HxW (default: the light regime's sensor, "
                        "250x250 UHSR for low light, 250x400 Vidar for normal light)")
    p.add_argument("--workers", type=positive_int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of a data folder simulated with other settings (or with "
                        "none recorded); without it such a folder is refused")
    args = p.parse_args(argv)
    try:
        return generate(p, args)
    except InputError as e:
        return report_input_error(e)


def generate(p, args):
    if args.source_dir and args.dataset == "both":
        p.error("--source_dir holds one dataset's classes: use --dataset cifar or caltech")
    check_output_folder(args.data_root, "--data_root")
    cfg = dataclasses.replace(LIGHT[args.light])
    if args.rate is not None:
        cfg.rate = args.rate
    if args.no_noise:
        cfg = dataclasses.replace(cfg, photons_per_threshold=0, dark_current=0, threshold_std=0,
                                  threshold_jitter=0, hot_pixel_fraction=0)
    data_types = DATASET_CHOICES[args.dataset]

    frame_hw = args.frame_size or cfg.frame_hw
    source = (["source_dir", os.path.abspath(args.source_dir)] if args.source_dir else
              ["torchvision", os.path.abspath(args.torchvision)] if args.torchvision else ["builtin"])
    settings = {data_type: json.loads(json.dumps({
        "dataset": data_type, "light": args.light, "camera": camera_record(cfg), "frame_hw": frame_hw,
        "num_frames": args.num_frames, "seed": args.seed, "source": source, "num_train": args.num_train,
        "num_test": args.num_test, "keys": sample_keys(cfg)})) for data_type in data_types}   # tuples -> lists
    sources = {}
    for data_type in data_types:     # every check before the first file is touched
        if args.source_dir:
            sources[data_type] = folder_source(args.source_dir, data_type)
        elif args.torchvision:
            sources[data_type] = torchvision_source(data_type, args.torchvision)
        else:
            sources[data_type] = builtin_source(data_type, args.num_train + args.num_test)
    kept = sum(check_settings(args.data_root, t, settings[t], args.overwrite) for t in data_types)
    tasks = []
    for data_type in data_types:
        tasks += build_tasks(sources[data_type], data_type, args.data_root, args.num_train, args.num_test,
                             args.seed, cfg, args.num_frames, frame_hw)
        atomic_write_json(settings[data_type], settings_path(args.data_root, data_type))
    print(f"simulating {len(tasks) - kept} samples ({args.light} light, rate {cfg.rate}, "
          f"{args.num_frames} frames{f'; {kept} made before with these settings are kept' if kept else ''}) "
          f"into {args.data_root} with {args.workers} workers")
    if args.workers > 1:
        # fork: the workers need only numpy, and spawning would re-import torch in each one
        context = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(context).Pool(args.workers) as pool:
            for _ in tqdm(pool.imap_unordered(_make_one, tasks, chunksize=4), total=len(tasks)):
                pass
    else:
        for task in tqdm(tasks):
            _make_one(task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
