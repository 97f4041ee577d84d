"""evaluate.py on tiny data: outputs, the results record, and refusal of bad checkpoints."""
import csv
import json
import os

import pytest
import torch

import evaluate
import generate_synthetic_data
import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    # 100-px frames so that a 96-px crop gives NIQE one block
    generate_synthetic_data.main(["--num_train", "2", "--num_test", "1", "--frame_size", "100",
                                  "--data_root", str(data), "--workers", "1", "--light", "normal"])
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train.main(["--data_root", str(data), "--exp_root", str(root / "exp"), "--exp_name", "run1",
                    "--crop_size", "32", "--clip_model", "tiny", "--clip_pretrained", "none",
                    "--num_workers", "0", "--epochs", "3", "--time_steps", "2"])
    finally:
        os.chdir(cwd)
    return root, data, root / "exp" / "run1" / "ckpts" / "checkpoint_best.pth"


def test_evaluate_writes_csv_summary_grid_and_record(trained, tmp_path):
    root, data, ckpt = trained
    results = tmp_path / "results.json"
    code = evaluate.main(["--checkpoint", str(ckpt), "--data_root", str(data), "--crop_size", "96",
                          "--num_workers", "0", "--exp_root", str(tmp_path / "exp"),
                          "--results_file", str(results), "--num_grid", "3"])
    assert code == 0
    out = tmp_path / "exp" / "run1"                       # named after the run folder, not 'ckpts'
    rows = list(csv.DictReader(open(out / "eval_CIFAR_test.csv")))
    assert len(rows) == 10                                # 10 classes x 1 test sample
    assert {"snn_top1", "tfp_niqe", "tfi_psnr", "snn_ssim", "snn_pred"} <= set(rows[0])
    summary = (out / "eval_CIFAR_test_summary.md").read_text()
    assert "NOT semantic" in summary and "input 96x96" in summary and "1x1 blocks" in summary
    assert (out / "imgs" / "eval_CIFAR_test_grid.png").exists()
    record = json.loads(results.read_text())["runs"][0]
    assert record["run_name"] == "run1" and record["kind"] == "evaluate"
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
