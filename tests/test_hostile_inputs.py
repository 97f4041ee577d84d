"""Hostile inputs to the entry points: each is refused at the start with ONE line on stderr that
names the flag or file, exit status 2, no traceback, nothing written."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import evaluate
import reconstruct
import results_tracker
import train
import utils
from dataset import SpikeDataError, write_dat
from conftest import TINY_TRAIN

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("test_script", os.path.join(ROOT, "test.py"))
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

READ_ONLY = "/sys/spikeclip_hostile"   # /sys is read-only, also for root (chmod is not, for root)


def one_line_error(capsys, *names):
    """stderr holds one line besides progress bars, 'error: ...', naming every one of `names`;
    -> that line."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    err = lines[0]
    assert err.startswith("error: "), err
    for name in names:
        assert str(name) in err, (name, err)
    return err


def parse_error(capsys, parse, argv, *names):
    """argparse refuses argv: exit status 2, the message names `names`."""
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    for name in names:
        assert name in err, (name, err)
    return err


# ----------------------------------------------------------------------------------------------
# Bad data met inside DataLoader worker processes

class _BadItem(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise SpikeDataError(f"/data/{i}.npz: label 42 out of range [0, 10)")


def test_an_input_error_from_a_worker_process_keeps_its_own_message():
    loader = DataLoader(_BadItem(), batch_size=1, num_workers=1)
    with pytest.raises(SpikeDataError) as e:
        next(iter(loader))
    assert "Traceback" in str(e.value)                 # what PyTorch hands back ...
    assert utils.input_error_message(e.value) == "/data/0.npz: label 42 out of range [0, 10)"   # ... and what we print
    assert utils.input_error_message(SpikeDataError("plain")) == "plain"


def _data_with_a_bad_label(tiny_data, tmp_path):
    """A copy of tiny_data's test split whose last file has label 42 (a whole zip: only reading
    the sample finds it) -> (data root, that file's name)."""
    src = tiny_data / "U-CIFAR" / "test"
    dst = tmp_path / "data" / "U-CIFAR" / "test"
    dst.mkdir(parents=True)
    files = sorted(os.listdir(src))
    for f in files:
        with np.load(src / f) as z:
            arrays = dict(z)
        if f == files[-1]:
            arrays["label"] = np.int64(42)
        np.savez_compressed(dst / f, **arrays)
    return tmp_path / "data", files[-1]


def test_bad_data_read_by_loader_workers_is_one_line(tiny_run, tmp_path, capsys):
    data, bad = _data_with_a_bad_label(tiny_run["data"], tmp_path)
    rc = evaluate.main(["--checkpoint", tiny_run["ckpt"], "--data_root", str(data), "--num_workers", "1",
                        "--batch_size", "2", "--exp_root", str(tmp_path / "exp"),
                        "--results_file", str(tmp_path / "r.json")])
    assert rc == 2
    one_line_error(capsys, bad, "label 42")


# ----------------------------------------------------------------------------------------------
# Flags refused when parsed

@pytest.mark.parametrize("name", ["", "..", "../..", "/tmp/elsewhere", "a/b"])
def test_exp_name_must_be_one_folder_name(name, capsys):
    parse_error(capsys, train.get_args, ["--exp_name", name], "--exp_name")
    parse_error(capsys, evaluate.get_args, ["--checkpoint", "x.pth", "--exp_name", name], "--exp_name")


@pytest.mark.parametrize("steps,ok", [(1, True), (2, True), (3, False), (4, True), (5, False), (8, False)])
def test_temporal_encoding_needs_steps_that_slice_the_window(steps, ok, capsys):
    argv = ["--encoding", "temporal", "--time_steps", str(steps)]
    if ok:
        assert train.get_args(argv).time_steps == steps
    else:
        parse_error(capsys, train.get_args, argv, f"--time_steps {steps}", "T = 1, 2, 4")


def test_a_missing_simulate_from_folder_is_refused_when_parsed(tmp_path, capsys):
    parse_error(capsys, train.get_args, ["--simulate_from", str(tmp_path / "photos")], "--simulate_from",
                str(tmp_path / "photos"))


# (--rate applies to a simulated data root too: it calibrates TFP/TFI to the camera)
@pytest.mark.parametrize("flag,value", [("--tfp_window", "41"), ("--gt", "x.png")])
def test_stream_options_without_a_stream_are_refused(flag, value, capsys):
    parse_error(capsys, evaluate.get_args, ["--checkpoint", "x.pth", flag, value], flag, "--dat")


# ----------------------------------------------------------------------------------------------
# Output folders that cannot be written: refused before any work

def _file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("where", ["read_only", "file", "under_file"])
def test_train_refuses_an_exp_root_it_cannot_write(tiny_data, tmp_path, capsys, where):
    exp_root = {"read_only": READ_ONLY, "file": _file(tmp_path), "under_file": _file(tmp_path) / "exp"}[where]
    rc = train.main(["--data_root", str(tiny_data), "--exp_root", str(exp_root), "--exp_name", "x",
                     "--results_file", str(tmp_path / "r.json"), "--epochs", "3", *TINY_TRAIN])
    assert rc == 2
    one_line_error(capsys, "--exp_root", exp_root)
    assert not (tmp_path / "r.json").exists()


def test_train_refuses_an_exp_name_that_is_a_file(tiny_data, tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "run").write_text("a file where the run folder would go")
    rc = train.main(["--data_root", str(tiny_data), "--exp_root", str(tmp_path / "exp"), "--exp_name", "run",
                     "--epochs", "3", *TINY_TRAIN])
    assert rc == 2
    one_line_error(capsys, "--exp_name", "is a file")


@pytest.mark.parametrize("where", ["read_only", "file"])
def test_evaluate_refuses_an_exp_root_it_cannot_write(tiny_run, tmp_path, capsys, where):
    exp_root = READ_ONLY if where == "read_only" else _file(tmp_path)
    rc = evaluate.main(["--checkpoint", tiny_run["ckpt"], "--data_root", str(tiny_run["data"]), "--num_workers", "0",
                        "--exp_root", str(exp_root), "--results_file", str(tmp_path / "r.json")])
    assert rc == 2
    one_line_error(capsys, "--exp_root", exp_root)


def test_test_script_refuses_an_output_dir_it_cannot_write(tiny_run, capsys):
    rc = test_script.main(["--checkpoint", tiny_run["ckpt"], "--data_root", str(tiny_run["data"]),
                           "--num_samples", "1", "--output_dir", READ_ONLY])
    assert rc == 2
    one_line_error(capsys, "--output_dir", READ_ONLY)


@pytest.mark.parametrize("script", ["generate_synthetic_data", "fetch_data", "reconstruct_file", "reconstruct_folder"])
@pytest.mark.parametrize("where", ["read_only", "under_file"])
def test_other_scripts_refuse_output_folders_they_cannot_write(tiny_run, tmp_path, capsys, script, where):
    import fetch_data
    import generate_synthetic_data
    root = READ_ONLY if where == "read_only" else str(_file(tmp_path) / "out")
    flag, value = ("--output", f"{root}/o.npy" if script == "reconstruct_file" else root) \
        if script.startswith("reconstruct") else ("--data_root", root)
    main, argv = {
        "generate_synthetic_data": (generate_synthetic_data.main, ["--num_train", "1", "--num_test", "1", "--frame_size",
                                                                   "64", "--workers", "1", "--data_root", root]),
        "fetch_data": (fetch_data.main, ["--download_file", str(tmp_path / "a.zip"), "--data_root", root]),
        "reconstruct_file": (reconstruct.main, ["--checkpoint", tiny_run["ckpt"], "--input", "x.dat", "--output", value]),
        "reconstruct_folder": (reconstruct.main, ["--checkpoint", tiny_run["ckpt"], "--input", "x.dat", "--output", value]),
    }[script]
    assert main(argv) == 2
    one_line_error(capsys, flag, value)


# ----------------------------------------------------------------------------------------------
# Streams

@pytest.mark.parametrize("what", ["missing", "folder"])
def test_evaluate_dat_that_is_no_file(tiny_run, tmp_path, capsys, what):
    dat = tmp_path / "capture.dat"
    if what == "folder":
        dat.mkdir()
    rc = evaluate.main(["--checkpoint", tiny_run["ckpt"], "--dat", str(dat), "--exp_root", str(tmp_path / "exp"),
                        "--results_file", str(tmp_path / "r.json")])
    assert rc == 2
    one_line_error(capsys, dat, "no such file" if what == "missing" else "a folder")
    assert not (tmp_path / "exp").exists()


def test_reconstruct_width_416_on_a_400_wide_file_is_refused_before_writing(tiny_run, tmp_path, capsys):
    dat = tmp_path / "capture.dat"
    write_dat(str(dat), np.zeros((3, 250, 400), np.uint8))   # 37500 bytes: 3 frames of 250x400, 2.9 of 250x416
    out = tmp_path / "out.npy"
    rc = reconstruct.main(["--checkpoint", tiny_run["ckpt"], "--input", str(dat), "--output", str(out),
                           "--width", "416"])
    assert rc == 2
    one_line_error(capsys, dat, "--width 400")
    assert os.listdir(tmp_path) == ["capture.dat"]            # no output, no temp file


def test_the_tfp_window_reported_is_the_one_used(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_dat(str(tmp_path / "s.dat"), (rng.random((240, 48, 64)) < 0.3).astype(np.uint8))
    results = tmp_path / "r.json"
    assert evaluate.main(["--checkpoint", tiny_run["ckpt"], "--dat", str(tmp_path / "s.dat"), "--height", "48",
                          "--width", "64", "--tfp_window", "100000", "--exp_root", str(tmp_path / "exp"),
                          "--results_file", str(results)]) == 0
    out = capsys.readouterr().out
    assert "TFP window 200 (--tfp_window 100000 cut to the window)" in out
    assert json.loads(results.read_text())["runs"][0]["tfp_window"] == 200


# ----------------------------------------------------------------------------------------------
# Checkpoints

def _pickled_module(path):
    torch.save({"net": torch.nn.Linear(2, 2)}, path)


@pytest.mark.parametrize("content", ["text", "pickled_module", "truncated", "empty"])
def test_checkpoint_errors_name_the_file_and_never_advise_unsafe_loading(tiny_run, tmp_path, capsys, content):
    path = tmp_path / "model.pth"
    if content == "text":
        path.write_text("epoch 10, loss 0.1\n")   # 'e' is byte 101: torch's own error was "KeyError: 101"
    elif content == "pickled_module":
        _pickled_module(path)
    elif content == "truncated":
        path.write_bytes(open(tiny_run["ckpt"], "rb").read()[:4000])
    else:
        path.write_bytes(b"")
    for main, argv in ((evaluate.main, ["--data_root", str(tiny_run["data"]), "--exp_root", str(tmp_path / "exp"),
                                        "--results_file", str(tmp_path / "r.json")]),
                       (reconstruct.main, ["--input", "x.dat", "--output", str(tmp_path / "o.npy")])):
        assert main(["--checkpoint", str(path), *argv]) == 2
        err = one_line_error(capsys, path)
        assert "weights_only" not in err and "KeyError" not in err and "trust" not in err
    if content == "text":
        assert "not a PyTorch checkpoint" in err
    if content == "pickled_module":
        assert "torch.nn.modules.linear.Linear" in err


# ----------------------------------------------------------------------------------------------
# Results files

def test_a_device_as_results_file_gets_no_advice_to_move_it(tiny_run, tmp_path, capsys):
    rc = evaluate.main(["--checkpoint", tiny_run["ckpt"], "--data_root", str(tiny_run["data"]),
                        "--exp_root", str(tmp_path / "exp"), "--results_file", os.devnull])
    assert rc == 2
    err = one_line_error(capsys, os.devnull, "not a regular file")
    assert "mv " not in err
    assert results_tracker.main(["--file", os.devnull]) == 2
    assert "mv " not in one_line_error(capsys, os.devnull)


def test_tracker_names_records_it_cannot_place_and_lists_the_rest(tmp_path, capsys):
    path = tmp_path / "r.json"
    good = {"run_name": "good", "kind": "evaluate", "dataset": "U-CIFAR", "metrics": {"snn": {"psnr": 20.0}}}
    path.write_text(json.dumps({"format": "spikeclip-snn-results", "version": 1, "runs": [
        {"run_name": "listy", "kind": "evaluate", "dataset": ["U-CIFAR"], "metrics": {"snn": {"psnr": 1.0}}},
        {"run_name": "kindless", "dataset": "U-CIFAR"},
        good]}))
    for fmt in ("table", "csv", "json"):
        assert results_tracker.main(["--file", str(path), "--format", fmt]) == 0
        out, err = capsys.readouterr()
        assert "good" in out and "listy" not in out and "kindless" not in out
        assert "record 1 (run 'listy'): \"dataset\" is a list" in err
        assert "record 2 (run 'kindless'): no known kind" in err
    assert results_tracker.main(["--file", str(path), "--compare", "good", "good"]) == 0
