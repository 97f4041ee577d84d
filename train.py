"""Train the reconstruction network in three CLIP-guided stages, without ground truth (SPEC §5).

  1. coarse:  recon_weight * L1(out, pseudo-target) + clip_weight * CE(zero-shot logits, label)
  2. prompt:  only the quality prompts learn: prompt_weight * CE separating high-quality images
              (an unpaired bank) from low-quality ones (stage-1 reconstructions, TFP, TFI)
  3. fine:    clip_weight * CE(class) + prompt_weight * CE(quality -> high) +
              recon_weight * L1(out, pseudo-target) (fidelity) + tv_weight * TV(out)
The pseudo-target is TFI, TFP (whole window), ground truth (--recon_target gt, when the data
has it), or the output of a frozen trained reconstructor (--recon_target teacher --teacher PATH:
one of our checkpoints or the original SpikeCLIP LRN), which distils e.g. a CNN into the SNN.
Validation score: the current stage's own weighted loss on the validation split (lower is
better); it drives --early_stop and checkpoint_best.pth.

    python train.py --data_type CIFAR --exp_name cifar_snn --epochs 10
    torchrun --nproc_per_node=2 train.py --data_type CIFAR --exp_name cifar_ddp ...
"""
import argparse
import contextlib
import math
import os
import random
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from clip_guidance import ClipGuide, QualityPrompts, load_clip
from dataset import (CLASS_NAMES, DATASET_DIRS, UHSR_BINS, UHSR_FRAMES, UHSRDataset, center_crop,
                     default_cache_path, load_gt, load_label_name)
from generate_synthetic_data import LIGHT, SimulatedStreams
from models import (CHECKPOINT_FORMAT, CheckpointError, PlainLRN, SpikingLRN, checkpoint_identity,
                    load_checkpoint, model_from_checkpoint, model_name, to_image)
from utils import atomic_torch_save, atomic_write_json, pick_device, seed_everything

STAGES = ("coarse", "prompt", "fine")
ARCH_OPTIONS = ("arch", "time_steps", "encoding", "beta", "threshold", "surrogate", "linear_skip",
                "data_type", "crop_size")
