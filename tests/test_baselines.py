"""Tests for the TFP / TFI baselines in utils.py (SPEC §6) on hand-made spike trains."""
import numpy as np
import pytest

import utils


def trains(t, spike_frames):
    """[t, 1, n] spikes: pixel j fires exactly on the frames in spike_frames[j]."""
    spk = np.zeros((t, 1, len(spike_frames)), np.uint8)
    for j, frames in enumerate(spike_frames):
        spk[list(frames), 0, j] = 1
    return spk


# ----------------------------------------------------------------------------------------------
# TFP

def test_tfp_mean_over_centred_window_divided_by_rate():
    t = 10
    spk = trains(t, [[f] for f in range(t)])           # pixel j fires only on frame j
    img = utils.tfp(spk, window=4, rate=1.0)             # frames 3, 4, 5, 6
    assert img.dtype == np.float32 and img.shape == (1, t)
    np.testing.assert_allclose(img[0], [0, 0, 0, .25, .25, .25, .25, 0, 0, 0])
    img = utils.tfp(spk, window=5, rate=0.5)             # odd window: frames 2..6, / 0.5
    np.testing.assert_allclose(img[0], [0, 0, .4, .4, .4, .4, .4, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(utils.tfp(spk, rate=1.0)[0], np.full(t, 0.1), rtol=1e-6)   # all
    np.testing.assert_allclose(utils.tfp(spk, window=99, rate=1.0), utils.tfp(spk, rate=1.0))


def test_tfp_rate_gives_intensity_and_accepts_dtypes():
    rng = np.random.default_rng(0)
    spk = (rng.random((400, 4, 4)) < 0.6 * 0.5).astype(np.uint8)   # white pixel rate 0.6, I=0.5
    assert utils.tfp(spk, rate=0.6).mean() == pytest.approx(0.5, abs=0.02)
    ref = utils.tfp(spk, window=41, rate=0.6)
    for dtype in (np.bool_, np.float32, np.int64):
        np.testing.assert_allclose(utils.tfp(spk.astype(dtype), window=41, rate=0.6), ref)


def test_tfp_normalised_known_answer():
    """Without a rate the image is divided by its 99.5th percentile (np.percentile's linear
    interpolation) and clipped to [0, 1]. Four pixels firing on 0, 2, 5, 10 of 10 frames:
    means 0, .2, .5, 1; the percentile sits at rank 3 * 0.995 = 2.985, i.e.
    .5 + .985 * (1 - .5) = .9925 = 397/400, so the image is 0, 80/397, 200/397 and 1 (clipped)."""
    spk = trains(10, [[], [0, 9], range(5), range(10)])
    img = utils.tfp(spk)
    assert img.dtype == np.float32
    np.testing.assert_allclose(img[0], [0, 80 / 397, 200 / 397, 1], rtol=1e-6)
    # the same from per-pixel counts (the training cache's path)
    np.testing.assert_allclose(utils.tfp_from_counts(np.array([[0, 2, 5, 10]]), 10), img, rtol=1e-6)
    # no spikes at all: zeros, no NaN
    zero = utils.tfp(np.zeros((10, 3, 3), np.uint8))
    assert np.isfinite(zero).all() and (zero == 0).all()


def test_tfp_normalised_brighter_pixels_are_brighter():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.6, (16, 16))
    img = utils.tfp((rng.random((400, 16, 16)) < p).astype(np.uint8))
    assert img.min() >= 0 and img.max() == 1.0
    assert np.corrcoef(img.ravel(), p.ravel())[0, 1] > 0.9


# ----------------------------------------------------------------------------------------------
# TFI  (t = 41: middle frame 20, window 20 each side by default)

@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_tfi_regular_isi(k):
    t = 41
    spk = trains(t, [range(phase, t, k) for phase in range(k)])   # every phase of the train
    img = utils.tfi(spk, rate=1.0)
    np.testing.assert_allclose(img[0], np.full(k, 1.0 / k), rtol=1e-6)


def test_tfi_missing_side_uses_window_end():
    t, w = 41, 20
    spk = trains(t, [[17],        # left 3, none right -> 3 + 20
                     [25],        # none left, right 5 -> 20 + 5
                     [],          # none at all -> 40
                     [21, 17],    # 3 + 1
                     [0, 40]])    # exactly at both window ends -> 20 + 20
    img = utils.tfi(spk, rate=1.0)
    np.testing.assert_allclose(img[0], 1.0 / np.array([3 + w, w + 5, 2 * w, 4, 2 * w]), rtol=1e-6)


def test_tfi_spike_at_middle_counts_as_left():
    spk = trains(41, [[20, 23],   # left = 20 (distance 0), right = 23 -> 1/3
                      [20],       # left = 20, right none -> 1/(0 + 20)
                      [17, 20],   # the later of the two is the left one -> right none -> 1/20
                      [19, 21]])  # 1 + 1
    img = utils.tfi(spk, rate=1.0)
    np.testing.assert_allclose(img[0], [1 / 3, 1 / 20, 1 / 20, 1 / 2], rtol=1e-6)


def test_tfi_explicit_window_and_even_length():
    spk = trains(41, [[10, 30], [16, 24], [15, 25]])
    img = utils.tfi(spk, window=5, rate=1.0)       # search frames 15..25 only
    np.testing.assert_allclose(img[0], [1 / 10, 1 / 8, 1 / 10], rtol=1e-6)
    assert utils.tfi(spk, window=99, rate=1.0).tolist() == utils.tfi(spk, rate=1.0).tolist()
    # t = 40: middle frame 20, window min(20, 19) = 19
    spk = trains(40, [[], [20, 39], [1]])
    np.testing.assert_allclose(utils.tfi(spk, rate=1.0)[0], [1 / 38, 1 / 19, 1 / 38], rtol=1e-6)


def test_tfi_rate_scales_and_short_streams_fail():
    spk = trains(41, [range(0, 41, 4)])
    assert utils.tfi(spk, rate=0.5)[0, 0] == pytest.approx(0.5)    # (1/4) / 0.5
    assert utils.tfi(trains(3, [[1, 2]]), rate=1.0)[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        utils.tfi(np.zeros((2, 1, 1), np.uint8))


def test_tfi_normalised_known_answer():
    """t = 41 (middle 20, window 20). Intervals 2, 4, 5, 40 -> raw 1/2, 1/4, 1/5, 1/40. Sorted
    low to high: 1/40, 1/5, 1/4, 1/2; the 99.5th percentile at rank 2.985 is
    1/4 + .985 * (1/2 - 1/4) = .49625 = 397/800, so the image is 1 (clipped), 200/397,
    160/397 and 20/397."""
    spk = trains(41, [[19, 21],      # left 1 + right 1 = 2
                      [18, 22],      # 2 + 2 = 4
                      [17, 22],      # 3 + 2 = 5
                      []])           # none: both window ends, 20 + 20 = 40
    img = utils.tfi(spk)
    assert img.dtype == np.float32
    np.testing.assert_allclose(img[0], [1, 200 / 397, 160 / 397, 20 / 397], rtol=1e-6)
    # the same from the intervals (the training cache's path)
    np.testing.assert_allclose(utils.tfi_from_interval(np.array([[2, 4, 5, 40]])), img, rtol=1e-6)
    # no spikes anywhere: every interval is 2w, a constant image normalises to 1
    flat = utils.tfi(np.zeros((11, 2, 2), np.uint8))
    assert np.isfinite(flat).all() and (flat == 1).all()


def test_tfi_normalised_brighter_pixels_are_brighter():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.02, 0.6, (16, 16))
    img = utils.tfi((rng.random((101, 16, 16)) < p).astype(np.uint8))
    assert img.dtype == np.float32 and img.shape == (16, 16)
    assert img.min() >= 0 and img.max() == 1.0
    assert np.corrcoef(img.ravel(), p.ravel())[0, 1] > 0.5


@pytest.mark.parametrize("size, high", [((224, 224), 5), ((224, 224), 200), ((7, 3), 2), ((1, 1), 9),
                                        ((50, 50), 60000)])
def test_histogram_percentile_matches_numpy(size, high):
    """tfp_from_counts / tfi_from_interval find the 99.5th percentile by a histogram of their
    integer input; it must be np.percentile's (linear interpolation) to float precision."""
    rng = np.random.default_rng(high)
    ints = rng.integers(1, high + 1, size)
    ints[0, 0] = high                                   # heavy ties plus one extreme value
    raw = ints.astype(np.float32) / 200
    np.testing.assert_allclose(utils.tfp_from_counts(ints, 200), np.clip(raw / np.percentile(raw, 99.5), 0, 1),
                               rtol=1e-6)
    raw = 1 / ints.astype(np.float32)
    np.testing.assert_allclose(utils.tfi_from_interval(ints), np.clip(raw / np.percentile(raw, 99.5), 0, 1),
                               rtol=1e-6)
    np.testing.assert_allclose(utils.tfp_from_counts(ints * 0, 200), 0)   # no spikes: zeros
