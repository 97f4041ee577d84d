"""train.py --stateful: recordings of consecutive windows, the membranes carried as reconstruct.py
carries them, truncated back-propagation, random restarts."""

import numpy as np
import pytest
import torch

import dataset
import generate_synthetic_data as gsd
import reconstruct
import train
from conftest import TINY_TRAIN, photo_folder
from models import CHECKPOINT_FORMAT, SpikingLRN

H, W = 12, 16
CHANNELS = (8, 16, 8, 4)


def calibrated_temporal_snn(spk, time_steps=4):
    """A small temporal SNN whose BN statistics come from the stream (so its deep layers spike)."""
    torch.manual_seed(0)
    model = SpikingLRN(time_steps=time_steps, encoding="temporal", channels=CHANNELS, linear_skip=True)
    torch.nn.init.normal_(model.readout.weight, std=0.2)
    for bn in model.bns:
        bn.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.from_numpy(spk[None, :200]).float())
    return model.eval()


def recording_instants(monkeypatch):
    """Record the clean-frame instants each capture() is asked for."""
    asked, real = [], gsd.SimulatedStreams.capture

    def capture(self, rng, num_frames, gt_frames=None, still_camera=False):
        asked.append((num_frames, list(gt_frames)))
        return real(self, rng, num_frames, gt_frames, still_camera)
    monkeypatch.setattr(gsd.SimulatedStreams, "capture", capture)
    return asked


@pytest.fixture
def photos(tmp_path):
    return photo_folder(tmp_path / "photos", 40)


def moving_stream(tmp_path, frames=1000):
    rng = np.random.default_rng(1)
    canvas = rng.random((H + 16, W + 16), dtype=np.float32)
    cfg = gsd.CameraConfig(rate=0.6, motion_px=(6.0, 6.0))
    spk, _ = gsd.simulate_spikes(canvas, frames, cfg, gsd.make_sensor(cfg, (H, W), 0), rng, (H, W))
    dat = str(tmp_path / "s.dat")
    dataset.write_dat(dat, spk)
    return spk, reconstruct.open_stream(dat, H, W)


def chunked_frames(model, spk, chunk):
    """stream_frames over the whole stream, `chunk` steps per call, the carry passed on (not clamped)."""
    x = torch.from_numpy(spk).float().reshape(-1, 1, 50, H, W)        # [steps, B=1, bins, H, W]
    carry, got = model.init_stream(1, H, W), []
    with torch.no_grad():
        for c in range(0, len(x), chunk):
            frames, carry = model.stream_frames(x[c:c + chunk], carry)
            got.append(frames)
    return torch.cat(got)[:, 0, 0]