HQ_BANK_SIZE = 512   # clean training images kept as the unpaired high-quality bank
LOG_EVERY = 10       # steps between progress-bar / TensorBoard updates (each one syncs the GPU)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data_root", default="data")
    g.add_argument("--data_type", choices=sorted(CLASS_NAMES), default="CIFAR")
    g.add_argument("--crop_size", type=int, default=224, help="centre crop of the frames (UHSR: 224)")
    g.add_argument("--val_fraction", type=float, default=0.1, help="share of train files held out for validation")
    g.add_argument("--simulate_from", metavar="IMAGE_DIR",
                   help="train on streams simulated on the fly from the photographs in IMAGE_DIR (class "
                        "folders), a new capture per item; --data_root's train files then serve only for "
                        "validation, and their and the test files' source images are never trained on")
    g.add_argument("--light", choices=sorted(LIGHT), default="normal",
                   help="camera of --simulate_from: normal (Vidar 250x400, rate 0.6) or low (UHSR 250x250)")
    g.add_argument("--epoch_size", type=int,
                   help="items per epoch with --simulate_from (default: the number of source images)")
    g.add_argument("--augment", action="store_true",
                   help="train on a random crop of each stream with a random flip and 90-degree rotation "
                        "(validation keeps the centre crop)")
    g.add_argument("--hq_dir", help="folder of high-quality images (any layout) for the quality prompts; "
                                    "default: the clean gt images of the training set, shuffled (unpaired)")
    g.add_argument("--num_workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)),
                   help="loader processes; decompressing UHSR .npz files (~19 per second per core) is the "
                        "data side's bottleneck, so use all spare cores")
    g.add_argument("--cache", nargs="?", const=True, metavar="FILE",
                   help="read training items from a decoded, memory-mapped cache of the .npz files "
                        "(>10x fewer CPU seconds per item; about 3x their size on disk), built on first use and "
                        "rebuilt when the files change; FILE defaults to <data_root>/U-<type>/train.cache")
    g = p.add_argument_group("network")
    g.add_argument("--arch", choices=["snn", "ann"], default="snn",
                   help="snn: spiking LRN; ann: the plain-CNN LRN of the original SpikeCLIP")
    g.add_argument("--time_steps", type=int, default=4, help="SNN time steps T")
    g.add_argument("--encoding", choices=["direct", "temporal"], default="direct",
                   help="direct: the 50-bin voxel at every step; temporal: step t gets its own 50-bin slice")
    g.add_argument("--beta", type=float, default=0.9, help="LIF membrane decay")
    g.add_argument("--threshold", type=float, default=1.0, help="LIF firing threshold")
    g.add_argument("--surrogate", choices=["atan", "fast_sigmoid"], default="atan")
    g.add_argument("--linear_skip", action="store_true",
                   help="SNN: add a linear conv of the input to the spiking readout (the spiking layers "
                        "learn the residual; models.py)")
    g.add_argument("--backend", choices=["fast", "snntorch"], default="fast",
                   help="fast: fused multi-step path; snntorch: the reference step loop (same function)")
    g = p.add_argument_group("CLIP")
    g.add_argument("--clip_model", default="ViT-B-32", help="open_clip model name, or 'tiny' for tests")
    g.add_argument("--clip_pretrained", default="auto",
                   help="openai | /path/to/weights | none (random, not semantic) | auto (openai if obtainable)")
    g.add_argument("--random_clip_terms", action="store_true",
                   help="keep the CLIP class and quality losses when CLIP has random weights. By default "
                        "they are switched off then (they are noise that pulls the image away from the data) "
                        "and the prompt stage is skipped; use this only to exercise the pipeline")
    g = p.add_argument_group("schedule and losses")
    g.add_argument("--epochs", type=int, default=10, help="total epochs, split 40/20/40%% over the "
                                                          "stages unless --epochs_* are given")
    g.add_argument("--epochs_coarse", type=int)
    g.add_argument("--epochs_prompt", type=int)
    g.add_argument("--epochs_fine", type=int)
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (cosine schedule per stage)")
    g.add_argument("--batch_size", type=int, default=4, help="per process")
    g.add_argument("--recon_weight", type=float, default=1.5, help="L1 to the pseudo-target (stages 1, 3)")
    g.add_argument("--clip_weight", type=float, default=0.75, help="CLIP class cross-entropy (stages 1, 3)")
    g.add_argument("--prompt_weight", type=float, default=0.75, help="quality-prompt loss (stages 2, 3)")
    g.add_argument("--tv_weight", type=float, default=0.01, help="total variation of the output (stage 3)")
    g.add_argument("--recon_target", choices=["tfi", "tfp", "gt", "teacher"], default="tfi",
                   help="pseudo-target of the L1 term (stages 1 and 3); teacher: the output of --teacher")
    g.add_argument("--teacher", help="with --recon_target teacher: a trained reconstructor checkpoint (ours, "
                                     "or the original SpikeCLIP LRN's state_dict), run frozen without gradients")
    g = p.add_argument_group("run")
    g.add_argument("--exp_name", default="default", help="run folder exp/<exp_name>/")
    g.add_argument("--exp_root", default="exp")
    g.add_argument("--resume", action="store_true", help="continue exp/<exp_name> from checkpoint_last.pth "
                                                         "with its saved options")
    g.add_argument("--early_stop", action="store_true", help="end a stage when the validation score "
                                                             "has not improved for --patience epochs")
    g.add_argument("--patience", type=int, default=3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--no_amp", action="store_true", help="disable mixed precision on CUDA")
    g.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the training forward (auto: on CUDA; on the CPU it costs more than it saves)")
    args = p.parse_args(argv)
    if (args.recon_target == "teacher") != (args.teacher is not None):
        p.error("--recon_target teacher and --teacher PATH go together")
    args.stage_epochs = stage_epochs(args, p)
    args.explicit = typed_options(p, argv)
    return args


def typed_options(parser, argv):
    """Names of the options present on the command line (--resume must not silently ignore
    them): parse again with every default suppressed, so only typed options appear."""
    defaults = [(a, a.default) for a in parser._actions]
    for a, _ in defaults:
        a.default = argparse.SUPPRESS
    try:
        typed, _ = parser.parse_known_args(argv)
    finally:
        for a, d in defaults:
            a.default = d
    return sorted(vars(typed))


def stage_epochs(args, parser):
    """Epochs of (coarse, prompt, fine): the explicit ones, or --epochs split 40/20/40."""
    given = [args.epochs_coarse, args.epochs_prompt, args.epochs_fine]
    if all(e is None for e in given):
        if args.epochs < 3:
            parser.error("--epochs must be >= 3 (one per stage), or give --epochs_coarse/prompt/fine")
        prompt = max(1, round(args.epochs * 0.2))
        coarse = max(1, round((args.epochs - prompt) / 2))
        return [coarse, prompt, args.epochs - prompt - coarse]
    if any(e is None for e in given):
        parser.error("give all of --epochs_coarse, --epochs_prompt, --epochs_fine (or none)")
    if any(e < 0 for e in given) or sum(given) == 0:
        parser.error("stage epochs must be >= 0 and not all 0")
    return given


# ----------------------------------------------------------------------------------------------
# Distributed set-up: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK

def setup_distributed(device_name):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return pick_device(device_name), 0, 1
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"), rank, world


# ----------------------------------------------------------------------------------------------
# Data

def split_files(files, val_fraction, seed):
    """Deterministic train/validation split of the training files."""
    order = np.random.default_rng(seed).permutation(len(files))
    n_val = int(round(len(files) * val_fraction)) if len(files) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(files) > 1 else 0), len(files) - 1)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return train, val


