"""evaluate.py on tiny data: outputs, the results record, and refusal of bad checkpoints."""
import csv
import json
import os

import pytest
import torch

import evaluate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def trained(tiny_run):
    return tiny_run["root"], tiny_run["data"], tiny_run["ckpt"]


def test_evaluate_writes_csv_summary_grid_and_record(trained, tmp_path):
    root, data, ckpt = trained
    results = tmp_path / "results.json"
    code = evaluate.main(["--checkpoint", str(ckpt), "--data_root", str(data), "--crop_size", "96",
                          "--num_workers", "0", "--exp_root", str(tmp_path / "exp"),
                          "--results_file", str(results), "--num_grid", "3"])
    assert code == 0
    out = tmp_path / "exp" / "tinyrun"                    # named after the run folder, not 'ckpts'
    rows = list(csv.DictReader(open(out / "eval_CIFAR_test.csv")))
    assert len(rows) == 10                                # 10 classes x 1 test sample
    assert {"snn_top1", "tfp_niqe", "tfi_psnr", "snn_ssim", "snn_pred"} <= set(rows[0])
    summary = (out / "eval_CIFAR_test_summary.md").read_text()
    assert "NOT semantic" in summary and "input 96x96" in summary and "1x1 blocks" in summary
    assert (out / "imgs" / "eval_CIFAR_test_grid.png").exists()
    record = json.loads(results.read_text())["runs"][0]
    assert record["run_name"] == "tinyrun" and record["kind"] == "evaluate"
    assert record["clip_random_init"] is True
    for method in ("snn", "tfp", "tfi"):
        m = record["metrics"][method]
        assert 0.0 <= m["top1"] <= 1.0
        assert all(isinstance(m[k], float) for k in ("niqe", "brisque", "piqe", "psnr", "ssim"))
    assert set(record["firing_rates"]) == {"lif1", "lif2", "lif3", "lif4"}
    # the CSV's per-sample values average to the summary
    mean_psnr = sum(float(r["tfp_psnr"]) for r in rows) / len(rows)
    assert abs(mean_psnr - record["metrics"]["tfp"]["psnr"]) < 1e-4


def test_small_crops_skip_niqe_and_say_so(trained, tmp_path):
    _, data, ckpt = trained
    results = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(ckpt), "--data_root", str(data), "--num_workers", "0",
                          "--exp_root", str(tmp_path / "exp"), "--results_file", str(results)]) == 0
    record = json.loads(results.read_text())["runs"][0]
    assert "niqe" not in record["metrics"]["snn"]
    assert "niqe skipped" in record["iqa_variant"]


def test_missing_or_foreign_checkpoint_is_an_error(trained, tmp_path, capsys):
    _, data, _ = trained
    missing = tmp_path / "nope.pth"
    assert evaluate.main(["--checkpoint", str(missing), "--data_root", str(data)]) == 2
    assert str(missing) in capsys.readouterr().err
    foreign = tmp_path / "foreign.pth"
    torch.save({"net": torch.zeros(3)}, foreign)
    assert evaluate.main(["--checkpoint", str(foreign), "--data_root", str(data)]) == 2
    assert "not a SpikeCLIP-SNN checkpoint" in capsys.readouterr().err


def test_topk_and_experiment_name():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3]])
    labels = torch.tensor([1, 2])
    assert evaluate.topk_correct(logits, labels, 1).tolist() == [True, False]
    assert evaluate.topk_correct(logits, labels, 2).tolist() == [True, True]
    assert evaluate.experiment_name("exp/my_run/ckpts/checkpoint_best.pth") == "my_run"
    assert evaluate.experiment_name("somewhere/model.pth") == "somewhere"


def test_a_raw_dat_stream_with_gt_is_scored(trained, tmp_path):
    import numpy as np
    from PIL import Image
    from dataset import write_dat
    _, _, ckpt = trained
    rng = np.random.default_rng(0)
    gt = np.tile(np.linspace(0.1, 0.9, 104, dtype=np.float32), (96, 1))        # a horizontal ramp
    spk = (rng.random((240, 96, 104)) < 0.6 * gt).astype(np.uint8)
    write_dat(str(tmp_path / "s.dat"), spk)
    Image.fromarray((gt * 255).astype(np.uint8)).save(tmp_path / "s.png")
    results = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(ckpt), "--dat", str(tmp_path / "s.dat"), "--gt", str(tmp_path / "s.png"),
                          "--height", "96", "--width", "104", "--rate", "0.6", "--tfp_window", "41",
                          "--exp_root", str(tmp_path / "exp"), "--results_file", str(results)]) == 0
    record = json.loads(results.read_text())["runs"][0]
    assert record["dataset"] == "file:s.dat"
    assert record["metrics"]["tfp"]["psnr"] > 15          # TFP / rate recovers the ramp (41-frame noise: ~19 dB)
    assert set(record["metrics"]["snn"]) == {"niqe", "brisque", "piqe", "psnr", "ssim"}
    # a truncated stream is refused, naming the file
    (tmp_path / "bad.dat").write_bytes(b"\x00" * 1001)
    assert evaluate.main(["--checkpoint", str(ckpt), "--dat", str(tmp_path / "bad.dat"), "--height", "96",
                          "--width", "104", "--results_file", str(results)]) == 2


