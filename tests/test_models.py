"""The spiking LRN: real multi-step dynamics, and the fast path equals the snnTorch reference."""
import pytest
import torch

from models import (CheckpointError, PlainLRN, SpikingLRN, build_model, load_checkpoint, model_from_checkpoint,
                    model_name)


def make_pair(**kw):
    torch.manual_seed(0)
    ref = SpikingLRN(backend="snntorch", **kw)
    fast = SpikingLRN(backend="fast", **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def calibrated(model, seed=5):
    """Eval-mode model whose BN running statistics come from data (a fresh BN is ~identity and
    its deep layers would barely spike)."""
    for bn in model.bns:
        bn.momentum = 1.0
    with torch.no_grad():
        model.train()(voxel(model, seed=seed))
    for bn in model.bns:
        bn.momentum = 0.1
    return model.eval()


def voxel(model, b=2, size=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 5, (b, model.input_channels, size, size), generator=g).float()


@pytest.mark.parametrize("encoding", ["direct", "temporal"])
@pytest.mark.parametrize("time_steps", [1, 2, 4])
@pytest.mark.parametrize("surrogate_name", ["atan", "fast_sigmoid"])
@pytest.mark.parametrize("training", [True, False])
def test_fast_path_equals_snntorch_reference(encoding, time_steps, surrogate_name, training):
    ref, fast = make_pair(time_steps=time_steps, encoding=encoding, surrogate_name=surrogate_name)
    if not training:   # BN statistics from data: with fresh ones the deep layers would not spike
        calibrated(ref)
        fast.load_state_dict(ref.state_dict())
    ref.train(training)
    fast.train(training)
    x = voxel(ref)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, rates_r = ref(xr, return_rates=True)
    yf, rates_f = fast(xf, return_rates=True)
    # every layer fires, so the output depends on the spikes (silent layers would leave both
    # paths at the readout bias, equal whatever their dynamics)
    assert (rates_r > 0).all(), f"a layer is silent: {rates_r.tolist()}"
    assert yr.std() > 0
    torch.testing.assert_close(yf, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rates_f, rates_r)
    grad_out = torch.randn_like(yr)
    (yr * grad_out).sum().backward()
    (yf * grad_out).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-4, atol=1e-6)
    # relative to the largest gradient: a conv bias before training-mode BN has a true gradient
    # of 0, so its computed value is pure rounding noise in both implementations
    scale = max(p.grad.abs().max() for p in ref.parameters())
    for (name, pr), pf in zip(ref.named_parameters(), fast.parameters()):
        assert (pf.grad - pr.grad).abs().max() / scale < 1e-5, name
    # BatchNorm running statistics move the same way (once per time step)
    for br, bf in zip(ref.bns, fast.bns):
        torch.testing.assert_close(bf.running_mean, br.running_mean)
        torch.testing.assert_close(bf.running_var, br.running_var)
        assert int(bf.num_batches_tracked) == int(br.num_batches_tracked)


def test_spikes_are_binary_and_state_evolves_over_time():
    _, fast = make_pair(time_steps=4)
    calibrated(fast)
    x = voxel(fast)
    out4, rates = fast(x, return_rates=True)
    assert rates.shape == (4,) and ((rates >= 0) & (rates <= 1)).all()
    one_step = SpikingLRN(time_steps=1)
    one_step.load_state_dict(fast.state_dict())
    assert rates[-1] > 0, "the deepest layer must spike for this test to mean anything"
    assert not torch.allclose(one_step.eval()(x), out4), "T=4 must differ from a single step"


@pytest.mark.parametrize("backend", ["fast", "snntorch"])
def test_beta_changes_the_output(backend):
    torch.manual_seed(0)
    a = calibrated(SpikingLRN(beta=0.9, backend=backend))
    b = SpikingLRN(beta=0.5, backend=backend).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("lifs.")}, strict=False)
    x = voxel(a)
    assert not torch.allclose(a(x), b(x)), "beta must matter once the state runs over T >= 2 steps"


@pytest.mark.parametrize("encoding", ["direct", "temporal"])
def test_step_by_step_with_carried_state_reproduces_forward(encoding):
    _, model = make_pair(time_steps=3, encoding=encoding)
    calibrated(model)
    x = voxel(model)
    full = model(x)
    b, _, h, w = x.shape
    state = model.init_state(b, h, w)
    frames = []
    for t in range(model.time_steps):
        x_t = x if encoding == "direct" else x[:, t * model.in_bins:(t + 1) * model.in_bins]
        frame, state = model.step(x_t, state)
        frames.append(frame)
    torch.testing.assert_close(torch.stack(frames).mean(0), full, rtol=1e-5, atol=1e-5)


def test_step_refuses_training_mode():
    model = SpikingLRN(time_steps=2)
    with pytest.raises(RuntimeError, match="eval"):
        model.step(torch.zeros(1, 50, 8, 8), model.init_state(1, 8, 8))


def test_layer_table_sizes():
    snn = SpikingLRN()
    conv_weights = sum(c.weight.numel() for c in snn.convs) + snn.readout.weight.numel()
    assert conv_weights == 185_616                       # SPEC §4: ~186k conv weights
    ann = PlainLRN()
    assert abs(sum(p.numel() for p in ann.parameters()) - 0.19e6) < 0.01e6


