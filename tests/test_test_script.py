"""test.py (panels, benchmark) and the efficiency functions of metrics.py."""
import importlib.util
import json
import math
import os

import pytest
import torch
from PIL import Image

import metrics
from models import PlainLRN, SpikingLRN, default_precision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = "tinyrun"   # conftest.tiny_run

# test.py shares its name with the standard library's `test` package: load it by path
_spec = importlib.util.spec_from_file_location("test_script", os.path.join(ROOT, "test.py"))
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)


def test_panels_for_num_samples(tiny_run, monkeypatch, capsys):
    monkeypatch.chdir(tiny_run["root"])   # default output: exp/<experiment>/test
    rc = test_script.main(["--checkpoint", tiny_run["ckpt"], "--data_root", str(tiny_run["data"]),
                           "--num_samples", "2"])
    assert rc == 0
    out_dir = tiny_run["root"] / "exp" / EXP / "test"
    pngs = sorted(out_dir.glob("test_*.png"))
    assert len(pngs) == 2
    with Image.open(pngs[0]) as img:
        # 5 tiles (spikes, TFP, TFI, SNN, GT), each 32 px enlarged to 128 px
        assert img.width >= 5 * 128 and img.height > 128
    out = capsys.readouterr().out
    assert out.count("pred ") == 2 and "/ true " in out


def test_benchmark_writes_record(tiny_run, tmp_path, capsys):
    results = tmp_path / "results.json"
    rc = test_script.main(["--checkpoint", tiny_run["ckpt"], "--data_root", str(tiny_run["data"]),
                           "--benchmark", "--bench_runs", "3", "--bench_batches", "1,2",
                           "--results_file", str(results)])
    assert rc == 0
    out = capsys.readouterr().out
    default = default_precision(torch.device("cpu"))      # int8 / bf16 on a CPU with VNNI / AVX512-BF16
    assert "n/a (no NVML" in out and f"dtype {default}" in out
    runs = json.loads(results.read_text())["runs"]
    assert len(runs) == 1
    rec = runs[0]
    assert rec["run_name"] == EXP and rec["kind"] == "benchmark" and rec["dataset"] == "U-CIFAR"
    assert rec["clip_random_init"] is True
    b = rec["benchmark"]

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    assert all(number(b["latency_ms"][k]) and b["latency_ms"][k] > 0 for k in ("median", "p90", "p99"))
    assert set(b["throughput"]) == {"1", "2"} == set(b["throughput_with_voxelisation"])
    assert all(number(v) and v > 0 for v in b["throughput"].values())
    for key in ("params", "macs", "sops", "theoretical_energy_mj", "weights_bytes", "input_size",
                "time_steps"):
        assert number(b[key]), key
    assert b["input_size"] == 32 and b["time_steps"] == 2 and b["dtype"] == default
    assert b["backend"] == "fast" and b["energy_mj_per_image"] is None
    assert len(b["firing_rates"]) == 4 and all(0 <= r <= 1 for r in b["firing_rates"].values())
    # MACs at 32x32: (T=2) x 32*32*9*(50*64 + 64*128 + 128*64 + 64*16 + 16*1)
    assert b["macs"] == 2 * 32 * 32 * 9 * 20624 + 32 * 32 * 9 * 50      # T=2 chain + the linear skip once


def test_benchmark_without_data_simulates_the_checkpoints_own_camera(tiny_run, tmp_path, capsys):
    """No data at --data_root: the firing rates come from the camera the checkpoint was trained
    on (tiny_run: normal-light files, recorded in their simulation.json), never low light."""
    results = tmp_path / "results.json"
    assert test_script.main(["--checkpoint", tiny_run["ckpt"], "--data_root", str(tmp_path / "nothing"),
                             "--benchmark", "--bench_runs", "2", "--bench_batches", "1",
                             "--results_file", str(results)]) == 0
    out = capsys.readouterr().out
    assert "simulated normal-light streams" in out and "low-light" not in out
    assert "latency, batch 1: 4 timed calls, about" in out and "throughput, batch 1:" in out
    assert "45 nm" in out and "memory traffic" in out and "MAC 4.6 pJ" in out
    b = json.loads(results.read_text())["runs"][0]["benchmark"]
    assert b["firing_rates_input"].startswith("8 simulated normal-light streams")
    assert all(0 < r < 1 for r in b["firing_rates"].values())
    assert "memory traffic" in b["energy_model"] and "AC 0.9 pJ" in b["energy_model"]