def test_a_stream_smaller_than_a_niqe_block_skips_niqe(trained, tmp_path):
    import numpy as np
    from dataset import write_dat
    _, _, ckpt = trained
    spk = (np.random.default_rng(1).random((200, 48, 64)) < 0.3).astype(np.uint8)
    write_dat(str(tmp_path / "small.dat"), spk)
    results = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(ckpt), "--dat", str(tmp_path / "small.dat"), "--height", "48",
                          "--width", "64", "--exp_root", str(tmp_path / "exp"), "--results_file", str(results)]) == 0
    record = json.loads(results.read_text())["runs"][0]
    assert set(record["metrics"]["snn"]) == {"brisque", "piqe"} and "niqe skipped" in record["iqa_variant"]


def test_an_unusable_results_file_is_refused_before_the_work(trained, tmp_path, capsys):
    _, data, ckpt = trained
    results = tmp_path / "r.json"
    results.write_text("{ half a results file")
    assert evaluate.main(["--checkpoint", str(ckpt), "--data_root", str(data), "--num_workers", "0",
                          "--exp_root", str(tmp_path / "exp"), "--results_file", str(results)]) == 2
    err = capsys.readouterr().err
    assert str(results) in err and "not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()                 # nothing was evaluated
    assert results.read_text() == "{ half a results file"


@pytest.mark.parametrize("flag,value", [("--crop_size", "0"), ("--crop_size", "-3"), ("--batch_size", "0"),
                                        ("--height", "0"), ("--width", "-1"), ("--rate", "0"),
                                        ("--rate", "nan"), ("--tfp_window", "0"), ("--num_workers", "-1"),
                                        ("--dataset", "mnist")])
def test_nonsensical_flags_are_refused_when_parsed(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.get_args(["--checkpoint", "x.pth", flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_device_and_data_errors_are_one_line(trained, tmp_path, capsys):
    _, data, ckpt = trained
    args = ["--checkpoint", str(ckpt), "--num_workers", "0", "--exp_root", str(tmp_path / "exp"),
            "--results_file", str(tmp_path / "r.json")]
    n = torch.cuda.device_count()
    assert evaluate.main(args + ["--data_root", str(data), "--device", f"cuda:{n}"]) == 2
    assert "--device cuda:" in capsys.readouterr().err
    assert evaluate.main(args + ["--data_root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad" / "U-CIFAR" / "test"
    bad.mkdir(parents=True)
    (bad / "0.npz").write_bytes(os.urandom(3000))
    assert evaluate.main(args + ["--data_root", str(tmp_path / "bad")]) == 2
    assert "0.npz: not a valid .npz" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "no spikes"])
def test_a_bad_file_last_in_the_split_is_found_before_the_work(trained, tmp_path, capsys, monkeypatch, damage):
    """The split's last file truncated (or without its spikes): a one-line error naming it before
    any sample is scored, not a crash that throws the whole evaluation away at the end."""
    import shutil
    import numpy as np
    _, data, ckpt = trained
    copy = tmp_path / "data"
    shutil.copytree(os.path.join(data, "U-CIFAR", "test"), copy / "U-CIFAR" / "test")
    last = max((copy / "U-CIFAR" / "test").iterdir(), key=lambda p: int(p.stem))
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:-200])
    else:
        np.savez_compressed(last, label=np.int64(1))
    scored = []
    real_iqa = evaluate.NoReferenceIQA
    monkeypatch.setattr(evaluate, "NoReferenceIQA", lambda *a, **k: scored.append(1) or real_iqa(*a, **k))
    rc = evaluate.main(["--checkpoint", str(ckpt), "--data_root", str(copy), "--num_workers", "0",
                        "--exp_root", str(tmp_path / "exp"), "--results_file", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and str(last) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert scored == [] and not (tmp_path / "r.json").exists()


def test_simulated_baselines_are_calibrated_to_the_cameras_rate(trained, tmp_path):
    """tiny_data was simulated at rate 0.6 (its simulation.json): TFP is the intensity estimate
    count / frames / 0.6 on the network's absolute scale, not a 99.5th-percentile normalisation,
    and the summary and the record say so."""
    import numpy as np
    from dataset import center_crop, center_window, load_npz
    from metrics import psnr
    _, data, ckpt = trained
    results = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", str(ckpt), "--data_root", str(data), "--num_workers", "0",
                          "--exp_root", str(tmp_path / "exp"), "--results_file", str(results)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "exp" / "tinyrun" / "eval_CIFAR_test.csv")))
    spk, _, _, gt = load_npz(os.path.join(data, "U-CIFAR", "test", rows[0]["file"]), with_gt=True)
    spk, gt = center_crop(center_window(spk, 200), 32), center_crop(gt, 32)
    tfp = torch.from_numpy(np.clip(spk.mean(0) / 0.6, 0, 1).astype(np.float32))[None, None]
    expected = float(psnr(tfp, torch.from_numpy(gt.astype(np.float32) / 255)[None, None])[0])
    assert float(rows[0]["tfp_psnr"]) == pytest.approx(expected, abs=1e-3)
    record = json.loads(results.read_text())["runs"][0]
    assert record["rate"] == 0.6 and "count / frames / rate 0.6" in record["baselines"]
    summary = (tmp_path / "exp" / "tinyrun" / "eval_CIFAR_test_summary.md").read_text()
    assert "baselines: TFP/TFI = spike count / frames / rate 0.6" in summary
