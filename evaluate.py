"""Evaluate a trained reconstructor next to the TFP/TFI baselines on the same samples.

For each method (the network; for a network with a linear skip also that fitted linear filter
alone, so that its gain is not mistaken for the spiking layers'; TFP; TFI): CLIP zero-shot top-1
(and top-5 for U-CALTECH) accuracy, NIQE/BRISQUE/PIQE through pyiqa on the clamped images,
PSNR/SSIM when the data has ground truth; for the network also its per-layer firing rates.
Writes a per-sample CSV, a summary table and an image grid into exp/<exp_name>/, and one record
to experiment_results.json.

    python evaluate.py --checkpoint exp/cifar_snn/ckpts/checkpoint_best.pth
    python evaluate.py --checkpoint models/LRN_CALTECH.pth --dataset caltech   # the original SpikeCLIP LRN
"""
import argparse
import csv
import math
import os
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import reconstruct
from clip_guidance import ClipGuide, load_clip
from dataset import (CLASS_NAMES, UHSR_FRAMES, SpikeDataError, UHSRDataset, center_window, one_dataset,
                     read_dat, voxelize)
from generate_synthetic_data import baseline_convention, recorded_rate
from metrics import NoReferenceIQA, no_reference_names, psnr, ssim
from models import (ORIGINAL_NAME, PRECISIONS, inference_precision, is_original, load_checkpoint,
                    model_from_checkpoint, model_name, prepare_for_inference, scored_image, to_image)
from results_tracker import RESULTS_FILE, append_record, check_results_file
from utils import (InputError, atomic_write, check_output_folder, comparison_grid, folder_name, non_negative_int,
                   pick_device, positive_float, positive_int, report_input_error, tfi, tfp)

ORIGINAL_SCORING = (f"{ORIGINAL_NAME}: CLIP and NIQE/BRISQUE/PIQE score its raw output (not clamped), "
                    f"as the authors' evaluate.py does; PSNR/SSIM and pictures clamp it to [0, 1]")
# A checkpoint with a linear skip is also scored on that skip alone, next to TFP and TFI: a
# fitted linear filter of the spikes, so that its gain is not mistaken for the spiking network's.
LINEAR = "linear"
LINEAR_LABEL = "linear filter (the checkpoint's fixed skip alone)"
STATEFUL = "stateful"      # a temporal SNN as reconstruct.py runs it on a stream (score --dat)


def experiment_name(checkpoint_path):
    """exp/<name>/ckpts/x.pth -> <name>: the experiment folder, never the literal 'ckpts'
    (a checkpoint kept elsewhere is named by its folder; --exp_name/--run_name override)."""
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    if os.path.basename(folder) == "ckpts":
        folder = os.path.dirname(folder)
    return os.path.basename(folder)


def clip_spec_from_checkpoint(ckpt):
    """The --clip_pretrained value that reproduces the CLIP a checkpoint was trained with."""
    info = ckpt.get("clip", {})
    if info.get("clip_random_init"):
        return "none"
    return info.get("clip_weights") or "auto"


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", "--data_type", dest="data_type", type=one_dataset, metavar="{cifar,caltech}",
                   help="class set and folder of the data (default: the checkpoint's)")
    p.add_argument("--data_root", default="data")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--exp_name", type=folder_name,
                   help="results go to <exp_root>/<exp_name>/ (default: the checkpoint's run folder)")
    p.add_argument("--exp_root", default="exp")
    p.add_argument("--batch_size", type=positive_int, default=8)
    p.add_argument("--crop_size", type=positive_int,
                   help="default: the checkpoint's (the LRN is fully convolutional)")
    p.add_argument("--clip_model", help="default: the checkpoint's")
    p.add_argument("--clip_pretrained", help="default: the weights the checkpoint was trained with")
    p.add_argument("--backend", choices=["fast", "snntorch"], default="fast")
    p.add_argument("--dtype", choices=PRECISIONS,
                   help="fp32: the exact network; bf16: BatchNorm folded into bf16 convolutions (default on GPUs, "
                        "and on CPUs with AVX512-BF16 but no VNNI); int8 (CPU): as bf16, the SNN's convs that "
                        "take spikes in int8 (default on CPUs with AVX512-BF16 and VNNI; bench/cpu_inference.py)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num_workers", type=non_negative_int, default=max(1, min(16, (os.cpu_count() or 2) - 1)),
                   help="loader processes; decompressing UHSR .npz files (~19 per second per core) is the "
                        "data side's bottleneck, so use all spare cores")
    p.add_argument("--num_grid", type=non_negative_int, default=8, help="samples shown in the image grid")
    p.add_argument("--results_file", default=RESULTS_FILE)
    g = p.add_argument_group("one raw stream instead of a dataset (e.g. a REDS_BASE .dat/.png pair)")
    g.add_argument("--dat", help="a Vidar .dat stream: score its centre window instead of --data_root")
    g.add_argument("--gt", help="ground-truth image (grey or colour) of the stream's centre frame")
    g.add_argument("--height", type=positive_int, default=250)
    g.add_argument("--width", type=positive_int, default=400)
    p.add_argument("--rate", type=positive_float,
                   help="photo-electric rate (firing rate of a white pixel): TFP/TFI = estimate / rate "
                        "(REDS_BASE: 0.6); default: a simulated data root's camera (its simulation.json), "
                        "else normalised to the 99.5th percentile")
    g.add_argument("--tfp_window", type=positive_int,
                   help=f"frames TFP averages (Spike-Zoo: 41); default and at most: the model's window ({UHSR_FRAMES})")
    args = p.parse_args(argv)
    stream_only = [f"--{k}" for k in ("gt", "tfp_window") if getattr(args, k) is not None]
    if stream_only and not args.dat:
        p.error(f"{', '.join(stream_only)} only apply to a raw stream: pass --dat")
    return args


