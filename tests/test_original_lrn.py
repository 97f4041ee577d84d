"""The original SpikeCLIP LRN (the authors' bare state_dict): recognised by its layout, loaded,
evaluated, named in every report, converted; files of another layout refused by key."""
import json
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

import convert
import evaluate
import generate_synthetic_data
import results_tracker
from models import ORIGINAL_NAME, CheckpointError, load_checkpoint, model_from_checkpoint, scored_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def authors_lrn():
    """The network exactly as the authors' models.py builds it: LRN(inDim=50, outDim=1, norm='none')."""
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(True))
    return nn.Sequential(block(50, 64), block(64, 128), block(128, 64), block(64, 16), nn.Conv2d(16, 1, 3, 1, 1))


def save_original(path, seed=0, edit=None):
    """A random-weights file of the original layout (an OrderedDict of tensors, as torch.save of
    their state_dict writes it), optionally edited first."""
    torch.manual_seed(seed)
    net = authors_lrn()
    with torch.no_grad():               # an output that follows the input and leaves [0, 1]
        net[4].weight.mul_(10.0)
        net[4].bias.fill_(0.0)
    state = OrderedDict(net.state_dict())
    if edit:
        edit(state)
    torch.save(state, path)
    return net


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("orig_data")
    # 100-px frames so that a 96-px crop gives NIQE one block
    generate_synthetic_data.main(["--num_train", "0", "--num_test", "1", "--frame_size", "100",
                                  "--data_root", str(root), "--workers", "1", "--light", "normal"])
    return root


def test_original_state_dict_loads_under_any_name_and_computes_the_authors_function(tmp_path):
    path = tmp_path / "any_name.pth"
    reference = save_original(path)
    ckpt = load_checkpoint(str(path))
    config = ckpt["model_config"]
    assert config["arch"] == "ann" and config["origin"] == "spikeclip-original"
    assert ckpt["source"]["file"] == str(path) and len(ckpt["source"]["sha256"]) == 64
    model = model_from_checkpoint(ckpt, str(path)).eval()
    voxel = torch.randint(0, 5, (2, 50, 24, 24)).float()      # counts 0-4, as the authors' voxel
    with torch.no_grad():
        assert torch.allclose(model(voxel), reference(voxel), atol=1e-5)
        out = model(voxel)
    # scored as the authors score it: the raw output, never clamped
    assert out.min() < 0 or out.max() > 1, "test weights should produce values outside [0, 1]"
    assert torch.equal(scored_image(config, out), out)


@pytest.mark.parametrize("edit, key", [
    (lambda s: [s.pop(k) for k in ("4.weight", "4.bias")], "'4.weight' is missing"),           # truncated
    (lambda s: s.update({"1.1.running_mean": torch.zeros(128)}), "unexpected key '1.1.running_mean'"),
    (lambda s: s.update({"0.0.weight": torch.zeros(64, 100, 3, 3)}), "'0.0.weight' has shape [64, 100, 3, 3]"),
    (lambda s: s.update({"2.0.bias": torch.zeros(64, dtype=torch.long)}), "'2.0.bias' holds torch.int64"),
])
def test_a_wrong_or_truncated_layout_is_refused_naming_file_and_key(tmp_path, edit, key):
    path = tmp_path / "LRN_CALTECH.pth"
    save_original(path, edit=edit)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(path))
    assert str(path) in str(e.value) and key in str(e.value)