def simulated_train_set(args, val_files, bins):
    """--simulate_from: fresh captures of the photographs that no validation or test file shows."""
    used = {load_label_name(f) for f in val_files.files}
    test_dir = os.path.join(args.data_root, DATASET_DIRS[args.data_type], "test")
    if os.path.isdir(test_dir):
        used |= {load_label_name(os.path.join(test_dir, f)) for f in os.listdir(test_dir) if f.endswith(".npz")}
    train_set = SimulatedStreams(args.simulate_from, args.data_type, LIGHT[args.light], args.crop_size, bins,
                                 UHSR_FRAMES, exclude=used, length=args.epoch_size, seed=args.seed)
    print(f"training on streams simulated on the fly ({args.light} light) from {len(train_set.images)} "
          f"images of {args.simulate_from} ({len(used)} excluded: validation/test scenes); "
          f"validation: the {len(val_files)} files of {val_files.root}")
    return train_set


def load_image_folder(folder, size, limit=HQ_BANK_SIZE, seed=0):
    """Any folder of images (searched recursively) -> grey bank [N, 1, size, size] in [0,1]."""
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.lower().endswith(exts))
    if not paths:
        raise SystemExit(f"--hq_dir {folder}: no images found")
    random.Random(seed).shuffle(paths)
    images = []
    for path in paths[:limit]:
        try:
            with Image.open(path) as img:
                img = img.convert("L")
        except OSError as e:
            raise SystemExit(f"--hq_dir: cannot read {path}: {e}")
        w, h = img.size
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        arr = center_crop(np.asarray(img, dtype=np.float32) / 255.0, size, path)
        images.append(torch.from_numpy(np.ascontiguousarray(arr))[None])
    return torch.stack(images)


def gt_bank(files, size, seed, limit=HQ_BANK_SIZE):
    """Clean gt images of (a shuffled subset of) the training files -> [N, 1, size, size]."""
    order = np.random.default_rng(seed + 1).permutation(len(files))[:limit]
    images = []
    for i in order:
        gt = load_gt(files[i])
        if gt is not None:
            images.append(torch.from_numpy(center_crop(gt, size, files[i]).astype(np.float32) / 255.0)[None])
    if not images:
        raise SystemExit("the training data has no gt images and no --hq_dir was given: the quality "
                         "prompts (stages 2 and 3) need a bank of high-quality images")
    return torch.stack(images)


# ----------------------------------------------------------------------------------------------
# Losses

def total_variation(img):
    return (img[..., 1:, :] - img[..., :-1, :]).abs().mean() + (img[..., :, 1:] - img[..., :, :-1]).abs().mean()


class Teacher:
    """--recon_target teacher: a trained reconstructor, frozen, whose output is the L1 target."""

    def __init__(self, path, student_bins, device, backend="fast"):
        ckpt = load_checkpoint(path)
        self.model = model_from_checkpoint(ckpt, path, backend).to(device).eval().requires_grad_(False)
        self.identity = checkpoint_identity(ckpt, path)
        self.bins = self.model.input_channels
        # every voxel bins the same 200 frames into equal consecutive bins, so a finer student
        # voxel sums to the teacher's (T*50 temporal bins -> 50 direct ones); a coarser one cannot
        if student_bins % self.bins:
            raise CheckpointError(f"{path}: the teacher takes a {self.bins}-bin voxel, which the "
                                  f"student's {student_bins}-bin voxel cannot be summed into")
        self.fold = student_bins // self.bins

    @torch.no_grad()
    def __call__(self, voxel):
        """voxel [B, student_bins, H, W] -> the teacher's analog output [B, 1, H, W] (float32)."""
        if self.fold > 1:
            voxel = voxel.unflatten(1, (self.bins, self.fold)).sum(2)
        return self.model(voxel).float()


