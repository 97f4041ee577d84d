"""bench/reds_lens.py: our camera panning an image through a lens of known blur is read back at
the pan's velocity, and a blurrier lens reads as a larger ground-truth blur."""
import importlib.util
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
spec = importlib.util.spec_from_file_location("reds_lens", os.path.join(ROOT, "bench", "reds_lens.py"))
lens = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lens)


def test_a_blurrier_lens_reads_as_a_blurrier_scene_at_the_pans_velocity():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.1, 0.9, (16, 20)).repeat(4, 0).repeat(4, 1).astype(np.float32)   # 64 x 80, 4-px blocks
    readings = [lens.reading(lens.panned_stream(gt, (12, -6), s), gt) for s in (0.0, 1.0)]
    assert all(r[0] == (12, -6) for r in readings)
    (_, sharp_db, sharpness, sigma, _), (_, blurred_db, blurred_sharpness, blurred_sigma, _) = readings
    assert blurred_sigma > sigma and blurred_db < sharp_db and blurred_sharpness < sharpness