def topk_correct(logits, labels, k):
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def main(argv=None):
    args = get_args(argv)
    try:
        return evaluate(args)
    except InputError as e:
        return report_input_error(e)


def evaluate(args):
    check_results_file(args.results_file)    # before the work, not after it
    exp_name = args.exp_name or experiment_name(args.checkpoint)
    out_dir = os.path.join(args.exp_root, exp_name)
    check_output_folder(args.exp_root, "--exp_root")
    check_output_folder(out_dir, "--exp_name")
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint, backend=args.backend)
    device = pick_device(args.device)
    prepare_for_inference(model.to(device), inference_precision(args.dtype, args.backend, device))
    config = ckpt["model_config"]
    if (args.data_type or ckpt.get("data_type")) is None and not args.dat:
        raise InputError(f"{args.checkpoint}: the checkpoint names no data type ({model_name(config)} files "
                         f"carry none): pass --dataset")
    if args.dat:
        return evaluate_stream(args, ckpt, model, device, exp_name, out_dir)
    os.makedirs(os.path.join(out_dir, "imgs"), exist_ok=True)

    arch = ckpt["model_config"]["arch"]
    data_type = args.data_type or ckpt["data_type"]
    crop = args.crop_size or ckpt["crop_size"]
    # baselines on the network's scale: absolute intensity where the camera's rate is known
    rate, rate_source = args.rate, "--rate"
    if rate is None:
        rate, rate_source = recorded_rate(args.data_root, data_type), "the data root's simulated camera"
    baselines = baseline_convention(rate, rate_source)
    dataset = UHSRDataset(args.data_root, data_type, args.split, bins=model.input_channels, crop_size=crop,
                          with_baselines=True, rate=rate)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda")
    clip_model, clip_info = load_clip(args.clip_model or ckpt["clip"]["clip_model"],
                                      args.clip_pretrained or clip_spec_from_checkpoint(ckpt), device)
    guide = ClipGuide(clip_model, CLASS_NAMES[data_type], device)
    iqa_names, iqa_skipped = no_reference_names(crop, crop)
    iqa = NoReferenceIQA(device, names=iqa_names)
    top5 = data_type == "CALTECH"
    methods = (arch, LINEAR, "tfp", "tfi") if has_linear_path(model) else (arch, "tfp", "tfi")
    raw_output = is_original(config)   # scored unclamped, as the original evaluation does

    rows, rate_sum, n_batches, shown = [], None, 0, []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"evaluate {data_type}/{args.split}"):
            voxel = batch["voxel"].to(device, non_blocking=True).float()
            labels = batch["label"].to(device)
            images, rates = network_images(model, config, voxel, batch["lens_px"].to(device))
            images.update(tfp=batch["tfp"].to(device).clamp(0, 1), tfi=batch["tfi"].to(device).clamp(0, 1))
            rate_sum = rates.float() if rate_sum is None else rate_sum + rates.float()
            n_batches += 1
            per_method = {}
            for m, img in images.items():
                logits = guide.class_logits(img)
                scores = {"pred": logits.argmax(1).cpu(), "top1": topk_correct(logits, labels, 1).cpu()}
                if top5:
                    scores["top5"] = topk_correct(logits, labels, 5).cpu()
                scores.update(iqa(img, clamp=not (raw_output and m == arch)))
                if batch["has_gt"].any():   # NaN for samples without gt, left out of the means
                    gt = batch["gt"].to(device)
                    missing = ~batch["has_gt"]
                    scores["psnr"] = psnr(img.clamp(0, 1), gt).cpu().masked_fill(missing, float("nan"))
                    scores["ssim"] = ssim(img.clamp(0, 1), gt).cpu().masked_fill(missing, float("nan"))
                per_method[m] = scores
            for i in range(len(labels)):
                row = {"index": int(batch["index"][i]), "file": os.path.basename(dataset.files[len(rows)]),
                       "label": int(labels[i]), "class": batch["class_name"][i]}
                for m, scores in per_method.items():
                    for k, v in scores.items():
                        value = v[i].item()
                        row[f"{m}_{k}"] = CLASS_NAMES[data_type][value] if k == "pred" else float(value)
                rows.append(row)
            k = args.num_grid - sum(len(x[0]) for x in shown)
            if k > 0:   # the first --num_grid samples: spikes, TFP, TFI, network, gt (black if none)
                shown.append([batch["voxel"][:k], images["tfp"][:k].cpu(), images["tfi"][:k].cpu(),
                              images[arch][:k].clamp(0, 1).cpu(), batch["gt"][:k]])

    # -- summary --------------------------------------------------------------------------------
    metric_keys = ["top1"] + (["top5"] if top5 else []) + list(iqa_names)
    with_gt = [r for r in rows if not math.isnan(r.get(f"{arch}_psnr", math.nan))]
    if with_gt:
        metric_keys += ["psnr", "ssim"]
    summary = {m: {k: float(np.mean([r[f"{m}_{k}"] for r in (with_gt if k in ("psnr", "ssim") else rows)]))
                   for k in metric_keys} for m in methods}
    firing_rates = {}
    if arch == "snn" and rate_sum is not None:
        firing_rates = {f"lif{i + 1}": float(r) for i, r in enumerate(rate_sum / n_batches)}
    iqa_variant = "; ".join(list(iqa.describe(crop, crop).values()) + ([iqa_skipped] if iqa_skipped else []))
    warnings = list(clip_info["warnings"])

    csv_path = os.path.join(out_dir, f"eval_{data_type}_{args.split}.csv")
    atomic_write(csv_path, lambda f: _write_csv(f, rows), mode="w")
    table = format_summary(summary, metric_keys, data_type, args, len(rows), clip_info, iqa_variant, firing_rates,
                           crop, model_name(config), baselines)
    atomic_write(os.path.join(out_dir, f"eval_{data_type}_{args.split}_summary.md"), lambda f: f.write(table), mode="w")
    if shown:
        import torchvision
        grid = comparison_grid(*(torch.cat(column) for column in zip(*shown)))
        torchvision.utils.save_image(grid, os.path.join(out_dir, "imgs", f"eval_{data_type}_{args.split}_grid.png"))
    print(table)
    record = {"run_name": exp_name, "kind": "evaluate", "dataset": f"U-{data_type}", "split": args.split,
              "checkpoint": os.path.abspath(args.checkpoint), "arch": arch, "model": model_name(config),
              "clip_model": clip_info["clip_model"], "clip_weights": clip_info["clip_weights"],
              "clip_random_init": clip_info["clip_random_init"], "warnings": warnings,
              "metrics": summary, "num_samples": len(rows), "iqa_variant": iqa_variant,
              "input_size": crop, "firing_rates": firing_rates, "device": str(device),
              "rate": rate, "baselines": baselines}
    if raw_output:
        record["scoring"] = ORIGINAL_SCORING
    append_record(record, args.results_file)
    print(f"wrote {csv_path} and a record in {args.results_file}")
    return 0


