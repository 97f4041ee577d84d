"""The reconstruction networks (SPEC §4): a spiking LRN whose LIF state evolves over time steps,
and the plain-CNN LRN of the original SpikeCLIP for comparison.

Spiking LRN, per time step t (membranes carried from step to step):
    conv3x3(50->64)+BN -> LIF -> conv(64->128)+BN -> LIF -> conv(128->64)+BN -> LIF
    -> conv(64->16)+BN -> LIF -> conv(16->1)  analog readout;   image = mean_t readout_t
Optional linear skip (--linear_skip): a conv3x3 of the whole input voxel (50 bins, or T*50 for
temporal encoding) to 1 channel added to the image, so the network learns a linear
spatio-temporal filter of the window's spikes (TFP is one such filter: the mean of the centre
bins / rate) and the spiking layers learn what that filter cannot do (edges under motion,
noise); the readout then starts at zero, so training starts from the linear image (train.py fits
the skip by least squares and keeps it fixed). Without it the spiking path must also learn the
overall intensity scale.
LIF (snnTorch `Leaky`, reset by subtraction, reset_delay):
    mem_t = beta * mem_{t-1} + I_t - theta * H(mem_{t-1} - theta)      (the reset is detached)
    spk_t = H(mem_t - theta)            backward: a surrogate derivative of H
Encodings: *direct* feeds the same 50-bin voxel at every step; *temporal* feeds step t its own
50-bin slice of the stream, so the input has 50*T channels [B, T*50, H, W].
Streaming (stream_frames): a temporal SNN runs one step per new slice of the stream, membranes
carried; optional image gate (--image_gate): a second readout channel says per pixel how much
of the previous output frame to keep, so still content averages over many windows (carry_image).
BatchNorm in training mode normalises each time step's batch on its own and updates the running
statistics once per step, exactly what a step-by-step loop does.

Two implementations of this one function share the same parameters:
- backend "snntorch": the plain reference loop over steps with snnTorch `Leaky` neurons;
- backend "fast": layer by layer over all T steps at once. Because the network is feed-forward,
  layer l at step t only needs layer l-1 at steps <= t, so each conv runs once on a [T*B] batch;
  the direct-encoding conv1+BN1 runs once per sample (its input is the same at every step); the
  LIF recurrence is one fused autograd function; BN runs natively (per step in training); the
  linear readout runs once on the mean spike map (mean_t conv(s_t) = conv(mean_t s_t)).
Inference (prepare_for_inference, the scripts' default where bf16 is native): the fast path in
eval mode with each BN folded into its conv (FoldedConv), bf16 convs -- int8 for the convs that
take spikes, on CPUs with VNNI -- the linear skip as extra output channels of the first conv,
and one fused kernel per LIF layer.
"""
import hashlib
import math
import os
import re
import sys
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import snntorch as snn
from snntorch import surrogate

from utils import InputError

LRN_CHANNELS = (64, 128, 64, 16)
ORIGINAL_ORIGIN = "spikeclip-original"    # model_config["origin"] of the authors' trained LRN
ORIGINAL_NAME = "the original SpikeCLIP LRN"
# image gate (carry_image) at the start of training: keep sigmoid(2) = 88 % of the carried frame
# where nothing changes, and a change of 0.05 (a moving edge) lowers the logit by 5. Started at
# keep 12 % (logit -2, gain 20) the gate stayed low (still-scene flicker 0.0062 against TFP's
# 0.0030); from here the shipped stream.pth flickers 0.0021 (bench/stream_speed.py, BENCHMARKS.md)
GATE_INIT_LOGIT = 2.0
GATE_INIT_MOTION_GAIN = 100.0
# lens input (SpikingLRN lens_ref_px): a Gaussian lens of std s blurs an image by about
# (s^2 / 2) x its Laplacian, so what undoing it adds grows with s^2: the network's image gets
# (s^2 - ref^2) x a second readout of its spikes. At the reference lens that term is zero; a
# stream whose lens is not known is read as taken through the reference lens, the std the REDS
# streams read as (bench/reds_lens.py: ~0.5 px)
LENS_REF_PX = 0.5


# Surrogate derivatives, as functions of x = mem - theta (the same as snntorch.surrogate)
SURROGATES = {
    # name: (snnTorch reference, our derivative as a function of x = mem - theta)
    "atan": (lambda: surrogate.atan(alpha=2.0),
             lambda x: 1.0 / (1 + (math.pi * x) ** 2)),
    "fast_sigmoid": (lambda: surrogate.fast_sigmoid(slope=25),
                     lambda x: 1.0 / (25 * x.abs() + 1) ** 2),
}


class _LIFSequence(torch.autograd.Function):
    """The whole LIF recurrence over T steps in one autograd node.

    current [T, ...] -> spikes [T, ...]. Saves only the membranes, and backward is the exact
    reverse recurrence (the reset term is detached, as in snnTorch):
        g_mem_t = g_spk_t * sg(mem_t - theta) + beta * g_mem_{t+1};   g_current_t = g_mem_t
    """

    @staticmethod
    def forward(ctx, current, beta, threshold, surrogate_name):
        # in-place updates into preallocated outputs: no per-step allocation, no final stack
        spikes = torch.empty_like(current)
        mems = torch.empty_like(current) if ctx.needs_input_grad[0] else None
        mem = torch.zeros_like(current[0])
        for t in range(current.shape[0]):
            mem.mul_(beta).add_(current[t])
            if t > 0:
                mem.sub_(spikes[t - 1], alpha=threshold)
            torch.gt(mem, threshold, out=spikes[t])
            if mems is not None:
                mems[t].copy_(mem)
        if mems is not None:
            ctx.save_for_backward(mems)
        ctx.beta, ctx.threshold, ctx.surrogate_name = beta, threshold, surrogate_name
        return spikes

    @staticmethod
    def backward(ctx, grad_spk):
        (mems,) = ctx.saved_tensors
        derivative = SURROGATES[ctx.surrogate_name][1]
        grad_current = torch.empty_like(grad_spk)
        g_mem = torch.zeros_like(grad_spk[0])
        for t in reversed(range(grad_spk.shape[0])):
            g_mem = grad_spk[t] * derivative(mems[t] - ctx.threshold) + ctx.beta * g_mem
            grad_current[t] = g_mem
        return grad_current, None, None, None


class _Spike(torch.autograd.Function):
    """H(x) forward, the surrogate derivative backward (x = mem - theta)."""

    @staticmethod
    def forward(ctx, x, surrogate_name):
        ctx.save_for_backward(x)
        ctx.surrogate_name = surrogate_name
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * SURROGATES[ctx.surrogate_name][1](x), None