def test_benchmark_with_no_data_and_unknown_camera_gives_no_sops(tiny_run, tmp_path, capsys):
    ckpt = torch.load(tiny_run["ckpt"], weights_only=True)
    ckpt["opt"]["data_root"] = str(tmp_path / "gone")          # its training data is not here
    path = tmp_path / "exp" / "moved" / "ckpts" / "checkpoint_best.pth"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    results = tmp_path / "results.json"
    assert test_script.main(["--checkpoint", str(path), "--data_root", str(tmp_path / "nothing"),
                             "--benchmark", "--bench_runs", "2", "--bench_batches", "1",
                             "--results_file", str(results)]) == 0
    assert "no SOPs or theoretical energy" in capsys.readouterr().out
    b = json.loads(results.read_text())["runs"][0]["benchmark"]
    assert b["sops"] is None and b["theoretical_energy_mj"] is None and b["firing_rates"] == {}
    assert b["firing_rates_input"].startswith("not measured")


def test_default_benchmark_work_is_sized_to_the_device(tiny_run, tmp_path, capsys):
    results = tmp_path / "results.json"
    assert test_script.main(["--checkpoint", tiny_run["ckpt"], "--data_root", str(tiny_run["data"]),
                             "--benchmark", "--results_file", str(results), "--device", "cpu"]) == 0
    b = json.loads(results.read_text())["runs"][0]["benchmark"]
    runs, batches = test_script.DEFAULT_BENCH["cpu"]
    assert b["latency_ms"]["runs"] == runs and set(b["throughput"]) == {str(x) for x in batches}


def test_device_is_checked_like_every_script(tiny_run, tmp_path, capsys):
    n = torch.cuda.device_count()
    assert test_script.main(["--checkpoint", tiny_run["ckpt"], "--device", f"cuda:{n}", "--num_samples", "0",
                             "--output_dir", str(tmp_path)]) == 2
    assert f"--device cuda:{n}" in capsys.readouterr().err
    assert test_script.main(["--checkpoint", tiny_run["ckpt"], "--device", "gpu"]) == 2
    assert "expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_plain_cnn_checkpoint(tiny_run, tmp_path, capsys):
    """An ANN (plain-CNN LRN) checkpoint: panel captioned ANN, all MACs, no SOPs or rates."""
    ckpt = torch.load(tiny_run["ckpt"], weights_only=True)
    torch.manual_seed(0)
    ann = PlainLRN()
    ckpt.update(model_config=ann.config(), model=ann.state_dict())
    folder = tmp_path / "exp" / "ann_run" / "ckpts"
    folder.mkdir(parents=True)
    path = folder / "checkpoint_best.pth"
    torch.save(ckpt, path)
    results = tmp_path / "results.json"
    assert test_script.main(["--checkpoint", str(path), "--data_root", str(tiny_run["data"]),
                             "--num_samples", "1", "--output_dir", str(tmp_path / "panels"),
                             "--benchmark", "--bench_runs", "2", "--bench_batches", "1",
                             "--results_file", str(results)]) == 0
    assert len(list((tmp_path / "panels").glob("*.png"))) == 1
    rec = json.loads(results.read_text())["runs"][0]
    assert rec["run_name"] == "ann_run" and rec["arch"] == "ann"
    b = rec["benchmark"]
    assert b["firing_rates"] == {} and b["sops"] == 0 and b["time_steps"] == 1
    assert b["macs"] == 32 * 32 * 9 * 20624
    assert b["theoretical_energy_mj"] == pytest.approx(b["macs"] * 4.6e-9)


def test_experiment_name_is_the_run_folder():
    assert test_script.experiment_name("exp/cifar_snn/ckpts/checkpoint_best.pth") == "cifar_snn"
    assert test_script.experiment_name("/runs/snn_v2/model.pth") == "snn_v2"


