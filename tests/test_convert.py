"""convert.py: ONNX graphs compute what the PyTorch networks compute (onnxruntime, any frame size),
a NIR file read back by an independent interpreter spikes exactly as our SNN does, the one
command line writes atomically and refuses what it cannot do; and the fast inference path
(BatchNorm folded, bf16) stays close to the exact one."""
import os

import numpy as np
import pytest
import torch

import convert
import models
from models import PlainLRN, SpikingLRN, prepare_for_inference

TINY = dict(in_bins=6, channels=(4, 8, 4, 3))


def tiny_snn(encoding="direct", time_steps=3, linear_skip=True, seed=0):
    """A tiny SNN in eval mode whose BN statistics and readout make every layer fire at a
    moderate rate (so that a wrong reset or threshold changes the output)."""
    torch.manual_seed(seed)
    model = SpikingLRN(time_steps=time_steps, encoding=encoding, linear_skip=linear_skip, **TINY)
    with torch.no_grad():
        for bn in model.bns:
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.8, 1.6)
            bn.bias.uniform_(0.2, 0.8)
        model.readout.weight.normal_(0, 0.3)
        model.readout.bias.fill_(0.1)
    return model.eval()


def voxel_for(model, batch, h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 5, (batch, model.input_channels, h, w), generator=g).float()


def moderate_rates(model, voxel):
    with torch.no_grad():
        _, rates = model(voxel, return_rates=True)
    assert all(0.05 < float(r) < 0.95 for r in rates), rates


def run_onnx(proto, voxel):
    import onnxruntime as ort
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["image"], {"voxel": voxel.numpy()})[0]


@pytest.mark.parametrize("encoding,skip", [("direct", True), ("temporal", True), ("direct", False)])
def test_onnx_snn_matches_pytorch_at_any_frame_size(encoding, skip):
    model = tiny_snn(encoding, linear_skip=skip)
    proto = convert.onnx_model(model)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", model.input_channels, "height", "width"]
    for batch, h, w in ((2, 12, 20), (1, 17, 9)):        # one graph, any N, H, W
        voxel = voxel_for(model, batch, h, w)
        moderate_rates(model, voxel)
        with torch.no_grad():
            expected = model(voxel).numpy()
        got = run_onnx(proto, voxel)
        assert got.shape == expected.shape == (batch, 1, h, w)
        assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("skip", [False, True])
def test_onnx_ann_matches_pytorch(skip):
    torch.manual_seed(0)
    model = PlainLRN(in_bins=6, channels=(4, 8, 4, 3), linear_skip=skip).eval()
    if skip:     # the last conv starts at zero: give both paths something to say
        torch.nn.init.normal_(model.net[-1].weight, std=0.1)
    voxel = voxel_for(model, 2, 15, 11)
    with torch.no_grad():
        expected = model(voxel).numpy()
    assert np.abs(run_onnx(convert.onnx_model(model), voxel) - expected).max() <= 1e-4


# ----------------------------------------------------------------------------------------------
# NIR: read back with nir.read and executed by nirtorch's graph interpreter (wiring, summed
# inputs, the recurrent reset edge, state), with modules for the NIR primitives written from
# NIR's equations -- nothing of convert.py's or models.py's code.

def nir_primitives(dt):
    import nir
    import torch.nn as nn

    class LI(nn.Module):            # tau dv/dt = (v_leak - v) + r I, forward Euler with step dt
        def __init__(self, node):
            super().__init__()
            for k in ("tau", "r", "v_leak"):
                self.register_buffer(k, torch.from_numpy(np.asarray(getattr(node, k))))

        def forward(self, x, state=None):
            v = torch.zeros_like(x) if state is None else state
            v = v + dt / self.tau * (self.v_leak - v + self.r * x)
            return v, v

    class I(LI):                    # dv/dt = r I, forward Euler with step dt
        def __init__(self, node):
            nn.Module.__init__(self)
            self.register_buffer("r", torch.from_numpy(np.asarray(node.r)))

        def forward(self, x, state=None):
            v = (torch.zeros_like(x) if state is None else state) + dt * self.r * x
            return v, v

    class Threshold(nn.Module):     # z = 1 if v > threshold
        def __init__(self, node):
            super().__init__()
            self.register_buffer("threshold", torch.from_numpy(np.asarray(node.threshold)))

        def forward(self, x):
            return (x > self.threshold).to(x.dtype)

    class Scale(nn.Module):         # y = x * s
        def __init__(self, node):
            super().__init__()
            self.register_buffer("scale", torch.from_numpy(np.asarray(node.scale)))

        def forward(self, x):
            return x * self.scale

    return {nir.LI: LI, nir.I: I, nir.Threshold: Threshold, nir.Scale: Scale}