def _lif_sequence_traceable(current, beta, threshold, surrogate_name):
    """The same recurrence in out-of-place ops, for torch.compile: inductor fuses the whole
    T-step loop of a layer into one kernel (forward and backward)."""
    rest = torch.zeros_like(current[0])
    return lif_steps(current, rest, rest, beta, threshold, surrogate_name)[0]


def lif_steps(current, mem, spk, beta, threshold, surrogate_name="atan"):
    """LIF neurons over K steps from a carried state (membranes `mem`, last spikes `spk`, each
    [B, C, H, W]): current [K, B, C, H, W] -> (spikes [K, B, C, H, W], last membranes).
    Differentiable through the surrogate within the K steps."""
    spikes = []
    for cur in current.unbind(0):   # one backward node for all steps (indexing makes one per step)
        mem = beta * mem + cur - threshold * spk.detach()           # detached reset, as snnTorch
        spk = _Spike.apply(mem - threshold, surrogate_name)
        spikes.append(spk)
    return torch.stack(spikes), mem


def lif_sequence(current, beta, threshold, surrogate_name="atan"):
    """LIF neurons over time: current [T, B, C, H, W] -> spikes [T, B, C, H, W] in {0,1}."""
    if torch.compiler.is_compiling():
        return _lif_sequence_traceable(current, beta, threshold, surrogate_name)
    return _LIFSequence.apply(current, beta, threshold, surrogate_name)


def lif_inference(current, time_steps, beta, threshold, mem=None, spk=None, spike_dtype=None):
    """LIF over T steps for inference (no autograd), from rest or from a carried state (fp32
    membranes `mem` and last spikes `spk`, [B, C, H, W]): current [S, B, C, H, W] in the conv's
    dtype, S = T, or 1 for a current that is the same at every step (direct encoding's first
    layer) -> (spikes [T, B, C, H, W] in spike_dtype, by default the current's, last membranes).
    The membrane is fp32 (in bf16 it would round away the small currents it integrates); the
    order of operations is _LIFSequence's (from rest, beta * 0 + I - theta * 0 is I exactly).
    A carried `mem` is updated in place and returned: a new fp32 buffer per layer and step (51 MB
    for 128 channels at 250x400) is, for glibc, a fresh mmap whose pages fault in on every call."""
    carried = mem
    if mem is None:
        mem = spk = torch.zeros_like(current[0], dtype=torch.float32)
    spk, spikes = spk.float(), []
    for t in range(time_steps):
        step_current = current[t if current.shape[0] > 1 else 0].float()
        mem = beta * mem + step_current - threshold * spk
        spk = (mem > threshold).float()
        spikes.append(spk.to(spike_dtype or current.dtype))
    if carried is not None:
        mem = carried.copy_(mem)
    # cat, not stack: compiled, cat writes each step's spikes straight into one channels_last
    # buffer (stack of uint8 spikes fell back to a slow copy: 4x the time of the whole layer)
    return torch.cat(spikes).view(time_steps, *current.shape[1:]), mem


def lif_spikes(current, time_steps, beta, threshold, spike_dtype=None):
    """lif_inference from rest, the spikes alone (compiled, the last membranes are then never
    written out)."""
    return lif_inference(current, time_steps, beta, threshold, spike_dtype=spike_dtype)[0]


_compiled = {}   # function -> its torch.compile'd version, False where compiling failed


def _fused(fn, *args):
    """fn compiled into one kernel per layer on the CPU: torch.compile fuses its T steps into a
    single pass over memory (eager, each step is several passes over [B, C, H, W], which cost
    as much as the bf16 convs). Compiling takes seconds once per process and input shape; where
    no C++ compiler is found the eager function runs (the same numbers)."""
    if args[0].device.type != "cpu" or _compiled.get(fn) is False:
        return fn(*args)
    if fn not in _compiled:
        # a graph per layer shape, dtype and path (from rest, carried state): a process running
        # several networks (bench/stream_speed.py) passed dynamo's default of 8, and the rest ran eagerly
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled[fn] = torch.compile(fn)
    try:
        return _compiled[fn](*args)
    except torch._dynamo.exc.BackendCompilerFailed as e:
        print(f"warning: torch.compile failed ({str(e).splitlines()[0][:200]}); the LIF layers run "
              f"eagerly (slower, same output)", file=sys.stderr)
        _compiled[fn] = False
        return fn(*args)


def fused_lif(current, time_steps, beta, threshold, mem=None, spk=None, spike_dtype=None):
    """lif_inference as one fused kernel per layer (CPU): -> (spikes, last membranes)."""
    return _fused(lif_inference, current, time_steps, beta, threshold, mem, spk, spike_dtype)


def fused_lif_spikes(current, time_steps, beta, threshold, spike_dtype=None):
    """lif_spikes as one fused kernel per layer (CPU): from rest -> spikes [T, B, C, H, W]."""
    return _fused(lif_spikes, current, time_steps, beta, threshold, spike_dtype)


class FoldedConv:
    """A 3x3 conv with its eval BatchNorm folded in, for inference (prepare_for_inference):
    input [N, C, H, W] -> currents [N, C', H, W] in bf16, channels_last.
    bf16: bf16 weights and input (spike counts are exact in bf16).
    int8: for a layer whose input is binary spikes: the spikes as uint8 (exact), the weights int8
    with one scale per output channel (round to nearest of w / (max|w| / 127)), accumulated in
    int32 by oneDNN (AVX512-VNNI) and scaled back to bf16 currents. CPU only."""

    def __init__(self, weight, bias, precision):
        self.precision = precision
        self.input_dtype = torch.uint8 if precision == "int8" else torch.bfloat16
        self.bias = bias.float()
        if precision == "int8":
            self.scale = (weight.abs().amax(dim=(1, 2, 3)) / 127).clamp(min=1e-30).double()
            qweight = torch.round(weight / self.scale.float()[:, None, None, None]).clamp(-127, 127).to(torch.int8)
            self.zero_points = torch.zeros(len(weight), dtype=torch.int64)
            self.weight = torch.ops.onednn.qconv_prepack(qweight, self.scale, 1.0, 0, [1, 1], [1, 1], [1, 1], 1)
        else:
            self.weight = weight.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            self.bias = self.bias.to(torch.bfloat16)

    def __call__(self, h):
        # (.to(memory_format=...) copies a batch of one whatever its strides: 5 ms per
        # 128-channel 250x400 spike map here, for spikes the fused LIF kernel wrote channels_last)
        if h.dtype != self.input_dtype or not h.is_contiguous(memory_format=torch.channels_last):
            h = h.to(self.input_dtype, memory_format=torch.channels_last)
        if self.precision == "int8":
            return torch.ops.onednn.qconv2d_pointwise(h, 1.0, 0, self.weight, self.scale, self.zero_points,
                                                      self.bias, [1, 1], [1, 1], [1, 1], 1, 1.0, 0,
                                                      torch.bfloat16, "none", [], "")
        return F.conv2d(h, self.weight, self.bias, padding=1)


