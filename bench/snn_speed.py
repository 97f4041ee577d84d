"""SNN-LRN speed: the snnTorch reference loop and the fast path side by side, in one run.

Same weights and inputs for every variant. For each: max |difference| to the fp32 reference,
latency at batch 1, throughput at a larger batch, and a training step (SNN + CLIP image tower,
random weights: a timing, not a semantic result); peak GPU memory on CUDA. Ratios are against
the reference measured in the same run.

    python bench/snn_speed.py                       # CUDA if present, else CPU (small defaults)
    python bench/snn_speed.py --device cuda --dtype bf16 --batch 32 --train_batch 32
    python bench/snn_speed.py --device cpu --size 224 --runs 10 --batch 4 --train_batch 2
"""
import argparse
import json
import os
import platform
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from metrics import latency_ms, percentiles  # noqa: E402
from models import PlainLRN, SpikingLRN  # noqa: E402
from utils import pick_device  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def get_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--size", type=int, default=224, help="input height = width")
    p.add_argument("--time_steps", type=int, default=4)
    p.add_argument("--encoding", choices=["direct", "temporal"], default="direct")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch", type=int, help="throughput batch (default 32 on CUDA, 4 on CPU)")
    p.add_argument("--runs", type=int, help="timed runs per figure (default 100 on CUDA, 5 on CPU)")
    p.add_argument("--train_batch", type=int, help="training-step batch (default 32 on CUDA, 2 on CPU; 0 = skip)")
    p.add_argument("--clip_model", default="ViT-B-32", help="open_clip image tower in the training step")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="add torch.compile variants (auto: on CUDA only; on the CPU compiling takes minutes)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    a.device = pick_device(a.device)
    cuda = a.device.type == "cuda"
    a.dtype = a.dtype or ("bf16" if cuda else "fp32")
    a.batch = a.batch or (32 if cuda else 4)
    a.runs = a.runs or (100 if cuda else 5)
    a.train_batch = (32 if cuda else 2) if a.train_batch is None else a.train_batch
    a.compile = a.compile == "on" or (a.compile == "auto" and cuda)
    return a


def variants(args, device):
    """name -> model; all share the reference's weights."""
    torch.manual_seed(0)
    ref = SpikingLRN(time_steps=args.time_steps, encoding=args.encoding, backend="snntorch")
    # realistic BN statistics (a fresh BN is ~identity and deep layers would hardly spike)
    with torch.no_grad():
        for bn in ref.bns:
            bn.momentum = 1.0
        ref.train()(make_input(ref, 2, min(args.size, 64), torch.device("cpu")))
        for bn in ref.bns:
            bn.momentum = 0.1
    out = {"snntorch reference": ref}
    fast = SpikingLRN(time_steps=args.time_steps, encoding=args.encoding, backend="fast")
    fast.load_state_dict(ref.state_dict())
    out["fast"] = fast
    fast_cl = SpikingLRN(time_steps=args.time_steps, encoding=args.encoding, backend="fast")
    fast_cl.load_state_dict(ref.state_dict())
    out["fast + channels_last"] = fast_cl.to(memory_format=torch.channels_last)
    for m in out.values():
        m.to(device).eval()
    return out