def read_back(path, dtype):
    import nir
    import nirtorch
    graph = nir.read(path)
    return graph, nirtorch.nir_to_torch(graph, nir_primitives(float(graph.metadata["dt"])), dtype=dtype)


def run_reader(reader, graph, step_inputs, steps):
    """T steps from rest -> (mean output [B, 1, H, W], spikes of each Threshold node [T, B, C, H, W])."""
    names = sorted(n for n in graph.nodes if n.endswith("_threshold"))
    spikes = {n: [] for n in names}
    modules = dict(reader.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: spikes[n].append(o)) for n in names]
    state, outputs = None, []
    for t in range(steps):
        out, state = reader(step_inputs[t if len(step_inputs) > 1 else 0], state)
        outputs.append(out)
    for h in hooks:
        h.remove()
    return torch.stack(outputs).mean(0), [torch.stack(spikes[n]) for n in names]


def our_spikes(model, voxel, monkeypatch):
    recorded = []

    def recording(current, *args):
        spk = models._LIFSequence.apply(current, *args)
        recorded.append(spk)
        return spk
    monkeypatch.setattr(models, "lif_sequence", recording)
    with torch.no_grad():
        image = model(voxel)
    return image, recorded


@pytest.mark.parametrize("encoding,linear_skip", [("direct", True), ("temporal", False)])
def test_nir_round_trip_spikes_identically_in_fp64(tmp_path, monkeypatch, encoding, linear_skip):
    model = tiny_snn(encoding, linear_skip=linear_skip).double()
    h, w = 10, 14
    voxel = voxel_for(model, 2, h, w).double()
    moderate_rates(model, voxel)
    path = str(tmp_path / "tiny.nir")
    convert.export_nir(model, path, h, w)
    graph, reader = read_back(path, torch.float64)
    assert graph.metadata["time_steps"] == model.time_steps
    step_inputs = list(model._step_inputs(voxel))
    image, spikes = run_reader(reader, graph, step_inputs, model.time_steps)
    expected_image, expected_spikes = our_spikes(model, voxel, monkeypatch)
    assert len(spikes) == len(expected_spikes) == len(model.convs)
    for got, expected in zip(spikes, expected_spikes):
        assert torch.equal(got, expected)
    assert torch.allclose(image, expected_image, rtol=0, atol=1e-12)


def test_nir_refuses_a_temporal_skip(tmp_path):
    """A temporal SNN's skip is one conv over the whole window: no per-step NIR node is it."""
    with pytest.raises(convert.InputError, match="whole window"):
        convert.export_nir(tiny_snn("temporal"), str(tmp_path / "t.nir"), 8, 8)
    assert not os.path.exists(tmp_path / "t.nir")


