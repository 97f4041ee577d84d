"""train.py end to end on tiny simulated data with the tiny CLIP (CPU)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

import generate_synthetic_data
import train
from clip_guidance import ClipGuide, QualityPrompts, load_clip
from conftest import TINY_TRAIN, photo_folder
from dataset import UCIFAR_CLASSES
from models import SpikingLRN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tiny_data):
    return str(tiny_data)


def run(tmp_path, data_root, name, *extra):
    return train.main(["--data_root", data_root, "--exp_root", str(tmp_path / "exp"), "--exp_name", name,
                       *TINY_TRAIN, *extra])


def load(path):
    return torch.load(path, weights_only=True)


def test_three_stages_run_and_write_the_run_folder(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(tmp_path, data_root, "e2e", "--epochs_coarse", "4", "--epochs_prompt", "2", "--epochs_fine", "2") == 0
    # no --hq_dir: the training files' gt stands in for the high-quality bank, said once and recorded
    assert capsys.readouterr().out.count("!! no --hq_dir") == 1
    run_dir = tmp_path / "exp" / "e2e"
    for sub in ("ckpts/checkpoint_best.pth", "ckpts/checkpoint_last.pth", "opt.json"):
        assert (run_dir / sub).exists(), sub
    assert any((run_dir / "tensorboard").iterdir())
    assert len(list((run_dir / "imgs").glob("*.png"))) == 8          # one grid per epoch
    ckpt = load(run_dir / "ckpts" / "checkpoint_last.pth")
    history = ckpt["history"]
    assert [h["stage"] for h in history] == ["coarse"] * 4 + ["prompt"] * 2 + ["fine"] * 2
    assert all(torch.isfinite(torch.tensor(h["val_score"])) for h in history)
    coarse = [h["train_recon"] for h in history if h["stage"] == "coarse"]
    assert coarse[-1] < coarse[0], f"coarse reconstruction loss did not fall: {coarse}"
    prompt = [h["train_quality"] for h in history if h["stage"] == "prompt"]
    assert prompt[-1] < prompt[0], f"prompt loss did not fall: {prompt}"
    opt = json.loads((run_dir / "opt.json").read_text())
    assert opt["clip"]["clip_random_init"] is True
    assert any("NOT semantic" in w for w in opt["clip"]["warnings"])
    assert ckpt["clip"]["clip_random_init"] is True                    # the warning travels with the weights
    records = json.loads((tmp_path / "experiment_results.json").read_text())["runs"]
    assert records[-1]["kind"] == "train" and records[-1]["clip_random_init"] is True
    assert any("no --hq_dir" in w for w in records[-1]["warnings"])
    assert records[-1]["train"]["hq_bank"].startswith("clean gt images of the training files")


def test_resume_equals_an_uninterrupted_run(tmp_path, data_root, monkeypatch):
    """Killed inside a stage (its optimizer continues), after its last epoch, at a stage boundary,
    and inside the last stage (the prompt stage's bank draws behind it): each resumed run ends
    bit-identical."""
    monkeypatch.chdir(tmp_path)
    schedule = ["--epochs_coarse", "2", "--epochs_prompt", "1", "--epochs_fine", "2"]
    assert run(tmp_path, data_root, "straight", *schedule) == 0
    a = load(tmp_path / "exp" / "straight" / "ckpts" / "checkpoint_last.pth")
    # checkpoint_last.pth writes: coarse 1, coarse 2 (its end still to do), end of coarse, prompt 1,
    # end of prompt, fine 1, ...
    for after in (1, 2, 3, 6):
        name = f"interrupted{after}"
        interrupted_run(tmp_path, data_root, monkeypatch, name, *schedule, after=after)
        assert run(tmp_path, data_root, name, "--resume") == 0
        b = load(tmp_path / "exp" / name / "ckpts" / "checkpoint_last.pth")
        for key in a["model"]:
            torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=0, msg=f"{after}: {key}")
        torch.testing.assert_close(b["prompts"]["ctx"], a["prompts"]["ctx"], rtol=0, atol=0)
        assert [h["val_score"] for h in b["history"]] == [h["val_score"] for h in a["history"]]


def test_rerun_without_resume_and_wrong_architecture_are_refused(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(tmp_path, data_root, "arch", "--epochs", "3") == 0
    capsys.readouterr()
    assert run(tmp_path, data_root, "arch", "--epochs", "3") == 2
    assert "pass --resume" in capsys.readouterr().err
    assert run(tmp_path, data_root, "arch", "--resume", "--arch", "ann") == 2
    err = capsys.readouterr().err
    assert "--arch ann (the run has snn)" in err and len(err.strip().splitlines()) == 1
    assert run(tmp_path, data_root, "arch", "--resume", "--time_steps", "4") == 2
    assert "--time_steps 4 (the run has 2)" in capsys.readouterr().err


def interrupted_run(tmp_path, data_root, monkeypatch, name, *extra, after=1):
    """A run killed right after its `after`-th checkpoint_last.pth write."""
    saves = {"n": 0}
    real_save = train.atomic_torch_save

    def crash(obj, path):
        real_save(obj, path)
        if path.endswith("checkpoint_last.pth"):
            saves["n"] += 1
            if saves["n"] == after:
                raise KeyboardInterrupt

    monkeypatch.setattr(train, "atomic_torch_save", crash)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, data_root, name, *extra)
    monkeypatch.setattr(train, "atomic_torch_save", real_save)
    return tmp_path / "exp" / name


def test_resume_applies_or_refuses_typed_options_never_ignores_them(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = interrupted_run(tmp_path, data_root, monkeypatch, "typed",
                              "--epochs_coarse", "2", "--epochs_prompt", "1", "--epochs_fine", "1")
    # what to train: refused with a message, the run left as it was
    before = (run_dir / "ckpts" / "checkpoint_last.pth").read_bytes()
    capsys.readouterr()
    assert run(tmp_path, data_root, "typed", "--resume", "--lr", "0.001") == 2
    assert "--lr 0.001 (the run has 0.0001)" in capsys.readouterr().err
    assert (run_dir / "ckpts" / "checkpoint_last.pth").read_bytes() == before
    # a finished stage's epochs cannot change, the current one cannot shrink below what it ran
    assert run(tmp_path, data_root, "typed", "--resume", "--epochs_coarse", "0") == 2
    assert "has already run 1 epochs" in capsys.readouterr().err
    # how to run and more epochs: applied, and said
    assert run(tmp_path, data_root, "typed", "--resume", "--backend", "snntorch", "--epochs_fine", "2",
               "--lr", "0.0001") == 0
    assert "--backend snntorch (was fast)" in capsys.readouterr().out
    ckpt = load(run_dir / "ckpts" / "checkpoint_last.pth")
    assert ckpt["opt"]["backend"] == "snntorch" and ckpt["opt"]["stage_epochs"] == [2, 1, 2]
    assert [h["stage"] for h in ckpt["history"]] == ["coarse"] * 2 + ["prompt"] + ["fine"] * 2
    # the run is complete: plain --resume says what ran and trains nothing
    assert run(tmp_path, data_root, "typed", "--resume") == 0
    out = capsys.readouterr().out
    assert "the run is complete (coarse 2 epochs, prompt 1 epoch, fine 2 epochs)" in out and "--epochs_fine" in out
    assert load(run_dir / "ckpts" / "checkpoint_last.pth")["history"] == ckpt["history"]
    # more epochs of its last stage are trained; a stage before it is finished
    assert run(tmp_path, data_root, "typed", "--resume", "--epochs_prompt", "2") == 2
    assert "stage prompt is finished (1 epochs)" in capsys.readouterr().err
    assert run(tmp_path, data_root, "typed", "--resume", "--epochs_fine", "3") == 0
    assert "stage fine, epoch 2 (a finished stage given more epochs" in capsys.readouterr().out
    ckpt = load(run_dir / "ckpts" / "checkpoint_last.pth")
    assert [h["stage"] for h in ckpt["history"]] == ["coarse"] * 2 + ["prompt"] + ["fine"] * 3
    assert ckpt["opt"]["stage_epochs"] == [2, 1, 3] and ckpt["stage"] == len(train.STAGES)
    records = json.loads((tmp_path / "experiment_results.json").read_text())["runs"]
    assert [len(r["train"]["history"]) for r in records] == [5, 6]      # each finished session records


def test_a_run_using_a_retired_option_is_not_resumed_without_it(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = interrupted_run(tmp_path, data_root, monkeypatch, "old", "--epochs", "3")

    def started_with(**options):     # as if the run had been started by an older train.py
        ckpt = load(folder / "ckpts" / "checkpoint_last.pth")
        ckpt["opt"].update(options)
        torch.save(ckpt, folder / "ckpts" / "checkpoint_last.pth")
        opt = json.loads((folder / "opt.json").read_text())
        opt["opt"].update(options)
        (folder / "opt.json").write_text(json.dumps(opt))

    started_with(edge_weight=0.5)
    capsys.readouterr()
    assert run(tmp_path, data_root, "old", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--edge_weight 0.5" in err[0] and "no longer has" in err[0]
    started_with(edge_weight=0.0)    # an option that had no effect does not stand in the way
    assert run(tmp_path, data_root, "old", "--resume") == 0


def test_a_checkpoint_from_another_run_folder_is_refused(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    snn = interrupted_run(tmp_path, data_root, monkeypatch, "snn", "--epochs", "3")
    ann = interrupted_run(tmp_path, data_root, monkeypatch, "ann", "--epochs", "3", "--arch", "ann")
    own = (snn / "ckpts" / "checkpoint_last.pth").read_bytes()
    (snn / "ckpts" / "checkpoint_last.pth").write_bytes((ann / "ckpts" / "checkpoint_last.pth").read_bytes())
    kept = {f: (snn / f).read_bytes() for f in ("opt.json", "ckpts/checkpoint_best.pth")}
    capsys.readouterr()
    assert run(tmp_path, data_root, "snn", "--resume") == 2
    assert "belongs to another run" in capsys.readouterr().err
    assert {f: (snn / f).read_bytes() for f in kept} == kept          # nothing overwritten
    # a run from before run ids: the options must agree
    foreign = load(snn / "ckpts" / "checkpoint_last.pth")
    del foreign["opt"]["run_id"]
    torch.save(foreign, snn / "ckpts" / "checkpoint_last.pth")
    opt = json.loads((snn / "opt.json").read_text())
    del opt["opt"]["run_id"]
    (snn / "opt.json").write_text(json.dumps(opt))
    assert run(tmp_path, data_root, "snn", "--resume") == 2
    assert "arch: 'ann' vs 'snn'" in capsys.readouterr().err
    # its own checkpoint resumes, and a temp file left by a killed write is cleaned up
    (snn / "ckpts" / "checkpoint_last.pth").write_bytes(own)
    (snn / "opt.json").write_bytes(kept["opt.json"])
    stale = snn / "ckpts" / "checkpoint_best.pth.k1ll3d_0.tmp"
    stale.write_bytes(b"half a checkpoint")
    unrelated = snn / "ckpts" / "notes.tmp"
    unrelated.write_bytes(b"the user's")
    assert run(tmp_path, data_root, "snn", "--resume") == 0
    assert not stale.exists() and unrelated.exists()
    records = json.loads((tmp_path / "experiment_results.json").read_text())["runs"]
    assert [r["run_name"] for r in records] == ["snn"]


def test_gradient_reaches_the_prompt_vectors_only_in_stage_2():
    clip_model, _ = load_clip("tiny", "none")
    guide = ClipGuide(clip_model, UCIFAR_CLASSES, "cpu")
    prompts = QualityPrompts(clip_model)
    model = SpikingLRN(time_steps=2)
    args = train.get_args(["--clip_model", "tiny"])
    losses = train.StageLoss(args, guide)
    x = torch.randint(0, 4, (2, 50, 16, 16)).float()
    batch = {"label": torch.tensor([0, 3]), "tfi": torch.rand(2, 1, 16, 16), "tfp": torch.rand(2, 1, 16, 16)}

    def grads_after(loss):
        model.zero_grad(set_to_none=True)
        prompts.zero_grad(set_to_none=True)
        loss.backward()
        lrn = any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        ctx = prompts.ctx.grad is not None and prompts.ctx.grad.abs().sum() > 0
        return lrn, ctx

    assert grads_after(losses.coarse(model(x), batch)[0]) == (True, False)
    with torch.no_grad():
        recon = model(x).clamp(0, 1)
    assert grads_after(losses.prompt(prompts(), torch.rand(2, 1, 16, 16), recon)[0]) == (False, True)
    with torch.no_grad():
        features = prompts()
    assert grads_after(losses.fine(model(x), batch, features)[0]) == (True, False)


def test_each_loss_weight_scales_the_term_it_names():
    clip_model, _ = load_clip("tiny", "none")
    guide = ClipGuide(clip_model, UCIFAR_CLASSES, "cpu")
    features = QualityPrompts(clip_model)().detach()
    out = torch.rand(2, 1, 16, 16)
    batch = {"label": torch.tensor([1, 2]), "tfi": torch.rand(2, 1, 16, 16)}

    def total(stage, **weights):
        args = train.get_args(["--recon_weight", "1", "--clip_weight", "1", "--prompt_weight", "1", "--tv_weight", "1",
                               "--detail_weight", "1"])
        vars(args).update(weights)
        loss = train.StageLoss(args, guide)
        if stage == "coarse":
            return loss.coarse(out, batch)
        if stage == "fine":
            return loss.fine(out, batch, features)
        return loss.prompt(features, out, out)

    for stage, names in {"coarse": {"recon_weight": "recon", "clip_weight": "clip", "detail_weight": "detail"},
                         "fine": {"recon_weight": "recon", "clip_weight": "clip", "prompt_weight": "quality", "tv_weight": "tv",
                                  "detail_weight": "detail"},
                         "prompt": {"prompt_weight": "quality"}}.items():
        base, terms = total(stage)
        for weight, term in names.items():
            changed, _ = total(stage, **{weight: 3.0})
            torch.testing.assert_close(changed - base, 2.0 * terms[term], msg=f"{stage}: {weight}")


def test_detail_term_charges_lost_texture_not_its_place():
    stripes = (torch.arange(17) % 2).float().expand(17, 17)          # 1-px vertical stripes [17, 17]
    shifted = 1.0 - stripes                                             # the same texture, moved 1 px
    assert float(train.detail_l1(shifted, stripes)) == pytest.approx(0.0)   # pixel L1 would be 1
    assert float(train.detail_l1(stripes + 0.25, stripes)) == pytest.approx(0.0)
    # a uniform grey has no detail; the stripes' mean absolute neighbour difference is (1 + 0) / 2
    assert float(train.detail_l1(torch.full_like(stripes, 0.5), stripes)) == pytest.approx(0.5)
    # cell by cell: stripes on the left half only, against stripes on the right half only
    left, right = stripes.clone(), stripes.clone()
    left[:, 9:], right[:, :9] = 0.0, 0.0
    assert float(train.detail_l1(left, right)) > 0.4 > float(train.detail_l1(left, left))


def test_epochs_split_over_the_stages():
    assert train.get_args(["--epochs", "10"]).stage_epochs == [4, 2, 4]
    assert train.get_args(["--epochs", "3"]).stage_epochs == [1, 1, 1]
    assert train.get_args(["--epochs_coarse", "0", "--epochs_prompt", "1", "--epochs_fine", "2"]).stage_epochs == [0, 1, 2]
    with pytest.raises(SystemExit):
        train.get_args(["--epochs_coarse", "1"])


def test_ddp_two_cpu_processes_with_gloo(tmp_path, data_root):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), "--data_root", data_root, "--exp_root", str(tmp_path / "exp"),
           "--exp_name", "ddp", "--epochs", "3", "--device", "cpu", *TINY_TRAIN]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load(tmp_path / "exp" / "ddp" / "ckpts" / "checkpoint_last.pth")
    assert [h["stage"] for h in ckpt["history"]] == ["coarse", "prompt", "fine"]
    records = json.loads((tmp_path / "experiment_results.json").read_text())["runs"]
    assert [r["train"]["world_size"] for r in records] == [2]           # rank 0 alone writes


def test_early_stop_ends_a_stage_after_patience_epochs_without_improvement(tmp_path, data_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a coarse loss that is the same every epoch: the validation score never improves after epoch 1
    real_coarse = train.StageLoss.coarse

    def flat_coarse(self, out, batch):
        total, terms = real_coarse(self, out, batch)
        return total * 0 + 1.0, terms

    monkeypatch.setattr(train.StageLoss, "coarse", flat_coarse)
    hq = tmp_path / "hq" / "any" / "layout"
    hq.mkdir(parents=True)
    for k in range(3):
        Image.new("L", (40, 48), 60 * k).save(hq / f"{k}.png")
    assert run(tmp_path, data_root, "early", "--epochs_coarse", "5", "--epochs_prompt", "1", "--epochs_fine", "1",
               "--early_stop", "--patience", "2", "--hq_dir", str(tmp_path / "hq")) == 0
    ckpt = load(tmp_path / "exp" / "early" / "ckpts" / "checkpoint_last.pth")
    stages = [h["stage"] for h in ckpt["history"]]
    assert stages == ["coarse"] * 3 + ["prompt", "fine"], stages        # 1 best + 2 without improvement
    opt = json.loads((tmp_path / "exp" / "early" / "opt.json").read_text())
    assert opt["hq_bank"] == f"--hq_dir {tmp_path / 'hq'} (3 images)"
    assert not any("no --hq_dir" in w for w in ckpt["clip"]["warnings"])


def test_random_clip_switches_the_clip_terms_off_by_default(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--data_root", data_root, "--exp_root", str(tmp_path / "exp"), "--exp_name", "offline",
            *[a for a in TINY_TRAIN if a != "--random_clip_terms"],
            "--epochs_coarse", "1", "--epochs_prompt", "2", "--epochs_fine", "1"]
    assert train.main(argv) == 0
    assert "losses are OFF" in capsys.readouterr().out
    ckpt = load(tmp_path / "exp" / "offline" / "ckpts" / "checkpoint_last.pth")
    assert [h["stage"] for h in ckpt["history"]] == ["coarse", "coarse"]    # fine epochs go to stage 1
    assert ckpt["opt"]["clip_weight"] == 0 and ckpt["opt"]["prompt_weight"] == 0
    assert all("train_clip" not in h for h in ckpt["history"])             # the term is not computed
    assert any("losses are OFF" in w for w in ckpt["clip"]["warnings"])
    opt = json.loads((tmp_path / "exp" / "offline" / "opt.json").read_text())
    assert opt["hq_bank"] == "none (the prompt stage does not run)"               # and no gt is read for it
    # offline, only the coarse and fine epochs train: none of them is refused, not a run of nothing
    argv[argv.index("offline")] = "nothing"
    assert train.main(argv[:-6] + ["--epochs_coarse", "0", "--epochs_prompt", "2", "--epochs_fine", "0"]) == 2
    err = capsys.readouterr().err
    assert "only the coarse and fine epochs train" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "exp" / "nothing").exists()


def test_offline_run_records_the_score_of_its_best_checkpoint(tmp_path, data_root, monkeypatch):
    """An offline run (random CLIP: every epoch in stage 1) has no stage-3 epochs; its record
    must still carry the score that selected checkpoint_best.pth, so runs can be ranked."""
    monkeypatch.chdir(tmp_path)
    argv = ["--data_root", data_root, "--exp_root", str(tmp_path / "exp"), "--exp_name", "off",
            *[a for a in TINY_TRAIN if a != "--random_clip_terms"], "--epochs", "3"]
    assert train.main(argv) == 0
    record = json.loads((tmp_path / "experiment_results.json").read_text())["runs"][-1]["train"]
    history = record["history"]
    assert len(history) >= 2 and {h["stage"] for h in history} == {"coarse"}
    best = load(tmp_path / "exp" / "off" / "ckpts" / "checkpoint_best.pth")
    assert record["best_val_score"] == best["val_score"] == min(h["val_score"] for h in history)
    assert record["best_stage"] == "coarse"
    assert history[record["best_epoch"] - 1]["val_score"] == record["best_val_score"]


def test_augmented_training_views_match_spikes_and_gt(data_root):
    """With the crop as large as the frame, a view is a flip/rotation of the whole sample, and
    the spikes and the gt must have been given the same one."""
    from dataset import UHSRDataset
    plain = UHSRDataset(data_root, "CIFAR", "train", crop_size=100)[0]    # conftest.tiny_data: 100x100 frames
    ds = UHSRDataset(data_root, "CIFAR", "train", crop_size=100, augment=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        view = ds[0]
        matches = [(flip, k) for flip in (False, True) for k in range(4)
                   if torch.equal(view["gt"], torch.rot90(plain["gt"].flip(-1) if flip else plain["gt"], k, (-2, -1)))]
        assert matches, "the gt view is not a flip/rotation of the gt"
        assert any(torch.equal(view["voxel"], torch.rot90(plain["voxel"].flip(-1) if f else plain["voxel"], k, (-2, -1)))
                   for f, k in matches), "spikes and gt were transformed differently"
        seen.add(matches[0])
    assert len(seen) > 2                                                   # the view changes


def test_training_on_streams_simulated_on_the_fly(tmp_path, data_root, monkeypatch, capsys):
    """--simulate_from: fresh captures of photographs; the files' own scenes are excluded."""
    src = photo_folder(tmp_path / "photos", 48)
    ds = generate_synthetic_data.SimulatedStreams(str(src), "CIFAR", generate_synthetic_data.LIGHT["low"], 24, 50,
                                                  exclude={"0_frog.png"}, length=5)
    assert len(ds) == 5 and len(ds.images) == 5                       # 6 photos, one excluded
    item = ds[0]
    assert item["voxel"].shape == (50, 24, 24) and item["voxel"].dtype == torch.uint8
    assert item["tfp"].shape == item["gt"].shape == (1, 24, 24) and item["has_gt"]
    monkeypatch.chdir(tmp_path)
    argv = ["--simulate_from", str(src), "--epoch_size", "8", "--recon_target", "gt",
            "--epochs_coarse", "2", "--epochs_prompt", "0", "--epochs_fine", "0"]
    # conftest.tiny_data is normal light: a low-light simulation beside it is another camera
    capsys.readouterr()
    assert run(tmp_path, data_root, "wronglight", *argv, "--light", "low") == 2
    err = capsys.readouterr().err
    assert "--light low" in err and "pass the --light" in err and "normal" in err and len(err.strip().splitlines()) == 1
    assert run(tmp_path, data_root, "onthefly", *argv, "--light", "normal") == 0
    out = capsys.readouterr().out
    assert "simulated on the fly (normal light) from 6 images" in out      # no file shows these photos
    ckpt = load(tmp_path / "exp" / "onthefly" / "ckpts" / "checkpoint_last.pth")
    assert [h["stage"] for h in ckpt["history"]] == ["coarse", "coarse"]
    # validation files whose record names another camera of the same light (here: no lens) are
    # refused before training, though their firing rate is close
    other = tmp_path / "other-camera"
    shutil.copytree(data_root, other)
    record = other / "U-CIFAR" / "simulation.json"
    settings = json.loads(record.read_text())
    settings["camera"]["lens_blur_px"] = [0.0, 0.0]
    record.write_text(json.dumps(settings))
    assert run(tmp_path, str(other), "othercamera", *argv, "--light", "normal") == 2
    err = capsys.readouterr().err.strip()
    assert str(record) in err and "lens_blur_px [0.0, 0.0] (training: [0.2, 0.8])" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "exp" / "othercamera" / "ckpts").exists()


