"""The shipped checkpoints load safely and reconstruct a fresh simulated capture better than
the calibrated frame average (a regression guard for weights/, not a benchmark)."""
import os

import numpy as np
import pytest
import torch

import generate_synthetic_data as gen
from dataset import voxelize
from metrics import psnr
from models import load_checkpoint, model_from_checkpoint
from utils import tfp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("light", ["normal", "low"])
def test_shipped_checkpoint_beats_tfp_on_a_fresh_capture(light):
    path = os.path.join(ROOT, "weights", f"{light}.pth")
    assert os.path.getsize(path) < 2_000_000
    ckpt = load_checkpoint(path)                     # torch.load(weights_only=True) inside
    model = model_from_checkpoint(ckpt, path).eval()
    cfg = gen.LIGHT[light]
    rng = np.random.default_rng(7)
    size = (72, 72)
    canvas = gen.scene_canvas(gen.procedural_image(12, rng, size=160), size, cfg, rng)
    spk, gt = gen.simulate_spikes(canvas, 200, cfg, gen.make_sensor(cfg, size, 3), rng, size)
    gt = torch.from_numpy(gt.astype(np.float32) / 255)[None, None]
    with torch.inference_mode():
        image = model(torch.from_numpy(voxelize(spk))[None]).clamp(0, 1)
    window = 41 if light == "normal" else 200        # Spike-Zoo's window in daylight, all in the dark
    baseline = torch.from_numpy(tfp(spk, window, cfg.rate)).clamp(0, 1)[None, None]
    assert float(psnr(image, gt)[0]) > float(psnr(baseline, gt)[0]) + 1.0