class StageLoss:
    """The weighted loss of each stage, for training and for the validation score."""

    def __init__(self, args, guide):
        self.args, self.guide = args, guide

    def target(self, batch):
        return batch[self.args.recon_target]

    def coarse(self, out, batch):
        a = self.args
        img = to_image(out)
        terms = {"recon": F.l1_loss(out, self.target(batch))}
        total = a.recon_weight * terms["recon"]
        if a.clip_weight:   # a CLIP forward pass costs more than the LRN's: skip it when unused
            terms["clip"] = F.cross_entropy(self.guide.class_logits(img), batch["label"])
            total = total + a.clip_weight * terms["clip"]
        return total, terms

    def prompt(self, prompt_features, hq, lq):
        """Equal weight to the high-quality (label 0) and low-quality (label 1) images."""
        hq_loss = F.cross_entropy(self.guide.quality_logits(hq, prompt_features),
                                  torch.zeros(len(hq), dtype=torch.long, device=hq.device))
        lq_loss = F.cross_entropy(self.guide.quality_logits(lq, prompt_features),
                                  torch.ones(len(lq), dtype=torch.long, device=lq.device))
        quality = 0.5 * (hq_loss + lq_loss)
        return self.args.prompt_weight * quality, {"quality": quality}

    def fine(self, out, batch, prompt_features):
        a = self.args
        img = to_image(out)
        terms = {"recon": F.l1_loss(out, self.target(batch)), "tv": total_variation(img)}
        total = a.recon_weight * terms["recon"] + a.tv_weight * terms["tv"]
        if a.clip_weight:
            terms["clip"] = F.cross_entropy(self.guide.class_logits(img), batch["label"])
            total = total + a.clip_weight * terms["clip"]
        if a.prompt_weight:
            q_logits = self.guide.quality_logits(img, prompt_features)
            terms["quality"] = F.cross_entropy(q_logits, torch.zeros(len(img), dtype=torch.long, device=img.device))
            total = total + a.prompt_weight * terms["quality"]
        return total, terms


# ----------------------------------------------------------------------------------------------

def disable_random_clip_terms(args, clip_info, is_main):
    """With randomly initialised CLIP the class and quality losses carry no meaning: they are
    noise as large as the reconstruction loss and drive the image away from the data, and a
    refinement stage without them (L1 + TV at a fresh learning rate) scored below its own
    stage 1 (bench/offline_schedule.py, BENCHMARKS.md). Unless --random_clip_terms, switch the
    CLIP terms off and give the refinement epochs to stage 1: offline, the run trains the
    reconstruction alone, and says so."""
    if not clip_info["clip_random_init"] or args.random_clip_terms:
        return
    args.clip_weight = args.prompt_weight = 0.0
    coarse, _, fine = args.stage_epochs
    args.stage_epochs = [coarse + fine, 0, 0]
    note = ("CLIP has random weights: the CLIP class and quality losses are OFF (--clip_weight 0 "
            f"--prompt_weight 0) and the CLIP-guided stages 2 and 3 are skipped; stage 1 trains the "
            f"reconstruction for {coarse + fine} epochs (coarse + fine). Pass --random_clip_terms "
            "to keep the three stages with their CLIP terms anyway.")
    clip_info["warnings"].append(note)
    if is_main:
        print(f"!! {note}", flush=True)


def to_device(batch, device):
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device, non_blocking=True)
            if k == "voxel":   # uint8 counts from the loader become float on the device
                v = v.float()
                if device.type == "cuda":
                    v = v.contiguous(memory_format=torch.channels_last)   # as the model's weights
            out[k] = v
        else:
            out[k] = v
    return out


def hq_batch(bank, n, generator, device):
    idx = torch.randint(len(bank), (n,), generator=generator)
    return bank[idx].to(device, non_blocking=True)


def rng_state():
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


FIT_BATCHES = 8