# ----------------------------------------------------------------------------------------------

class SpikingLRN(nn.Module):
    """The SNN-LRN. Input [B, 50, H, W] (direct) or [B, T*50, H, W] (temporal); output the
    analog image [B, 1, H, W] (not clamped: clamp where CLIP or a metric sees it)."""

    def __init__(self, in_bins=50, time_steps=4, encoding="direct", beta=0.9, threshold=1.0,
                 surrogate_name="atan", backend="fast", channels=LRN_CHANNELS, linear_skip=False,
                 image_gate=False, lens_ref_px=None):
        super().__init__()
        if time_steps < 1:
            raise ValueError("time_steps must be >= 1")
        if encoding not in ("direct", "temporal"):
            raise ValueError(f"encoding must be 'direct' or 'temporal', got {encoding!r}")
        if surrogate_name not in SURROGATES:
            raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.in_bins, self.time_steps, self.encoding = in_bins, time_steps, encoding
        self.beta, self.threshold, self.surrogate_name = float(beta), float(threshold), surrogate_name
        self.backend = backend
        widths = (in_bins,) + tuple(channels)
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1)
                                   for i in range(len(channels)))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in channels)
        self.readout = nn.Conv2d(channels[-1], 1, 3, padding=1)
        self.skip = nn.Conv2d(self.input_channels, 1, 3, padding=1) if linear_skip else None
        if linear_skip:   # start from the linear image; the spiking path learns the correction
            nn.init.zeros_(self.readout.weight)
            nn.init.zeros_(self.readout.bias)
        # image_gate (temporal encoding, stateful streams): how much of the carried output image
        # each pixel keeps (carry_image); starts at GATE_INIT_LOGIT, GATE_INIT_MOTION_GAIN
        self.gate = self.motion_gain = None
        if image_gate:
            if encoding != "temporal":
                raise ValueError("image_gate carries the image of a stateful stream: temporal encoding only")
            self.gate = nn.Conv2d(channels[-1], 1, 3, padding=1)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, GATE_INIT_LOGIT)
            self.motion_gain = nn.Parameter(torch.tensor(math.log(GATE_INIT_MOTION_GAIN)))
        # lens input (lens_ref_px: the reference lens std, px; None: no lens input): a second
        # readout of the spikes, weighted per item by lens_px^2 - lens_ref_px^2 (lens_term);
        # zero at first, so a trained network given it starts as it was
        self.lens_ref_px = self.lens_readout = None
        if lens_ref_px is not None:
            if encoding != "direct":
                raise ValueError("the lens input weights a window's readout: direct encoding only")
            self.lens_ref_px = float(lens_ref_px)
            self.lens_readout = nn.Conv2d(channels[-1], 1, 3, padding=1)
            nn.init.zeros_(self.lens_readout.weight)
            nn.init.zeros_(self.lens_readout.bias)
        # snnTorch neurons for the reference backend (they hold no trainable parameters)
        self.lifs = nn.ModuleList(
            snn.Leaky(beta=beta, threshold=threshold, spike_grad=SURROGATES[surrogate_name][0]())
            for _ in channels)
        # prepare_for_inference: [FoldedConv] of each conv with its eval BN folded in, in the
        # inference dtype, the first one also computing the skip's parts (if there is a skip);
        # None = the exact fp32 path (and always in training)
        self.folded = None

    @property
    def input_channels(self):
        return self.in_bins * (self.time_steps if self.encoding == "temporal" else 1)

    def config(self):
        """Everything needed to rebuild this network (stored in checkpoints)."""
        config = {"arch": "snn", "in_bins": self.in_bins, "time_steps": self.time_steps,
                  "encoding": self.encoding, "beta": self.beta, "threshold": self.threshold,
                  "surrogate": self.surrogate_name,
                  "channels": [c.out_channels for c in self.convs], "linear_skip": self.skip is not None}
        if self.gate is not None:     # only when set: older checkpoints' configs stay equal
            config["image_gate"] = True
        if self.lens_readout is not None:
            config["lens_ref_px"] = self.lens_ref_px
        return config

    def _step_inputs(self, x):
        """[B, C, H, W] -> per-step inputs: [1, B, 50, H, W] (direct) or [T, B, 50, H, W]
        (temporal: the T*50 bins in time order, step t its bins [50t, 50t+50); dataset.voxelize)."""
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise ValueError(f"expected input [B, {self.input_channels}, H, W] "
                             f"({self.encoding} encoding, T={self.time_steps}), got {list(x.shape)}")
        if self.encoding == "direct":
            return x.unsqueeze(0)
        b, _, h, w = x.shape
        return x.view(b, self.time_steps, self.in_bins, h, w).transpose(0, 1)

    def forward(self, x, return_rates=False, lens_px=None):
        """x: voxel [B, C, H, W] (counts: float, or uint8 as reconstruct.py reads them) -> image
        [B, 1, H, W] (and per-layer firing rates [L]). lens_px: with a lens input, the lens blur
        std (px) of each item's capture, [B] or one number; None or NaN: the reference lens."""
        if self.folded is not None and not self.training:     # the skip rides on the first conv
            image, rates, spike_mean = self._forward_folded(x, return_rates)
        else:
            x = x if x.is_floating_point() else x.float()
            if self.backend == "snntorch":
                image, rates, spike_mean = self._forward_snntorch(x)
            else:
                image, rates, spike_mean = self._forward_fast(x)
            if self.skip is not None:
                image = image + self.linear_path(x)
        if self.lens_readout is not None:
            image = image + self.lens_term(spike_mean, lens_px)
        return (image, rates) if return_rates else image

    def lens_term(self, spike_mean, lens_px):
        """What the lens input adds to the image: (lens_px^2 - ref^2) x lens_readout(the last
        layer's mean spike map [B, C, H, W]) -> [B, 1, H, W]; lens_px None or NaN: the reference."""
        ref = self.lens_ref_px
        lens = torch.as_tensor(ref if lens_px is None else lens_px, dtype=torch.float32, device=spike_mean.device)
        lens = torch.where(torch.isnan(lens), torch.full_like(lens, ref), lens).expand(spike_mean.shape[0])
        return (lens ** 2 - ref ** 2).view(-1, 1, 1, 1) * self.lens_readout(spike_mean.float())

    @torch.no_grad()
    def fix_lens(self, lens_px=None):
        """Fold the lens term at one lens (None: the reference) into the readout and drop the lens
        input: both convs read the same mean spike map, so the readout becomes W + d W_lens, b + d
        b_lens with d = lens_px^2 - ref^2, and the network computes forward(x, lens_px=lens_px)
        without being told it (convert.py exports such a network). Returns self."""
        if self.lens_readout is None:
            return self
        ref = self.lens_ref_px
        d = (ref if lens_px is None else lens_px) ** 2 - ref ** 2
        self.readout.weight += d * self.lens_readout.weight
        self.readout.bias += d * self.lens_readout.bias
        self.lens_readout = self.lens_ref_px = None
        return self

    def linear_path(self, x):
        """The linear skip alone, the spiking readout left out: voxel [B, C, H, W] -> [B, 1, H, W]
        (a 3x3 conv of the whole window's bins). A fitted linear filter of the spikes, the
        baseline the spiking layers must beat."""
        return self.skip(x)

    # -- reference: the plain step-by-step snnTorch loop ---------------------------------------
    def _forward_snntorch(self, x):
        steps = self._step_inputs(x)
        mems = [lif.reset_mem() for lif in self.lifs]
        out_sum, last_sum, spike_sums = 0.0, 0.0, [0.0] * len(self.lifs)
        for t in range(self.time_steps):
            h = steps[t if self.encoding == "temporal" else 0]
            for l, (conv, bn, lif) in enumerate(zip(self.convs, self.bns, self.lifs)):
                h, mems[l] = lif(bn(conv(h)), mems[l])
                spike_sums[l] = spike_sums[l] + h.detach().mean()
            out_sum = out_sum + self.readout(h)
            last_sum = last_sum + h
        rates = torch.stack([s / self.time_steps for s in spike_sums])
        return out_sum / self.time_steps, rates, last_sum / self.time_steps

    # -- fast path ------------------------------------------------------------------------------
    def _conv_bn(self, l, h, steps):
        """conv_l + BN_l on h [steps*B, C, H, W], with the step-by-step loop's BN semantics."""
        conv, bn = self.convs[l], self.bns[l]
        y = conv(h)
        if not (self.training or bn.running_mean is None):
            # eval: BN is a per-channel affine map. Folding it into the conv weights saves a pass
            # but rounds differently, and a membrane sitting at the threshold then flips a spike
            # (output pixels moved by up to 0.13 at 224x224), so the exact fp32 path keeps native
            # BN; prepare_for_inference folds it (bench/cpu_inference.py measures the effect).
            return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        n = y.shape[0] // steps
        if bn.track_running_stats and self.encoding == "direct" and steps == 1 and self.time_steps > 1:
            # direct encoding: the reference normalises the same conv1 output at each of the T
            # steps, so its running statistics move T times with the same batch statistics
            # (T-1 here, the last in batch_norm below; done first because batch_norm's backward
            # checks that the running buffers are unchanged after it)
            with torch.no_grad():
                var, mean = torch.var_mean(y.float(), dim=(0, 2, 3), unbiased=True)
            self._update_running_stats(bn, mean, var, self.time_steps - 1)
        # native batch_norm per time step: its fused backward is much cheaper than composing
        # mean/var/normalise, and each call updates the running statistics once, as a step of
        # the reference loop does
        # (split, not slicing: one backward node, where each slice's backward fills a zero tensor
        # of the whole batch)
        chunks = [F.batch_norm(y_t, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum,
                               bn.eps) for y_t in y.split(n)]
        out = chunks[0] if steps == 1 else torch.cat(chunks)
        if bn.track_running_stats:
            bn.num_batches_tracked += steps
        return out

    @torch.no_grad()
    def _update_running_stats(self, bn, mean, unbiased_var, repeats):
        """`repeats` more training-mode BN updates of the running statistics with one batch's
        statistics (momentum m: r <- (1 - m) r + m s, applied repeats times)."""
        for _ in range(repeats):
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
            bn.running_var.mul_(1 - m).add_(unbiased_var.to(bn.running_var.dtype), alpha=m)

    def _forward_fast(self, x):
        steps = self._step_inputs(x)                                     # [S, B, 50, H, W]
        s, b = steps.shape[:2]
        cur = self._conv_bn(0, steps.flatten(0, 1), s)                  # [S*B, 64, H, W]
        cur = cur.view(s, b, *cur.shape[1:])
        if s == 1:                                                       # direct: same current
            cur = cur.expand(self.time_steps, *cur.shape[1:])
        rates = []
        for l in range(len(self.convs)):
            spk = lif_sequence(cur, self.beta, self.threshold, self.surrogate_name)
            rates.append(spk.detach().mean())
            if l + 1 < len(self.convs):
                cur = self._conv_bn(l + 1, spk.flatten(0, 1), self.time_steps)
                cur = cur.view(self.time_steps, b, *cur.shape[1:])
        spike_mean = spk.mean(0)
        return self.readout(spike_mean), torch.stack(rates), spike_mean

    # -- inference after prepare_for_inference -------------------------------------------------
    def _forward_folded(self, x, return_rates):
        """The fast path in eval mode with BN folded into the convs (FoldedConv: bf16, or int8
        for the layers that take spikes), channels_last, the LIF recurrence of a layer one fused
        kernel with fp32 membranes emitting spikes in the next conv's input dtype; the readout
        runs in fp32 on the mean spike map; the skip comes out of the first conv (_split_skip)."""
        steps = self._step_inputs(x)                                     # [S, B, 50, H, W]
        s, b = steps.shape[:2]
        h = steps.flatten(0, 1)
        rates = []
        for l, conv in enumerate(self.folded):
            cur = conv(h)                                                # [S*B or T*B, C, H, W]
            if l == 0:
                cur, parts = self._split_skip(cur)
            spk = fused_lif_spikes(cur.view(-1, b, *cur.shape[1:]), self.time_steps, self.beta, self.threshold,
                                   self._spike_dtype(l))
            if return_rates:      # a pass over the spikes: only when asked
                rates.append(spk.mean(dtype=torch.float32))
            h = spk.flatten(0, 1)
        spike_sum = spk[0].float()     # the mean spike map; adds beat a dim-0 reduction here
        for t in range(1, self.time_steps):
            spike_sum += spk[t]
        spike_mean = spike_sum / self.time_steps
        image = self.readout(spike_mean)
        if parts is not None:      # the window's steps' skip parts (direct: its one voxel's)
            image = self.window_image(image[None], parts.view(s, b, *parts.shape[1:]))
        return image, (torch.stack(rates) if return_rates else None), spike_mean

    def _split_skip(self, cur):
        """The first folded conv's output [N, C + P, H, W] -> (currents [N, C, H, W], the skip's
        parts [N, P, H, W] in fp32, as skip_steps() gives them), or (cur, None) without a skip."""
        if self.skip is None:
            return cur, None
        c = self.convs[0].out_channels
        return cur[:, :c], cur[:, c:].float()

    def _spike_dtype(self, l):
        """The dtype layer l's spikes are emitted in: what the next conv takes (the readout: bf16)."""
        return self.folded[l + 1].input_dtype if l + 1 < len(self.folded) else torch.bfloat16

    def train(self, mode=True):
        if mode:   # training moves the BN statistics: folded weights would go stale
            self.folded = None
        return super().train(mode)

    # -- streaming: one step at a time with carried state --------------------------------------
    def init_state(self, batch, height, width, device=None, dtype=torch.float32):
        """Zero membranes and no previous spikes for every LIF layer."""
        # channels_last, the layout of the inference convs' currents: the fused LIF kernel then
        # reads membranes and currents in one order (mixed layouts made it 2x slower)
        return [tuple(torch.zeros(batch, c.out_channels, height, width, device=device, dtype=dtype)
                      .to(memory_format=torch.channels_last) for _ in range(2)) for c in self.convs]

    def steps(self, x_steps, state):
        """K time steps in a row from a carried state: x_steps [K, B, 50, H, W] -> (readouts
        [K, B, C, H, W], skip parts [K, B, P, H, W] (skip_steps(); None without a skip), new
        state): readout channel 0 the spiking readout of each step, channel 1 (with an image gate)
        the gate's logit; window_image() makes a window's image of a window's T steps.

        Feeding a long stream slice by slice, carrying the state, gives spike-to-video
        (stream_frames); in training mode the K steps back-propagate, BN normalising each
        step's batch on its own as forward() does (train.py --stateful). Layer by layer, as the
        fast path: each conv runs once on the [K*B] batch (one device call for K steps), then
        the LIF recurrence walks the K steps from the carried membranes.
        """
        if self.lens_readout is not None:
            raise ValueError("a network with a lens input reads whole windows (forward()), not streams of steps")
        k, b = x_steps.shape[:2]
        h, new_state = x_steps.flatten(0, 1), []     # counts, float or uint8
        if self.folded is not None and not self.training:    # after prepare_for_inference
            for l, ((mem, spk), conv) in enumerate(zip(state, self.folded)):
                cur = conv(h)
                if l == 0:
                    cur, parts = self._split_skip(cur)
                    parts = None if parts is None else parts.view(k, b, *parts.shape[1:])
                spikes, mem = fused_lif(cur.view(k, b, *cur.shape[1:]), k, self.beta, self.threshold, mem, spk,
                                        self._spike_dtype(l))
                new_state.append((mem, spikes[-1]))
                h = spikes.flatten(0, 1)
            h = h.float()
        else:
            h, parts = (h if h.is_floating_point() else h.float()), self.skip_steps(x_steps)
            for l, (mem, spk) in enumerate(state):
                cur = self._conv_bn(l, h, k)
                spikes, mem = lif_steps(cur.view(k, b, *cur.shape[1:]), mem, spk, self.beta, self.threshold,
                                        self.surrogate_name)
                new_state.append((mem, spikes[-1]))
                h = spikes.flatten(0, 1)
        if self.gate is None:
            out = self.readout(h)
        else:       # one conv of two output channels: the readout, the gate's logit
            out = F.conv2d(h, torch.cat([self.readout.weight, self.gate.weight]),
                           torch.cat([self.readout.bias, self.gate.bias]), padding=1)
        return out.view(k, b, *out.shape[1:]), parts, new_state

    def skip_steps(self, x_steps):
        """The linear skip split over time steps, for streaming: x_steps [K, B, 50, H, W] ->
        [K, B, P, H, W], bias left out. Temporal encoding (P = T): entry p is what the step adds to
        the skip image of a window in which it is step p (the skip's weights of bins [50p, 50p+50)),
        so each step is convolved once, not once per window it belongs to, and a window's T*50 bins
        are never assembled. Direct encoding (P = 1): the skip image of each step's voxel.
        None without a skip. window_image() sums a window's entries."""
        if self.skip is None:
            return None
        k, b = x_steps.shape[:2]
        per_step = 1 if self.encoding == "direct" else self.time_steps
        weight = self.skip.weight.view(per_step, self.in_bins, *self.skip.weight.shape[2:])
        parts = F.conv2d(x_steps.flatten(0, 1).to(weight.dtype), weight, padding=self.skip.padding)
        return parts.view(k, b, *parts.shape[1:])

    def window_image(self, readouts, skip_parts):
        """The image of a window from the readouts [T, B, C, H, W] of its T steps (steps()) and
        their skip_steps() [T, B, P, H, W]: what forward() computes from zero membranes, and the
        output frame of a stream with the state carried (before carry_image())."""
        image = readouts[:, :, :1].mean(0)
        if self.skip is None:
            return image
        if self.encoding == "temporal":   # step p of the window, its weights for position p
            skip = sum(skip_parts[p, :, p] for p in range(self.time_steps))
        else:                             # every step sees the window's one voxel
            skip = skip_parts[:, :, 0].mean(0)
        return image + (skip + self.skip.bias)[:, None]

    def carry_image(self, image, carried, gate_logit):
        """The output frame of a stateful stream with an image gate: the new window's image
        [B, 1, H, W] blended into the previous output frame `carried` (None at rest: the window's
        image), pixel by pixel keeping
            keep = sigmoid(gate_logit - exp(motion_gain) * mean3x3 |image - carried|)
        of it. gate_logit [B, 1, H, W] is read out of the window's last step's spikes; the
        change term lets a moving edge (a large change) drop what was carried there. On still
        content the frame averages over many windows (less noise, less flicker); where things
        move it follows the new window (no smear). A convex blend, so the brightness stays."""
        if carried is None:
            return image
        change = F.avg_pool2d((image - carried).abs(), 3, stride=1, padding=1, count_include_pad=False)
        keep = torch.sigmoid(gate_logit - self.motion_gain.exp() * change)
        return image + keep * (carried - image)

    def init_stream(self, batch, height, width, device=None):
        """A stream at rest: zero membranes, no steps kept, no carried image."""
        return StreamCarry(self.init_state(batch, height, width, device), None, None)

    def stream_frames(self, x_steps, carry):
        """The next K steps of a stream, x_steps [K, B, 50, H, W], after `carry` (init_stream() at
        rest) -> (the output frame of every window of T consecutive steps that ends among them,
        [m, B, 1, H, W] in order, m = kept + K - T + 1 or none; the new carry). A window's frame is
        window_image() -- from rest exactly forward()'s image of it -- then, with an image gate,
        carry_image() of it into the previous frame. reconstruct.py runs a stream through this a
        device call at a time; train.py --stateful back-propagates through chunks of it."""
        readouts, parts, state = self.steps(x_steps, carry.state)
        if parts is None:                   # no skip: nothing of the steps but their readouts counts
            parts = readouts[:, :, :0]
        if carry.kept is not None:
            readouts, parts = torch.cat([carry.kept[0], readouts]), torch.cat([carry.kept[1], parts])
        t, image = self.time_steps, carry.image
        m = len(readouts) - t + 1
        frames = readouts[:0, :, :1]
        if m > 0:
            windows = torch.stack([readouts[i:i + t] for i in range(m)], 1).flatten(1, 2)   # [T, m*B, C, H, W]
            window_parts = torch.stack([parts[i:i + t] for i in range(m)], 1).flatten(1, 2)
            frames = self.window_image(windows, window_parts).view(m, *readouts.shape[1:2], 1, *readouts.shape[3:])
            if self.gate is not None:
                carried = []
                for i in range(m):        # each window's frame blends into the one before
                    image = self.carry_image(frames[i], image, readouts[i + t - 1, :, 1:])
                    carried.append(image)
                frames = torch.stack(carried)
        keep = len(readouts) - min(len(readouts), t - 1)
        return frames, StreamCarry(state, (readouts[keep:], parts[keep:]), image)

    @torch.no_grad()
    def step(self, x_t, state):
        """One time step in eval mode: x_t [B, 50, H, W] -> (spiking readout [B, 1, H, W], new
        state). With the same voxel at every step, window_image() of the T readouts is forward()
        of direct encoding."""
        if self.training:
            raise RuntimeError("step() runs the network in eval mode: call model.eval() first")
        out, _, state = self.steps(x_t[None], state)
        return out[0, :, :1], state


