"""reconstruct.py on streams made by the simulator: frame counts, formats, the carried SNN state,
stability on a static scene, bad input."""
import os

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import reconstruct
from generate_synthetic_data import CameraConfig, make_sensor, procedural_image, simulate_spikes
from models import CHECKPOINT_FORMAT, PlainLRN, SpikingLRN, load_checkpoint, model_from_checkpoint

H, W = 16, 24          # tiny frames and a narrow network keep every test fast
FRAMES = 3000          # a stream of 15 windows, 57 output frames at stride 50
CHANNELS = (16, 32, 16, 8)


def simulated_stream(num_frames=FRAMES, moving=True, seed=0, height=H, width=W):
    """A procedural image seen by the simulated camera (normal light), drifting or still."""
    rng = np.random.default_rng(seed)
    margin = 4
    img = procedural_image(3, rng).resize((width + 2 * margin, height + 2 * margin), Image.BICUBIC)
    canvas = np.asarray(img, dtype=np.float32) / 255.0
    cfg = CameraConfig(rate=0.6)
    if not moving:
        cfg.motion_px, cfg.jitter_px = (0.0, 0.0), 0.0
    sensor = make_sensor(cfg, (height, width), seed)
    spk, _ = simulate_spikes(canvas, num_frames, cfg, sensor, rng, (height, width))
    return spk


def save_checkpoint(model, path):
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model_config": model.config(),
                "model": model.state_dict()}, path)
    return str(path)


def temporal_snn(spk, seed=0, image_gate=False):
    """A T=4 temporal-encoding SNN whose BN statistics come from the stream (a fresh BN is about
    the identity and its deep layers would barely spike); with an image gate that keeps about half
    of the carried frame."""
    torch.manual_seed(seed)
    model = SpikingLRN(time_steps=4, encoding="temporal", channels=CHANNELS, image_gate=image_gate)
    if image_gate:
        torch.nn.init.normal_(model.gate.weight, std=0.1)
        torch.nn.init.zeros_(model.gate.bias)
    windows = torch.from_numpy(np.stack([spk[i:i + 200] for i in range(0, 1000, 200)]))
    for bn in model.bns:
        bn.momentum = 1.0
    with torch.no_grad():
        model.train()(windows.float())
    return model.eval()


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    spk = simulated_stream()
    dat = folder / "moving.dat"
    dataset.write_dat(str(dat), spk)
    torch.manual_seed(0)
    return {"spk": spk, "dat": str(dat), "folder": folder,
            "snn": save_checkpoint(temporal_snn(spk), folder / "snn.pth"),
            "gated": save_checkpoint(temporal_snn(spk, image_gate=True), folder / "gated.pth"),
            "ann": save_checkpoint(PlainLRN(channels=CHANNELS), folder / "ann.pth")}


def run(ckpt, inp, out, *extra):
    """reconstruct.py with the exact fp32 network (these tests compare frames to 1e-5)."""
    return reconstruct.main(["--checkpoint", ckpt, "--input", str(inp), "--output", str(out),
                             "--height", str(H), "--width", str(W), "--dtype", "fp32", *map(str, extra)])


# ----------------------------------------------------------------------------------------------

def test_unpacking_on_the_device_equals_read_dat(tmp_path):
    rng = np.random.default_rng(1)
    for height, width in ((H, W), (8, 416)):
        spk = (rng.random((7, height, width)) < 0.3).astype(np.uint8)
        path = str(tmp_path / f"s{width}.dat")
        dataset.write_dat(path, spk)
        stream = reconstruct.DatStream([path], height, width)
        want = dataset.read_dat(path, height, width)
        assert stream.num_frames == 7 and stream.frame_shape == want.shape[1:]
        np.testing.assert_array_equal(stream.read(0, 7, "cpu").numpy(), want)
        np.testing.assert_array_equal(stream.read(2, 5, "cpu").numpy(), want[2:5])
    # a folder is one recording in parts, in numeric order (10 after 9)
    spk = (rng.random((25, H, W)) < 0.3).astype(np.uint8)
    parts = tmp_path / "parts"
    parts.mkdir()
    for name, (a, b) in {"9": (0, 10), "10": (10, 18), "11": (18, 25)}.items():
        dataset.write_dat(str(parts / f"{name}.dat"), spk[a:b])
    folder = reconstruct.open_stream(str(parts), H, W, None)
    assert folder.num_frames == 25
    np.testing.assert_array_equal(folder.read(5, 22, "cpu").numpy(), spk[5:22])


