"""Look at and measure a trained reconstruction network.

Panels: one PNG per sample, side by side: the spikes (mean of the voxel), TFP, TFI, the network's
reconstruction and the ground truth when the data has it, under "pred: <class> / true: <class>"
(CLIP zero-shot on the reconstruction). Benchmark: latency, throughput, MACs, synaptic
operations, firing rates, theoretical energy (45 nm) and, on NVIDIA GPUs, energy measured with
NVML's energy counter; a "benchmark" record goes to experiment_results.json. (Images of your own
.npz/.dat files, one window or a whole stream: reconstruct.py.)

    python test.py --checkpoint exp/cifar_snn/ckpts/checkpoint_best.pth              # 4 panels
    python test.py --checkpoint exp/cifar_snn/ckpts/checkpoint_best.pth --benchmark --bench_size 224

Exit status 2: unusable input (checkpoint, data file, options).
"""
import argparse
import contextlib
import io
import math
import os
import platform
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from clip_guidance import ClipGuide, load_clip
from dataset import (CLASS_NAMES, DATASET_DIRS, UHSR_FRAMES, SpikeDataError, UHSRDataset, one_dataset,
                     voxelize)
from evaluate import clip_spec_from_checkpoint, experiment_name   # the same run name as evaluate.py
from generate_synthetic_data import baseline_convention, procedural_streams, read_settings, recorded_rate
from metrics import ENERGY_MODEL, NvmlEnergyMeter, count_macs, latency_ms, percentiles, synaptic_ops
from models import (default_precision, load_checkpoint, model_from_checkpoint, model_name, prepare_for_inference,
                    scored_image)
from results_tracker import RESULTS_FILE, append_record, check_results_file
from utils import (InputError, atomic_write, check_output_folder, format_count, non_negative_int, pick_device,
                   positive_float, positive_int, report_input_error, spike_image)

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "int8": None, "fp16": torch.float16}
WARMUP_RUNS = 10           # latency warm-up calls
THROUGHPUT_WARMUP = 2      # warm-up calls per batch size (cuDNN picks its algorithms here)
RANDOM_SPIKE_RATE = 0.03   # spikes timed by the benchmark: UHSR's mean rate (SPEC §2)
RATE_SAMPLES = 8           # samples the firing rates are measured on
MIN_TILE = 128             # panel tiles are enlarged (nearest) to at least this many pixels
# default benchmark work: a GPU does 100 runs in a blink, a 2-core CPU needs minutes at 224x224
DEFAULT_BENCH = {"cuda": (100, [1, 8, 32]), "cpu": (10, [1, 4])}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    g = p.add_argument_group("data")
    g.add_argument("--data_root", default="data", help="folder holding U-CIFAR/ and U-CALTECH/")
    g.add_argument("--dataset", "--data_type", dest="data_type", type=one_dataset, metavar="{cifar,caltech}",
                   help="class set and folder of the data (default: the checkpoint's)")
    g.add_argument("--split", default="test", help="split the panels (and the firing rates of "
                                                    "--benchmark) come from")
    g = p.add_argument_group("running")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--backend", choices=["fast", "snntorch"], default="fast",
                   help="SNN implementation: fused multi-step path, or the snnTorch reference loop")
    g.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the network (auto: on CUDA; on the CPU compiling costs more than it saves)")
    g.add_argument("--dtype", choices=sorted(DTYPES),
                   help="precision of the network: fp32 exact; bf16 with the fast backend folds BatchNorm into "
                        "bf16 convolutions (otherwise autocast); int8 (CPU, fast backend) as bf16 with the SNN's "
                        "spike-input convs in int8; fp16 autocast (default: reconstruct.py's on the CPU, fp32 "
                        "with --backend snntorch; bf16 on CUDA where supported, else fp16)")
    g.add_argument("--clip_model", help="CLIP for the zero-shot label (default: the checkpoint's)")
    g.add_argument("--clip_pretrained", help="openai | /path/to/weights | none (default: the "
                                             "weights the checkpoint was trained with)")
    g = p.add_argument_group("output")
    g.add_argument("--num_samples", type=non_negative_int,
                   help="panels for N samples spread evenly over --split (default: 4, or 0 with "
                        "--benchmark)")
    g.add_argument("--output_dir", help="where panels go (default: exp/<experiment>/test, the "
                                        "experiment being the checkpoint's run folder, the one "
                                        "above ckpts/)")
    g.add_argument("--run_name", help="run name of the benchmark record (default: the experiment)")
    g.add_argument("--results_file", default=RESULTS_FILE, help="results file the benchmark "
                                                                "record is appended to")
    g = p.add_argument_group("benchmark")
    g.add_argument("--benchmark", action="store_true", help="measure speed, operations and energy")
    g.add_argument("--bench_runs", type=positive_int,
                   help=f"timed batch-1 latency runs (after {WARMUP_RUNS} warm-up runs); each "
                        f"throughput figure times about this many images (at least 3 calls). "
                        f"Default: {DEFAULT_BENCH['cuda'][0]} on CUDA, {DEFAULT_BENCH['cpu'][0]} on the CPU")
    g.add_argument("--bench_batches", help="batch sizes of the throughput figures (default: "
                                           "1,8,32 on CUDA, 1,4 on the CPU)")
    g.add_argument("--bench_size", type=positive_int, help="input height = width (default: the checkpoint's crop)")
    g.add_argument("--energy_seconds", type=positive_float, default=10.0,
                   help="length of the sustained run whose energy NVML measures (CUDA only)")
    args = p.parse_args(argv)
    if args.bench_batches is not None:
        try:
            args.bench_batches = sorted({int(b) for b in args.bench_batches.split(",") if b.strip()})
        except ValueError:
            p.error(f"--bench_batches: expected comma-separated integers, got {args.bench_batches!r}")
        if not args.bench_batches or min(args.bench_batches) < 1:
            p.error("--bench_batches: batch sizes must be >= 1")
    if args.num_samples is None:
        args.num_samples = 0 if args.benchmark else 4
    return args