class StreamCarry(NamedTuple):
    """What a stream carries from one call of SpikingLRN.stream_frames() to the next."""
    state: list                 # [(membranes, last spikes)] of each LIF layer, [B, C, H, W] each
    kept: Optional[tuple]       # (readouts [n, B, C, H, W], skip parts [n, B, P, H, W]) of the last
                                # n <= T-1 steps, whose windows end in the next call; None at rest
    image: Optional[torch.Tensor]   # the last output frame [B, 1, H, W] (image gate only), or None

    def detached(self):
        """The same carry cut from the autograd graph (truncated back-propagation through time)."""
        return StreamCarry([(mem.detach(), spk.detach()) for mem, spk in self.state],
                           None if self.kept is None else tuple(x.detach() for x in self.kept),
                           None if self.image is None else self.image.detach())


class PlainLRN(nn.Module):
    """The original SpikeCLIP LRN: the same conv stack with ReLU and no BN (a plain CNN).

    origin=ORIGINAL_ORIGIN marks weights trained by the SpikeCLIP authors (their LRN_CALTECH.pth):
    the network is named after them and its output is scored as their evaluation scores it
    (see scored_image)."""

    def __init__(self, in_bins=50, channels=LRN_CHANNELS, origin=None, linear_skip=False):
        super().__init__()
        if origin not in (None, ORIGINAL_ORIGIN):
            raise ValueError(f"unknown origin {origin!r} (expected {ORIGINAL_ORIGIN!r} or none)")
        self.in_bins, self.origin = in_bins, origin
        widths = (in_bins,) + tuple(channels)
        layers = []
        for i in range(len(channels)):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        # the same linear skip as SpikingLRN's (fitted, fixed): the ReLU layers learn the residual,
        # so an SNN with a skip has a plain CNN to be compared with that starts where it starts
        self.skip = nn.Conv2d(in_bins, 1, 3, padding=1) if linear_skip else None
        if linear_skip:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        self.time_steps, self.encoding = 1, "direct"
        self.hidden_dtype = None    # prepare_for_inference: bf16 hidden convs

    @property
    def input_channels(self):
        return self.in_bins

    def config(self):
        config = {"arch": "ann", "in_bins": self.in_bins,
                  "channels": [m.out_channels for m in self.net if isinstance(m, nn.Conv2d)][:-1]}
        if self.origin:
            config["origin"] = self.origin
        if self.skip is not None:    # only when set: older checkpoints' configs stay equal
            config["linear_skip"] = True
        return config

    def forward(self, x, return_rates=False, lens_px=None):
        """lens_px: not read (a plain CNN has no lens input); taken so that callers need not ask."""
        if self.hidden_dtype is not None:
            hidden = self.net[:-1](x.to(self.hidden_dtype, memory_format=torch.channels_last))
            image = self.net[-1](hidden.float())
        else:
            x = x if x.is_floating_point() else x.float()     # once, for the net and the skip
            image = self.net(x)
        if self.skip is not None:
            image = image + self.linear_path(x)
        return (image, torch.zeros(0, device=x.device)) if return_rates else image

    def fix_lens(self, lens_px=None):
        """No lens input, nothing to fold (SpikingLRN.fix_lens). Returns self."""
        return self

    def linear_path(self, x):
        """The linear skip alone (fp32): voxel [B, C, H, W] -> [B, 1, H, W]."""
        return self.skip(x if x.is_floating_point() else x.float())