def test_plain_cnn_takes_one_bin_per_frame_and_a_fitted_skip(tmp_path, data_root, monkeypatch, capsys):
    """--arch ann --bins 200 --linear_skip: the plain CNN given what the temporal SNN gets (one bin
    per frame, the same least-squares skip), the comparison the decomposition needs."""
    monkeypatch.chdir(tmp_path)
    assert run(tmp_path, data_root, "ann_t", "--arch", "ann", "--bins", "200", "--linear_skip",
               "--recon_target", "gt", "--epochs_coarse", "1", "--epochs_prompt", "0", "--epochs_fine", "0") == 0
    assert "the ReLU layers learn the residual" in capsys.readouterr().out
    config = load(tmp_path / "exp" / "ann_t" / "ckpts" / "checkpoint_last.pth")["model_config"]
    assert config["arch"] == "ann" and config["in_bins"] == 200 and config["linear_skip"]


def test_linear_skip_starts_from_the_least_squares_image(data_root):
    """The fitted linear path reconstructs the target better than the untrained one, and its
    weights are the least-squares solution (checked against torch.linalg.lstsq)."""
    from torch.utils.data import DataLoader, Subset
    from dataset import UHSRDataset
    ds = UHSRDataset(data_root, "CIFAR", "train", crop_size=32, with_baselines=True)
    loader = DataLoader(Subset(ds, [0, 1]), batch_size=2)               # one batch
    torch.manual_seed(0)
    model = SpikingLRN(time_steps=2, linear_skip=True).eval()
    batch = next(iter(loader))
    x, gt = batch["voxel"].float(), batch["gt"]
    before = (model(x) - gt).abs().mean()
    rmse = train.fit_linear_skip(model, loader, "gt", torch.device("cpu"), pixels_per_image=8 * 32 * 32)
    after = (model(x) - gt).abs().mean()
    assert after < 0.5 * before and rmse < 0.2
    a = torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 450)
    a = torch.cat([a, torch.ones_like(a[:, :1])], 1).double()
    fit = (a @ torch.cat([model.skip.weight.flatten(), model.skip.bias]).double() - gt.flatten().double()).square().mean()
    ref = torch.linalg.lstsq(a, gt.flatten().double()[:, None]).solution[:, 0]
    best = (a @ ref - gt.flatten().double()).square().mean()
    # fitted on ~all of these pixels (8 random draws per pixel, so a few weigh more): near the
    # optimum (with one draw per pixel, only ~63% of them, the fit on the shared 100-px data was 2x)
    assert fit <= best * 1.3