def network_images(model, config, voxel, lens_px=None):
    """voxel [B, C, H, W] -> ({method: image [B, 1, H, W] as scored}, firing rates): the network's
    output (scored_image) and, for a checkpoint with a linear skip, that skip alone (to_image).
    lens_px [B]: each capture's lens blur (NaN: unknown), read by a network with a lens input."""
    out, rates = model(voxel, return_rates=True, lens_px=lens_px)
    images = {config["arch"]: scored_image(config, out.float())}
    if has_linear_path(model):
        images[LINEAR] = to_image(model.linear_path(voxel).float())
    return images, rates


def has_linear_path(model):
    return getattr(model, "skip", None) is not None


def load_stream_pair(dat, gt_path, height, width):
    """A raw Vidar stream and the ground-truth image of its centre frame -> (the centre window,
    spikes [UHSR_FRAMES, H, W]; frames in the stream; gt [1, 1, H, W] in [0, 1], or None
    without gt_path)."""
    from PIL import Image
    stream = read_dat(dat, height, width)
    spk = center_window(stream, UHSR_FRAMES, dat)
    gt = None
    if gt_path:
        try:
            with Image.open(gt_path) as img:
                gt = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None, None]
        except OSError as e:
            raise InputError(f"{gt_path}: cannot read the gt image ({e})") from e
        if gt.shape[-2:] != spk.shape[-2:]:
            raise SpikeDataError(f"{gt_path}: gt is {tuple(gt.shape[-2:])}, the stream {spk.shape[-2:]}")
    return spk, len(stream), gt