def has_lens_input(model):
    """Whether the network takes the lens blur of a capture (SpikingLRN lens_ref_px)."""
    return getattr(model, "lens_readout", None) is not None


def check_lens_px(model, lens_px, path):
    """--lens_px given for the network of checkpoint `path`: refused (one line) when it has no lens
    input to be told it."""
    if lens_px is not None and not has_lens_input(model):
        raise InputError(f"--lens_px {lens_px:g}: {path} has no lens input (trained without train.py --lens_input)")


def build_model(config, backend="fast"):
    """Rebuild a network from config() (as stored in a checkpoint)."""
    arch = config.get("arch")
    if arch == "ann":
        return PlainLRN(config["in_bins"], tuple(config["channels"]), config.get("origin"),
                        config.get("linear_skip", False))
    if arch == "snn":
        return SpikingLRN(config["in_bins"], config["time_steps"], config["encoding"],
                          config["beta"], config["threshold"], config["surrogate"], backend,
                          tuple(config["channels"]), config.get("linear_skip", False),
                          config.get("image_gate", False), config.get("lens_ref_px"))
    raise ValueError(f"unknown architecture {arch!r} (expected 'snn' or 'ann')")


# ----------------------------------------------------------------------------------------------
# Inference precision: "fp32" is the exact path (the numbers training validated); "bf16" folds
# each BatchNorm into its conv and runs the convs in bfloat16, channels_last, with fp32
# membranes and an fp32 readout, the linear skip as bf16 channels of the first conv; "int8" also
# runs the convs that take spikes in int8. On a 2-core AVX512-BF16/VNNI CPU (normal.pth):
# 2.9-3.5x (bf16) and 3.5-5.3x (int8) the output frames/s of fp32, within 0.012 dB PSNR on the
# REDS pairs for both shipped daylight models (bench/cpu_inference.py, BENCHMARKS.md).