@pytest.mark.parametrize("flag,value", [("--crop_size", "0"), ("--crop_size", "-8"), ("--batch_size", "0"),
                                        ("--lr", "0"), ("--lr", "nan"), ("--lr", "-1e-4"), ("--time_steps", "0"),
                                        ("--beta", "1.5"), ("--threshold", "0"), ("--val_fraction", "0"),
                                        ("--val_fraction", "1"), ("--num_workers", "-1"), ("--patience", "0"),
                                        ("--dataset", "mnist"), ("--epochs_fine", "-1"), ("--bins", "0"),
                                        ("--bins", "30"), ("--lattices", "1.5"), ("--lattices", "-0.1")])
def test_nonsensical_flags_are_refused_when_parsed(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        train.get_args([flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_detail_term_needs_neighbouring_pixels(capsys):
    assert train.get_args(["--detail_weight", "1", "--crop_size", "2"]).detail_weight == 1
    with pytest.raises(SystemExit) as e:
        train.get_args(["--detail_weight", "1", "--crop_size", "1"])
    assert e.value.code == 2 and "--crop_size 1" in capsys.readouterr().err
    assert float(train.detail_l1(torch.rand(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))) > 0   # one 1x1 cell


def test_lattices_need_layered_scenes_simulated_on_the_fly(tmp_path, capsys):
    assert train.get_args(["--lattices", "0.5", "--simulate_from", str(tmp_path), "--light", "normal"]).lattices == 0.5
    for argv in (["--lattices", "0.5"], ["--lattices", "0.5", "--simulate_from", str(tmp_path), "--light", "low"]):
        with pytest.raises(SystemExit) as e:
            train.get_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--lattices 0.5" in err and "--light normal" in err


def test_bins_is_the_direct_voxel_and_temporal_encoding_keeps_its_own(capsys):
    assert train.get_args(["--bins", "200"]).bins == 200
    with pytest.raises(SystemExit) as e:
        train.get_args(["--encoding", "temporal", "--bins", "200"])
    assert e.value.code == 2 and "--bins 200: temporal encoding" in capsys.readouterr().err


def test_dataset_vocabulary_and_the_older_spelling():
    assert train.get_args(["--dataset", "caltech"]).data_type == "CALTECH"
    assert train.get_args(["--data_type", "CIFAR"]).data_type == "CIFAR"
    assert train.get_args([]).data_type == "CIFAR"


def test_bad_data_and_results_file_are_one_line_errors(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(tmp_path, str(tmp_path / "nowhere"), "nodata", "--epochs", "3") == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "experiment_results.json").write_text("[1, 2]")
    assert run(tmp_path, data_root, "badresults", "--epochs", "3") == 2
    assert "experiment_results.json" in capsys.readouterr().err
    assert not (tmp_path / "exp" / "badresults").exists()    # refused before training


def test_resuming_an_offline_run_with_more_epochs_keeps_them_in_stage_1(tmp_path, data_root, monkeypatch, capsys):
    """An interrupted offline run resumed with a typed --epochs: the epochs are folded into stage
    1 as at the start, not re-split over CLIP stages whose weights are 0."""
    monkeypatch.chdir(tmp_path)
    argv = ["--data_root", data_root, "--exp_root", str(tmp_path / "exp"), "--exp_name", "off",
            *[a for a in TINY_TRAIN if a != "--random_clip_terms"]]
    real_save = train.atomic_torch_save

    def stop_after_first_epoch(obj, path):
        real_save(obj, path)
        if path.endswith("checkpoint_last.pth"):
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "atomic_torch_save", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv + ["--epochs_coarse", "1", "--epochs_prompt", "1", "--epochs_fine", "1"])   # -> [2, 0, 0]
    monkeypatch.setattr(train, "atomic_torch_save", real_save)
    assert train.main(argv + ["--resume", "--epochs", "5"]) == 0                                # [2, 1, 2] -> [4, 0, 0]
    ckpt = load(tmp_path / "exp" / "off" / "ckpts" / "checkpoint_last.pth")
    assert [h["stage"] for h in ckpt["history"]] == ["coarse"] * 4
    assert ckpt["opt"]["stage_epochs"] == [4, 0, 0]
    # finished: a plain --resume says what ran, not "three stages"; a larger --epochs trains on in stage 1
    capsys.readouterr()
    assert train.main(argv + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "the run is complete (coarse 4 epochs; prompt and fine did not run (CLIP terms off))" in out
    assert train.main(argv + ["--resume", "--epochs", "6"]) == 0                                # [2, 1, 3] -> [5, 0, 0]
    ckpt = load(tmp_path / "exp" / "off" / "ckpts" / "checkpoint_last.pth")
    assert [h["stage"] for h in ckpt["history"]] == ["coarse"] * 5 and ckpt["opt"]["stage_epochs"] == [5, 0, 0]
