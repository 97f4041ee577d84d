"""The lens input (train.py --lens_input): simulated captures and files carry their lens blur,
the network adds (lens^2 - ref^2) x a second readout, every path computes it the same way, and
what cannot use it is refused in one line."""
import dataclasses
import json

import numpy as np
import pytest
import torch

import dataset
import generate_synthetic_data as gen
import models
import reconstruct
import train
from conftest import TINY_TRAIN, photo_folder
from models import CHECKPOINT_FORMAT, SpikingLRN

CHANNELS = (8, 16, 8, 4)


def lens_snn(seed=0, backend="fast"):
    """A direct-encoding SNN with a skip and a random lens readout (its bias 1: the lens term is
    then at least (lens^2 - ref^2) wherever the spikes are few)."""
    torch.manual_seed(seed)
    model = SpikingLRN(20, 4, "direct", channels=CHANNELS, linear_skip=True, lens_ref_px=0.5, backend=backend)
    torch.nn.init.normal_(model.lens_readout.weight, std=0.1)
    torch.nn.init.constant_(model.lens_readout.bias, 1.0)
    return model.eval()


def voxel(batch=2, seed=0):
    return torch.poisson(torch.rand(batch, 20, 12, 12, generator=torch.Generator().manual_seed(seed)) * 3)


def test_lens_term_vanishes_at_the_reference_and_for_an_unknown_lens():
    model, x = lens_snn(), voxel()
    with torch.no_grad():
        at_ref = model(x)
        assert torch.equal(model(x, lens_px=0.5), at_ref)
        assert torch.equal(model(x, lens_px=torch.tensor([float("nan"), 0.5])), at_ref)
        sharp = model(x, lens_px=torch.tensor([0.0, 0.8]))
        spike_mean = model._forward_fast(x)[2]
        term = model.lens_readout(spike_mean)
    # what the lens adds is (lens^2 - ref^2) x the lens readout, per item
    assert torch.allclose(sharp[0] - at_ref[0], (0.0 - 0.25) * term[0], atol=1e-5)
    assert torch.allclose(sharp[1] - at_ref[1], (0.64 - 0.25) * term[1], atol=1e-5)
    assert (sharp[0] - at_ref[0]).abs().min() > 0.1          # the bias alone moves it by 0.25


def test_every_path_adds_the_same_lens_term():
    fast, x = lens_snn(), voxel()
    reference = lens_snn(backend="snntorch")
    lens = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        out = fast(x, lens_px=lens)
        assert torch.allclose(reference(x, lens_px=lens), out, atol=1e-5)
        models.prepare_for_inference(fast, "bf16")
        assert (fast(x, lens_px=lens) - out).abs().max() < 0.05


def test_a_new_lens_readout_starts_at_zero_and_the_config_names_it():
    model = SpikingLRN(20, 2, "direct", channels=CHANNELS, lens_ref_px=0.5).eval()
    x = voxel()
    with torch.no_grad():
        assert torch.equal(model(x, lens_px=0.2), model(x, lens_px=0.8))
    config = model.config()
    assert config["lens_ref_px"] == 0.5 and "lens input" in models.model_name(config)
    assert "lens_ref_px" not in SpikingLRN(20, 2, "direct", channels=CHANNELS).config()
    rebuilt = models.build_model(config)
    assert rebuilt.lens_readout is not None and rebuilt.lens_ref_px == 0.5


def test_lens_input_is_for_whole_windows_of_direct_encoding():
    with pytest.raises(ValueError, match="direct encoding only"):
        SpikingLRN(50, 4, "temporal", channels=CHANNELS, lens_ref_px=0.5)
    model = SpikingLRN(20, 2, "direct", channels=CHANNELS, lens_ref_px=0.5).eval()
    with pytest.raises(ValueError, match="whole windows"):
        model.step(voxel(1), model.init_state(1, 12, 12))


