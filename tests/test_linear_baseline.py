"""A checkpoint with a linear skip is scored on that fitted linear filter alone too, next to TFP
and TFI (evaluate.py on a split and on --dat, bench/reds_check.py through evaluate.score_stream)."""
import csv
import json

import numpy as np
import pytest
import torch

import evaluate
from dataset import UHSRDataset, write_dat
from metrics import psnr
from models import SpikingLRN, load_checkpoint, model_from_checkpoint, to_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
RATE = 0.6


def ramp_stream(frames=200, h=24, w=32, seed=0):
    """Spikes of a horizontal intensity ramp at RATE -> (spikes [frames, h, w], gt [1, 1, h, w])."""
    gt = np.tile(np.linspace(0.1, 0.9, w, dtype=np.float32), (h, 1))
    spk = (np.random.default_rng(seed).random((frames, h, w)) < RATE * gt).astype(np.uint8)
    return spk, torch.from_numpy(gt)[None, None]


def tfp_as_skip(model, frames=200):
    """Set the skip to TFP over all `frames` / RATE: the centre tap of every bin at
    1 / (frames * RATE) (a bin's count summed over bins is the window's spike count)."""
    with torch.no_grad():
        model.skip.weight.zero_()
        model.skip.weight[0, :, 1, 1] = 1.0 / (frames * RATE)
        model.skip.bias.zero_()


def test_score_stream_scores_the_linear_filter_alone():
    spk, gt = ramp_stream()
    torch.manual_seed(0)
    model = SpikingLRN(time_steps=2, channels=(4, 4, 4, 4), linear_skip=True).eval()
    tfp_as_skip(model)
    with torch.no_grad():
        model.readout.bias.fill_(0.3)   # the whole network = the linear image + 0.3 + spikes' share
    config = model.config()
    scores, rates = evaluate.score_stream(spk, gt, model, config, RATE, tfp_window=200)
    assert list(scores) == ["snn", evaluate.LINEAR, "tfp", "tfi"] and rates.shape == (4,)
    # the linear path is TFP over the window, so it scores as TFP does
    assert scores[evaluate.LINEAR]["psnr"] == pytest.approx(scores["tfp"]["psnr"], abs=1e-3)
    assert scores[evaluate.LINEAR]["ssim"] == pytest.approx(scores["tfp"]["ssim"], abs=1e-4)
    assert scores["snn"]["psnr"] < scores[evaluate.LINEAR]["psnr"] - 3        # the readout's offset shows
    # a network without a skip has no linear row; without one no network rows at all
    plain = SpikingLRN(time_steps=2, channels=(4, 4, 4, 4)).eval()
    assert list(evaluate.score_stream(spk, gt, plain, plain.config(), RATE)[0]) == ["snn", "tfp", "tfi"]
    assert list(evaluate.score_stream(spk, gt, rate=RATE)[0]) == ["tfp", "tfi"]


def test_evaluate_split_reports_the_linear_filter_row(tiny_run, tmp_path):
    results = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", tiny_run["ckpt"], "--data_root", str(tiny_run["data"]),
                          "--num_workers", "0", "--exp_root", str(tmp_path / "exp"),
                          "--results_file", str(results)]) == 0
    out = tmp_path / "exp" / "tinyrun"
    summary = (out / "eval_CIFAR_test_summary.md").read_text()
    assert f"| {evaluate.LINEAR_LABEL} |" in summary
    record = json.loads(results.read_text())["runs"][0]
    assert set(record["metrics"]) == {"snn", "linear", "tfp", "tfi"}
    # the first sample's linear PSNR is that of the checkpoint's skip alone
    row = next(csv.DictReader(open(out / "eval_CIFAR_test.csv")))
    ckpt = load_checkpoint(tiny_run["ckpt"])
    model = model_from_checkpoint(ckpt, tiny_run["ckpt"]).eval()
    item = UHSRDataset(str(tiny_run["data"]), "CIFAR", "test", bins=model.input_channels,
                       crop_size=ckpt["crop_size"])[0]
    with torch.no_grad():
        image = to_image(model.linear_path(item["voxel"][None].float()))
    assert float(row["linear_psnr"]) == pytest.approx(float(psnr(image, item["gt"][None])[0]), abs=1e-3)


def test_evaluate_dat_reports_the_linear_filter_row(tiny_run, tmp_path, capsys):
    from PIL import Image
    spk, gt = ramp_stream(240, 48, 64, seed=1)
    write_dat(str(tmp_path / "s.dat"), spk)
    Image.fromarray((gt[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "s.png")
    results = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", tiny_run["ckpt"], "--dat", str(tmp_path / "s.dat"),
                          "--gt", str(tmp_path / "s.png"), "--height", "48", "--width", "64", "--rate", str(RATE),
                          "--exp_root", str(tmp_path / "exp"), "--results_file", str(results)]) == 0
    assert f"| {evaluate.LINEAR_LABEL} |" in capsys.readouterr().out
    metrics = json.loads(results.read_text())["runs"][0]["metrics"]
    assert set(metrics) == {"snn", "linear", "tfp", "tfi"} and "psnr" in metrics["linear"]


def test_reds_check_scores_pairs_with_the_linear_filter_row(tiny_run, tmp_path, capsys):
    import importlib.util
    import os
    from PIL import Image
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("reds_check", os.path.join(root, "bench", "reds_check.py"))
    reds_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reds_check)
    for seed in (1, 2):
        spk, gt = ramp_stream(220, 48, 64, seed=seed)
        write_dat(str(tmp_path / f"p{seed}.dat"), spk)
        Image.fromarray((gt[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / f"p{seed}.png")
    assert reds_check.main(["--pairs", str(tmp_path), "--height", "48", "--width", "64",
                            "--checkpoint", tiny_run["ckpt"]]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]   # below the header
    labels = [row.split(" | ")[0][2:] for row in rows]
    assert labels == ["TFP (41 frames / 0.6)", "TFI (/ 0.6)", tiny_run["ckpt"],
                      f"{tiny_run['ckpt']}: {evaluate.LINEAR_LABEL}"]
    assert all(len(row.split(" | ")) == 4 for row in rows)     # method, two pairs, mean