def test_output_frame_counts_and_formats(stream, tmp_path):
    expected = (FRAMES - 200) // 50 + 1
    assert run(stream["ann"], stream["dat"], tmp_path / "a.npy") == 0
    frames = np.load(tmp_path / "a.npy")
    assert frames.shape == (expected, H, W) and frames.dtype == np.float32
    assert 0 <= frames.min() and frames.max() <= 1

    assert run(stream["ann"], stream["dat"], tmp_path / "a.mp4", "--fps", 25) == 0
    n, seconds = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "a.mp4"))
    assert n == expected and seconds == pytest.approx(expected / 25, abs=0.1)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "a.mp4"))
    meta = next(reader)
    reader.close()
    assert meta["codec"].startswith("h264") and tuple(meta["size"]) == (W, H)
    # H.264 in yuv420p needs even sides: an odd crop gets its last row and column repeated
    assert run(stream["ann"], stream["dat"], tmp_path / "odd.mp4", "--crop", 11, "--end", 400) == 0
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "odd.mp4"))
    assert tuple(next(reader)["size"]) == (12, 12)
    reader.close()

    # --start/--end/--stride; a folder gets a numbered PNG per output frame
    assert run(stream["ann"], stream["dat"], tmp_path / "seq", "--start", 100, "--end", 1900,
               "--stride", 100) == 0
    pngs = sorted(os.listdir(tmp_path / "seq"))
    assert pngs == [f"{i:06d}.png" for i in range((1800 - 200) // 100 + 1)]
    with Image.open(tmp_path / "seq" / pngs[0]) as img:
        assert img.size == (W, H) and img.mode == "L"

    # the stateful SNN gives the same number of frames, aligned with the same windows; --crop
    assert run(stream["snn"], stream["dat"], tmp_path / "s.npy", "--crop", 12, "--batch", 3) == 0
    assert np.load(tmp_path / "s.npy").shape == (expected, 12, 12)
    assert not any(p.name.endswith(".tmp") or ".tmp." in p.name for p in tmp_path.iterdir())


def test_stateful_stream_equals_step_by_hand(stream, tmp_path):
    """A restart every 5 output frames: the same as calling step() one slice at a time from zero
    membranes at the window of output frame 0, 5, 10, ... and averaging the last T readouts. In
    chunks of 3 steps (one conv call each) the sums round differently, which can flip a spike
    whose membrane sits at the threshold: a few pixels may move, never the bulk of the frames."""
    common = ("--reset_every", 5, "--end", 1600)
    assert run(stream["snn"], stream["dat"], tmp_path / "b1.npy", *common) == 0
    assert run(stream["snn"], stream["dat"], tmp_path / "b3.npy", *common, "--batch", 3) == 0
    one_step, chunked = np.load(tmp_path / "b1.npy"), np.load(tmp_path / "b3.npy")

    snn = model_from_checkpoint(load_checkpoint(stream["snn"])).eval()
    spk = torch.from_numpy(dataset.read_dat(stream["dat"], H, W)[:1600]).float()
    num_out = (1600 - 200) // 50 + 1
    want = []
    for j0 in range(0, num_out, 5):                     # a segment of up to 5 frames from rest
        state, readouts = snn.init_state(1, H, W), []
        for t in range(j0, j0 + min(5, num_out - j0) + 3):
            frame, state = snn.step(spk[t * 50:(t + 1) * 50][None], state)
            readouts.append(frame[0, 0])
            if t - j0 >= 3:
                want.append(torch.stack(readouts[-4:]).mean(0).clamp(0, 1).numpy())
    assert one_step.shape == chunked.shape == (len(want), H, W) == (29, H, W)
    np.testing.assert_allclose(one_step, np.stack(want), atol=1e-5)
    assert (np.abs(chunked - one_step) > 1e-5).mean() < 0.01

    # the carried state matters: without restarts the frames differ from independent windows
    assert run(stream["snn"], stream["dat"], tmp_path / "carried.npy", "--end", 1600, "--batch", 4) == 0
    assert run(stream["snn"], stream["dat"], tmp_path / "slide.npy", "--end", 1600, "--sliding") == 0
    carried, slide = np.load(tmp_path / "carried.npy"), np.load(tmp_path / "slide.npy")
    np.testing.assert_allclose(carried[0], slide[0], atol=1e-5)     # window 0: both from zero
    assert np.abs(carried[4:] - slide[4:]).mean() > 1e-3


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("net", ["snn", "gated"])
def test_frames_after_a_reset_equal_a_fresh_run_from_there(stream, tmp_path, batch, net):
    """--reset_every 5 at stride 50 (windows overlap by 3 of their 4 steps): output frames 5-9 and
    10-14 are those of a run started at their first window, nothing of the steps before (membranes,
    kept readouts, with an image gate the carried image) leaks in."""
    assert run(stream[net], stream["dat"], tmp_path / "r.npy", "--end", 1600, "--reset_every", 5,
               "--batch", batch) == 0
    reset = np.load(tmp_path / "r.npy")
    for j in (5, 10):
        assert run(stream[net], stream["dat"], tmp_path / f"f{j}.npy", "--start", j * 50, "--end", 1600,
                   "--batch", batch) == 0
        fresh = np.load(tmp_path / f"f{j}.npy")
        np.testing.assert_allclose(reset[j:j + 5], fresh[:5], atol=1e-6)
        # without the reset the same frames carry the earlier steps and differ
        assert np.abs(reset[j + 5:j + 10] - fresh[5:10]).mean() > 1e-3


def test_restart_every_window_equals_sliding_windows(stream, tmp_path):
    """Non-overlapping windows with a restart at each: every frame is forward() on its window.
    (Chunks of 4 steps and single windows run the same convolutions, so no spike flips.)"""
    common = ("--end", 2000, "--stride", 200)
    assert run(stream["snn"], stream["dat"], tmp_path / "r.npy", *common, "--reset_every", 1,
               "--batch", 4) == 0
    assert run(stream["snn"], stream["dat"], tmp_path / "w.npy", *common, "--sliding") == 0
    r, w = np.load(tmp_path / "r.npy"), np.load(tmp_path / "w.npy")
    assert r.shape == (10, H, W)
    np.testing.assert_allclose(r, w, atol=1e-5)


def test_sliding_batches_give_the_same_frames(stream, tmp_path):
    assert run(stream["ann"], stream["dat"], tmp_path / "b1.npy", "--end", 1000, "--stride", 30) == 0
    assert run(stream["ann"], stream["dat"], tmp_path / "b7.npy", "--end", 1000, "--stride", 30,
               "--batch", 7) == 0
    np.testing.assert_allclose(np.load(tmp_path / "b1.npy"), np.load(tmp_path / "b7.npy"), atol=1e-5)


def test_a_direct_snn_of_one_bin_per_frame_slides_over_each_windows_frames(stream, tmp_path):
    """train.py --bins 200: each output frame is the network on its window's 200 frames as bins."""
    torch.manual_seed(1)
    model = SpikingLRN(in_bins=200, time_steps=4, channels=CHANNELS, linear_skip=True).eval()
    torch.nn.init.normal_(model.skip.weight, std=0.02)
    ckpt = save_checkpoint(model, tmp_path / "bins200.pth")
    assert run(ckpt, stream["dat"], tmp_path / "f.npy", "--end", 700, "--stride", 100, "--batch", 2) == 0
    frames = np.load(tmp_path / "f.npy")
    spk = torch.from_numpy(np.ascontiguousarray(stream["spk"][:700])).float()
    with torch.no_grad():
        expected = [model(spk[s:s + 200][None]).clamp(0, 1)[0, 0].numpy() for s in range(0, 501, 100)]
    assert frames.shape == (6, H, W) and 0.05 < frames.mean() < 0.95 and frames.std() > 0.01
    np.testing.assert_allclose(frames, np.stack(expected), atol=1e-5)


def test_static_scene_output_becomes_stable(tmp_path):
    """On a still scene the stateful SNN settles: its frame-to-frame change does not grow, its
    brightness stays in a narrow band, and it flickers less than independent windows (each output
    frame shares T-1 of its T readouts with the one before)."""
    spk = simulated_stream(6000, moving=False, seed=3)
    dat = tmp_path / "static.dat"
    dataset.write_dat(str(dat), spk)
    ckpt = save_checkpoint(temporal_snn(spk), tmp_path / "snn.pth")
    assert run(ckpt, dat, tmp_path / "carried.npy", "--batch", 8) == 0
    assert run(ckpt, dat, tmp_path / "slide.npy", "--batch", 8, "--sliding") == 0
    frames = np.load(tmp_path / "carried.npy").astype(np.float64)       # 117 frames
    assert frames.std(axis=(1, 2)).mean() > 0.05, "the network must show an image, not a constant"

    def flicker(x):
        return np.abs(np.diff(x, axis=0)).mean(axis=(1, 2))
    carried = flicker(frames)
    early, late = carried[10:50].mean(), carried[-40:].mean()
    assert late <= 1.25 * early
    brightness = frames[10:].mean(axis=(1, 2))
    assert brightness.max() - brightness.min() < 0.25 * brightness.mean()
    assert carried[10:].mean() < 0.7 * flicker(np.load(tmp_path / "slide.npy"))[10:].mean()


def test_truncated_stream_is_reported_after_writing_what_came_before(stream, tmp_path, capsys):
    dat = tmp_path / "cut.dat"
    with open(stream["dat"], "rb") as f:
        data = f.read(1000 * H * W // 8)
    dat.write_bytes(data + data[:17])                   # 1000 frames and 17 bytes of the next
    assert run(stream["ann"], dat, tmp_path / "cut.npy") == 2
    assert np.load(tmp_path / "cut.npy").shape == ((1000 - 200) // 50 + 1, H, W)
    err = capsys.readouterr().err
    assert str(dat) in err and "partial frame (17 of 48 bytes)" in err
    # the wrong frame size: the same report (a size that divides cannot be told from a right one)
    assert run(stream["ann"], stream["dat"], tmp_path / "w.npy", "--width", 56) == 2
    assert "truncated, or the wrong --height/--width" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "suffix", "short", "end", "stride", "reset", "empty",
                                  "folder", "npz", "checkpoint", "crop", "odd_size", "flag"])
def test_bad_input_is_a_named_error(stream, tmp_path, capsys, case):
    dat, out = stream["dat"], tmp_path / "o.npy"
    if case == "missing":
        rc, name = run(stream["ann"], tmp_path / "nope.dat", out), "nope.dat"
    elif case == "suffix":
        rc, name = run(stream["ann"], dat, tmp_path / "o.avi"), "--output"
    elif case == "short":
        short = tmp_path / "short.dat"
        dataset.write_dat(str(short), stream["spk"][:150])
        rc, name = run(stream["ann"], short, out), "short.dat"
    elif case == "end":
        rc, name = run(stream["ann"], dat, out, "--end", FRAMES + 1), "--end"
    elif case == "stride":
        rc, name = run(stream["snn"], dat, out, "--stride", 30), "--stride 30"
    elif case == "reset":
        rc, name = run(stream["ann"], dat, out, "--reset_every", 2), "--reset_every"
    elif case == "empty":
        (tmp_path / "empty.dat").write_bytes(b"")
        rc, name = run(stream["ann"], tmp_path / "empty.dat", out), "empty.dat: empty file"
    elif case == "folder":
        (tmp_path / "nodat").mkdir()
        rc, name = run(stream["ann"], tmp_path / "nodat", out), "no .dat files"
    elif case == "npz":
        bad = tmp_path / "bad.npz"
        bad.write_bytes(b"PK\x03\x04 not really a zip")
        rc, name = run(stream["ann"], bad, tmp_path / "o.png"), "bad.npz"
    elif case == "checkpoint":
        other = tmp_path / "other.pth"
        torch.save({"state_dict": {}}, other)
        rc, name = run(str(other), dat, out), "other.pth"
    elif case == "crop":
        rc, name = run(stream["ann"], dat, out, "--crop", 20), "--crop 20"
    elif case == "odd_size":
        rc, name = reconstruct.main(["--checkpoint", stream["ann"], "--input", dat, "--output", str(out),
                                     "--height", "5", "--width", "5"]), "--height x --width"
    else:
        with pytest.raises(SystemExit) as e:
            run(stream["ann"], dat, out, "--stride", 0)
        rc, name = e.value.code, "--stride"
    assert rc == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err
    assert not out.exists()


def test_npz_window_to_png_side_by_side(tmp_path, capsys):
    """The single-window path (formerly test.py --input): an .npz sample -> one PNG, full frame,
    with TFP | TFI | network | ground truth."""
    spk = simulated_stream(200, seed=4, height=32, width=32)
    npz = tmp_path / "7.npz"
    gt = np.full((32, 32), 128, np.uint8)
    np.savez_compressed(npz, spk=spk, label=np.int64(2), label_name=np.str_("x.png"), gt=gt)
    torch.manual_seed(0)
    ckpt = save_checkpoint(SpikingLRN(time_steps=4, channels=CHANNELS), tmp_path / "direct.pth")
    assert reconstruct.main(["--checkpoint", ckpt, "--input", str(npz), "--output",
                             str(tmp_path / "one.png"), "--side_by_side"]) == 0
    with Image.open(tmp_path / "one.png") as img:
        assert img.size == (4 * 32, 32)
        right = np.asarray(img)[:, 3 * 32:]
    assert (right == 128).all()                           # the ground-truth column
    assert "1 frame of 32x32" in capsys.readouterr().out
    # a .dat: the middle window by default, the window at --start with --end
    dat = tmp_path / "s.dat"
    dataset.write_dat(str(dat), simulated_stream(1000, height=32, width=32))
    args = ["--checkpoint", ckpt, "--input", str(dat), "--height", "32", "--width", "32"]
    assert reconstruct.main(args + ["--output", str(tmp_path / "mid.png")]) == 0
    assert "[400, 600)" in capsys.readouterr().out
    assert reconstruct.main(args + ["--output", str(tmp_path / "at.png"), "--start", "100",
                                    "--end", "300"]) == 0
    assert "[100, 300)" in capsys.readouterr().out


def test_a_temporal_snn_runs_stateful_by_default_and_says_so(stream, tmp_path, capsys):
    assert run(stream["snn"], stream["dat"], tmp_path / "d.npy", "--end", 600) == 0
    assert "stateful: membranes carried" in capsys.readouterr().out
    assert run(stream["snn"], stream["dat"], tmp_path / "r.npy", "--end", 600, "--reset_every", 2) == 0
    assert "stateful: membranes carried from frame to frame, from rest every 2 output frames" in capsys.readouterr().out
    assert run(stream["snn"], stream["dat"], tmp_path / "s.npy", "--end", 600, "--sliding") == 0
    out = capsys.readouterr().out
    assert "sliding window" in out and "stateful" not in out
    # a direct-encoding SNN always runs sliding windows
    torch.manual_seed(0)
    direct = save_checkpoint(SpikingLRN(time_steps=2, channels=CHANNELS).eval(), tmp_path / "direct.pth")
    assert run(direct, stream["dat"], tmp_path / "x.npy", "--end", 600) == 0
    assert "direct encoding, sliding window" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# outputs: nothing the user had is lost, nothing half-written lands under the final name

@pytest.mark.parametrize("name", ["old.npy", "old.mp4", "old.png"])
def test_existing_output_is_replaced_only_with_overwrite(stream, tmp_path, capsys, name):
    out = tmp_path / name
    out.write_bytes(b"the user's file")
    assert run(stream["ann"], stream["dat"], out, "--end", 400) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and "Traceback" not in err
    assert out.read_bytes() == b"the user's file"
    os.chmod(out, 0o640)
    assert run(stream["ann"], stream["dat"], out, "--end", 400, "--overwrite") == 0
    assert out.read_bytes() != b"the user's file" and os.stat(out).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_png_folder_overwrite_clears_the_old_sequence(stream, tmp_path, capsys):
    seq = tmp_path / "seq"
    assert run(stream["ann"], stream["dat"], seq, "--end", 400) == 0      # frames 0..4
    (seq / "notes.txt").write_text("mine")
    assert run(stream["ann"], stream["dat"], seq, "--end", 300) == 2
    assert "--overwrite" in capsys.readouterr().err and len(list(seq.glob("*.png"))) == 5
    assert run(stream["ann"], stream["dat"], seq, "--end", 300, "--overwrite") == 0
    assert sorted(p.name for p in seq.iterdir()) == ["000000.png", "000001.png", "000002.png", "notes.txt"]


def test_outputs_follow_the_umask_and_killed_runs_temp_files_are_removed(stream, tmp_path):
    stale = [tmp_path / "a.npy.k3j_x9q2.tmp", tmp_path / "seq" / "000001.png.abcd1234.tmp"]
    (tmp_path / "seq").mkdir()
    for path in stale:
        path.write_bytes(b"half")
    keep = tmp_path / "a.npy.notmine.tmp"
    keep.write_bytes(b"someone else's")
    old = os.umask(0o027)
    try:
        assert run(stream["ann"], stream["dat"], tmp_path / "a.npy", "--end", 400) == 0
        assert run(stream["ann"], stream["dat"], tmp_path / "seq", "--end", 300) == 0
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.npy").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "seq" / "000000.png").st_mode & 0o777 == 0o640
    assert not any(p.exists() for p in stale) and keep.exists()


def test_failed_video_encoder_is_an_error_and_leaves_no_file(stream, tmp_path, capsys):
    """ffmpeg that cannot finish the file (here: a file size limit, as a full disk) -> exit 2,
    nothing under the output's name, no temp file."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, hard))     # ffmpeg inherits it
    try:
        rc = run(stream["ann"], stream["dat"], tmp_path / "v.mp4")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    assert rc == 2 and "v.mp4" in err and "ffmpeg failed" in err
    assert list(tmp_path.iterdir()) == []
