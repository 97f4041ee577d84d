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
from utils import tfi, tfp

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
        image = model(torch.from_numpy(voxelize(spk, model.input_channels))[None]).clamp(0, 1)
    window = 41 if light == "normal" else 200        # Spike-Zoo's window in daylight, all in the dark
    baseline = torch.from_numpy(tfp(spk, window, cfg.rate)).clamp(0, 1)[None, None]
    assert float(psnr(image, gt)[0]) > float(psnr(baseline, gt)[0]) + 1.0


def test_shipped_stream_checkpoint_streams_at_the_brightness_of_its_first_frame(tmp_path):
    """weights/stream.pth runs stateful: on a still scene, the frames with the state carried keep
    the brightness of the first frame from rest (within 2%) and, its image gate averaging over
    windows, beat a 41-frame TFP and the same network's window from rest by more than 1 dB; on a
    scene moving 30 px per window it beats TFP and TFI clearly."""
    import dataclasses
    import reconstruct
    from dataset import write_dat
    path = os.path.join(ROOT, "weights", "stream.pth")
    assert os.path.getsize(path) < 2_000_000
    model = model_from_checkpoint(load_checkpoint(path), path).eval()
    assert reconstruct.is_stateful(model, sliding=False)
    size = (72, 72)
    psnrs = {}
    for motion, num_frames in ((0.0, 1200), (30.0, 200)):
        # the normal-light camera stream.pth was trained through, lens included
        cfg = dataclasses.replace(gen.LIGHT["normal"], motion_px=(motion, motion), jitter_px=0.0)
        rng = np.random.default_rng(7)
        canvas = gen.scene_canvas(gen.procedural_image(12, rng, size=160), size, cfg, rng)
        spk, gt = gen.simulate_spikes(canvas, num_frames, cfg, gen.make_sensor(cfg, size, 3), rng, size)
        write_dat(str(tmp_path / "scene.dat"), spk)
        stream = reconstruct.open_stream(str(tmp_path / "scene.dat"), *size)
        frames = torch.stack(list(reconstruct.stateful_frames(model, stream, 0, (num_frames - 200) // 50 + 1, 50,
                                                              None, 4, "cpu")))
        if motion == 0:
            brightness = frames.mean(dim=(1, 2))
            assert float((brightness[1:] / brightness[0] - 1).abs().max()) < 0.02
        gt = torch.from_numpy(gt.astype(np.float32) / 255)[None, None]
        window = spk[-200:]                                    # the last frame's window
        with torch.inference_mode():
            alone = model(torch.from_numpy(window[None]).float()).clamp(0, 1)
        psnrs[motion] = {"net": float(psnr(frames[-1][None, None], gt)[0]), "window": float(psnr(alone, gt)[0]),
                         "tfp": float(psnr(torch.from_numpy(tfp(window, 41, cfg.rate)).clamp(0, 1)[None, None], gt)[0]),
                         "tfi": float(psnr(torch.from_numpy(tfi(window, rate=cfg.rate)).clamp(0, 1)[None, None], gt)[0])}
    moving, still = psnrs[30.0], psnrs[0.0]
    assert moving["net"] > max(moving["tfp"], moving["tfi"]) + 2.0, psnrs
    assert still["net"] > max(still["tfp"], still["window"], still["tfi"]) + 1.0, psnrs