PRECISIONS = ("fp32", "bf16", "int8")


def default_precision(device):
    """The fastest precision whose output stays within 0.05 dB of fp32 on the REDS pairs
    (bench/cpu_inference.py): int8 on CPUs with VNNI and native bf16 (AVX512-BF16 or AMX), bf16
    where only bf16 is native (CUDA GPUs that support it too), else fp32 (emulated bf16 would be
    slower than fp32)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu":
        return "fp32"
    bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return ("int8" if torch.cpu._is_vnni_supported() else "bf16") if bf16 else "fp32"


def inference_precision(requested, backend, device):
    """The --dtype of a script that also takes --backend: the requested precision, else the
    device's default; the snnTorch reference loop is fp32 only (bf16 runs the folded fast path)."""
    if backend == "snntorch":
        if requested in ("bf16", "int8"):
            raise InputError(f"--dtype {requested} runs the BatchNorm-folded fast path; --backend snntorch is "
                             "the fp32 reference loop (use one or the other)")
        return "fp32"
    return requested or default_precision(device)


def fold_batchnorm(conv, bn):
    """conv followed by eval-mode BN as one conv: (weight, bias) in fp32."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale[:, None, None, None], (bias - bn.running_mean) * scale + bn.bias


@torch.no_grad()
def prepare_for_inference(model, precision):
    """Eval mode at `precision` (PRECISIONS) for a network already on its device -> the network.
    bf16: the SNN keeps its weights and gets BN-folded bf16 copies (FoldedConv; back to training
    mode drops them); the plain CNN's hidden convs become bf16 in place, its output conv stays fp32.
    int8 (CPU): as bf16, but the SNN's convs that take spikes (all but the first) are int8; the
    plain CNN, whose activations are not spikes, runs bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model.eval()
    if precision == "fp32":
        return model
    dtype = torch.bfloat16
    if isinstance(model, SpikingLRN):
        if precision == "int8" and next(model.parameters()).device.type != "cpu":
            raise InputError("--dtype int8 runs on the CPU (oneDNN); on a GPU use bf16 or fp32")
        # int8 only where the input is binary spikes (layers 2..L); the first conv takes the voxel
        folded = [fold_batchnorm(c, bn) for c, bn in zip(model.convs, model.bns)]
        if model.skip is not None:
            # the skip sees the first conv's input (temporal: P = T parts, the weights of each
            # step position; skip_steps), so it runs as P more output channels of that conv: as a
            # separate fp32 conv of a few output channels it took longer than the whole first conv.
            # bf16 weights and output: REDS PSNR -0.011 to +0.004 dB from fp32 (bench/cpu_inference.py)
            p = 1 if model.encoding == "direct" else model.time_steps
            w0, b0 = folded[0]
            folded[0] = (torch.cat([w0, model.skip.weight.view(p, model.in_bins, *w0.shape[2:])]),
                         torch.cat([b0, torch.zeros_like(b0[:p])]))
        try:
            model.folded = [FoldedConv(w, b, precision if l > 0 else "bf16") for l, (w, b) in enumerate(folded)]
        except (RuntimeError, AttributeError) as e:   # no oneDNN int8 in this PyTorch build
            raise InputError(f"--dtype {precision}: this PyTorch build cannot run it here "
                             f"({str(e).splitlines()[0][:120]}); use bf16 or fp32") from e
    else:
        model.net[:-1].to(dtype=dtype, memory_format=torch.channels_last)
        model.hidden_dtype = dtype
    return model