@pytest.mark.parametrize("beta,expected", [(0.9, [0, 1, 1, 0]), (1.0, [0, 1, 1, 1])])
def test_nir_leak_and_reset_by_subtraction(tmp_path, beta, expected):
    """One neuron driven by 0.8 (threshold 1). Reset by subtraction, beta 0.9: v = 0.8, 1.52 (spike),
    1.168 (spike), 0.851; beta 1: 0.8, 1.6, 1.4, 1.2. Reset to zero would give 0, 1, 0, 1."""
    model = SpikingLRN(in_bins=1, time_steps=4, channels=(1,), threshold=1.0, beta=beta).double().eval()
    with torch.no_grad():
        for conv in (model.convs[0], model.readout):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 0.8 if conv is model.convs[0] else 1.0
            conv.bias.zero_()
    path = str(tmp_path / "one.nir")
    convert.export_nir(model, path, 3, 3)
    graph, reader = read_back(path, torch.float64)
    voxel = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    image, spikes = run_reader(reader, graph, [voxel], 4)
    assert spikes[0][:, 0, 0, 1, 1].tolist() == expected
    with torch.no_grad():
        assert torch.allclose(image, model(voxel), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------

def save_checkpoint(path, model):
    torch.save({"format": models.CHECKPOINT_FORMAT, "version": 1, "model_config": model.config(),
                "model": model.state_dict(), "data_type": "CIFAR", "crop_size": 32}, path)


def test_command_line(tmp_path, capsys):
    snn, ann = tmp_path / "snn.pth", tmp_path / "ann.pth"
    save_checkpoint(snn, tiny_snn())
    torch.manual_seed(0)
    save_checkpoint(ann, PlainLRN(in_bins=6, channels=(4, 8, 4, 3)))
    onnx_path = tmp_path / "snn.onnx"
    assert convert.main(["--checkpoint", str(snn), "--to", "onnx", "--output", str(onnx_path)]) == 0
    import onnx
    onnx.checker.check_model(onnx.load(str(onnx_path)))
    before = onnx_path.read_bytes()
    # an existing output is refused without --overwrite, and left as it was
    assert convert.main(["--checkpoint", str(ann), "--to", "onnx", "--output", str(onnx_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(onnx_path) in err and "--overwrite" in err
    assert onnx_path.read_bytes() == before
    assert convert.main(["--checkpoint", str(ann), "--to", "onnx", "--output", str(onnx_path), "--overwrite"]) == 0
    assert onnx_path.read_bytes() != before

    nir_path = tmp_path / "snn.nir"
    assert convert.main(["--checkpoint", str(snn), "--to", "nir", "--output", str(nir_path), "--frame", "8x12"]) == 0
    import nir
    assert nir.read(str(nir_path)).nodes["input"].input_type["input"].tolist() == [6, 8, 12]
    # a plain CNN has no spiking neurons for NIR: one line, nothing written
    assert convert.main(["--checkpoint", str(ann), "--to", "nir", "--output", str(tmp_path / "ann.nir")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ann}: ") and err.count("\n") == 1 and "--to onnx" in err
    assert not os.path.exists(tmp_path / "ann.nir")
    # a file that is no checkpoint
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert convert.main(["--checkpoint", str(junk), "--to", "onnx", "--output", str(tmp_path / "j.onnx")]) == 2
    assert str(junk) in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:     # a flag for another target
        convert.main(["--checkpoint", str(snn), "--to", "onnx", "--output", str(tmp_path / "x.onnx"),
                      "--frame", "8x8"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        convert.main(["--checkpoint", str(snn), "--to", "nir", "--output", str(tmp_path / "x.nir"),
                      "--frame", "8by8"])
    assert e.value.code == 2
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------
# prepare_for_inference

@pytest.mark.parametrize("encoding", ["direct", "temporal"])
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_fast_inference_stays_close_and_fp32_is_exact(encoding, precision):
    model = tiny_snn(encoding)
    voxel = voxel_for(model, 2, 24, 24)
    with torch.no_grad():
        exact = model(voxel)
        assert torch.equal(prepare_for_inference(model, "fp32")(voxel), exact)
        prepare_for_inference(model, precision)
        fast, rates = model(voxel, return_rates=True)
        # steps(), the stateful path, uses the same folded convs
        state = model.init_state(2, 24, 24)
        steps = model._step_inputs(voxel).expand(model.time_steps, -1, -1, -1, -1)
        stepped, parts, _ = model.steps(steps, state)
        exact_parts = model.skip_steps(steps)
    assert fast.dtype == torch.float32 and rates.shape == (len(model.convs),)
    # bf16 (int8) rounding flips the spikes of membranes near the threshold; in this tiny random
    # network a flip moves a pixel by up to ~0.3, so the check is on the mean
    assert (fast - exact).abs().mean() < 0.1 * exact.abs().mean()
    assert torch.allclose(model.window_image(stepped, parts), fast, atol=1e-5)
    if model.skip is not None:     # the skip, folded into the first conv, is rounded like a bf16 conv
        assert model.folded[0].weight.shape[0] == model.convs[0].out_channels + parts.shape[2]
        assert parts.dtype == torch.float32
        torch.testing.assert_close(parts, exact_parts, atol=0.02 * exact_parts.abs().max(), rtol=0.02)
    model.train()                       # training drops the folded copies
    assert model.folded is None


def test_fold_batchnorm_is_conv_then_eval_bn():
    model = tiny_snn()
    x = torch.randn(2, TINY["in_bins"], 9, 7, dtype=torch.float64)
    model.double()
    weight, bias = models.fold_batchnorm(model.convs[0], model.bns[0])
    with torch.no_grad():
        expected = model.bns[0](model.convs[0](x))
        assert torch.allclose(torch.nn.functional.conv2d(x, weight, bias, padding=1), expected, atol=1e-12)


def test_fused_lif_equals_the_reference_recurrence():
    torch.manual_seed(0)
    current = (torch.randn(3, 2, 4, 5, 6) * 1.5).to(torch.bfloat16)
    spikes, _ = models.fused_lif(current, 3, 0.9, 1.0)
    expected = models._LIFSequence.apply(current.float(), 0.9, 1.0, "atan")
    assert spikes.dtype == torch.bfloat16 and torch.equal(spikes.float(), expected)
    spikes = models.fused_lif_spikes(current, 3, 0.9, 1.0, torch.uint8)   # for an int8 conv next
    assert spikes.dtype == torch.uint8 and torch.equal(spikes.float(), expected)
    constant, _ = models.fused_lif(current[:1], 3, 0.9, 1.0)      # the same current at every step
    expected = models._LIFSequence.apply(current[:1].float().expand(3, -1, -1, -1, -1), 0.9, 1.0, "atan")
    assert torch.equal(constant.float(), expected)
    # a carried state: the 3 steps run 1 + 2 from the state after the first equal the 3 in a row
    first, mem = models.fused_lif(current[:1], 1, 0.9, 1.0)
    rest, _ = models.fused_lif(current[1:], 2, 0.9, 1.0, mem, first[-1])
    assert torch.equal(torch.cat([first, rest]).float(), expected_all := models._LIFSequence.apply(
        current.float(), 0.9, 1.0, "atan")) and expected_all.sum() > 0


def test_int8_conv_of_spikes_is_the_conv_with_per_channel_rounded_weights():
    torch.manual_seed(0)
    weight, bias = torch.randn(8, 6, 3, 3) * 0.1, torch.randn(8) * 0.1
    weight[3] *= 20                                               # channels of very different scales
    spikes = (torch.rand(2, 6, 9, 11) < 0.3).float()
    conv = models.FoldedConv(weight, bias, "int8")
    assert conv.input_dtype == torch.uint8
    got = conv(spikes.to(torch.uint8))
    scale = weight.abs().amax(dim=(1, 2, 3)) / 127
    rounded = torch.round(weight / scale[:, None, None, None]) * scale[:, None, None, None]
    want = torch.nn.functional.conv2d(spikes, rounded, bias, padding=1)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    # exact integer sums, scaled back to bf16: bf16's rounding of the result is the only error
    assert torch.allclose(got.float(), want, rtol=2 ** -7, atol=1e-3)
    assert not torch.allclose(want, torch.nn.functional.conv2d(spikes, weight, bias, padding=1), atol=1e-4)


def test_plain_cnn_bf16_hidden_layers():
    torch.manual_seed(0)
    model = PlainLRN(in_bins=6, channels=(4, 8, 4, 3)).eval()
    voxel = voxel_for(model, 1, 16, 16)
    with torch.no_grad():
        exact = model(voxel)
        fast = prepare_for_inference(model, "bf16")(voxel)
    assert fast.dtype == torch.float32 and model.net[0].weight.dtype == torch.bfloat16
    assert (fast - exact).abs().max() < 0.05 * exact.abs().max()


@pytest.mark.parametrize("frames,bins", [(200, 50), (600, 2)])     # 4 frames a bin; 300 (> a byte)
def test_voxelize_of_a_torch_batch_equals_numpy_voxelize(frames, bins):
    """The byte-sum fast path for uint8 torch batches (counts that fit a byte) and the float sum."""
    from dataset import voxelize
    rng = np.random.default_rng(0)
    spk = (rng.random((2, frames, 5, 7)) < 0.9).astype(np.uint8)
    got = voxelize(torch.from_numpy(spk), bins, dim=1)
    assert got.dtype == torch.float32
    for i in range(2):
        assert np.array_equal(got[i].numpy(), voxelize(spk[i], bins))


def test_a_lens_input_network_is_exported_for_one_lens(tmp_path, capsys):
    """--lens_px folds the lens term at that lens into the readout (SpikingLRN.fix_lens): the ONNX
    graph computes forward(x, lens_px); without it, the reference lens; refused for a network
    without a lens input."""
    torch.manual_seed(0)
    model = SpikingLRN(time_steps=3, encoding="direct", linear_skip=True, lens_ref_px=0.5, **TINY)
    plain = tiny_snn()
    model.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        model.lens_readout.weight.normal_(0, 0.3)
        model.lens_readout.bias.fill_(0.2)
    model.eval()
    path = tmp_path / "lens.pth"
    save_checkpoint(path, model)
    voxel = voxel_for(model, 2, 10, 14)
    import onnx
    for extra, lens in (([], 0.5), (["--lens_px", "0.2"], 0.2)):
        out = tmp_path / f"lens{lens}.onnx"
        assert convert.main(["--checkpoint", str(path), "--to", "onnx", "--output", str(out), *extra]) == 0
        with torch.no_grad():
            expected = model(voxel, lens_px=lens).numpy()
        assert np.abs(run_onnx(onnx.load(str(out)), voxel) - expected).max() <= 1e-4
    with torch.no_grad():
        assert np.abs(model(voxel, lens_px=0.2).numpy() - model(voxel).numpy()).max() > 0.01   # it matters
    plain_path = tmp_path / "plain.pth"
    save_checkpoint(plain_path, plain)
    capsys.readouterr()
    assert convert.main(["--checkpoint", str(plain_path), "--to", "onnx", "--output", str(tmp_path / "p.onnx"),
                         "--lens_px", "0.2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lens_px 0.2" in err and "no lens input" in err
    assert not os.path.exists(tmp_path / "p.onnx")
    with pytest.raises(SystemExit) as e:      # a converted checkpoint keeps its lens input
        convert.get_args(["--checkpoint", str(path), "--to", "checkpoint", "--output", "x.pth", "--lens_px", "0.2"])
    assert e.value.code == 2