def test_a_truncated_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "LRN_CALTECH.pth"
    save_original(path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as e:
        load_checkpoint(str(path))
    assert str(path) in str(e.value)


def test_evaluate_names_it_and_so_does_the_tracker(data, tmp_path, capsys):
    path = tmp_path / "models" / "LRN_CALTECH.pth"
    path.parent.mkdir()
    save_original(path)
    results = tmp_path / "results.json"
    common = ["--checkpoint", str(path), "--data_root", str(data), "--crop_size", "96", "--num_workers", "0",
              "--clip_model", "tiny", "--clip_pretrained", "none", "--exp_root", str(tmp_path / "exp"),
              "--exp_name", "spikeclip_original", "--results_file", str(results)]
    # the file records no class set: asked for, not guessed
    assert evaluate.main(common) == 2
    assert "--dataset" in capsys.readouterr().err
    assert evaluate.main(common + ["--data_type", "CIFAR"]) == 0
    out = capsys.readouterr().out
    assert f"| {ORIGINAL_NAME} |" in out and "raw output" in out
    record = json.loads(results.read_text())["runs"][-1]
    assert record["model"] == ORIGINAL_NAME and record["arch"] == "ann"
    assert record["scoring"].startswith(ORIGINAL_NAME)
    m = record["metrics"]["ann"]
    assert all(isinstance(m[k], float) for k in ("top1", "niqe", "brisque", "piqe", "psnr", "ssim"))
    assert results_tracker.main(["--file", str(results)]) == 0
    table = capsys.readouterr().out
    assert ORIGINAL_NAME in table and "spikeclip_original" in table


def test_converter_writes_our_format_once(tmp_path, capsys):
    src, dst = tmp_path / "LRN_CALTECH.pth", tmp_path / "converted.pth"
    save_original(src)
    assert convert.main(["--checkpoint", str(src), "--to", "checkpoint", "--output", str(dst), "--dataset", "caltech"]) == 0
    raw = torch.load(dst, weights_only=True)
    assert raw["format"] == "spikeclip-snn-checkpoint" and raw["data_type"] == "CALTECH"
    assert raw["source"]["file"] == str(src)
    a = model_from_checkpoint(load_checkpoint(str(src)), str(src)).eval()
    b = model_from_checkpoint(load_checkpoint(str(dst)), str(dst)).eval()
    assert b.config() == a.config()
    voxel = torch.randint(0, 5, (1, 50, 16, 16)).float()
    with torch.no_grad():
        assert torch.equal(a(voxel), b(voxel))
    assert convert.main(["--checkpoint", str(src), "--to", "checkpoint", "--output", str(dst)]) == 2                 # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert convert.main(["--checkpoint", str(dst), "--to", "checkpoint", "--output", str(tmp_path / "again.pth")]) == 2
    assert "nothing to convert" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pth"
    torch.save({"convs.0.weight": torch.zeros(64, 50, 3, 3)}, foreign)
    assert convert.main(["--checkpoint", str(foreign), "--to", "checkpoint", "--output", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert str(foreign) in err and "'0.0.weight' is missing" in err
    assert not os.path.exists(tmp_path / "x.pth")


def test_test_py_benchmark_names_it(tmp_path, capsys):
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("test_script", os.path.join(root, "test.py"))
    test_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_script)
    path = tmp_path / "LRN_CALTECH.pth"
    save_original(path)
    results = tmp_path / "results.json"
    assert test_script.main(["--checkpoint", str(path), "--data_type", "CALTECH", "--data_root", str(tmp_path),
                             "--benchmark", "--bench_runs", "2", "--bench_batches", "1", "--bench_size", "16",
                             "--results_file", str(results)]) == 0
    assert ORIGINAL_NAME in capsys.readouterr().out
    record = json.loads(results.read_text())["runs"][-1]
    assert record["model"] == ORIGINAL_NAME and record["benchmark"]["params"] == 185_889


def test_raw_scoring_reaches_pyiqa_unclamped():
    from metrics import NoReferenceIQA
    iqa = NoReferenceIQA("cpu", names=("piqe",))
    torch.manual_seed(0)
    image = torch.rand(1, 1, 64, 64) * 1.9 - 0.3          # texture, partly outside [0, 1]
    clamped = iqa(image)["piqe"]
    assert torch.equal(clamped, iqa(image.clamp(0, 1), clamp=False)["piqe"])
    assert not torch.equal(clamped, iqa(image, clamp=False)["piqe"])