def stateful_centre_image(model, stream, device="cpu"):
    """A temporal SNN on a reconstruct.open_stream() stream, run as reconstruct.py runs it
    (stateful_frames, T steps per call): from the first frame on the step grid of the centre
    window (stride one time step), the state (and an image gate's carried image) passed on, up to
    the centre window -> (its output frame [1, 1, H, W] in [0, 1], how many windows came before)."""
    step = UHSR_FRAMES // model.time_steps
    centre = (stream.num_frames - UHSR_FRAMES) // 2          # the window load_stream_pair scores
    first = centre % step
    frames = reconstruct.stateful_frames(model, stream, first, (centre - first) // step + 1, step, None,
                                         model.time_steps, device)
    for before, frame in enumerate(frames):     # only the last frame is kept
        pass
    return frame[None, None].cpu(), before


def score_image(image, gt, iqa=None, raw=False):
    """{metric: value} of one image [1, 1, H, W]: no-reference scores with `iqa` (of the raw
    output when raw), PSNR/SSIM of the clamped image against gt where there is one."""
    scores = {}
    if iqa is not None:
        scores.update({k: float(v[0]) for k, v in iqa(image, clamp=not raw).items()})
    if gt is not None:
        scores.update(psnr=float(psnr(image.clamp(0, 1), gt)[0]), ssim=float(ssim(image.clamp(0, 1), gt)[0]))
    return scores


@torch.inference_mode()
def score_stream(spk, gt, model=None, config=None, rate=None, tfp_window=None, device="cpu", iqa=None):
    """The one scoring of a raw stream window (evaluate.py --dat, bench/reds_check.py): spikes
    [UHSR_FRAMES, H, W] and gt [1, 1, H, W] (or None) -> ({method: {metric: value}}, the
    network's firing rates or None). Methods: TFP over the centre tfp_window frames and TFI,
    both / rate (or normalised), clamped; with a model also the network (config["arch"]) and
    its linear path alone (LINEAR, when it has one). Metrics: PSNR/SSIM against gt (clamped
    images), and with `iqa` (NoReferenceIQA) its no-reference scores (the original LRN's output
    raw, as its authors score it)."""
    images, rates = {}, None
    if model is not None:
        voxel = torch.from_numpy(voxelize(spk, model.input_channels))[None].to(device)
        images, rates = network_images(model, config, voxel)
        images, rates = {m: img.cpu() for m, img in images.items()}, rates.cpu()
    images["tfp"] = torch.from_numpy(tfp(spk, tfp_window, rate)).clamp(0, 1)[None, None]
    images["tfi"] = torch.from_numpy(tfi(spk, rate=rate)).clamp(0, 1)[None, None]
    summary = {m: score_image(img, gt, iqa, raw=model is not None and is_original(config) and m == config["arch"])
               for m, img in images.items()}
    return summary, rates