def to_image(out):
    """The analog output as an image in [0, 1], as CLIP and the metrics see it."""
    return out.clamp(0.0, 1.0)


def is_original(config):
    return config.get("origin") == ORIGINAL_ORIGIN


def scored_image(config, out):
    """The image CLIP and the no-reference metrics score for a network of this config.

    Ours: the output clamped to [0, 1] (to_image). The original SpikeCLIP LRN: its raw output,
    neither clamped nor rescaled, because that is what the authors' evaluate.py hands to CLIP
    (grey repeated to RGB, normalised with the grey CLIP statistics) and to pyiqa; scoring it
    any other way would not reproduce their figures. PSNR/SSIM and pictures still clamp."""
    return out if is_original(config) else to_image(out)


def model_name(config):
    """How reports name the network of a checkpoint config."""
    if is_original(config):
        return ORIGINAL_NAME
    skip = ", linear skip" if config.get("linear_skip") else ""
    bins = f", {config['in_bins']} bins" if config.get("in_bins", 50) != 50 else ""   # 50: the seed's voxel
    if config.get("arch") == "ann":
        return f"ANN (plain-CNN LRN{bins}{skip})"
    gate = ", image gate" if config.get("image_gate") else ""
    lens = f", lens input (ref. {config['lens_ref_px']:g} px)" if config.get("lens_ref_px") is not None else ""
    return f"SNN (T={config.get('time_steps')}, {config.get('encoding')}{bins}{skip}{gate}{lens})"


# ----------------------------------------------------------------------------------------------
# Checkpoints: plain dicts of tensors and JSON-able values, so torch.load(weights_only=True)
# reads them; the network's config travels with its weights.

CHECKPOINT_FORMAT = "spikeclip-snn-checkpoint"


class CheckpointError(InputError, RuntimeError):
    """A checkpoint file is missing, unreadable, foreign or for another network or run."""