@torch.no_grad()
def fit_linear_skip(model, loader, target_key, device, pixels_per_image=2048):
    """Closed-form start for --linear_skip: least squares of the skip conv (3x3 over the mean
    step input, plus bias) against the reconstruction target on FIT_BATCHES training batches.
    Training then starts from the best linear image (TFP is one linear image; the fitted one
    also picks the window and a sharpening kernel) instead of spending epochs finding its scale.
    Returns the fit's RMSE. Runs before DDP wraps the model, which then broadcasts rank 0's fit."""
    gram, rhs, sq, n = 0.0, 0.0, 0.0, 0
    for _, batch in zip(range(FIT_BATCHES), loader):
        batch = to_device(batch, device)
        x = model._step_inputs(batch["voxel"]).mean(0).float()              # [B, 50, H, W]
        patches = F.unfold(x, 3, padding=1)                                  # [B, 450, H*W]
        pick = torch.randint(patches.shape[-1], (pixels_per_image,), device=x.device)
        a = patches[..., pick].transpose(1, 2).reshape(-1, patches.shape[1])  # [B*P, 450]
        a = torch.cat([a, torch.ones_like(a[:, :1])], 1).double()            # + bias column
        y = batch[target_key].flatten(1)[:, pick].reshape(-1, 1).double()
        gram, rhs, sq, n = gram + a.T @ a, rhs + a.T @ y, sq + (y * y).sum(), n + len(y)
    ridge = 1e-6 * torch.diagonal(gram).mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram + ridge, rhs)[:, 0]
    model.skip.weight.copy_(solution[:-1].view_as(model.skip.weight))
    model.skip.bias.fill_(solution[-1].item())
    residual = (sq - 2 * solution @ rhs[:, 0] + solution @ gram @ solution) / n   # |y - a s|^2 / n
    return float(residual.clamp(min=0).sqrt())


def make_optimizer(stage, model, prompts, args):
    params = prompts.parameters() if stage == "prompt" else model.parameters()
    optimizer = torch.optim.Adam(params, lr=args.lr)
    n_epochs = args.stage_epochs[STAGES.index(stage)]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, n_epochs))
    return optimizer, scheduler


def image_grid(batch, out, n=4):
    """Rows: spikes (TFP view of the voxel), TFP, TFI, reconstruction, gt — [5n, 1, H, W]."""
    import torchvision
    n = min(n, len(out))
    voxel = batch["voxel"][:n]
    spikes = voxel.mean(1, keepdim=True)
    spikes = spikes / spikes.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    rows = [spikes, batch["tfp"][:n], batch["tfi"][:n], to_image(out[:n].float()), batch["gt"][:n]]
    return torchvision.utils.make_grid(torch.cat([r.detach().float().cpu() for r in rows]), nrow=n, padding=2)