def evaluate_stream(args, ckpt, model, device, exp_name, out_dir):
    """Score one raw stream (full frame, centre window) against its gt: network, its linear
    path (if any), TFP, TFI."""
    spk, num_frames, gt = load_stream_pair(args.dat, args.gt, args.height, args.width)
    tfp_window = min(args.tfp_window or UHSR_FRAMES, UHSR_FRAMES)   # the window TFP really averages
    config = ckpt["model_config"]
    iqa_names, iqa_skipped = no_reference_names(*spk.shape[1:])
    iqa = NoReferenceIQA("cpu", names=iqa_names)
    summary, rates = score_stream(spk, gt, model, config, args.rate, tfp_window, device, iqa)
    stateful = reconstruct.is_stateful(model, sliding=False)
    label = {config["arch"]: f"{model_name(config)}{', window from rest' if stateful else ''}", LINEAR: LINEAR_LABEL}
    if stateful:     # also as reconstruct.py runs it, from the stream's first frame
        stream = reconstruct.open_stream(args.dat, args.height, args.width)
        image, carried = stateful_centre_image(model, stream, device)
        summary = {config["arch"]: summary.pop(config["arch"]), STATEFUL: score_image(image, gt, iqa), **summary}
        label[STATEFUL] = (f"{model_name(config)}, stateful as reconstruct.py runs it "
                           f"({carried} window{'s' * (carried != 1)} before this one)")
    iqa_variant = "; ".join(list(iqa.describe().values()) + ([iqa_skipped] if iqa_skipped else []))
    keys = list(next(iter(summary.values())))
    name = os.path.basename(args.dat)
    cut = f" (--tfp_window {args.tfp_window} cut to the window)" if args.tfp_window and args.tfp_window > tfp_window else ""
    lines = [f"# {name}: centre {UHSR_FRAMES} of {num_frames} frames, {spk.shape[1]}x{spk.shape[2]}, "
             f"TFP window {tfp_window}{cut}",
             f"checkpoint: {args.checkpoint} ({model_name(config)})", f"IQA: {iqa_variant}",
             f"baselines: {baseline_convention(args.rate, '--rate')}", "",
             "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {label.get(m, m.upper())} | " + " | ".join(f"{v[k]:.4f}" for k in keys) + " |"
              for m, v in summary.items()]
    table = "\n".join(lines) + "\n"
    print(table)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, f"eval_{os.path.splitext(name)[0]}.md"), lambda f: f.write(table), mode="w")
    clip = ckpt.get("clip", {})
    append_record({"run_name": exp_name, "kind": "evaluate", "dataset": f"file:{name}",
                   "checkpoint": os.path.abspath(args.checkpoint), "arch": config["arch"],
                   "model": model_name(config), "clip_model": clip.get("clip_model"), "clip_weights": clip.get("clip_weights"),
                   "clip_random_init": clip.get("clip_random_init"), "warnings": clip.get("warnings", []),
                   "metrics": summary, "num_samples": 1, "iqa_variant": iqa_variant,
                   "firing_rates": {f"lif{i + 1}": float(r) for i, r in enumerate(rates)} if config["arch"] == "snn" else {},
                   "rate": args.rate, "baselines": baseline_convention(args.rate, "--rate"),
                   "tfp_window": tfp_window}, args.results_file)
    return 0


def _write_csv(f, rows):
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))   # PSNR/SSIM only where gt exists
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def format_summary(summary, keys, data_type, args, n, clip_info, iqa_variant, firing_rates, crop, network,
                   baselines):
    names = {"top1": "top-1 acc", "top5": "top-5 acc", "niqe": "NIQE ↓", "brisque": "BRISQUE ↓",
             "piqe": "PIQE ↓", "psnr": "PSNR dB ↑", "ssim": "SSIM ↑"}
    lines = [f"# Evaluation: U-{data_type} {args.split}, {n} samples, {crop}x{crop} crop",
             f"checkpoint: {args.checkpoint} ({network})",
             f"CLIP: {clip_info['clip_model']}, weights {clip_info['clip_weights']}"]
    if clip_info["clip_random_init"]:
        lines.append("**WARNING: randomly initialised CLIP — the accuracies below are NOT semantic results.**")
    if network == ORIGINAL_NAME:
        lines.append(ORIGINAL_SCORING)
    lines += [f"IQA: {iqa_variant}", f"baselines: {baselines}", "",
              "| method | " + " | ".join(names[k] for k in keys) + " |",
              "|---" * (len(keys) + 1) + "|"]
    for m, vals in summary.items():
        cells = [f"{100 * vals[k]:.2f}%" if k.startswith("top") else f"{vals[k]:.4f}" if k == "ssim"
                 else f"{vals[k]:.3f}" for k in keys]
        label = m.upper() if m in ("tfp", "tfi") else LINEAR_LABEL if m == LINEAR else network
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if firing_rates:
        lines += ["", "firing rates (mean spikes per neuron per step): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in firing_rates.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