def load_checkpoint(path, map_location="cpu"):
    """Read and sanity-check a checkpoint file -> dict (never silently random weights).

    Accepts our checkpoints and the original SpikeCLIP LRN's bare state_dict (recognised by its
    layout, whatever the file is called), which comes back wrapped as one of ours."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):   # torch.save: a zip archive (before PyTorch 1.6: a pickle)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive; this file "
                              f"{'is empty' if not head else f'starts with {head!r}'})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: {_load_failure(e)}") from e
    if is_bare_state_dict(ckpt):
        mismatch = original_layout_mismatch(ckpt)
        if mismatch:
            raise CheckpointError(f"{path}: not a SpikeCLIP-SNN checkpoint, and not a state_dict of "
                                  f"{ORIGINAL_NAME} either: {mismatch}")
        return original_checkpoint(ckpt, path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a SpikeCLIP-SNN checkpoint (no '{CHECKPOINT_FORMAT}' "
                              f"marker; a seed or other-project checkpoint cannot be used)")
    for key in ("model_config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no '{key}'")
    return ckpt


def _load_failure(e):
    """What a failed torch.load(weights_only=True) means, in our words: PyTorch's own message
    advises loading with weights_only=False, which would run whatever code the file holds."""
    text = str(e)
    if "weights only load failed" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)
        return (f"holds pickled Python objects{f' ({found.group(1)})' if found else ''}, not only tensors "
                f"and plain values: checkpoints are read without running code from them, so it cannot be used")
    first = text.split(". ")[0].splitlines()[0].strip() if text.strip() else ""
    if "weights_only" in first:
        first = ""
    return f"not a readable checkpoint: damaged or truncated ({type(e).__name__}{': ' + first if first else ''})"


# The original SpikeCLIP LRN (github.com/chenkang455/SpikeCLIP, models.py) is
#   nn.Sequential(block1, block2, block3, block4, Conv2d(16, 1, 3, 1, 1)),
#   block_i = nn.Sequential(Conv2d(k=3, s=1, p=1), ReLU),  channels 50 -> 64 -> 128 -> 64 -> 16,
# saved as a bare state_dict. Its keys -> ours (PlainLRN.net interleaves the ReLUs) and shapes:
ORIGINAL_LAYOUT = {
    "0.0.weight": ("net.0.weight", (64, 50, 3, 3)), "0.0.bias": ("net.0.bias", (64,)),
    "1.0.weight": ("net.2.weight", (128, 64, 3, 3)), "1.0.bias": ("net.2.bias", (128,)),
    "2.0.weight": ("net.4.weight", (64, 128, 3, 3)), "2.0.bias": ("net.4.bias", (64,)),
    "3.0.weight": ("net.6.weight", (16, 64, 3, 3)), "3.0.bias": ("net.6.bias", (16,)),
    "4.weight": ("net.8.weight", (1, 16, 3, 3)), "4.bias": ("net.8.bias", (1,)),
}
# The authors evaluate it on U-CALTECH/U-CIFAR at a 224x224 crop with OpenAI's ViT-B/32.
ORIGINAL_CLIP = {"clip_model": "ViT-B-32", "clip_weights": "openai", "clip_random_init": False, "warnings": []}


def is_bare_state_dict(obj):
    """A plain {name: tensor} mapping, as torch.save(model.state_dict()) writes it."""
    return (isinstance(obj, dict) and len(obj) > 0 and "format" not in obj
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def original_layout_mismatch(state):
    """The first way `state` differs from the original LRN's state_dict, or None."""
    for key, (_, shape) in ORIGINAL_LAYOUT.items():
        if key not in state:
            return f"key '{key}' is missing"
        if tuple(state[key].shape) != shape:
            return f"key '{key}' has shape {list(state[key].shape)}, expected {list(shape)}"
        if not state[key].is_floating_point():
            return f"key '{key}' holds {state[key].dtype}, expected floating-point weights"
    extra = [k for k in state if k not in ORIGINAL_LAYOUT]
    return f"unexpected key '{extra[0]}' (the original LRN has no normalisation layers)" if extra else None


def original_checkpoint(state, path):
    """The original LRN's state_dict as one of our checkpoints (also what the converter writes)."""
    net = PlainLRN(50, LRN_CHANNELS, origin=ORIGINAL_ORIGIN)
    return {"format": CHECKPOINT_FORMAT, "version": 1, "model_config": net.config(),
            "model": {ours: state[theirs].float() for theirs, (ours, _) in ORIGINAL_LAYOUT.items()},
            "clip": dict(ORIGINAL_CLIP), "data_type": None, "crop_size": 224,
            "source": {"file": os.path.abspath(path), "sha256": file_sha256(path), "name": ORIGINAL_NAME}}


def checkpoint_identity(ckpt, path):
    """Which network a checkpoint holds, for the records of runs that use it (e.g. as a teacher)."""
    return {"checkpoint": os.path.abspath(path), "sha256": file_sha256(path),
            "model": model_name(ckpt["model_config"]), "model_config": ckpt["model_config"],
            "run": (ckpt.get("opt") or {}).get("exp_name")}


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_from_checkpoint(ckpt, path="<checkpoint>", backend="fast", expect_config=None):
    """Build the checkpoint's network and load its weights.

    expect_config: the architecture the caller asked for (e.g. --resume with other flags);
    a mismatch is refused, naming the differing fields.
    """
    config = ckpt["model_config"]
    if expect_config is not None:
        diff = {k: (config.get(k), v) for k, v in expect_config.items() if config.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{path}: checkpoint is from another architecture ({details})")
    try:
        model = build_model(config, backend=backend)
        model.load_state_dict(ckpt["model"], strict=True)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the network described in the "
                              f"checkpoint ({config}): {str(e).splitlines()[0]}") from e
    return model


def export_checkpoint(src, dst, eval_crop=224):
    """A training checkpoint -> a small inference checkpoint (weights, config, options, CLIP
    info, history; no optimizer/scheduler/RNG state), written atomically. `crop_size` becomes
    the evaluation crop (UHSR: 224); the training crop stays in opt."""
    from utils import atomic_torch_save
    ckpt = load_checkpoint(src)
    keep = ("format", "version", "model_config", "model", "opt", "clip", "data_type", "stage",
            "epoch", "val_score", "history")
    slim = {k: ckpt[k] for k in keep if k in ckpt}
    slim["crop_size"] = eval_crop
    slim["exported_from"] = os.path.basename(src)
    atomic_torch_save(slim, dst)
    return slim