def make_input(model, batch, size, device, channels_last=False):
    g = torch.Generator().manual_seed(1)
    # UHSR-like voxel: counts 0..4 per bin, sparse
    x = (torch.rand(batch, model.input_channels, size, size, generator=g) < 0.08).float() * 2
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def bench_inference(args, device, models):
    amp = torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32")
    ref = models["snntorch reference"]
    x1 = make_input(ref, 1, args.size, device)
    with torch.inference_mode():
        y_ref = ref(x1).float()
    rows = {}
    runs_to_do = list(models.items())
    if args.compile:
        cl = models["fast + channels_last"]
        runs_to_do.append(("fast + channels_last + compile", torch.compile(cl)))
        if device.type == "cuda":
            runs_to_do.append(("... + CUDA graphs (reduce-overhead)", torch.compile(cl, mode="reduce-overhead")))
    runs_to_do.append(("plain-CNN LRN (ANN, for scale)", PlainLRN().to(device).eval().to(memory_format=torch.channels_last)))
    for name, model in runs_to_do:
        cl = "channels_last" in name or "compile" in name or "CUDA graphs" in name or "ANN" in name
        x1c = x1.contiguous(memory_format=torch.channels_last) if cl else x1
        xb = make_input(ref, args.batch, args.size, device, channels_last=cl)
        with torch.inference_mode(), amp:
            y = model(x1c).float()
            diff = (y - y_ref).abs().max().item() if "ANN" not in name else float("nan")
            # a reordered float sum can flip a spike whose membrane sits at the threshold; that
            # moves a few output pixels by a readout weight, so also report how many moved
            moved = ((y - y_ref).abs() > 1e-4).float().mean().item() if "ANN" not in name else float("nan")
            lat = percentiles(latency_ms(lambda: model(x1c), args.runs, device, warmup=3))
            thr_ms = percentiles(latency_ms(lambda: model(xb), max(3, args.runs // 5), device, warmup=3))["median"]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode(), amp:
                model(xb)
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = None
        rows[name] = {"max_abs_diff": diff, "pixels_moved": moved, "latency_ms": lat["median"],
                      "latency_p90_ms": lat["p90"],
                      "throughput": args.batch / thr_ms * 1000, "peak_mem_mib": peak}
        print(f"  {name}: diff {diff:.2e}, batch 1 {lat['median']:.2f} ms, batch {args.batch} "
              f"{rows[name]['throughput']:.1f} img/s", flush=True)
    return rows


def bench_training(args, device, models):
    """One optimiser step of SNN + frozen CLIP image tower (train.py's class CE + L1), samples/s."""
    from clip_guidance import ClipGuide, load_clip
    from dataset import UCIFAR_CLASSES
    clip_model, _ = load_clip(args.clip_model, "none", device)     # as train.py loads it
    guide = ClipGuide(clip_model, UCIFAR_CLASSES, device)
    amp = torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32")
    rows = {}
    state = models["snntorch reference"].state_dict()
    plans = [("snntorch reference", "snntorch", False, False), ("fast", "fast", False, False),
             ("fast + channels_last", "fast", True, False)]
    if args.compile:
        plans.append(("fast + channels_last + compile", "fast", True, True))
    for name, backend, cl, comp in plans:
        model = SpikingLRN(time_steps=args.time_steps, encoding=args.encoding, backend=backend).to(device)
        model.load_state_dict(state)
        model.train()
        if cl:
            model = model.to(memory_format=torch.channels_last)
        net = torch.compile(model) if comp else model
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = make_input(model, args.train_batch, args.size, device, channels_last=cl)
        target = torch.rand(args.train_batch, 1, args.size, args.size, device=device)
        labels = torch.randint(0, 10, (args.train_batch,), device=device)

        def step():
            with amp:
                out = net(x).float()
                loss = F.cross_entropy(guide.class_logits(out.clamp(0, 1)), labels) + F.l1_loss(out, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ms = percentiles(latency_ms(step, max(3, args.runs // 10), device, warmup=2))["median"]
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        rows[name] = {"train_samples_per_s": args.train_batch / ms * 1000, "train_peak_mem_gib": peak}
        print(f"  train {name}: {rows[name]['train_samples_per_s']:.2f} samples/s", flush=True)
    return rows


def main():
    args = get_args()
    device = args.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        card = torch.cuda.get_device_name(device)
    else:
        card = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# snn_speed: {card}; torch {torch.__version__}; T={args.time_steps} {args.encoding}, "
          f"{args.size}x{args.size}, {args.dtype}, batch 1 / {args.batch}, train batch {args.train_batch}",
          flush=True)
    models = variants(args, device)
    rows = bench_inference(args, device, models)
    if args.train_batch > 0:
        for name, r in bench_training(args, device, models).items():
            rows.setdefault(name, {}).update(r)
    ref = rows["snntorch reference"]
    print()
    print(f"| variant | max abs diff | pixels > 1e-4 | batch-1 latency ms (p90) | x ref | batch-{args.batch} img/s | x ref "
          f"| train samples/s | x ref | peak MiB (infer) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        def ratio(key, invert=False):
            if key not in r or key not in ref or not r[key]:
                return "—"
            return f"{(ref[key] / r[key]) if invert else (r[key] / ref[key]):.2f}"
        lat = f"{r['latency_ms']:.2f} ({r['latency_p90_ms']:.2f})" if "latency_ms" in r else "—"
        train = f"{r['train_samples_per_s']:.2f}" if "train_samples_per_s" in r else "—"
        peak = f"{r['peak_mem_mib']:.0f}" if r.get("peak_mem_mib") else "—"
        print(f"| {name} | {r.get('max_abs_diff', float('nan')):.1e} | {100 * r.get('pixels_moved', float('nan')):.3f}% | {lat} | {ratio('latency_ms', True)} "
              f"| {r.get('throughput', 0):.1f} | {ratio('throughput')} | {train} | {ratio('train_samples_per_s')} | {peak} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": card, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