def main(argv=None):
    args = get_args(argv)
    device, rank, world = setup_distributed(args.device)
    is_main = rank == 0
    run_dir = os.path.join(args.exp_root, args.exp_name)
    ckpt_dir = os.path.join(run_dir, "ckpts")
    last_path = os.path.join(ckpt_dir, "checkpoint_last.pth")

    resume_ckpt = None
    if args.resume:
        resume_ckpt = load_checkpoint(last_path)
        saved = resume_ckpt["opt"]
        conflicts = [k for k in ARCH_OPTIONS if k in args.explicit and getattr(args, k) != saved.get(k)]
        if conflicts:
            raise CheckpointError(
                f"{last_path}: checkpoint is from another architecture: " + ", ".join(
                    f"--{k} {getattr(args, k)} requested, the run has {saved.get(k)}" for k in conflicts))
        for key in ("resume", "device", "num_workers", "explicit", "compile", "cache"):   # how to run, not what to run
            saved[key] = getattr(args, key)
        args = argparse.Namespace(**saved)
        if resume_ckpt["stage"] >= len(STAGES):
            print(f"{run_dir}: the run is already complete (all three stages)")
            return 0
    elif os.path.exists(last_path):
        raise SystemExit(f"{run_dir} already holds a run: pass --resume to continue it, "
                         f"or choose another --exp_name")
    seed_everything(args.seed + rank)
    amp_dtype = None
    if device.type == "cuda" and not args.no_amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cudnn.benchmark = True

    # -- data -----------------------------------------------------------------------------------
    bins = UHSR_BINS * (args.time_steps if args.arch == "snn" and args.encoding == "temporal" else 1)
    cache_path = default_cache_path(args.data_root, args.data_type, "train") if args.cache is True else args.cache
    full = UHSRDataset(args.data_root, args.data_type, "train", bins=bins, num_frames=UHSR_FRAMES,
                       crop_size=args.crop_size, with_baselines=True, cache_path=cache_path)
    if args.simulate_from:
        train_set, train_idx, val_idx = simulated_train_set(args, full, bins), [], list(range(len(full)))
    else:
        train_idx, val_idx = split_files(full.files, args.val_fraction, args.seed)
        train_set = UHSRDataset(args.data_root, args.data_type, "train", bins=bins, num_frames=UHSR_FRAMES,
                                crop_size=args.crop_size, with_baselines=True, augment=args.augment,
                                files=[full.files[i] for i in train_idx], cache_path=cache_path)
    val_set = Subset(full, val_idx)
    # shuffling depends only on (seed, stage, epoch), so a resumed run sees the same batches
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed)
    loader_kw = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda",
                     persistent_workers=args.num_workers > 0)
    if args.num_workers > 0:
        loader_kw["prefetch_factor"] = 4
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, **loader_kw)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, **loader_kw) if val_idx else None
    if args.recon_target == "gt" and not args.simulate_from:
        probe = full[train_idx[0]]
        if not probe["has_gt"]:
            raise SystemExit(f"--recon_target gt, but {full.files[train_idx[0]]} has no gt image")

    # -- networks -------------------------------------------------------------------------------
    if args.arch == "snn":
        model = SpikingLRN(UHSR_BINS, args.time_steps, args.encoding, args.beta, args.threshold,
                           args.surrogate, args.backend, linear_skip=args.linear_skip)
    else:
        if args.encoding == "temporal":
            raise SystemExit("--arch ann takes the direct 50-bin voxel; --encoding temporal is for the SNN")
        if args.linear_skip:
            raise SystemExit("--linear_skip is an SNN option; --arch ann is the original plain CNN")
        model = PlainLRN(UHSR_BINS)
    if args.linear_skip:
        # fitted in closed form before training (fit_linear_skip), then fixed: Adam's steps of
        # ~lr per weight are a large fraction of the small fitted weights (0.01-0.06 at a 0.6
        # rate), and a trainable skip drifted off its optimum (REDS 25.9 -> 24.3 dB in 2 epochs)
        model.skip.requires_grad_(False)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    teacher, teacher_info = None, None
    if args.recon_target == "teacher":
        teacher = Teacher(args.teacher, bins, device, args.backend)
        teacher_info = teacher.identity
        if resume_ckpt is not None and teacher_info["sha256"] != (resume_ckpt.get("teacher") or {}).get("sha256"):
            raise CheckpointError(f"{args.teacher}: the teacher file changed since this run started")
        if is_main:
            print(f"teacher: {teacher_info['model']} from {args.teacher} (frozen)")
    clip_model, clip_info = load_clip(args.clip_model, args.clip_pretrained, device)
    if resume_ckpt is None:
        disable_random_clip_terms(args, clip_info, is_main)
    guide = ClipGuide(clip_model, CLASS_NAMES[args.data_type], device)
    prompts = QualityPrompts(clip_model, n_ctx=16, seed=args.seed).to(device)
    losses = StageLoss(args, guide)
    if args.hq_dir:
        bank = load_image_folder(args.hq_dir, args.crop_size, seed=args.seed)
        bank_source = f"--hq_dir {args.hq_dir} ({len(bank)} images)"
    else:
        bank = gt_bank([full.files[i] for i in (train_idx or val_idx)], args.crop_size, args.seed)
        bank_source = f"clean gt images of the training set, shuffled, unpaired ({len(bank)} images)"
    if is_main:
        print(f"high-quality bank: {bank_source}")

    # -- state (fresh or resumed) -----------------------------------------------------------------
    history, stage_idx, start_epoch, global_step = [], 0, 0, 0
    early = {"best": math.inf, "bad_epochs": 0}
    if resume_ckpt is not None:
        model.load_state_dict(model_from_checkpoint(resume_ckpt, last_path, args.backend,
                                                    expect_config=model.config()).state_dict())
        prompts.load_state_dict(resume_ckpt["prompts"])
        stage_idx, start_epoch = resume_ckpt["stage"], resume_ckpt["epoch"]
        global_step, early, history = resume_ckpt["global_step"], resume_ckpt["early_stop"], resume_ckpt["history"]
        set_rng_state(resume_ckpt["rng"])
        if is_main:
            print(f"resuming {run_dir}: stage {STAGES[stage_idx]}, epoch {start_epoch}")
    elif args.arch == "snn" and args.linear_skip and args.stage_epochs[0] > 0:
        rmse = fit_linear_skip(model, train_loader, args.recon_target, device)
        if is_main:
            print(f"linear skip: least-squares start against '{args.recon_target}' (RMSE {rmse:.4f} on "
                  f"{FIT_BATCHES} training batches); the spiking layers learn the residual")

    writer = None
    if is_main:
        for sub in ("ckpts", "imgs", "tensorboard"):
            os.makedirs(os.path.join(run_dir, sub), exist_ok=True)
        atomic_write_json({"opt": vars(args), "clip": clip_info, "hq_bank": bank_source, "world_size": world,
                           "teacher": teacher_info}, os.path.join(run_dir, "opt.json"))
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        for w in clip_info["warnings"]:
            writer.add_text("warnings", w)

    lrn = DDP(model) if world > 1 else model
    if args.compile == "on" or (args.compile == "auto" and device.type == "cuda"):
        lrn = torch.compile(lrn)
    prompt_net = DDP(prompts) if world > 1 else prompts
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def checkpoint(stage, epoch, optimizer, scheduler, val_score):
        return {"format": CHECKPOINT_FORMAT, "version": 1, "model_config": model.config(),
                "model": model.state_dict(), "prompts": prompts.state_dict(),
                "opt": vars(args), "clip": clip_info, "data_type": args.data_type,
                "crop_size": args.crop_size, "stage": stage, "epoch": epoch,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "early_stop": dict(early), "rng": rng_state(),
                "global_step": global_step, "val_score": val_score, "history": history,
                "teacher": teacher_info}

    def run_stage_step(stage, batch, train):
        """One batch of a stage -> (weighted loss, its terms, output or None)."""
        if stage == "prompt":
            with torch.no_grad(), autocast():
                recon = to_image(model(batch["voxel"]).float())
            lq = torch.cat([recon, batch["tfp"], batch["tfi"]])
            gen = torch.Generator().manual_seed(args.seed * 1000003 + global_step * 2 + int(train))
            hq = hq_batch(bank, len(batch["label"]), gen, device)
            with autocast():
                loss, terms = losses.prompt(prompt_net() if train else prompts(), hq, lq)
            return loss, terms, recon
        net = lrn if train else model
        with autocast():
            if teacher is not None:
                batch["teacher"] = teacher(batch["voxel"])
            out = net(batch["voxel"]).float()
            if stage == "coarse":
                loss, terms = losses.coarse(out, batch)
            else:
                with torch.no_grad():
                    prompt_features = prompts()
                loss, terms = losses.fine(out, batch, prompt_features)
        return loss, terms, out

    # -- the three stages -------------------------------------------------------------------------
    for si in range(stage_idx, len(STAGES)):
        stage, n_epochs = STAGES[si], args.stage_epochs[si]
        optimizer, scheduler = make_optimizer(stage, model, prompts, args)
        first_epoch = 0
        if si == stage_idx and resume_ckpt is not None:
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            scheduler.load_state_dict(resume_ckpt["scheduler"])
            scaler.load_state_dict(resume_ckpt["scaler"])
            first_epoch = start_epoch
        model.train(stage != "prompt")
        prompts.train(stage == "prompt")
        for epoch in range(first_epoch, n_epochs):
            if early["bad_epochs"] >= args.patience and args.early_stop:
                break
            sampler.set_epoch(si * 10000 + epoch)
            bar = tqdm(train_loader, desc=f"{stage} {epoch + 1}/{n_epochs}", disable=not is_main, leave=False)
            sums, count = {}, 0
            for batch in bar:
                batch = to_device(batch, device)
                loss, terms, out = run_stage_step(stage, batch, train=True)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                global_step += 1
                count += 1
                step_values = {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
                for k, v in step_values.items():   # summed on the device: no sync per step
                    sums[k] = sums[k] + v if k in sums else v
                if count % LOG_EVERY == 0 or count == len(train_loader):
                    values = {k: float(v) for k, v in step_values.items()}   # one sync per LOG_EVERY steps
                    if not math.isfinite(values["loss"]):
                        raise FloatingPointError(f"{stage} loss is {values['loss']} at step {global_step}")
                    if is_main:
                        bar.set_postfix({k: f"{float(v) / count:.4f}" for k, v in sums.items()})
                        for k, v in values.items():
                            writer.add_scalar(f"{stage}/train_{k}", v, global_step)
                        writer.add_scalar(f"{stage}/lr", optimizer.param_groups[0]["lr"], global_step)
            scheduler.step()
            train_means = {k: float(v) / max(count, 1) for k, v in sums.items()}

            # validation score: the stage's own loss on the held-out files (lower is better)
            val_score, grid_batch = train_means["loss"], None
            if val_loader is not None:
                model.eval()
                prompts.eval()
                total, n = 0.0, 0
                with torch.no_grad():
                    for batch in val_loader:
                        batch = to_device(batch, device)
                        loss, _, out = run_stage_step(stage, batch, train=False)
                        total += float(loss) * len(batch["label"])
                        n += len(batch["label"])
                        if grid_batch is None:
                            grid_batch = (batch, out)
                val_score = total / n
                model.train(stage != "prompt")
                prompts.train(stage == "prompt")
            improved = val_score < early["best"]
            early = {"best": min(val_score, early["best"]), "bad_epochs": 0 if improved else early["bad_epochs"] + 1}
            history.append({"stage": stage, "epoch": epoch, "val_score": val_score, **{f"train_{k}": v for k, v in train_means.items()}})
            if is_main:
                writer.add_scalar(f"{stage}/val_score", val_score, global_step)
                if grid_batch is not None:
                    grid = image_grid(*grid_batch)
                    writer.add_image(f"{stage}/spikes_tfp_tfi_recon_gt", grid, global_step)
                    import torchvision
                    torchvision.utils.save_image(grid, os.path.join(run_dir, "imgs", f"{si + 1}_{stage}_epoch{epoch + 1:03d}.png"))
                state = checkpoint(si, epoch + 1, optimizer, scheduler, val_score)
                if improved:
                    atomic_torch_save(state, os.path.join(ckpt_dir, "checkpoint_best.pth"))
                atomic_torch_save(state, last_path)   # last, so a crash in between resumes safely
                print(f"[{stage}] epoch {epoch + 1}/{n_epochs}  train {train_means['loss']:.4f}  "
                      f"val {val_score:.4f}{'  (best)' if improved else ''}", flush=True)
            if world > 1:
                dist.barrier()
        if args.early_stop and early["bad_epochs"] >= args.patience and is_main:
            print(f"[{stage}] early stop: no improvement for {args.patience} epochs")
        if args.early_stop and os.path.exists(os.path.join(ckpt_dir, "checkpoint_best.pth")):
            # continue from the best weights of this stage
            if world > 1:
                dist.barrier()
            best = load_checkpoint(os.path.join(ckpt_dir, "checkpoint_best.pth"))
            if best["stage"] == si:
                model.load_state_dict(best["model"])
                prompts.load_state_dict(best["prompts"])
        # the next stage starts at its epoch 0 with fresh early-stopping state
        if is_main:
            # the hand-over checkpoint: stage si+1 at epoch 0 (or, after the last stage, "complete")
            next_opt = (make_optimizer(STAGES[si + 1], model, prompts, args) if si + 1 < len(STAGES)
                        else (optimizer, scheduler))
            state = checkpoint(si + 1, 0, *next_opt, early["best"])
            state["early_stop"] = {"best": math.inf, "bad_epochs": 0}
            atomic_torch_save(state, last_path)
        early = {"best": math.inf, "bad_epochs": 0}
        stage_idx, resume_ckpt = si + 1, None

    if is_main:
        from results_tracker import append_record
        record = {"run_name": args.exp_name, "kind": "train", "dataset": f"U-{args.data_type}",
                  "checkpoint": os.path.join(ckpt_dir, "checkpoint_best.pth"), "arch": args.arch,
                  "model": model_name(model.config()),
                  **{k: clip_info[k] for k in ("clip_model", "clip_weights", "clip_random_init", "warnings")},
                  "train": {"stage_epochs": args.stage_epochs, "history": history,
                            "best_val_score": min((h["val_score"] for h in history if h["stage"] == STAGES[-1]), default=None),
                            "hq_bank": bank_source, "world_size": world,
                            "recon_target": args.recon_target, "teacher": teacher_info}}
        append_record(record, os.path.join(os.getcwd(), "experiment_results.json"))
        writer.close()
        print(f"done: {run_dir}")
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