def test_captures_and_files_carry_their_lens(tmp_path):
    cfg = gen.LIGHT["normal"]
    canvas = np.random.default_rng(0).random((40, 40), dtype=np.float32)
    sensor = gen.make_sensor(cfg, (24, 24), 0)
    spk, gt = gen.simulate_spikes(canvas, 50, cfg, sensor, np.random.default_rng(1), (24, 24))
    spk2, gt2, lens = gen.simulate_spikes(canvas, 50, cfg, sensor, np.random.default_rng(1), (24, 24), with_lens=True)
    assert np.array_equal(spk, spk2) and np.array_equal(gt, gt2)      # asking for it draws nothing more
    assert cfg.lens_blur_px[0] <= lens <= cfg.lens_blur_px[1]
    no_lens = dataclasses.replace(cfg, lens_blur_px=(0.0, 0.0))
    assert gen.simulate_spikes(canvas, 50, no_lens, sensor, np.random.default_rng(1), (24, 24), with_lens=True)[2] is None
    # generated files store it (a camera with a lens), and the dataset items hand it on
    gen.main(["--num_train", "1", "--num_test", "0", "--frame_size", "40", "--data_root", str(tmp_path / "normal"),
              "--workers", "1", "--light", "normal"])
    ds = dataset.UHSRDataset(str(tmp_path / "normal"), "CIFAR", "train", crop_size=32)
    stored = [float(np.load(f)["lens_px"]) for f in ds.files]
    assert all(0.2 <= s <= 0.8 for s in stored) and len(set(stored)) > 1
    assert [float(ds[i]["lens_px"]) for i in range(len(ds))] == pytest.approx(stored)
    # a camera without a lens stores none: the items say NaN (unknown)
    gen.main(["--num_train", "1", "--num_test", "0", "--frame_size", "40", "--data_root", str(tmp_path / "low"),
              "--workers", "1", "--light", "low"])
    low = dataset.UHSRDataset(str(tmp_path / "low"), "CIFAR", "train", crop_size=32)
    assert "lens_px" not in np.load(low.files[0]).files and torch.isnan(low[0]["lens_px"])
    # so do the captures simulated on the fly
    streams = gen.SimulatedStreams(str(photo_folder(tmp_path / "photos", 48)), "CIFAR", cfg, 24, 50, length=2)
    assert 0.2 <= float(streams[0]["lens_px"]) <= 0.8


def test_files_made_before_the_lens_was_stored_are_not_kept_as_current(tmp_path, capsys):
    """The settings record names the keys of the files: a folder whose record predates lens_px
    is refused in one line, and --overwrite makes its files again, now with their lens."""
    argv = ["--num_train", "1", "--num_test", "0", "--frame_size", "40", "--data_root", str(tmp_path),
            "--workers", "1", "--light", "normal"]
    assert gen.main(argv) == 0
    record = tmp_path / "U-CIFAR" / "simulation.json"
    settings = json.loads(record.read_text())
    assert settings["keys"][-1] == "lens_px"
    for f in (tmp_path / "U-CIFAR" / "train").glob("*.npz"):      # as an older version wrote them
        with np.load(f) as z:
            np.savez(f, **{k: z[k] for k in z.files if k != "lens_px"})
    del settings["keys"]
    record.write_text(json.dumps(settings))
    capsys.readouterr()
    assert gen.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "keys ['spk', 'label', 'label_name', 'gt'] (now [" in err and "'lens_px']" in err
    assert "--overwrite" in err and len(err.splitlines()) == 1
    assert gen.main(argv + ["--overwrite"]) == 0
    assert all("lens_px" in np.load(f).files for f in (tmp_path / "U-CIFAR" / "train").glob("*.npz"))
    # a camera without a lens writes the files it always wrote: an older record of one is current
    low = tmp_path / "low"
    assert gen.main(argv[:7] + [str(low), "--workers", "1", "--light", "low"]) == 0
    record = low / "U-CIFAR" / "simulation.json"
    settings = json.loads(record.read_text())
    del settings["keys"]
    record.write_text(json.dumps(settings))
    assert gen.main(argv[:7] + [str(low), "--workers", "1", "--light", "low"]) == 0
    assert "10 made before with these settings are kept" in capsys.readouterr().out


def test_a_bad_lens_in_a_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "0.npz"
    np.savez(path, spk=np.zeros((200, 8, 8), np.uint8), label=np.int64(0), lens_px=np.array([0.5, 0.6]))
    with pytest.raises(dataset.SpikeDataError, match="'lens_px' must be one blur std"):
        dataset.load_npz(str(path), with_lens=True)
    assert dataset.load_npz(str(path))[1] == 0        # a reader that does not ask is not bothered