def test_wrong_input_shape_names_the_expectation():
    model = SpikingLRN(time_steps=4, encoding="temporal")
    with pytest.raises(ValueError, match=r"\[B, 200, H, W\]"):
        model(torch.zeros(1, 50, 8, 8))


def test_config_round_trip_and_architecture_mismatch(tmp_path):
    model = SpikingLRN(time_steps=2, encoding="temporal", beta=0.8)
    clone = build_model(model.config())
    assert clone.config() == model.config()
    ckpt = {"format": "spikeclip-snn-checkpoint", "model_config": model.config(), "model": model.state_dict()}
    with pytest.raises(CheckpointError, match="another architecture"):
        model_from_checkpoint(ckpt, "x.pth", expect_config={"arch": "ann"})
    ann_ckpt = {"format": "spikeclip-snn-checkpoint", "model_config": model.config(), "model": PlainLRN().state_dict()}
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(ann_ckpt, "x.pth")
    path = tmp_path / "not_ours.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="not a SpikeCLIP-SNN checkpoint"):
        load_checkpoint(str(path))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint(str(garbage))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("surrogate_name", ["atan", "fast_sigmoid"])
def test_traceable_lif_used_under_torch_compile_equals_the_fused_one(surrogate_name):
    from models import _LIFSequence, _lif_sequence_traceable
    current = (torch.randn(4, 2, 3, 5, 5) * 1.5).requires_grad_()
    c2 = current.detach().clone().requires_grad_()
    a = _LIFSequence.apply(current, 0.9, 1.0, surrogate_name)
    b = _lif_sequence_traceable(c2, 0.9, 1.0, surrogate_name)
    torch.testing.assert_close(a, b)
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    torch.testing.assert_close(current.grad, c2.grad)


def test_torch_compile_of_the_fast_path_equals_the_reference():
    """The code torch.compile traces (used on CUDA by default) gives the reference's forward and
    backward. Compiling on the CPU takes ~40 s, so one small case."""
    ref, fast = make_pair(time_steps=2)
    compiled = torch.compile(fast)
    x = voxel(ref, size=8)
    xr, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yc = ref(xr), compiled(xc)
    torch.testing.assert_close(yc, yr, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(yr)
    (yr * g).sum().backward()
    (yc * g).sum().backward()
    torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("encoding", ["direct", "temporal"])
def test_linear_skip_same_in_both_backends_and_step_by_step(encoding):
    ref, fast = make_pair(time_steps=3, encoding=encoding, linear_skip=True)
    for m in (ref, fast):     # a non-zero readout, so both paths contribute
        torch.nn.init.normal_(m.readout.weight, std=0.1)
    fast.readout.load_state_dict(ref.readout.state_dict())
    calibrated(ref)
    fast.load_state_dict(ref.state_dict())
    fast.eval()
    x = voxel(fast)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    b, _, h, w = x.shape
    state, frames = fast.init_state(b, h, w), []
    for t in range(fast.time_steps):
        x_t = x if encoding == "direct" else x[:, t * fast.in_bins:(t + 1) * fast.in_bins]
        frame, state = fast.step(x_t, state)
        frames.append(frame)
    parts = fast.skip_steps(fast._step_inputs(x).expand(fast.time_steps, -1, -1, -1, -1))
    torch.testing.assert_close(fast.window_image(torch.stack(frames), parts), fast(x), rtol=1e-5, atol=1e-5)


def test_linear_skip_starts_as_the_linear_image_and_round_trips():
    model = SpikingLRN(time_steps=2, linear_skip=True).eval()
    x = voxel(model)
    torch.testing.assert_close(model(x), model.skip(x))           # readout starts at zero
    assert build_model(model.config()).config() == model.config()
    old = {k: v for k, v in SpikingLRN(time_steps=2).config().items() if k != "linear_skip"}
    assert build_model(old).skip is None                            # checkpoints from before the option


def test_plain_cnn_with_a_linear_skip_starts_as_the_linear_image_and_round_trips():
    """--arch ann --linear_skip: the SNN's comparison, the same fitted filter under ReLU layers."""
    model = PlainLRN(in_bins=200, channels=(8, 8, 4, 3), linear_skip=True).eval()
    x = torch.rand(2, 200, 9, 11) * 2
    torch.testing.assert_close(model(x), model.linear_path(x))     # the last conv starts at zero
    assert model.config()["linear_skip"] and build_model(model.config()).skip is not None
    assert "linear_skip" not in PlainLRN().config()                  # older ANN configs stay equal
    assert build_model(PlainLRN().config()).skip is None
    with torch.no_grad():
        model.net[-1].weight.normal_()
    assert not torch.allclose(model(x), model.linear_path(x))       # and the ReLU path adds to it
    torch.testing.assert_close(model(x.to(torch.uint8)), model(x.to(torch.uint8).float()))


def test_model_names_say_the_bins_when_not_the_seeds_voxel():
    assert model_name(SpikingLRN(time_steps=2, linear_skip=True).config()) == "SNN (T=2, direct, linear skip)"
    assert model_name(SpikingLRN(in_bins=200, linear_skip=True).config()) == "SNN (T=4, direct, 200 bins, linear skip)"
    assert model_name(SpikingLRN(encoding="temporal").config()) == "SNN (T=4, temporal)"
    assert model_name(PlainLRN(in_bins=200).config()) == "ANN (plain-CNN LRN, 200 bins)"

