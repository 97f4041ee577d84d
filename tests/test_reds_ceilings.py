"""bench/reds_ceilings.py: the motion ceiling's runs shifted along the right velocity line up."""
import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("reds_ceilings", os.path.join(ROOT, "bench", "reds_ceilings.py"))
ceilings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ceilings)


def test_runs_shifted_along_the_scenes_velocity_line_up():
    """A pattern panning (12, -6) px per 200 frames: shifted along that velocity, the 20 runs are
    one image (the centre one); unshifted, or along another velocity, they are not."""
    ys, xs = np.mgrid[0:24, 0:40].astype(np.float32)
    t = (np.arange(200, dtype=np.float32) + 0.5 - 100) / 200                       # in windows
    frames = np.stack([np.sin((xs - 12 * f) / 3) * np.cos((ys + 6 * f) / 4) for f in t])
    inner = (slice(None), slice(6, -6), slice(10, -10))                               # clear of the borders

    def spread(v):
        return float(ceilings.shifted_runs(frames, v).numpy()[inner].std(0).mean())
    assert spread((12, -6)) < 0.02 < 0.2 < min(spread((0, 0)), spread((-12, 6)))