def pick_dtype(name, device, backend):
    if name is None:
        if device.type != "cuda":
            return default_precision(device) if backend == "fast" else "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "int8" and (device.type != "cpu" or backend != "fast"):
        raise InputError("--dtype int8 runs the BatchNorm-folded fast path on the CPU (--backend fast)")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("--dtype bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return name


def device_name(device):
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


class Runner:
    """The checkpoint's network on a device, in eval mode, under the chosen autocast dtype."""

    def __init__(self, model, device, dtype_name, compile_mode="auto"):
        self.model, self.device, self.dtype_name = model, device, dtype_name
        self.autocast_dtype = DTYPES[dtype_name]
        if dtype_name in ("bf16", "int8") and getattr(model, "backend", "fast") == "fast":
            prepare_for_inference(model, dtype_name)    # BN folded into bf16 (int8) convs: no autocast
            self.autocast_dtype = None
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # self.model stays the plain module (for MACs, config); self.forward may be compiled
        self.forward = model
        if compile_mode == "on" or (compile_mode == "auto" and device.type == "cuda"):
            self.forward = torch.compile(model)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare(self, voxel):
        voxel = voxel.to(self.device, non_blocking=True).float()
        return voxel.contiguous(memory_format=torch.channels_last) if self.channels_last else voxel

    def __call__(self, voxel, return_rates=False, lens_px=None):
        with self.autocast():
            return self.forward(voxel, return_rates=return_rates, lens_px=lens_px)


# ----------------------------------------------------------------------------------------------
# Panels

def _grey_tile(img, scale):
    """float [H, W] in [0, 1] -> PIL 'L' image enlarged `scale` times (nearest)."""
    arr = (np.clip(np.asarray(img, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    tile = Image.fromarray(arr)                       # 2-D uint8 -> mode "L"
    return tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST) if scale > 1 else tile


def compose_panel(tiles, captions, title):
    """Tiles side by side, a caption under each and a title line on top -> PIL RGB image."""
    font = ImageFont.load_default()
    h = max(np.asarray(t).shape[0] for t in tiles)
    scale = max(1, math.ceil(MIN_TILE / h))
    imgs = [_grey_tile(t, scale) for t in tiles]
    pad, line = 6, 16
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = pad + sum(i.width + pad for i in imgs)
    width = max(width, int(probe.textlength(title, font=font)) + 2 * pad)
    height = line + pad + max(i.height for i in imgs) + line + pad
    panel = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(panel)
    draw.text((pad, 2), title, fill=(255, 255, 255), font=font)
    x = pad
    for img, caption in zip(imgs, captions):
        panel.paste(img.convert("RGB"), (x, line + pad // 2))
        draw.text((x, line + pad // 2 + img.height + 2), caption, fill=(220, 220, 220), font=font)
        x += img.width + pad
    return panel


class Labeller:
    """CLIP zero-shot class of a reconstruction; loaded on first use."""

    def __init__(self, args, ckpt, class_names, device):
        info = ckpt.get("clip") or {}
        self.model_name = args.clip_model or info.get("clip_model") or "ViT-B-32"
        self.weights = args.clip_pretrained or clip_spec_from_checkpoint(ckpt)
        self.class_names, self.device = class_names, device
        self.guide, self.info = None, None

    def __call__(self, images):
        """images [B, 1, H, W] in [0, 1] -> class names [B]."""
        if self.guide is None:
            torch.manual_seed(0)    # a random-init CLIP is at least the same on every call
            clip_model, self.info = load_clip(self.model_name, self.weights, self.device)
            self.guide = ClipGuide(clip_model, self.class_names, self.device)
        with torch.inference_mode():
            idx = self.guide.class_logits(images.float().to(self.device)).argmax(1)
        return [self.class_names[int(i)] for i in idx]

    def title(self, pred, true):
        text = f"pred: {pred}" + (f" / true: {true}" if true is not None else "")
        if self.info["clip_random_init"]:
            text += " (random CLIP)"
        return text


def reconstruct(runner, voxel, lens_px=None):
    """The image CLIP labels (clamped to [0, 1], or raw for the original SpikeCLIP LRN, as its
    authors' evaluation has it); the panel tiles clip it to [0, 1] for display. lens_px: the
    capture's lens blur, for a network with a lens input (None: unknown)."""
    with torch.inference_mode():
        return scored_image(runner.model.config(), runner(runner.prepare(voxel), lens_px=lens_px).float()).cpu()


def make_panel(runner, labeller, arch, voxel, baselines, true_name, gt=None, lens_px=None):
    """voxel [bins, H, W]; baselines (TFP, TFI) [H, W] of the same window and crop; gt [H, W]
    in [0, 1] or None; lens_px: the capture's lens blur std px (None: unknown) -> (PIL panel,
    predicted class)."""
    voxel = torch.as_tensor(voxel).float()
    image = reconstruct(runner, voxel[None], lens_px)
    pred = labeller(image)[0]
    spikes = spike_image(voxel[None])[0, 0].numpy()
    tiles = [spikes, *baselines, image[0, 0].numpy()]
    captions = ["spikes (voxel mean)", "TFP", "TFI", arch.upper()]
    if gt is not None:
        tiles.append(gt)
        captions.append("GT")
    return compose_panel(tiles, captions, labeller.title(pred, true_name)), pred


def dataset_panels(args, runner, labeller, arch, data_type, crop, bins):
    """Panels of --num_samples samples spread evenly over --split (first and last included)."""
    rate = recorded_rate(args.data_root, data_type)
    dataset = UHSRDataset(args.data_root, data_type, args.split, bins=bins, crop_size=crop,
                          with_baselines=True, rate=rate)
    print("panels:", baseline_convention(rate, "the data root's simulated camera"))
    n = min(args.num_samples, len(dataset))
    picks = sorted({int(round(i)) for i in np.linspace(0, len(dataset) - 1, n)})
    written = []
    for i in picks:
        item = dataset[i]
        gt = item["gt"][0].numpy() if item["has_gt"] else None
        panel, pred = make_panel(runner, labeller, arch, item["voxel"],
                                 (item["tfp"][0].numpy(), item["tfi"][0].numpy()),
                                 item["class_name"], gt, float(item["lens_px"]))
        stem = os.path.splitext(os.path.basename(dataset.files[i]))[0]
        out = os.path.join(args.output_dir, f"{args.split}_{stem}.png")
        atomic_write(out, lambda f: panel.save(f, format="PNG"))
        written.append(out)
        print(f"{out}: pred {pred} / true {item['class_name']}")
    return written


# ----------------------------------------------------------------------------------------------
# Benchmark

def images_per_second(fn, batch, calls, device):
    """Images per second of `calls` back-to-back calls of fn() on `batch` images (warmed up before)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return batch * calls / (time.perf_counter() - t0)


def benchmark_spikes(batch, size, seed=0):
    """Random binary spikes uint8 [batch, UHSR_FRAMES, size, size] at RANDOM_SPIKE_RATE (timing
    does not depend on the spike pattern)."""
    g = torch.Generator().manual_seed(seed)   # one sample at a time: a float [32, 200, 224, 224] is 1.3 GB
    return torch.stack([(torch.rand(UHSR_FRAMES, size, size, generator=g) < RANDOM_SPIKE_RATE)
                        .to(torch.uint8) for _ in range(batch)])


def training_light(ckpt, data_type):
    """The simulated camera ('low' / 'normal') the checkpoint was trained on, or None when its
    data is not known to be simulated (real captures, or the data root is gone)."""
    opt = ckpt.get("opt") or {}
    if opt.get("simulate_from"):
        return opt.get("light")
    try:
        return (read_settings(opt["data_root"], data_type) or {}).get("light") if opt.get("data_root") else None
    except InputError:
        return None


def rate_voxels(args, ckpt, data_type, size, bins):
    """Voxels the firing rates are measured on, the data the figures are about: up to
    RATE_SAMPLES of --split cropped to `size`; when that data is missing or its frames are
    smaller, streams of the camera simulator with the camera the checkpoint was trained on
    -> (voxel, description), or (None, why) when that camera is not known either."""
    try:
        dataset = UHSRDataset(args.data_root, data_type, args.split, bins=bins, crop_size=size)
        n = min(RATE_SAMPLES, len(dataset))
        picks = sorted({int(round(i)) for i in np.linspace(0, len(dataset) - 1, n)})
        voxel = torch.stack([dataset[i]["voxel"] for i in picks]).float()
        return voxel, f"{DATASET_DIRS[data_type]}/{args.split}: {len(picks)} samples at {size}x{size}"
    except SpikeDataError as e:
        why = str(e).splitlines()[0]
    light = training_light(ckpt, data_type)
    if light is None:
        print(f"  firing rates: no usable data ({why}), and the checkpoint's training camera is not "
              f"known: no SOPs or theoretical energy (pass --data_root)", flush=True)
        return None, f"not measured: no usable data ({why}) and no known training camera"
    print(f"  firing rates: no usable data ({why}); measuring them on {RATE_SAMPLES} simulated "
          f"{light}-light streams (the checkpoint's training camera) instead", flush=True)
    spikes = torch.from_numpy(procedural_streams(RATE_SAMPLES, size, light=light))
    return (voxelize(spikes, bins, dim=1),
            f"{RATE_SAMPLES} simulated {light}-light streams (the checkpoint's training camera) of the "
            f"procedural classes at {size}x{size} (no usable data: {why})")


def warm_up_and_announce(name, fn, calls, warmup):
    """Warm up, then say how long the timed calls will take (224x224 on a CPU takes minutes)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    per_call = (time.perf_counter() - t0) / warmup
    print(f"  {name}: {calls} timed calls, about {per_call * calls:.0f} s", flush=True)


def run_benchmark(args, runner, ckpt, data_type, crop, run_name, clip_info):
    model, device = runner.model, runner.device
    size = args.bench_size or crop
    bins = model.input_channels
    arch = model.config()["arch"]
    runs, batches = DEFAULT_BENCH["cuda" if device.type == "cuda" else "cpu"]
    runs, batches = args.bench_runs or runs, args.bench_batches or batches
    max_batch = max(batches)
    print(f"benchmark: {model_name(model.config())} ({args.backend} backend), input {bins}x{size}x{size}, "
          f"{device_name(device)}, dtype {runner.dtype_name}; {runs} latency runs, batches "
          f"{','.join(map(str, batches))}", flush=True)
    spikes = benchmark_spikes(max_batch, size).to(device)
    with torch.inference_mode():
        # firing rates (they decide the synaptic operations)
        rates, rate_source = [], "n/a (ANN)"
        if arch == "snn":
            rate_in, rate_source = rate_voxels(args, ckpt, data_type, size, bins)
            if rate_in is not None:
                _, rates = runner(runner.prepare(rate_in), return_rates=True)
                rates = [float(r) for r in rates.float().cpu()]

        voxel1 = runner.prepare(voxelize(spikes[:1], bins, dim=1))
        spk1 = spikes[:1]
        warm_up_and_announce("latency, batch 1", lambda: runner(voxel1), 2 * runs, THROUGHPUT_WARMUP)
        lat = percentiles(latency_ms(lambda: runner(voxel1), runs, device, WARMUP_RUNS))
        lat_vox = percentiles(latency_ms(lambda: runner(runner.prepare(voxelize(spk1, bins, dim=1))),
                                         runs, device, WARMUP_RUNS))
        throughput, throughput_vox = {}, {}
        for b in batches:
            calls = max(3, math.ceil(runs / b))
            vox = runner.prepare(voxelize(spikes[:b], bins, dim=1))
            spk_b = spikes[:b]
            warm_up_and_announce(f"throughput, batch {b}", lambda: runner(vox), 2 * calls, THROUGHPUT_WARMUP)
            throughput[str(b)] = images_per_second(lambda: runner(vox), b, calls, device)
            throughput_vox[str(b)] = images_per_second(
                lambda: runner(runner.prepare(voxelize(spk_b, bins, dim=1))), b, calls, device)
            del vox

        energy, energy_note = None, "n/a (no NVML: CPU run)"
        if device.type == "cuda":
            try:
                index = torch.cuda._get_nvml_device_index(device)
            except Exception:
                index = device.index or 0
            print(f"  energy: a sustained run of {args.energy_seconds:.0f} s at batch {max_batch}", flush=True)
            meter = NvmlEnergyMeter(index)
            vox = runner.prepare(voxelize(spikes, bins, dim=1))
            energy, energy_note = meter.measure(
                lambda: runner(vox), max_batch, seconds=args.energy_seconds,
                sync=lambda: torch.cuda.synchronize(device))
            meter.close()

    macs = count_macs(model, (bins, size, size))
    ops = synaptic_ops(model, (bins, size, size), rates) if arch == "ann" or rates else None
    params = sum(p.numel() for p in model.parameters())
    buf = io.BytesIO()
    torch.save(ckpt["model"], buf)
    layer_names = [f"lif{i + 1}" for i in range(len(rates))]
    bench = {
        "device": device_name(device), "backend": args.backend if arch == "snn" else "plain",
        "dtype": runner.dtype_name, "input_size": size, "time_steps": macs["time_steps"],
        "encoding": getattr(model, "encoding", None),
        "latency_ms": {**lat, "runs": runs, "warmup": WARMUP_RUNS, "batch": 1},
        "latency_ms_with_voxelisation": lat_vox,
        "throughput": throughput, "throughput_with_voxelisation": throughput_vox,
        "energy_mj_per_image": energy["energy_mj_per_image"] if energy else None,
        "energy_mj_per_image_gross": energy["energy_mj_per_image_gross"] if energy else None,
        "avg_power_w": energy["avg_power_w"] if energy else None,
        "idle_power_w": energy["idle_power_w"] if energy else None,
        "energy_batch": max_batch if energy else None,
        "energy_seconds": energy["seconds"] if energy else None,
        "energy_note": energy_note,
        "params": params, "conv_weights": sum(m.weight.numel() for m in model.modules()
                                               if isinstance(m, torch.nn.Conv2d)),
        "weights_bytes": len(buf.getvalue()), "checkpoint_bytes": os.path.getsize(args.checkpoint),
        "macs": macs["total"], "macs_per_step": macs["per_step"],
        "macs_executed": macs["executed_fast"] if args.backend == "fast" else macs["total"],
        "sops": ops and ops["sops"], "mac_ops": ops and ops["mac_ops"],
        "theoretical_energy_mj": ops and ops["theoretical_energy_mj"], "energy_model": ENERGY_MODEL,
        "firing_rates": dict(zip(layer_names, rates)), "firing_rates_input": rate_source,
    }
    print_benchmark(bench)
    record = {"run_name": run_name, "kind": "benchmark", "dataset": f"U-{data_type}",
              "checkpoint": os.path.abspath(args.checkpoint), "arch": arch, "model": model_name(model.config()),
              **{k: clip_info.get(k) for k in ("clip_model", "clip_weights", "clip_random_init")},
              "warnings": list(clip_info.get("warnings") or []), "benchmark": bench}
    append_record(record, args.results_file)
    print(f"benchmark record '{run_name}' appended to {args.results_file}")
    return bench


def print_benchmark(b):
    lat, lv = b["latency_ms"], b["latency_ms_with_voxelisation"]
    rows = [
        ("device", b["device"]),
        ("dtype / backend", f"{b['dtype']} / {b['backend']}"),
        ("input", f"{b['input_size']}x{b['input_size']}, T={b['time_steps']} ({b['encoding']})"),
        ("latency b=1 (ms)", f"median {lat['median']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}"
                             f"  ({lat['runs']} runs after {lat['warmup']} warm-up)"),
        ("  + voxelisation", f"median {lv['median']:.3f}  p90 {lv['p90']:.3f}  p99 {lv['p99']:.3f}"),
        ("throughput (img/s)", "  ".join(f"b={k}: {v:.1f}" for k, v in b["throughput"].items())),
        ("  + voxelisation", "  ".join(f"b={k}: {v:.1f}" for k, v in
                                       b["throughput_with_voxelisation"].items())),
        ("params", f"{b['params']:,} ({b['conv_weights']:,} conv weights)"),
        ("weights on disk", f"{b['weights_bytes'] / 1e6:.3f} MB (checkpoint file "
                            f"{b['checkpoint_bytes'] / 1e6:.3f} MB)"),
        ("MACs / image", f"{format_count(b['macs'])} = T x {format_count(b['macs_per_step'])} per step "
                         f"({b['backend']} backend executes {format_count(b['macs_executed'])})"),
        ("firing rates", "  ".join(f"{k} {v:.4f}" for k, v in b["firing_rates"].items()) or "n/a"),
        ("  measured on", b["firing_rates_input"]),
        ("SOPs / image", "n/a" if b["sops"] is None else
                         f"{format_count(b['sops'])} AC + {format_count(b['mac_ops'])} MAC"),
        ("theoretical energy", "n/a" if b["theoretical_energy_mj"] is None else
                               f"{b['theoretical_energy_mj']:.4f} mJ/image"),
        ("  energy model", b["energy_model"]),
    ]
    if b["energy_mj_per_image"] is not None or b["avg_power_w"] is not None:
        per_img = (f"{b['energy_mj_per_image']:.4f} mJ/image above idle"
                   if b["energy_mj_per_image"] is not None else "n/a above idle")
        rows.append(("measured energy", f"{per_img} ({b['energy_mj_per_image_gross']:.4f} gross), "
                                        f"batch {b['energy_batch']}, {b['energy_seconds']:.1f} s"))
        rows.append(("power", f"avg {b['avg_power_w']:.1f} W, idle {b['idle_power_w']:.1f} W"))
    if b["energy_note"]:
        rows.append(("measured energy" if b["energy_mj_per_image"] is None else "note", b["energy_note"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")


# ----------------------------------------------------------------------------------------------

def run(args):
    if args.benchmark:
        check_results_file(args.results_file)    # before the work, not after it
    ckpt = load_checkpoint(args.checkpoint)
    device = pick_device(args.device)
    dtype_name = pick_dtype(args.dtype, device, args.backend)
    model = model_from_checkpoint(ckpt, args.checkpoint, backend=args.backend).to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    runner = Runner(model, device, dtype_name, args.compile)
    opt = ckpt.get("opt") or {}
    data_type = args.data_type or ckpt.get("data_type") or opt.get("data_type")
    if data_type not in CLASS_NAMES:
        raise InputError(f"{args.checkpoint}: the checkpoint names no known data type; pass --dataset")
    crop = int(ckpt.get("crop_size") or opt.get("crop_size") or 224)
    bins = model.input_channels
    if UHSR_FRAMES % bins:
        raise InputError(f"the network takes {bins} bins, which {UHSR_FRAMES} frames do not fill evenly")
    exp_name = experiment_name(args.checkpoint)
    run_name = args.run_name or exp_name
    args.output_dir = args.output_dir or os.path.join("exp", exp_name, "test")
    arch = model.config()["arch"]
    print(f"{args.checkpoint}: {model_name(model.config())}, U-{data_type} at {crop}x{crop}; "
          f"{device_name(device)}, dtype {dtype_name}")

    if args.num_samples:
        check_output_folder(args.output_dir, "--output_dir")
        os.makedirs(args.output_dir, exist_ok=True)
        labeller = Labeller(args, ckpt, CLASS_NAMES[data_type], device)
        dataset_panels(args, runner, labeller, arch, data_type, crop, bins)
    if args.benchmark:
        run_benchmark(args, runner, ckpt, data_type, crop, run_name, ckpt.get("clip") or {})
    return 0


def main(argv=None):
    args = get_args(argv)
    try:
        return run(args)
    except InputError as e:
        return report_input_error(e)


if __name__ == "__main__":
    sys.exit(main())