def test_stream_frames_do_not_depend_on_the_steps_per_call_or_the_stride(tmp_path):
    """The frames the loss sees (train.py: chunks of steps, the carry passed on) are the frames
    reconstruct.py writes for the same stream, however many steps a call takes; a stride of two
    steps writes every other frame of a one-step stride; frame 0, from rest, is forward()."""
    spk, stream = moving_stream(tmp_path)
    model = calibrated_temporal_snn(spk)
    num_out = (1000 - 200) // 50 + 1
    want = torch.stack(list(reconstruct.stateful_frames(model, stream, 0, num_out, 50, None, 1, "cpu")))
    for chunk in (3, 8):
        got = chunked_frames(model, spk, chunk).clamp(0, 1)
        assert got.shape == want.shape == (num_out, H, W)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    strided = torch.stack(list(reconstruct.stateful_frames(model, stream, 0, (num_out + 1) // 2, 100, None, 3, "cpu")))
    torch.testing.assert_close(strided, want[::2], atol=1e-5, rtol=0)
    assert (want[1:] - want[:-1]).abs().mean() > 1e-3                  # the scene moves: frames differ
    with torch.no_grad():                                              # frame 0, from rest: forward()
        first = model(torch.from_numpy(spk[None, :200]).float())[0, 0].clamp(0, 1)
    torch.testing.assert_close(want[0], first, atol=1e-5, rtol=0)


def gated(model, logit, motion_gain):
    """The same network with an image gate of constant logit and the given motion gain."""
    out = SpikingLRN(time_steps=model.time_steps, encoding="temporal", channels=CHANNELS, linear_skip=True,
                     image_gate=True)
    out.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        out.gate.bias.fill_(logit)
        out.motion_gain.fill_(np.log(motion_gain))
    assert out.config()["image_gate"] and "image gate" in reconstruct.model_name(out.config())
    return out.eval()


def test_image_gate_blends_each_window_into_the_carried_frame(tmp_path):
    spk, stream = moving_stream(tmp_path)
    model = calibrated_temporal_snn(spk)
    plain = chunked_frames(model, spk, 4)
    # keeping ~nothing: the plain frames; keeping everything of a still scene: frame 0 forever
    torch.testing.assert_close(chunked_frames(gated(model, -30.0, 1e-6), spk, 4), plain, atol=1e-5, rtol=0)
    frozen = chunked_frames(gated(model, 30.0, 1e-6), spk, 4)
    torch.testing.assert_close(frozen, plain[:1].expand_as(frozen), atol=1e-5, rtol=0)
    # half and half, with no motion term: frame j = (frame j-1 + window j's image) / 2
    half = chunked_frames(gated(model, 0.0, 1e-6), spk, 3)
    torch.testing.assert_close(half[1:], (half[:-1] + plain[1:]) / 2, atol=1e-5, rtol=0)
    # a large motion gain: where the new window's image differs, the carried frame is dropped
    moving = chunked_frames(gated(model, 3.0, 1e4), spk, 3)
    assert (moving - plain).abs().mean() < 0.2 * (chunked_frames(gated(model, 3.0, 1e-6), spk, 3) - plain).abs().mean()
    # the gated stream is reconstruct.py's too, at any steps per call, and frame 0 is forward()
    g = gated(model, 0.5, 5.0)
    want = torch.stack(list(reconstruct.stateful_frames(g, stream, 0, 17, 50, None, 2, "cpu")))
    torch.testing.assert_close(chunked_frames(g, spk, 5).clamp(0, 1), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(want[0], plain[0].clamp(0, 1), atol=1e-5, rtol=0)


def test_recordings_ask_for_the_clean_frame_at_each_windows_centre(photos, monkeypatch):
    asked = recording_instants(monkeypatch)
    streams = gsd.SimulatedStreams(str(photos), "CIFAR", gsd.LIGHT["normal"], 16, 200, length=3)
    rec = train.SimulatedRecordings(streams, 5, 4, 50)
    item = rec[0]
    assert asked == [(400, [99.5, 149.5, 199.5, 249.5, 299.5])]      # window j: frames [50j, 50j + 200)
    assert rec.num_steps == 8 and len(rec) == 3
    assert item["voxel"].shape == (8 * 50, 16, 16) and item["voxel"].dtype == torch.uint8
    assert item["gt"].shape == (5, 1, 16, 16) and 0 <= item["gt"].min() and item["gt"].max() <= 1


def test_stateful_training_runs_and_its_checkpoint_streams(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"      # validation (and test) files of the first photos, as train_weights.sh makes
    assert gsd.main(["--dataset", "cifar", "--source_dir", str(photos), "--num_train", "1", "--num_test", "1",
                     "--frame_size", "32", "--data_root", str(data), "--workers", "1", "--light", "normal"]) == 0
    args = ["--data_root", str(data), "--exp_root", str(tmp_path / "exp"), "--exp_name", "st",
            *TINY_TRAIN, "--simulate_from", str(photos), "--light", "normal", "--encoding", "temporal",
            "--linear_skip", "--recon_target", "gt", "--epoch_size", "8", "--epochs_coarse", "3",
            "--epochs_prompt", "0", "--epochs_fine", "0", "--stateful", "6", "--flicker_weight", "0.5",
            "--detail_weight", "0.25"]
    args[args.index("--random_clip_terms")] = "--clip_weight=0"
    steps = {"n": 0}
    real = train.optimize

    def count(s, optimizer, loss):
        steps["n"] += 1
        real(s, optimizer, loss)
    monkeypatch.setattr(train, "optimize", count)
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "each item one recording of 7 time steps (700 frames)" in out     # T=2: 100 frames a step
    # 3 epochs x 2 batches x chunks of 8 steps: one chunk per 7-step recording
    assert steps["n"] == 6
    path = tmp_path / "exp" / "st" / "ckpts" / "checkpoint_last.pth"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["opt"]["stateful"] == 6
    assert all(np.isfinite(h["train_recon"]) for h in ckpt["history"]) and len(ckpt["history"]) == 3
    assert all(h["train_flicker"] > 0 and h["train_detail"] > 0 for h in ckpt["history"])   # both terms scored
    assert all(np.isclose(h["train_loss"], 1.5 * h["train_recon"] + 0.5 * h["train_flicker"] + 0.25 * h["train_detail"],
                          rtol=1e-4) for h in ckpt["history"])
    assert ckpt["model"]["readout.weight"].abs().sum() > 0            # the spiking path was trained
    # the checkpoint streams, stateful by default
    spk = (np.random.default_rng(0).random((400, 16, 24)) < 0.3).astype(np.uint8)
    dataset.write_dat(str(tmp_path / "s.dat"), spk)
    assert reconstruct.main(["--checkpoint", str(path), "--input", str(tmp_path / "s.dat"), "--output",
                             str(tmp_path / "s.npy"), "--height", "16", "--width", "24", "--stride", "100"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (3, 16, 24) and "stateful" in capsys.readouterr().out

    # --init: a new run starts from this network; its fixed linear skip is kept, not refitted
    init = [*args[:args.index("st")], "st2", *args[args.index("st") + 1:], "--init", str(path)]
    init[init.index("--epochs_coarse") + 1] = "1"
    assert train.main(init) == 0
    assert f"network initialised from {path}" in capsys.readouterr().out
    started = torch.load(tmp_path / "exp" / "st2" / "ckpts" / "checkpoint_last.pth", weights_only=True)["model"]
    assert torch.equal(started["skip.weight"], ckpt["model"]["skip.weight"])
    assert not torch.equal(started["readout.weight"], ckpt["model"]["readout.weight"])   # and it trained on
    # another architecture is refused at the start, in one line
    other = [a for a in init if a != "--linear_skip"]
    other[other.index("st2")] = "st3"
    assert train.main(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "another architecture" in err[0]

    # --image_gate on top of it: the gate is new and learns, the rest starts as this network
    gate = [*init, "--image_gate"]
    gate[gate.index("st2")] = "st4"
    assert train.main(gate) == 0
    assert "the image gate is new" in capsys.readouterr().out
    gated_ckpt = torch.load(tmp_path / "exp" / "st4" / "ckpts" / "checkpoint_last.pth", weights_only=True)
    assert gated_ckpt["model_config"]["image_gate"] and gated_ckpt["model"]["gate.weight"].abs().sum() > 0
    assert torch.equal(gated_ckpt["model"]["skip.weight"], ckpt["model"]["skip.weight"])
    assert reconstruct.main(["--checkpoint", str(tmp_path / "exp" / "st4" / "ckpts" / "checkpoint_last.pth"),
                             "--input", str(tmp_path / "s.dat"), "--output", str(tmp_path / "g.npy"),
                             "--height", "16", "--width", "24", "--stride", "100"]) == 0
    assert "image gate" in capsys.readouterr().out and np.load(tmp_path / "g.npy").shape == (3, 16, 24)
    # a gated network does not start a run without the gate
    back = [*init, "--init", str(tmp_path / "exp" / "st4" / "ckpts" / "checkpoint_last.pth")]
    back[back.index("st2")] = "st5"
    assert train.main(back) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another architecture" in err[0]


@pytest.mark.parametrize("flag", [["--encoding", "direct"], ["--recon_target", "tfi"], ["--epochs_fine", "1"],
                                  ["--no_simulate"]])
def test_stateful_needs_a_temporal_snn_on_simulated_recordings(tmp_path, photos, flag, capsys):
    args = ["--stateful", "4", "--encoding", "temporal", "--simulate_from", str(photos), "--recon_target", "gt",
            "--epochs_coarse", "1", "--epochs_prompt", "0", "--epochs_fine", "0", "--clip_pretrained", "none"]
    if flag == ["--no_simulate"]:
        i = args.index("--simulate_from")
        del args[i:i + 2]
    else:
        args += flag
    with pytest.raises(SystemExit) as e:
        train.get_args(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--stateful 4" in err and "needs" in err


@pytest.mark.parametrize("flag", [["--flicker_weight", "1"], ["--image_gate"]])
def test_stream_only_options_need_stateful(flag, capsys):
    with pytest.raises(SystemExit) as e:
        train.get_args([*flag, "--epochs_coarse", "1", "--epochs_prompt", "0", "--epochs_fine", "0"])
    assert e.value.code == 2 and flag[0] in capsys.readouterr().err.strip().splitlines()[-1]


def test_image_gate_is_for_temporal_encoding():
    with pytest.raises(ValueError, match="temporal"):
        SpikingLRN(image_gate=True)


def test_evaluate_scores_a_stream_model_as_reconstruct_runs_it(tmp_path, capsys):
    """evaluate.py --dat on a temporal SNN also scores the stateful frame of the centre window, the
    frame reconstruct.py writes there (a gated network: the carried image counts)."""
    import json

    import evaluate
    from PIL import Image
    spk, stream = moving_stream(tmp_path, frames=600)              # centre window [200, 400): 4 steps after 0
    model = gated(calibrated_temporal_snn(spk), 0.5, 5.0)
    ckpt = tmp_path / "g.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model_config": model.config(),
                "model": model.state_dict()}, ckpt)
    Image.fromarray(np.full((H, W), 100, np.uint8)).save(tmp_path / "gt.png")
    results = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(ckpt), "--dat", str(tmp_path / "s.dat"), "--gt", str(tmp_path / "gt.png"),
                          "--height", str(H), "--width", str(W), "--rate", "0.6", "--dtype", "fp32",
                          "--exp_root", str(tmp_path / "exp"), "--results_file", str(results)]) == 0
    out = capsys.readouterr().out
    assert "window from rest" in out and "stateful as reconstruct.py runs it (4 windows before this one)" in out
    metrics = json.loads(results.read_text())["runs"][0]["metrics"]
    frames = list(reconstruct.stateful_frames(model, stream, 0, 5, 50, None, 1, "cpu"))
    gt = torch.full((1, 1, H, W), 100 / 255)
    from metrics import psnr
    assert metrics["stateful"]["psnr"] == pytest.approx(float(psnr(frames[-1][None, None], gt)[0]), abs=1e-4)
    assert metrics["stateful"]["psnr"] != pytest.approx(metrics["snn"]["psnr"], abs=1e-3)   # the carry counts