def test_missing_checkpoint_is_exit_2(tmp_path, capsys):
    path = tmp_path / "nope" / "checkpoint_best.pth"
    assert test_script.main(["--checkpoint", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_foreign_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.randn(3, 3)}, "epoch": 3}, path)
    assert test_script.main(["--checkpoint", str(path), "--benchmark",
                             "--results_file", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not a SpikeCLIP-SNN checkpoint" in err
    assert not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------------------------
# metrics: MACs, SOPs, NVML energy

def test_macs_and_params_of_the_lrn_at_224():
    snn = SpikingLRN()
    macs = metrics.count_macs(snn, (1, 50, 224, 224))
    assert macs["per_step"] == pytest.approx(9.31e9, rel=0.01)      # SPEC §4
    assert macs["total"] == 4 * macs["per_step"] and macs["time_steps"] == 4
    conv_weights = sum(m.weight.numel() for m in snn.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv_weights == pytest.approx(186_000, abs=1_000)
    bn = sum(p.numel() for bn in snn.bns for p in bn.parameters())
    biases = sum(m.bias.numel() for m in snn.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(p.numel() for p in snn.parameters()) == conv_weights + biases + bn
    plain = PlainLRN()
    assert metrics.count_macs(plain, (50, 224, 224))["total"] == macs["per_step"]


def test_macs_match_forward_hooks():
    """The analytic count equals what the conv layers of a real forward pass do."""
    model = PlainLRN()
    counted = []

    def hook(m, inp, out):
        counted.append(out.shape[2] * out.shape[3] * m.out_channels * m.in_channels
                       * m.kernel_size[0] * m.kernel_size[1])
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 50, 20, 24))
    for h in handles:
        h.remove()
    macs = metrics.count_macs(model, (50, 20, 24))
    assert [layer["macs"] for layer in macs["layers"]] == counted


def test_synaptic_ops_arithmetic():
    snn = SpikingLRN(time_steps=4)
    rates = [0.5, 0.25, 0.1, 0.2]
    ops = metrics.synaptic_ops(snn, (50, 10, 10), rates)
    px, t = 100 * 9, 4
    layer_macs = [px * 50 * 64, px * 64 * 128, px * 128 * 64, px * 64 * 16, px * 16 * 1]
    # the voxel is not binary: conv1 is MACs, once per image for direct encoding (its input is
    # the same at every step, and the fast path runs it once), T times for temporal encoding
    assert ops["mac_ops"] == layer_macs[0]
    temporal = metrics.synaptic_ops(SpikingLRN(time_steps=4, encoding="temporal"),
                                    (50, 10, 10), rates)
    assert temporal["mac_ops"] == layer_macs[0] * t
    expected_sops = sum(r * m * t for r, m in zip(rates, layer_macs[1:]))
    assert ops["sops"] == pytest.approx(expected_sops)
    assert ops["theoretical_energy_mj"] == pytest.approx(
        (layer_macs[0] * 4.6 + expected_sops * 0.9) * 1e-9)
    assert [layer["op"] for layer in ops["layers"]] == ["MAC", "AC", "AC", "AC", "AC"]
    # the plain CNN: every MAC at 4.6 pJ, no synaptic operations
    ann = metrics.synaptic_ops(PlainLRN(), (50, 10, 10), torch.zeros(0))
    assert ann["sops"] == 0 and ann["mac_ops"] == sum(layer_macs)
    assert ann["theoretical_energy_mj"] == pytest.approx(sum(layer_macs) * 4.6e-9)
    with pytest.raises(ValueError):
        metrics.synaptic_ops(snn, (50, 10, 10), [0.1, 0.2])


class FakeNvml:
    """pynvml stand-in: an energy counter driven by a fake clock (idle 50 W, busy 250 W)."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy_supported=True):
        self.t, self.energy_mj, self.energy_supported = 100.0, 5e6, energy_supported

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_supported:
            raise self.NVMLError("Not Supported")
        return int(self.energy_mj)

    def advance(self, seconds, watts):
        self.t += seconds
        self.energy_mj += watts * seconds * 1000.0

    def sleep(self, seconds):
        self.advance(seconds, 50.0)

    def clock(self):
        return self.t


def test_nvml_energy_meter_arithmetic(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    meter = metrics.NvmlEnergyMeter(0, clock=fake.clock, sleep=fake.sleep)
    assert meter.available
    calls = []

    def run_once():
        calls.append(1)
        fake.advance(0.25, 250.0)
    result, reason = meter.measure(run_once, images_per_call=8, seconds=2.0, idle_seconds=1.0)
    assert reason is None
    assert result["idle_power_w"] == pytest.approx(50.0)
    assert result["avg_power_w"] == pytest.approx(250.0, rel=1e-6)
    assert result["images"] == 8 * len(calls) == 64
    assert result["seconds"] == pytest.approx(2.0)
    # (250 W - 50 W) * 2 s = 400 J over 64 images
    assert result["energy_mj_per_image"] == pytest.approx(400e3 / 64, rel=1e-6)
    assert result["energy_mj_per_image_gross"] == pytest.approx(500e3 / 64, rel=1e-6)


def test_nvml_energy_meter_degrades_gracefully(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)    # import fails
    meter = metrics.NvmlEnergyMeter(0)
    assert not meter.available and "no NVML" in meter.reason
    assert meter.measure(lambda: None, 1) == (None, meter.reason)

    fake = FakeNvml(energy_supported=False)
    meter = metrics.NvmlEnergyMeter(0, nvml=fake, clock=fake.clock, sleep=fake.sleep)
    result, reason = meter.measure(lambda: None, 1)
    assert result is None and "Not Supported" in reason

    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise self.NVMLError("Driver Not Loaded")
    meter = metrics.NvmlEnergyMeter(0, nvml=NoDriver())
    assert meter.measure(lambda: None, 1)[0] is None and "Driver Not Loaded" in meter.reason

    # a run that draws no more than idle gives no per-image figure, and says why
    fake = FakeNvml()
    meter = metrics.NvmlEnergyMeter(0, nvml=fake, clock=fake.clock, sleep=fake.sleep)
    result, reason = meter.measure(lambda: fake.advance(0.5, 50.0), 1, seconds=1.0, idle_seconds=1.0)
    assert result["energy_mj_per_image"] is None and "not measurable" in reason