def test_train_with_lens_input_from_a_network_without_one(tmp_path, tiny_data, monkeypatch, capsys):
    """--lens_input --init: the trained network gets a new, zero lens readout; validation files
    that do not store their lens are refused before training; nonsensical combinations too."""
    monkeypatch.chdir(tmp_path)
    src = photo_folder(tmp_path / "photos", 48)
    common = ["--data_root", str(tiny_data), "--exp_root", str(tmp_path / "exp"), *TINY_TRAIN,
              "--simulate_from", str(src), "--light", "normal", "--epoch_size", "8", "--recon_target", "gt",
              "--epochs_coarse", "1", "--epochs_prompt", "0", "--epochs_fine", "0", "--linear_skip"]
    assert train.main([*common, "--exp_name", "plain"]) == 0
    plain = tmp_path / "exp" / "plain" / "ckpts" / "checkpoint_last.pth"
    capsys.readouterr()
    assert train.main([*common, "--exp_name", "lens", "--lens_input", "--init", str(plain)]) == 0
    assert "the lens readout is new" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "exp" / "lens" / "ckpts" / "checkpoint_last.pth", weights_only=True)
    assert ckpt["model_config"]["lens_ref_px"] == models.LENS_REF_PX
    assert ckpt["model"]["lens_readout.weight"].abs().sum() > 0        # it trained
    # validation files made before the simulator stored the lens
    old = tmp_path / "old-files"
    old_train = old / "U-CIFAR" / "train"
    old_train.mkdir(parents=True)
    for f in (tiny_data / "U-CIFAR").iterdir():
        if f.is_file():
            (old / "U-CIFAR" / f.name).write_bytes(f.read_bytes())
    for f in sorted((tiny_data / "U-CIFAR" / "train").glob("*.npz")):
        with np.load(f) as z:
            np.savez(old_train / f.name, **{k: z[k] for k in z.files if k != "lens_px"})
    capsys.readouterr()
    argv = [*common, "--exp_name", "old", "--lens_input", "--data_root", str(old)]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--lens_input" in err and "missing key 'lens_px'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "exp" / "old" / "ckpts").exists()
    # so are such files trained on (their lens would be read as the reference: nothing learned)
    files_mode = ["--data_root", str(old), "--exp_root", str(tmp_path / "exp"), *TINY_TRAIN, "--exp_name",
                  "oldfiles", "--lens_input", "--recon_target", "gt", "--epochs_coarse", "1", "--epochs_prompt",
                  "0", "--epochs_fine", "0"]
    assert train.main(files_mode) == 2
    assert "missing key 'lens_px'" in capsys.readouterr().err
    for extra in (["--encoding", "temporal"], ["--arch", "ann"], ["--stateful", "4"],
                  ["--simulate_from", str(src), "--light", "low"]):
        with pytest.raises(SystemExit) as e:
            train.get_args(["--lens_input", *extra])
        assert e.value.code == 2 and "--lens_input" in capsys.readouterr().err


def test_reconstruct_tells_the_network_the_lens(tmp_path, capsys):
    torch.manual_seed(0)
    spk = (np.random.default_rng(0).random((200, 16, 24)) < 0.3).astype(np.uint8)
    dat = tmp_path / "s.dat"
    dataset.write_dat(str(dat), spk)
    model = SpikingLRN(200, 2, "direct", channels=CHANNELS, linear_skip=True, lens_ref_px=0.5)
    torch.nn.init.zeros_(model.skip.weight)            # a grey 0.5 image: nothing is clipped
    torch.nn.init.constant_(model.skip.bias, 0.5)
    torch.nn.init.constant_(model.lens_readout.bias, 1.0)
    plain = SpikingLRN(200, 2, "direct", channels=CHANNELS, linear_skip=True)
    paths = {}
    for name, m in (("lens", model), ("plain", plain)):
        paths[name] = str(tmp_path / f"{name}.pth")
        torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model_config": m.config(),
                    "model": m.state_dict()}, paths[name])

    def run(ckpt, out, *extra):
        return reconstruct.main(["--checkpoint", ckpt, "--input", str(dat), "--output", str(tmp_path / out),
                                 "--height", "16", "--width", "24", "--dtype", "fp32", *extra])

    assert run(paths["lens"], "ref.npy") == 0 and run(paths["lens"], "sharp.npy", "--lens_px", "0.3") == 0
    ref, sharp = np.load(tmp_path / "ref.npy"), np.load(tmp_path / "sharp.npy")
    # the grey image at the reference lens; the bias-1 lens readout lowers it by 0.25 - 0.09 at 0.3 px
    assert np.allclose(ref, 0.5, atol=1e-6) and np.allclose(ref - sharp, 0.16, atol=1e-5)
    capsys.readouterr()
    assert run(paths["plain"], "p.npy", "--lens_px", "0.3") == 2
    err = capsys.readouterr().err.strip()
    assert "--lens_px 0.3" in err and "no lens input" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.npy").exists()
