"""Train the reconstruction network in three CLIP-guided stages, without ground truth (SPEC §5).

  1. coarse:  recon_weight * L1(out, pseudo-target) + clip_weight * CE(zero-shot logits, label)
              [+ detail_weight * L1 of the local amount of detail, out against pseudo-target]
  2. prompt:  only the quality prompts learn: prompt_weight * CE separating high-quality images
              (an unpaired bank, --hq_dir) from low-quality ones (stage-1 reconstructions, TFP, TFI)
  3. fine:    clip_weight * CE(class) + prompt_weight * CE(quality -> high) +
              recon_weight * L1(out, pseudo-target) (fidelity) + tv_weight * TV(out) [+ detail_weight * ...]
The pseudo-target is TFI, TFP (whole window), ground truth (--recon_target gt, when the data
has it), or the output of a frozen trained reconstructor (--recon_target teacher --teacher PATH:
one of our checkpoints or the original SpikeCLIP LRN), which distils e.g. a CNN into the SNN.
Validation score: the current stage's own weighted loss on the validation split (lower is
better); it drives --early_stop and checkpoint_best.pth.
--stateful K trains stage 1 of a temporal-encoding SNN for streaming: K consecutive windows of
one simulated recording in a row, the membranes carried as reconstruct.py carries them.

    python train.py --dataset cifar --exp_name cifar_snn --epochs 10 --hq_dir HQ_IMAGES
    torchrun --nproc_per_node=2 train.py --dataset cifar --exp_name cifar_ddp ...
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import uuid

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from clip_guidance import ClipGuide, QualityPrompts, load_clip
from dataset import (CLASS_NAMES, DATASET_DIRS, UHSR_BINS, UHSR_FRAMES, SpikeDataError, UHSRDataset, center_crop,
                     check_archives, default_cache_path, load_gt, load_label_name, one_dataset, voxelize)
from generate_synthetic_data import (DEFAULT_LIGHT, LIGHT, SimulatedStreams, camera_record, changed_fields, read_settings,
                                     settings_path)
from models import (CHECKPOINT_FORMAT, LENS_REF_PX, CheckpointError, PlainLRN, SpikingLRN, checkpoint_identity,
                    file_sha256, load_checkpoint, model_from_checkpoint, model_name, to_image)
from results_tracker import RESULTS_FILE, append_record, check_results_file
from utils import (InputError, atomic_torch_save, atomic_write_json, check_output_folder, comparison_grid,
                   folder_name, non_negative_float, non_negative_int, open_fraction, pick_device, positive_float,
                   positive_int, remove_stale_temp_files, report_input_error, seed_everything, unit_interval)

STAGES = ("coarse", "prompt", "fine")
HQ_BANK_SIZE = 512   # images kept as the unpaired high-quality bank
LOG_EVERY = 10       # steps between progress-bar / TensorBoard updates (each one syncs the GPU)
DETAIL_CELL = 8      # px: --detail_weight compares the amount of detail per cell, not its exact place


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data_root", default="data")
    g.add_argument("--dataset", "--data_type", dest="data_type", type=one_dataset, default="CIFAR",
                   metavar="{cifar,caltech}", help="U-CIFAR or U-CALTECH under --data_root (default: cifar)")
    g.add_argument("--crop_size", type=positive_int, default=224, help="centre crop of the frames (UHSR: 224)")
    g.add_argument("--val_fraction", type=open_fraction, default=0.1,
                   help="share of train files held out for validation")
    g.add_argument("--simulate_from", metavar="IMAGE_DIR",
                   help="train on streams simulated on the fly from the photographs in IMAGE_DIR (class "
                        "folders), a new capture per item; --data_root's train files then serve only for "
                        "validation, and their and the test files' source images are never trained on")
    g.add_argument("--light", choices=sorted(LIGHT), default=DEFAULT_LIGHT,
                   help="camera of --simulate_from, as generate_synthetic_data.py's (default: "
                        f"{DEFAULT_LIGHT}): low (UHSR 250x250) or normal (Vidar 250x400, rate 0.6); it must "
                        "match the validation files' camera: their firing rate is checked, and their "
                        "simulation record when they have one")
    g.add_argument("--lattices", type=unit_interval, default=0.0, metavar="P",
                   help="with --simulate_from --light normal: probability that a training scene gets a thin-line "
                        "lattice (a fence, a scaffold) in front of its photos, on its own path; the validation "
                        "files stay as they were made (default 0: photos only)")
    g.add_argument("--epoch_size", type=positive_int,
                   help="items per epoch with --simulate_from (default: the number of source images)")
    g.add_argument("--augment", action="store_true",
                   help="train on a random crop of each stream with a random flip and 90-degree rotation "
                        "(validation keeps the centre crop)")
    g.add_argument("--hq_dir", help="folder of high-quality images (any layout), unrelated to the training "
                                    "scenes, from which the quality prompts learn 'high quality' (stage 2). "
                                    "Without it the training scenes' own clean images stand in - ground "
                                    "truth, which SpikeCLIP does without - and the run says so")
    g.add_argument("--num_workers", type=non_negative_int, default=max(1, min(16, (os.cpu_count() or 2) - 1)),
                   help="loader processes; decompressing UHSR .npz files (~19 per second per core) is the "
                        "data side's bottleneck, so use all spare cores")
    g.add_argument("--cache", nargs="?", const=True, metavar="FILE",
                   help="read training items from a decoded, memory-mapped cache of the .npz files "
                        "(>10x fewer CPU seconds per item; about 3x their size on disk), built on first use and "
                        "rebuilt when the files change; FILE defaults to <data_root>/U-<type>/train.cache")
    g = p.add_argument_group("network")
    g.add_argument("--arch", choices=["snn", "ann"], default="snn",
                   help="snn: spiking LRN; ann: the plain-CNN LRN of the original SpikeCLIP")
    g.add_argument("--time_steps", type=positive_int, default=4, help="SNN time steps T")
    g.add_argument("--encoding", choices=["direct", "temporal"], default="direct",
                   help="direct: the window's voxel at every step; temporal: step t gets its own 50-bin slice")
    g.add_argument("--bins", type=positive_int, default=UHSR_BINS,
                   help=f"direct encoding and --arch ann: the window's {UHSR_FRAMES} frames as this many bins "
                        f"(50: 4 frames each, the seed's voxel; 200: one frame each); temporal encoding takes "
                        f"{UHSR_BINS} per step")
    g.add_argument("--beta", type=unit_interval, default=0.9, help="LIF membrane decay, in [0, 1]")
    g.add_argument("--threshold", type=positive_float, default=1.0, help="LIF firing threshold")
    g.add_argument("--surrogate", choices=["atan", "fast_sigmoid"], default="atan")
    g.add_argument("--linear_skip", action="store_true",
                   help="add a linear conv of the input, fitted by least squares and fixed, to the network's "
                        "readout (the spiking or ReLU layers learn the residual; models.py)")
    g.add_argument("--image_gate", action="store_true",
                   help="with --stateful: the network also reads out, per pixel, how much of the previous "
                        "output frame to keep (models.SpikingLRN.carry_image): still content averages over "
                        "many windows, moving content follows the new one")
    g.add_argument("--lens_input", action="store_true",
                   help="direct-encoding SNN: the network is told each capture's lens blur (std px, stored by "
                        "generate_synthetic_data.py) and adds (std^2 - ref^2) x a second readout of its spikes "
                        f"(models.SpikingLRN.lens_term, ref {LENS_REF_PX:g} px); a stream whose lens is not known "
                        "is read as taken through the reference lens")
    g.add_argument("--backend", choices=["fast", "snntorch"], default="fast",
                   help="fast: fused multi-step path; snntorch: the reference step loop (same function)")
    g = p.add_argument_group("CLIP")
    g.add_argument("--clip_model", default="ViT-B-32", help="open_clip model name, or 'tiny' for tests")
    g.add_argument("--clip_pretrained", default="auto",
                   help="openai | /path/to/weights | none (random, not semantic) | auto (openai if obtainable)")
    g.add_argument("--random_clip_terms", action="store_true",
                   help="keep the CLIP class and quality losses when CLIP has random weights. By default "
                        "they are switched off then (they are noise that pulls the image away from the data) "
                        "and stage 1 takes the coarse and fine epochs; use this only to exercise the pipeline")
    g = p.add_argument_group("schedule and losses")
    g.add_argument("--epochs", type=non_negative_int, default=10, help="total epochs, split 40/20/40%% over the "
                                                          "stages unless --epochs_* are given")
    g.add_argument("--epochs_coarse", type=non_negative_int)
    g.add_argument("--epochs_prompt", type=non_negative_int)
    g.add_argument("--epochs_fine", type=non_negative_int)
    g.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate (cosine schedule per stage)")
    g.add_argument("--batch_size", type=positive_int, default=4, help="per process")
    g.add_argument("--recon_weight", type=non_negative_float, default=1.5, help="L1 to the pseudo-target (stages 1, 3)")
    g.add_argument("--clip_weight", type=non_negative_float, default=0.75, help="CLIP class cross-entropy (stages 1, 3)")
    g.add_argument("--prompt_weight", type=non_negative_float, default=0.75, help="quality-prompt loss (stages 2, 3)")
    g.add_argument("--tv_weight", type=non_negative_float, default=0.01, help="total variation of the output (stage 3)")
    g.add_argument("--detail_weight", type=non_negative_float, default=0.0,
                   help="L1 between the amount of detail in the output and in the pseudo-target, cell by cell "
                        f"(mean absolute neighbour difference over {DETAIL_CELL}x{DETAIL_CELL} px; stages 1, 3, and "
                        "--stateful): pixel L1 answers detail whose exact place is uncertain with a blur, this term "
                        "charges for it")
    g.add_argument("--recon_target", choices=["tfi", "tfp", "gt", "teacher"], default="tfi",
                   help="pseudo-target of the L1 term (stages 1 and 3); teacher: the output of --teacher")
    g.add_argument("--stateful", type=positive_int, metavar="K",
                   help="stage 1 of a temporal-encoding SNN on --simulate_from recordings with --recon_target gt: "
                        "K consecutive windows of one recording in a row at a stride of one time step (200/T "
                        "frames), the membranes carried from window to window as reconstruct.py runs the "
                        f"network (back-propagation truncated every {STATEFUL_CHUNK} steps, where a recording "
                        f"restarts from rest with probability {STATEFUL_RESTART}; in {STATEFUL_STILL * 100:.0f}%% of the "
                        "recordings the camera stands still); each output frame (the mean readout of its "
                        "window's T steps) is scored by L1 against the clean frame at its window's centre; "
                        "validation: one fixed recording of each validation file's photo")
    g.add_argument("--flicker_weight", type=non_negative_float, default=0.0,
                   help="with --stateful: weight of an L1 term between the change from one output frame to the "
                        "next and the clean frames' change (what moves should change, what stands still should "
                        "not flicker)")
    g.add_argument("--init", metavar="CKPT",
                   help="start a new run's network from a trained checkpoint of the same architecture (its "
                        "weights, BatchNorm statistics and linear skip, which is then not refitted), e.g. "
                        "--stateful training of a temporal SNN first trained on single windows")
    g.add_argument("--teacher", help="with --recon_target teacher: a trained reconstructor checkpoint (ours, "
                                     "or the original SpikeCLIP LRN's state_dict), run frozen without gradients")
    g = p.add_argument_group("run")
    g.add_argument("--exp_name", type=folder_name, default="default", help="run folder <exp_root>/<exp_name>/")
    g.add_argument("--exp_root", default="exp")
    g.add_argument("--results_file", default=RESULTS_FILE, help="where the run's record is appended")
    g.add_argument("--resume", action="store_true",
                   help="continue exp/<exp_name> from checkpoint_last.pth with the run's options; typed "
                        "options that say how to run (--data_root, --num_workers, --device, --backend, "
                        "--no_amp, --compile, --cache) or the schedule (--epochs*, --early_stop, --patience) "
                        "replace the run's, any other typed option must equal the run's. A finished run "
                        "given more epochs of its last stage trains them (e.g. --resume --epochs_fine 5)")
    g.add_argument("--early_stop", action="store_true", help="end a stage when the validation score "
                                                             "has not improved for --patience epochs")
    g.add_argument("--patience", type=positive_int, default=3)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--no_amp", action="store_true", help="disable mixed precision on CUDA")
    g.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the training forward (auto: on CUDA; on the CPU it costs more than it saves)")
    return p


def get_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if (args.recon_target == "teacher") != (args.teacher is not None):
        p.error("--recon_target teacher and --teacher PATH go together")
    if args.encoding == "temporal" and UHSR_FRAMES % (UHSR_BINS * args.time_steps):
        fits = [t for t in range(1, UHSR_FRAMES // UHSR_BINS + 1) if UHSR_FRAMES % (UHSR_BINS * t) == 0]
        p.error(f"--encoding temporal --time_steps {args.time_steps}: each step takes its own {UHSR_BINS}-bin "
                f"slice of the {UHSR_FRAMES}-frame window, so {UHSR_BINS} x T must divide {UHSR_FRAMES} "
                f"(T = {', '.join(map(str, fits))})")
    if UHSR_FRAMES % args.bins:
        p.error(f"--bins {args.bins}: the {UHSR_FRAMES}-frame window splits into equal bins only for a divisor "
                f"of {UHSR_FRAMES}")
    if args.encoding == "temporal" and args.bins != UHSR_BINS:
        p.error(f"--bins {args.bins}: temporal encoding gives each step its own {UHSR_BINS} bins; --bins sets "
                "the voxel of direct encoding and of --arch ann")
    if args.simulate_from and not os.path.isdir(args.simulate_from):
        p.error(f"--simulate_from {args.simulate_from}: no such folder")
    if args.stateful and not args.resume:
        check_stateful_options(p, args)
    if args.image_gate and not (args.stateful or args.resume):
        p.error("--image_gate is trained with --stateful K (a frame carried from window to window); give --stateful K")
    if args.lens_input and not (args.arch == "snn" and args.encoding == "direct" and not args.stateful):
        p.error("--lens_input weights a window's readout of a direct-encoding SNN: --arch snn --encoding direct, "
                "without --stateful")
    if args.lens_input and args.simulate_from and not LIGHT[args.light].lens_blur_px[1] > 0:
        p.error(f"--lens_input: the --light {args.light} camera has no lens to tell the network of (--light normal has)")
    if args.flicker_weight and not args.stateful:
        p.error("--flicker_weight scores consecutive output frames of a --stateful recording; give --stateful K")
    if args.lattices and not (args.simulate_from and LIGHT[args.light].layers):
        p.error(f"--lattices {args.lattices:g}: lattices are layers of the scenes --simulate_from makes with a "
                "layered camera (--light normal)")
    if args.detail_weight and args.crop_size < 2:
        p.error(f"--detail_weight compares neighbouring pixels: --crop_size {args.crop_size} has none")
    if args.init and not os.path.isfile(args.init):
        p.error(f"--init {args.init}: no such file")
    args.explicit = typed_options(p, argv)
    args.stage_epochs = None   # a resumed run settles its schedule against the run's own (start_or_resume)
    if not args.resume:
        given = [args.epochs_coarse, args.epochs_prompt, args.epochs_fine]
        if None in given and given != [None] * 3:
            p.error("give all of --epochs_coarse, --epochs_prompt, --epochs_fine (or none)")
        try:
            args.stage_epochs = requested_epochs(args)
        except InputError as e:
            p.error(str(e))
    return args


def check_stateful_options(parser, args):
    """--stateful trains the reconstruction alone, one process, on simulated recordings."""
    needs = {"--arch snn": args.arch == "snn", "--encoding temporal": args.encoding == "temporal",
             "--simulate_from": bool(args.simulate_from), "--recon_target gt": args.recon_target == "gt",
             "--epochs_prompt 0 --epochs_fine 0": args.epochs_prompt == 0 and args.epochs_fine == 0,
             "--clip_weight 0 (or --clip_pretrained none)":
                 args.clip_weight == 0 or (args.clip_pretrained == "none" and not args.random_clip_terms),
             "one process": int(os.environ.get("WORLD_SIZE", "1")) == 1}
    missing = [k for k, ok in needs.items() if not ok]
    if missing:
        parser.error(f"--stateful {args.stateful} trains stage 1 of a temporal SNN on simulated recordings "
                     f"against their clean frames; it needs {', '.join(missing)}")


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


def requested_epochs(args):
    """Epochs of (coarse, prompt, fine) the options ask for: each given --epochs_*, the other
    stages their share of --epochs split 40/20/40."""
    given = [args.epochs_coarse, args.epochs_prompt, args.epochs_fine]
    if None in given and args.epochs < 3:
        raise InputError("--epochs must be >= 3 (one per stage), or give --epochs_coarse/prompt/fine")
    prompt = max(1, round(args.epochs * 0.2))
    coarse = max(1, round((args.epochs - prompt) / 2))
    split = [coarse, prompt, args.epochs - prompt - coarse]
    epochs = [s if g is None else g for g, s in zip(given, split)]
    if sum(epochs) == 0:
        raise InputError("stage epochs must not all be 0")
    return epochs


# ----------------------------------------------------------------------------------------------
# Distributed set-up: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK

def setup_distributed(device_name):
    device = pick_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return device, 0, 1
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":   # one GPU per process: the process's local rank picks it
        device = pick_device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


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
                                 UHSR_FRAMES, exclude=used, length=args.epoch_size, seed=args.seed, lattices=args.lattices)
    check_same_camera(train_set, val_files, args.light)
    check_recorded_camera(args.data_root, args.data_type, LIGHT[args.light], args.light)
    print(f"training on streams simulated on the fly ({args.light} light) from {len(train_set.images)} "
          f"images of {args.simulate_from} ({len(used)} excluded: validation/test scenes); "
          f"validation: the {len(val_files)} files of {val_files.root}")
    if args.stateful:
        train_set = SimulatedRecordings(train_set, args.stateful, args.time_steps, UHSR_BINS)
        print(f"--stateful {args.stateful}: each item one recording of {train_set.num_steps} time steps "
              f"({train_set.num_steps * train_set.step_frames} frames), membranes carried")
    return train_set


def validation_recordings(args, val_files):
    """--stateful: the validation set is recordings, scored as training scores them (an image gate
    acts only when a frame is carried): one fixed recording (seeded by its index) per validation
    file, simulated from the photos of the validation files, with their sensor, at the training
    crop; made once, in memory."""
    photos = {load_label_name(f) for f in val_files.files}
    try:
        streams = SimulatedStreams(args.simulate_from, args.data_type, LIGHT[args.light], args.crop_size, UHSR_BINS,
                                   UHSR_FRAMES, only=photos, seed=args.seed, sensor="train")
    except InputError:     # no image of the folder is one the validation files show
        raise InputError(f"--stateful validates on recordings of the validation files' photos, but none of the "
                         f"{len(val_files)} files of {val_files.root} was made from an image of --simulate_from "
                         f"{args.simulate_from} (generate_synthetic_data.py --source_dir makes such files)") from None
    recordings = SimulatedRecordings(streams, args.stateful, args.time_steps, UHSR_BINS, seed=args.seed)
    items = [recordings[i] for i in range(len(val_files))]
    print(f"validation: {len(items)} recordings of {recordings.num_steps * recordings.step_frames} frames "
          f"simulated from the photos of the {len(val_files)} files of {val_files.root}")
    return items


CAMERA_SAMPLES = 4        # items of each side that are compared
CAMERA_RATE_RATIO = 3.0   # the lights' white-pixel rates differ ~9x (0.6 vs 0.065)


def check_same_camera(train_set, val_files, light):
    """The network learns absolute intensity from the spike counts, so streams simulated with
    one camera and validation files made with another (e.g. --light normal beside low-light
    files) make the validation score meaningless. Compare the cameras' firing rate per unit of
    scene intensity (spikes over the clean image: the white-pixel rate, whatever the scenes'
    brightness), or the plain mean firing rate when the files have no clean image."""
    def rates(dataset):
        items = [dataset[i] for i in range(min(CAMERA_SAMPLES, len(dataset)))]
        spikes = float(np.mean([it["voxel"].float().mean() for it in items])) / (UHSR_FRAMES / UHSR_BINS)
        gt = float(np.mean([it["gt"].mean() for it in items])) if all(it["has_gt"] for it in items) else None
        return spikes, gt

    with torch.random.fork_rng(devices=[]):   # the simulator draws from torch's RNG: leave the run's alone
        torch.manual_seed(0)
        simulated, simulated_gt = rates(train_set)
    files, files_gt = rates(val_files)
    what = "mean firing rate"
    if files_gt and simulated_gt:
        simulated, files, what = simulated / simulated_gt, files / files_gt, "firing rate per unit of intensity"
    if max(simulated, files) > CAMERA_RATE_RATIO * max(min(simulated, files), 1e-6):
        others = [name for name in sorted(LIGHT) if name != light]
        raise InputError(f"--light {light}: streams simulated from --simulate_from have a {what} of "
                         f"{simulated:.3f}, the validation files of {val_files.root} {files:.3f} - another "
                         f"camera; pass the --light they were made with (generate_synthetic_data.py --light; "
                         f"here {' or '.join(others)})")


def check_recorded_camera(data_root, data_type, camera, light):
    """Validation files whose simulation record names another camera than the one training
    simulates (e.g. made before the normal-light camera got its lens) would score the network on
    streams it is not trained for: refused, naming what differs. Folders without a record (real
    captures) pass; check_same_camera() still compares their firing rate."""
    recorded = (read_settings(data_root, data_type) or {}).get("camera")
    if recorded is None:
        return
    differ = changed_fields(recorded, camera_record(camera), now="training:")
    if differ:
        raise InputError(f"{settings_path(data_root, data_type)}: the validation files were simulated with another "
                         f"{light}-light camera: {'; '.join(differ)}; make them again with "
                         f"generate_synthetic_data.py --light {light} (another --data_root, or --overwrite)")


def image_paths(folder):
    """The image files under folder (searched recursively), sorted."""
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.lower().endswith(exts))


def load_images(paths, size, what, limit=HQ_BANK_SIZE, seed=0):
    """A shuffled subset of image files -> grey bank [N, 1, size, size] in [0,1] (resized so the
    short side is `size`, centre-cropped)."""
    paths = list(paths)
    random.Random(seed).shuffle(paths)
    images = []
    for path in paths[:limit]:
        try:
            with Image.open(path) as img:
                img = img.convert("L")
        except OSError as e:
            raise InputError(f"{what}: cannot read {path}: {e}")
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
        raise InputError("the training data has no gt images and no --hq_dir was given: the quality "
                         "prompts (stage 2) need a bank of high-quality images")
    return torch.stack(images)


# ----------------------------------------------------------------------------------------------
# Losses

def total_variation(img):
    return (img[..., 1:, :] - img[..., :-1, :]).abs().mean() + (img[..., :, 1:] - img[..., :, :-1]).abs().mean()


def local_detail(img, cell=DETAIL_CELL):
    """The amount of detail per cell: mean absolute difference of vertically and horizontally
    neighbouring pixels (metrics.neighbour_difference, the sharpness figure) over cell x cell
    patches. img [..., H, W] -> [N, (H-1)//cell, (W-1)//cell], N the product of the leading dims."""
    img = img.reshape(-1, *img.shape[-2:])
    diff = 0.5 * (img.diff(dim=-2).abs()[..., :, :-1] + img.diff(dim=-1).abs()[..., :-1, :])
    return F.avg_pool2d(diff, min(cell, *diff.shape[-2:]))   # a crop smaller than a cell: one cell


def detail_l1(out, target):
    """--detail_weight: L1 between the local amount of detail of out and target [..., H, W]. It
    asks for texture as strong as the target's where pixel L1 alone prefers a blur (fine texture
    whose exact place the stream leaves uncertain), and leaves where it goes to pixel L1."""
    return F.l1_loss(local_detail(out), local_detail(target))


class Teacher:
    """--recon_target teacher: a trained reconstructor, frozen, whose output is the L1 target."""

    def __init__(self, path, student_bins, device, backend="fast"):
        ckpt = load_checkpoint(path)
        self.model = model_from_checkpoint(ckpt, path, backend).to(device).eval().requires_grad_(False)
        self.identity = checkpoint_identity(ckpt, path)
        self.bins = self.model.input_channels
        # bins of bins are bins (dataset.voxelize): a finer student voxel sums to the teacher's
        # (T*50 temporal bins -> 50 direct ones); a coarser one cannot
        if student_bins % self.bins:
            raise CheckpointError(f"{path}: the teacher takes a {self.bins}-bin voxel, which the "
                                  f"student's {student_bins}-bin voxel cannot be summed into")

    @torch.no_grad()
    def __call__(self, voxel, lens_px=None):
        """voxel [B, student_bins, H, W] -> the teacher's analog output [B, 1, H, W] (float32)."""
        if voxel.shape[1] != self.bins:
            voxel = voxelize(voxel, self.bins, dim=1)
        return self.model(voxel, lens_px=lens_px).float()


class StageLoss:
    """The weighted loss of each stage, for training and for the validation score."""

    def __init__(self, args, guide):
        self.args, self.guide = args, guide

    def target(self, batch):
        return batch[self.args.recon_target]

    def fidelity(self, out, batch):
        """recon_weight * L1 (+ detail_weight * detail_l1) of out to the pseudo-target -> (weighted, terms)."""
        a, target = self.args, self.target(batch)
        terms = {"recon": F.l1_loss(out, target)}
        total = a.recon_weight * terms["recon"]
        if a.detail_weight:
            terms["detail"] = detail_l1(out, target)
            total = total + a.detail_weight * terms["detail"]
        return total, terms

    def coarse(self, out, batch):
        a = self.args
        img = to_image(out)
        total, terms = self.fidelity(out, batch)
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
        total, terms = self.fidelity(out, batch)
        terms["tv"] = total_variation(img)
        total = total + a.tv_weight * terms["tv"]
        if a.clip_weight:
            terms["clip"] = F.cross_entropy(self.guide.class_logits(img), batch["label"])
            total = total + a.clip_weight * terms["clip"]
        if a.prompt_weight:
            q_logits = self.guide.quality_logits(img, prompt_features)
            terms["quality"] = F.cross_entropy(q_logits, torch.zeros(len(img), dtype=torch.long, device=img.device))
            total = total + a.prompt_weight * terms["quality"]
        return total, terms


# ----------------------------------------------------------------------------------------------

def switch_off_clip_terms(args, clip_info, is_main):
    """With randomly initialised CLIP the class and quality losses carry no meaning: they are
    noise as large as the reconstruction loss and drive the image away from the data, and a
    refinement stage without them (L1 + TV at a fresh learning rate) scored below its own
    stage 1 (bench/offline_schedule.py, BENCHMARKS.md). So, unless --random_clip_terms, the
    CLIP terms are off and stage 1 takes the refinement epochs (start_or_resume folds the
    schedule): offline, the run trains the reconstruction alone, and says so."""
    args.clip_weight = args.prompt_weight = 0.0
    note = ("CLIP has random weights: the CLIP class and quality losses are OFF (--clip_weight 0 "
            f"--prompt_weight 0) and the CLIP-guided stages 2 and 3 are skipped; stage 1 trains the "
            f"reconstruction for {args.stage_epochs[0]} epochs (coarse + fine). Pass --random_clip_terms "
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
    return out


def hq_batch(bank, n, device, generator=None):
    """n images drawn from the high-quality bank; generator None: torch's global RNG, which every
    checkpoint saves, so a resumed run draws what an uninterrupted one would."""
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
def fit_linear_skip(model, loader, target_key, device, pixels_per_image=2048, teacher=None):
    """Closed-form start for --linear_skip: least squares of the skip conv (3x3 over the input
    voxel, plus bias) against the reconstruction target on FIT_BATCHES training batches.
    Training then starts from the best linear image (TFP is one linear image; the fitted one
    also picks the window and a sharpening kernel) instead of spending epochs finding its scale.
    Returns the fit's RMSE. Runs before DDP wraps the model, which then broadcasts rank 0's fit."""
    gram, rhs, sq, n = 0.0, 0.0, 0.0, 0
    for _, batch in zip(range(FIT_BATCHES), loader):
        batch = to_device(batch, device)
        if teacher is not None:
            batch["teacher"] = teacher(batch["voxel"], batch["lens_px"])
        x = batch["voxel"].float()                                            # [B, C, H, W]
        patches = F.unfold(x, 3, padding=1)                                  # [B, 9C, H*W]
        pick = torch.randint(patches.shape[-1], (pixels_per_image,), device=x.device)
        a = patches[..., pick].transpose(1, 2).reshape(-1, patches.shape[1])  # [B*P, 9C]
        a = torch.cat([a, torch.ones_like(a[:, :1])], 1).double()            # + bias column
        y = batch[target_key].flatten(1)[:, pick].reshape(-1, 1).double()
        gram, rhs, sq, n = gram + a.T @ a, rhs + a.T @ y, sq + (y * y).sum(), n + len(y)
    ridge = 1e-6 * torch.diagonal(gram).mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram + ridge, rhs)[:, 0]
    model.skip.weight.copy_(solution[:-1].view_as(model.skip.weight))
    model.skip.bias.fill_(solution[-1].item())
    residual = (sq - 2 * solution @ rhs[:, 0] + solution @ gram @ solution) / n   # |y - a s|^2 / n
    return float(residual.clamp(min=0).sqrt())


# ----------------------------------------------------------------------------------------------
# The run: its folder, what is built once, and the progress that changes as it trains

class RunFolder:
    """exp/<exp_name>/: opt.json, ckpts/checkpoint_{best,last}.pth, imgs/, tensorboard/."""

    def __init__(self, exp_root, exp_name):
        self.root = os.path.join(exp_root, exp_name)
        self.ckpts = os.path.join(self.root, "ckpts")
        self.last = os.path.join(self.ckpts, "checkpoint_last.pth")
        self.best = os.path.join(self.ckpts, "checkpoint_best.pth")
        self.opt_json = os.path.join(self.root, "opt.json")
        self.imgs = os.path.join(self.root, "imgs")
        self.tensorboard = os.path.join(self.root, "tensorboard")

    def remove_stale_temp_files(self):
        """A run killed while writing leaves `<file>.<random>.tmp` (utils.atomic_write): remove
        those of this folder's own files, nothing else."""
        for path in (self.last, self.best, self.opt_json):
            remove_stale_temp_files(path)

    def load_run(self):
        """checkpoint_last.pth, refused when it is not this folder's run (e.g. copied from another
        run folder): resuming it would overwrite the folder's opt.json and checkpoint_best.pth."""
        ckpt = load_checkpoint(self.last)
        try:
            with open(self.opt_json) as f:
                folder_opt = json.load(f)["opt"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{self.opt_json}: cannot read the run's options ({type(e).__name__}: {e}); "
                                  f"without them {self.last} cannot be checked to belong to this run") from e
        ckpt_opt = ckpt.get("opt") or {}
        if "run_id" in folder_opt and "run_id" in ckpt_opt:
            if folder_opt["run_id"] != ckpt_opt["run_id"]:
                raise CheckpointError(
                    f"{self.last}: belongs to another run (run {ckpt_opt['run_id'][:8]}, exp_name "
                    f"{ckpt_opt.get('exp_name')!r}) than {self.opt_json} (run {folder_opt['run_id'][:8]}); "
                    f"was it copied from another run folder?")
            return ckpt
        # runs started before run ids existed: their options must agree
        fixed = sorted(k for k in set(folder_opt) | set(ckpt_opt)
                       if k not in RUN_OPTIONS + SCHEDULE_OPTIONS + ("explicit", "stage_epochs"))
        differ = [k for k in fixed if folder_opt.get(k) != ckpt_opt.get(k)]
        if differ:
            raise CheckpointError(f"{self.last}: its options disagree with {self.opt_json} ("
                                  + ", ".join(f"{k}: {ckpt_opt.get(k)!r} vs {folder_opt.get(k)!r}" for k in differ)
                                  + "); was it copied from another run folder?")
        return ckpt


@dataclasses.dataclass
class Progress:
    """Where the run stands; saved in every checkpoint, so that --resume continues exactly."""
    stage: int = 0                  # index into STAGES (len(STAGES): the run is complete)
    epoch: int = 0                  # epochs of that stage already done
    global_step: int = 0            # optimizer steps over all stages (TensorBoard x-axis)
    best: float = math.inf          # best validation score of the current stage
    bad_epochs: int = 0             # epochs since it last improved
    history: list = dataclasses.field(default_factory=list)   # one dict per epoch

    @classmethod
    def from_checkpoint(cls, ckpt):
        return cls(ckpt["stage"], ckpt["epoch"], ckpt["global_step"], ckpt["early_stop"]["best"],
                   ckpt["early_stop"]["bad_epochs"], ckpt["history"])

    def epochs_run(self):
        """Epochs each stage has trained -> [coarse, prompt, fine]."""
        return [sum(h["stage"] == name for h in self.history) for name in STAGES]

    def stopped_early(self, args):
        return args.early_stop and self.bad_epochs >= args.patience

    def end_epoch(self, stage, val_score, train_means):
        """Record one epoch -> whether its validation score is the stage's best so far."""
        improved = val_score < self.best
        self.best = min(val_score, self.best)
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        self.history.append({"stage": stage, "epoch": self.epoch, "val_score": val_score,
                             **{f"train_{k}": v for k, v in train_means.items()}})
        self.epoch += 1
        return improved

    def next_stage(self):
        self.stage, self.epoch, self.best, self.bad_epochs = self.stage + 1, 0, math.inf, 0

    def reopen(self, stage):
        """Go back to a stage that has ended, to give it more epochs: its epoch count, best score
        and epochs without improvement, as they were when it ended, from the history."""
        scores = [h["val_score"] for h in self.history if h["stage"] == STAGES[stage]]
        first_best = scores.index(min(scores))
        self.stage, self.epoch, self.best, self.bad_epochs = stage, len(scores), min(scores), len(scores) - 1 - first_best


@dataclasses.dataclass
class Setup:
    """Everything built once before training starts; nothing in here changes while it runs."""
    args: argparse.Namespace
    device: torch.device
    rank: int
    world: int
    folder: RunFolder
    model: torch.nn.Module          # the LRN (plain module: state dicts, evaluation)
    train_model: torch.nn.Module    # the same, wrapped for training (DDP, torch.compile)
    prompts: QualityPrompts
    train_prompts: torch.nn.Module  # the same, DDP-wrapped
    losses: StageLoss
    bank: torch.Tensor              # high-quality images [N, 1, S, S] for stage 2, or None
    bank_source: str
    clip_info: dict
    amp_dtype: torch.dtype          # autocast dtype, or None
    scaler: torch.amp.GradScaler
    writer: object                  # TensorBoard SummaryWriter on rank 0, else None
    teacher: object = None          # Teacher with --recon_target teacher
    teacher_info: dict = None       # its identity (path, SHA-256, network), recorded everywhere

    @property
    def is_main(self):
        return self.rank == 0

    def autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# A new run or --resume: the options, the schedule and where to start

# --resume: options that say how to run, and the schedule, may change; nothing else may.
RUN_OPTIONS = ("data_root", "num_workers", "device", "backend", "no_amp", "compile", "cache",
               "exp_root", "exp_name", "resume", "results_file")
RUN_RECORD_KEYS = {"explicit", "run_id", "stage_epochs"}   # saved with the options, not options
SCHEDULE_OPTIONS = ("epochs", "epochs_coarse", "epochs_prompt", "epochs_fine", "early_stop", "patience")
STAGE_EPOCH_OPTIONS = ("epochs_coarse", "epochs_prompt", "epochs_fine")


def start_or_resume(args, folder, device, is_main):
    """-> (the options to train with, the checkpoint the run continues or None, its Progress,
    CLIP model, CLIP info). Every rule of a new run and of --resume is here, in this order:
      1. a new run needs a fresh folder; --resume needs this folder's own checkpoint_last.pth;
      2. resumed, typed options that say how to run (RUN_OPTIONS) or the schedule
         (SCHEDULE_OPTIONS) replace the run's; any other typed option must equal the run's
         (refused, never ignored); the --teacher file must be the one the run started with;
      3. with random CLIP weights (unless --random_clip_terms; for a resumed run, as at its
         start) the CLIP terms are off and stage 1 takes the coarse and fine epochs;
      4. resumed, the stage epochs are the run's, or with a typed --epochs its new split, with
         each typed --epochs_* in its stage's place. Stages that have trained are fixed, but for
         the last one: it cannot shrink below the epochs it ran, and given more it trains them
         (a finished run too: --resume --epochs_fine 5), from its weights with a fresh optimizer.
         Stages after it may change freely."""
    typed = args.explicit
    run = None
    if args.resume:
        run = folder.load_run()
        saved, defaults = run["opt"], build_parser()
        # an option the run used that this train.py no longer has (e.g. --edge_weight, replaced
        # by --detail_weight) cannot go on acting: refused, never ignored
        retired = [k for k in set(saved) - set(vars(defaults.parse_args([]))) - RUN_RECORD_KEYS if saved[k]]
        if retired:
            raise InputError(f"{folder.last}: the run was started with "
                             + ", ".join(f"--{k} {saved[k]}" for k in sorted(retired))
                             + ", which this train.py no longer has: start a new --exp_name instead")
        differ = [k for k in typed if k not in RUN_OPTIONS + SCHEDULE_OPTIONS
                  and getattr(args, k) != saved.get(k, defaults.get_default(k))]
        if differ:
            raise InputError(f"{folder.last}: --resume continues the run with the options it was started with; "
                             + ", ".join(f"--{k} {getattr(args, k)} (the run has {saved.get(k, defaults.get_default(k))})"
                                         for k in differ)
                             + " would change it: start a new --exp_name instead")
        args = argparse.Namespace(**{**vars(args), **{k: v for k, v in saved.items() if k not in typed},
                                     "explicit": typed})
        if "epochs" in typed:   # a typed --epochs replaces the run's own --epochs_* split
            for k in STAGE_EPOCH_OPTIONS:
                if k not in typed:
                    setattr(args, k, None)
        if args.recon_target == "teacher":
            teacher_sha = file_sha256(args.teacher) if os.path.isfile(args.teacher) else None
            if teacher_sha != (run.get("teacher") or {}).get("sha256"):
                raise CheckpointError(f"{args.teacher}: the teacher file is missing or changed since this run started")
    elif os.path.exists(folder.last):
        raise InputError(f"{folder.root} already holds a run: pass --resume to continue it, "
                         f"or choose another --exp_name")
    else:
        args.run_id = uuid.uuid4().hex   # ties the folder's opt.json and checkpoints to this run

    clip_model, clip_info = load_clip(args.clip_model, args.clip_pretrained, device)
    offline = (run["clip"] if run else clip_info)["clip_random_init"] and not args.random_clip_terms
    if run is None:
        epochs = args.stage_epochs
    elif any(k in typed for k in ("epochs",) + STAGE_EPOCH_OPTIONS):
        epochs = requested_epochs(args)
    else:
        epochs = run["opt"]["stage_epochs"]
    if offline:   # (idempotent: a resumed offline run's own schedule is already folded)
        epochs = [epochs[0] + epochs[2], 0, 0]
        if not epochs[0]:
            raise InputError("CLIP has random weights, so only the coarse and fine epochs train (in stage 1), "
                             "and there are none: give --epochs_coarse or --epochs_fine (or --random_clip_terms)")
    args.stage_epochs = epochs
    if offline:
        switch_off_clip_terms(args, clip_info, is_main)
    if run is None:
        return args, None, Progress(), clip_model, clip_info

    planned, progress = run["opt"]["stage_epochs"], Progress.from_checkpoint(run)
    ran = progress.epochs_run()
    trained = [i for i, n in enumerate(ran) if n]
    # the stage still open: the one the run stopped in, or at a stage boundary the last that trained
    open_stage = progress.stage if progress.epoch or not trained else trained[-1]
    for i in range(open_stage):
        if epochs[i] != planned[i]:
            raise InputError(f"{folder.last}: stage {STAGES[i]} is finished ({planned[i]} epochs), it cannot "
                             f"have {epochs[i]}; only the last stage that trained ({STAGES[open_stage]}) "
                             f"and the ones after it can change")
    if epochs[open_stage] < ran[open_stage]:
        raise InputError(f"{folder.last}: stage {STAGES[open_stage]} has already run {ran[open_stage]} epochs, "
                         f"it cannot have {epochs[open_stage]}")
    reopened = open_stage < progress.stage and epochs[open_stage] > planned[open_stage]
    if reopened:
        progress.reopen(open_stage)
    elif open_stage < progress.stage:   # from the stage after it: one that had 0 epochs may have some now
        progress.stage = open_stage + 1
    if progress.epoch == 0 and not any(epochs[progress.stage:]):
        progress.stage = len(STAGES)
        if is_main:
            last = STAGES[trained[-1]]
            print(f"{folder.root}: the run is complete ({what_ran(ran, offline)}); to train on, resume with "
                  + ("a larger --epochs" if offline else f"a larger --epochs_{last} (it ran {ran[trained[-1]]})"))
        return args, run, progress, clip_model, clip_info

    changed = [f"--{k} {getattr(args, k)} (was {run['opt'].get(k)})" for k in RUN_OPTIONS + ("early_stop", "patience")
               if k in typed and k != "resume" and getattr(args, k) != run["opt"].get(k)]
    if epochs != planned:
        changed.append(f"stage epochs {epochs} (was {planned})")
    if is_main:
        if changed:
            print("resuming with " + ", ".join(changed))
        print(f"resuming {folder.root}: stage {STAGES[progress.stage]}, epoch {progress.epoch}"
              + (" (a finished stage given more epochs: it trains on from its weights, with a fresh optimizer)"
                 if reopened else ""))
    return args, run, progress, clip_model, clip_info


def what_ran(ran, offline):
    """[epochs per stage] -> e.g. 'coarse 4 epochs; prompt and fine did not run (CLIP terms off)'."""
    text = ", ".join(f"{name} {n} epoch{'' if n == 1 else 's'}" for name, n in zip(STAGES, ran) if n)
    skipped = [name for name, n in zip(STAGES, ran) if not n]
    if skipped:
        text += "; " + " and ".join(skipped) + " did not run" + (" (CLIP terms off)" if offline else "")
    return text


def build_lrn(args, device):
    if args.arch == "snn":
        model = SpikingLRN(args.bins, args.time_steps, args.encoding, args.beta, args.threshold,
                           args.surrogate, args.backend, linear_skip=args.linear_skip, image_gate=args.image_gate,
                           lens_ref_px=LENS_REF_PX if args.lens_input else None)
    else:
        if args.encoding == "temporal":
            raise InputError("--arch ann takes the window as one voxel; for one bin per frame pass --bins 200")
        model = PlainLRN(args.bins, linear_skip=args.linear_skip)
    if args.linear_skip:
        # fitted in closed form before training (fit_linear_skip), then fixed: Adam's steps of
        # ~lr per weight are a large fraction of the small fitted weights (0.01-0.06 at a 0.6
        # rate), and a trainable skip drifted off its optimum (REDS 25.9 -> 24.3 dB in 2 epochs)
        model.skip.requires_grad_(False)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


INIT_NEW_PARTS = {"image_gate": "image gate", "lens_ref_px": "lens readout"}   # config key -> name


def init_from(model, path, backend, is_main):
    """--init: the network's weights and BN statistics from a trained checkpoint, refused (one
    line) when it is another architecture. The differences allowed: --image_gate or --lens_input
    on a network trained without it, whose new part then starts from its initialisation."""
    ckpt = load_checkpoint(path)
    expect = model.config()
    trained_without = [key for key in INIT_NEW_PARTS if key not in ckpt["model_config"]]
    new_parts = [INIT_NEW_PARTS[key] for key in trained_without if key in expect]
    for key in trained_without:
        expect.pop(key, None)
    trained = model_from_checkpoint(ckpt, path, backend, expect_config=expect)
    if trained.config() != expect:       # e.g. a gated checkpoint for a run without --image_gate
        raise CheckpointError(f"{path}: checkpoint is from another architecture ({model_name(trained.config())}, "
                              f"the run's is {model_name(model.config())})")
    model.load_state_dict(trained.state_dict(), strict=not new_parts)
    if is_main:
        print(f"network initialised from {path} (sha256 {file_sha256(path)[:12]}); its linear skip is kept"
              + "".join(f"; the {name} is new" for name in new_parts))


def build_data(args, bins, device, rank, world):
    """-> (sampler, train loader, validation loader or None)."""
    cache_path = default_cache_path(args.data_root, args.data_type, "train") if args.cache is True else args.cache
    full = UHSRDataset(args.data_root, args.data_type, "train", bins=bins, num_frames=UHSR_FRAMES,
                       crop_size=args.crop_size, with_baselines=True, cache_path=cache_path)
    if args.lens_input:      # every file must tell the network its lens (NaN would train nothing)
        try:
            check_archives(full.files, ("spk", "label", "lens_px"))
        except SpikeDataError as e:
            raise InputError(f"--lens_input: {e}; files simulated with a lens before generate_synthetic_data.py "
                             "stored it must be made again (its --overwrite)") from None
    if args.simulate_from:
        train_set, val_idx = simulated_train_set(args, full, bins), list(range(len(full)))
    else:
        train_idx, val_idx = split_files(full.files, args.val_fraction, args.seed)
        train_set = UHSRDataset(args.data_root, args.data_type, "train", bins=bins, num_frames=UHSR_FRAMES,
                                crop_size=args.crop_size, with_baselines=True, augment=args.augment,
                                files=[full.files[i] for i in train_idx], cache_path=cache_path)
        if args.recon_target == "gt" and not full[train_idx[0]]["has_gt"]:
            raise InputError(f"--recon_target gt, but {full.files[train_idx[0]]} has no gt image")
    val_set = validation_recordings(args, full) if args.stateful else Subset(full, val_idx)
    # shuffling depends only on (seed, stage, epoch), so a resumed run sees the same batches
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed)
    loader_kw = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda",
                     persistent_workers=args.num_workers > 0)
    if args.num_workers > 0:
        loader_kw["prefetch_factor"] = 4
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, **loader_kw)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, **loader_kw) if val_idx else None
    return sampler, train_loader, val_loader


def build_hq_bank(args, train_set, clip_info, is_main):
    """The unpaired high-quality images stage 2 learns 'high quality' from -> (bank or None,
    description). Without --hq_dir the training scenes' clean images stand in (the gt of the
    training files, or the --simulate_from photographs): ground truth, which SpikeCLIP does
    without, so the run says so loudly and records it among its warnings."""
    if not (args.stage_epochs[1] and args.prompt_weight):
        return None, "none (the prompt stage does not run)"
    if args.hq_dir:
        paths = image_paths(args.hq_dir)
        if not paths:
            raise InputError(f"--hq_dir {args.hq_dir}: no images found")
        bank = load_images(paths, args.crop_size, "--hq_dir", seed=args.seed)
        return bank, f"--hq_dir {args.hq_dir} ({len(bank)} images)"
    if args.simulate_from:
        bank = load_images([path for _, path in train_set.images], args.crop_size, "--simulate_from", seed=args.seed)
        source = f"the --simulate_from photographs, shuffled, unpaired ({len(bank)} images)"
    else:
        bank = gt_bank(train_set.files, args.crop_size, args.seed)
        source = f"clean gt images of the training files, shuffled, unpaired ({len(bank)} images)"
    note = (f"no --hq_dir: the quality prompts learn 'high quality' from {source} - the training scenes' "
            "ground truth, which SpikeCLIP's stages 2 and 3 are meant to do without; pass --hq_dir with a "
            "folder of unrelated high-quality images")
    clip_info["warnings"].append(note)
    if is_main:
        print(f"!! {note}", flush=True)
    return bank, source


def open_run_folder(args, folder, clip_info, bank_source, world, teacher_info):
    """Create the run folder, write opt.json, open TensorBoard (rank 0 only) -> writer."""
    for sub in (folder.ckpts, folder.imgs, folder.tensorboard):
        os.makedirs(sub, exist_ok=True)
    folder.remove_stale_temp_files()
    atomic_write_json({"opt": vars(args), "clip": clip_info, "hq_bank": bank_source, "world_size": world,
                       "teacher": teacher_info}, folder.opt_json)
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(folder.tensorboard)
    for w in clip_info["warnings"]:
        writer.add_text("warnings", w)
    return writer


def make_optimizer(stage, model, prompts, lr):
    """Adam over the stage's trainable part: the prompt vectors in stage 2, the LRN otherwise."""
    return torch.optim.Adam(prompts.parameters() if stage == "prompt" else model.parameters(), lr=lr)


def cosine_lr(base_lr, epoch, n_epochs):
    """The learning rate of a stage's epoch: a cosine from base_lr at epoch 0 towards 0 at its end.
    A function of (epoch, n_epochs) alone, so that a stage given more epochs on --resume
    follows the cosine of its new length."""
    return base_lr * 0.5 * (1 + math.cos(math.pi * epoch / max(1, n_epochs)))


# ----------------------------------------------------------------------------------------------
# One batch, one epoch, validation

def batch_loss(s, stage, batch, training, hq_generator=None):
    """One batch of a stage -> (weighted loss, its terms, reconstruction [B, 1, H, W]).
    training: through the wrapped (DDP, compiled) modules that learn in this stage.
    hq_generator: where stage 2 draws its high-quality images (None: torch's global RNG)."""
    if stage == "prompt":   # the LRN is frozen; its reconstructions are low-quality examples
        with torch.no_grad(), s.autocast():
            recon = to_image(s.model(batch["voxel"], lens_px=batch["lens_px"]).float())
        lq = torch.cat([recon, batch["tfp"], batch["tfi"]])
        hq = hq_batch(s.bank, len(batch["label"]), s.device, hq_generator)
        with s.autocast():
            loss, terms = s.losses.prompt(s.train_prompts() if training else s.prompts(), hq, lq)
        return loss, terms, recon
    with s.autocast():
        if s.teacher is not None:
            batch["teacher"] = s.teacher(batch["voxel"], batch["lens_px"])
        out = (s.train_model if training else s.model)(batch["voxel"], lens_px=batch["lens_px"]).float()
        if stage == "coarse":
            loss, terms = s.losses.coarse(out, batch)
        else:
            with torch.no_grad():
                prompt_features = s.prompts()
            loss, terms = s.losses.fine(out, batch, prompt_features)
    return loss, terms, out


def train_one_epoch(s, stage, loader, optimizer, progress, desc):
    """One pass over the training files -> mean of the loss and of each term."""
    bar = tqdm(loader, desc=desc, disable=not s.is_main, leave=False)
    sums, count = {}, 0
    for batch in bar:
        batch = to_device(batch, s.device)
        if s.args.stateful:
            loss, terms = stateful_step(s, batch, optimizer)
        else:
            loss, terms, _ = batch_loss(s, stage, batch, training=True)
            optimize(s, optimizer, loss)
        progress.global_step += 1
        count += 1
        step_values = {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
        for k, v in step_values.items():   # summed on the device: no sync per step
            sums[k] = sums[k] + v if k in sums else v
        if count % LOG_EVERY == 0 or count == len(loader):
            values = {k: float(v) for k, v in step_values.items()}   # one sync per LOG_EVERY steps
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"{stage} loss is {values['loss']} at step {progress.global_step}")
            if s.is_main:
                bar.set_postfix({k: f"{float(v) / count:.4f}" for k, v in sums.items()})
                for k, v in values.items():
                    s.writer.add_scalar(f"{stage}/train_{k}", v, progress.global_step)
                s.writer.add_scalar(f"{stage}/lr", optimizer.param_groups[0]["lr"], progress.global_step)
    return {k: float(v) / max(count, 1) for k, v in sums.items()}


def optimize(s, optimizer, loss):
    optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.step(optimizer)
    s.scaler.update()


# ----------------------------------------------------------------------------------------------
# --stateful: consecutive windows of one recording with the membranes carried, exactly as
# reconstruct.py runs a temporal SNN on a stream (SpikingLRN.stream_frames), so that a carried
# state gives the image (and the brightness) of a window from rest. Validation: fixed recordings.

STATEFUL_CHUNK = 8        # time steps back-propagated together (2 windows at T=4), then detached
STATEFUL_RESTART = 0.25   # chance that a chunk after a recording's first starts from rest
# chance that a recording's camera stands still (only its cut-outs move), as a fixed spike
# camera watching a moving object: still content should come out still (the image gate)
STATEFUL_STILL = 0.25


class SimulatedRecordings(torch.utils.data.Dataset):
    """--stateful K: each item one new simulated recording (SimulatedStreams.capture) of the
    K - 1 + T time steps that K consecutive windows span at a stride of one step:
    "voxel" uint8 [(K - 1 + T) * bins, S, S], step after step as temporal encoding takes it;
    "gt" float [K, 1, S, S], the clean frame at the centre instant of window j (steps j..j+T-1).
    seed: item i is the fixed recording of seed [seed, i] (validation) instead of a new one."""

    def __init__(self, streams, windows, time_steps, bins, seed=None):
        self.streams, self.windows, self.bins, self.seed = streams, windows, bins, seed
        self.images = streams.images
        self.step_frames = UHSR_FRAMES // time_steps
        self.num_steps = windows - 1 + time_steps

    def __len__(self):
        return len(self.streams)

    def __getitem__(self, i):
        if self.seed is None:
            rng = np.random.default_rng(int(torch.randint(2 ** 62, ())))   # seeded per DataLoader worker
        else:
            rng = np.random.default_rng([self.seed, i])
        centres = [j * self.step_frames + (UHSR_FRAMES - 1) / 2 for j in range(self.windows)]
        still = bool(rng.random() < STATEFUL_STILL)
        spk, gt, _ = self.streams.capture(rng, self.num_steps * self.step_frames, centres, still)
        return {"voxel": torch.from_numpy(voxelize(spk, self.num_steps * self.bins, np.uint8)),
                "gt": torch.from_numpy(gt.astype(np.float32) / 255.0)[:, None]}


def stateful_step(s, batch, optimizer=None):
    """One batch of recordings, STATEFUL_CHUNK steps at a time; the carry (membranes, kept
    readouts, carried image) passes on detached. Training (an optimizer): an optimizer step after
    each chunk (truncated back-propagation through time), and a chunk after the first starts from
    rest with probability STATEFUL_RESTART; validation (none): from rest to the end.
    Loss: recon_weight * L1 of each output frame to its clean frame, + flicker_weight * L1 of the
    change between consecutive output frames (of a chunk) to the clean frames' change,
    + detail_weight * detail_l1 of each frame to its clean frame.
    -> (mean weighted loss, {"recon": mean L1, "flicker": mean change L1[, "detail"]}) over the chunks."""
    model = s.model
    voxel, gt = batch["voxel"], batch["gt"]                       # [B, steps*bins, S, S], [B, K, 1, S, S]
    b, _, h, w = voxel.shape
    x = voxel.reshape(b, -1, model.in_bins, h, w).transpose(0, 1)   # [steps, B, bins, S, S]
    losses = []
    for c in range(0, len(x), STATEFUL_CHUNK):
        if c == 0 or (optimizer is not None and float(torch.rand(())) < STATEFUL_RESTART):
            carry = model.init_stream(b, h, w, device=voxel.device)
        first = c - (0 if carry.kept is None else len(carry.kept[0]))   # window (start step) of frames[0]
        with s.autocast():
            frames, carry = model.stream_frames(x[c:c + STATEFUL_CHUNK], carry)
        carry = carry.detached()
        if len(frames):
            frames, clean = frames.float(), gt[:, first:first + len(frames)].transpose(0, 1)
            l1 = F.l1_loss(frames, clean)
            change = (F.l1_loss(frames[1:] - frames[:-1], clean[1:] - clean[:-1]) if len(frames) > 1
                      else l1.new_zeros(()))
            detail = detail_l1(frames, clean) if s.args.detail_weight else l1.new_zeros(())
            weighted = s.args.recon_weight * l1 + s.args.flicker_weight * change + s.args.detail_weight * detail
            if optimizer is not None:
                optimize(s, optimizer, weighted)
            losses.append(torch.stack([weighted, l1, change, detail]).detach())
    weighted, l1, change, detail = torch.stack(losses).mean(0)
    return weighted, {"recon": l1, "flicker": change, **({"detail": detail} if s.args.detail_weight else {})}


def first_windows(loader, model):
    """Recording batches -> their first windows as ordinary batches ("voxel", "gt"), e.g. for
    fit_linear_skip: a window's linear image is the same from rest and carried."""
    for batch in loader:
        yield {"voxel": batch["voxel"][:, :model.input_channels], "gt": batch["gt"][:, 0]}


@torch.no_grad()
def validate(s, stage, loader):
    """The stage's own weighted loss on the held-out files, or with --stateful on the validation
    recordings (lower is better) -> (score, (first batch, its reconstruction) for the image grid;
    None for recordings)."""
    s.model.eval()
    s.prompts.eval()
    hq_generator = torch.Generator().manual_seed(s.args.seed)   # the same bank images every epoch
    total, n, shown = 0.0, 0, None
    for batch in loader:
        batch = to_device(batch, s.device)
        if s.args.stateful:
            loss, _ = stateful_step(s, batch)
        else:
            loss, _, out = batch_loss(s, stage, batch, training=False, hq_generator=hq_generator)
            if shown is None:
                shown = (batch, out)
        total += float(loss) * len(batch["voxel"])
        n += len(batch["voxel"])
    set_train_mode(s, stage)
    return total / n, shown


def set_train_mode(s, stage):
    """Stage 2 trains only the prompts (the LRN's BN statistics stay put), stages 1/3 the LRN."""
    s.model.train(stage != "prompt")
    s.prompts.train(stage == "prompt")


# ----------------------------------------------------------------------------------------------
# Checkpoints and the end of a stage

def checkpoint(s, progress, optimizer, val_score):
    return {"format": CHECKPOINT_FORMAT, "version": 1, "model_config": s.model.config(),
            "model": s.model.state_dict(), "prompts": s.prompts.state_dict(),
            "opt": vars(s.args), "clip": s.clip_info, "data_type": s.args.data_type,
            "crop_size": s.args.crop_size, "stage": progress.stage, "epoch": progress.epoch,
            "optimizer": optimizer.state_dict(), "scaler": s.scaler.state_dict(),
            "early_stop": {"best": progress.best, "bad_epochs": progress.bad_epochs}, "rng": rng_state(),
            "global_step": progress.global_step, "val_score": val_score, "history": progress.history,
            "teacher": s.teacher_info}


def save_epoch(s, progress, optimizer, val_score, improved):
    state = checkpoint(s, progress, optimizer, val_score)
    if improved:
        atomic_torch_save(state, s.folder.best)
    atomic_torch_save(state, s.folder.last)   # last, so a crash in between resumes safely


def log_epoch(s, stage, progress, n_epochs, train_means, val_score, improved, shown):
    epoch = progress.epoch   # 1-based: epochs done
    s.writer.add_scalar(f"{stage}/val_score", val_score, progress.global_step)
    if shown is not None:
        import torchvision
        batch, out = shown
        n = min(4, len(out))
        grid = comparison_grid(batch["voxel"][:n], batch["tfp"][:n], batch["tfi"][:n], to_image(out[:n]), batch["gt"][:n])
        s.writer.add_image(f"{stage}/spikes_tfp_tfi_recon_gt", grid, progress.global_step)
        torchvision.utils.save_image(grid, os.path.join(
            s.folder.imgs, f"{progress.stage + 1}_{stage}_epoch{epoch:03d}.png"))
    print(f"[{stage}] epoch {epoch}/{n_epochs}  train {train_means['loss']:.4f}  "
          f"val {val_score:.4f}{'  (best)' if improved else ''}", flush=True)


def end_stage(s, progress, optimizer):
    """With --early_stop, continue from the stage's best weights; then save the next stage's
    starting point (stage + 1 at epoch 0; after the last stage: the complete run)."""
    stage = STAGES[progress.stage]
    if progress.stopped_early(s.args) and s.is_main:
        print(f"[{stage}] early stop: no improvement for {s.args.patience} epochs")
    if s.args.early_stop and os.path.exists(s.folder.best):
        if s.world > 1:
            dist.barrier()
        best = load_checkpoint(s.folder.best) if os.path.exists(s.folder.best) else {}   # none: no epoch improved
        if best["stage"] == progress.stage:
            s.model.load_state_dict(best["model"])
            s.prompts.load_state_dict(best["prompts"])
    best_score = progress.best
    progress.next_stage()
    if s.is_main:
        atomic_torch_save(checkpoint(s, progress, optimizer, best_score), s.folder.last)


def write_results_record(s, progress):
    args, info = s.args, s.clip_info
    # the score of the weights the record points to: the best epoch of the stage that last
    # wrote checkpoint_best.pth (stage 1 for an offline run), read from that file itself
    best = load_checkpoint(s.folder.best) if os.path.exists(s.folder.best) else {}   # none: no epoch improved
    record = {"run_name": args.exp_name, "kind": "train", "dataset": f"U-{args.data_type}",
              "checkpoint": s.folder.best, "arch": args.arch, "model": model_name(s.model.config()),
              **{k: info[k] for k in ("clip_model", "clip_weights", "clip_random_init", "warnings")},
              "train": {"stage_epochs": args.stage_epochs, "history": progress.history,
                        "best_val_score": best.get("val_score"),
                        "best_stage": STAGES[best["stage"]] if best else None, "best_epoch": best.get("epoch"),
                        "hq_bank": s.bank_source, "world_size": s.world,
                        "recon_target": args.recon_target, "teacher": s.teacher_info}}
    append_record(record, args.results_file)


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    args = get_args(argv)
    try:
        return train(args)
    except InputError as e:
        return report_input_error(e)


def train(args):
    device, rank, world = setup_distributed(args.device)
    folder = RunFolder(args.exp_root, args.exp_name)
    check_output_folder(args.exp_root, "--exp_root")   # before the work, not after it
    check_output_folder(folder.root, "--exp_name")
    args, run, progress, clip_model, clip_info = start_or_resume(args, folder, device, rank == 0)
    if progress.stage == len(STAGES):   # a finished run given no more epochs (said above)
        return 0
    if rank == 0:
        check_results_file(args.results_file)    # before the training, not after it
    seed_everything(args.seed + rank)
    amp_dtype = None
    if device.type == "cuda" and not args.no_amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cudnn.benchmark = True

    model = build_lrn(args, device)
    if args.init and run is None:   # (a resumed run's weights are its own checkpoint's)
        init_from(model, args.init, args.backend, rank == 0)
    sampler, train_loader, val_loader = build_data(args, model.input_channels, device, rank, world)
    teacher, teacher_info = None, None
    if args.recon_target == "teacher":
        teacher = Teacher(args.teacher, model.input_channels, device, args.backend)
        teacher_info = teacher.identity
        if rank == 0:
            print(f"teacher: {teacher_info['model']} from {args.teacher} (frozen)")
    guide = ClipGuide(clip_model, CLASS_NAMES[args.data_type], device)
    prompts = QualityPrompts(clip_model, n_ctx=16, seed=args.seed).to(device)
    bank, bank_source = build_hq_bank(args, train_loader.dataset, clip_info, rank == 0)
    if rank == 0:
        print(f"high-quality bank: {bank_source}")

    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if run is not None:
        model.load_state_dict(model_from_checkpoint(run, folder.last, args.backend,
                                                    expect_config=model.config()).state_dict())
        prompts.load_state_dict(run["prompts"])
        if run["scaler"]:   # empty when saved without fp16 (CPU, bf16)
            scaler.load_state_dict(run["scaler"])
        set_rng_state(run["rng"])
    elif args.linear_skip and args.stage_epochs[0] > 0 and not args.init:
        fit_batches = first_windows(train_loader, model) if args.stateful else train_loader
        rmse = fit_linear_skip(model, fit_batches, args.recon_target, device, teacher=teacher)
        if rank == 0:
            print(f"linear skip: least-squares start against '{args.recon_target}' (RMSE {rmse:.4f} on "
                  f"{FIT_BATCHES} training batches); the {'spiking' if args.arch == 'snn' else 'ReLU'} layers learn "
                  "the residual")
    writer = open_run_folder(args, folder, clip_info, bank_source, world, teacher_info) if rank == 0 else None

    train_model = DDP(model) if world > 1 else model
    if args.compile == "on" or (args.compile == "auto" and device.type == "cuda"):
        train_model = torch.compile(train_model)
    s = Setup(args, device, rank, world, folder, model, train_model, prompts,
              DDP(prompts) if world > 1 else prompts, StageLoss(args, guide), bank, bank_source,
              clip_info, amp_dtype, scaler, writer, teacher, teacher_info)

    # Each stage from where the run stands to its last epoch (or an early stop). Only a run that
    # stopped inside a stage continues that stage's optimizer; every other stage starts a fresh one.
    optimizer_state = run["optimizer"] if run is not None and run["epoch"] > 0 else None
    for si in range(progress.stage, len(STAGES)):
        stage, n_epochs = STAGES[si], args.stage_epochs[si]
        if n_epochs == 0 and progress.epoch == 0:   # a stage without epochs (e.g. skipped offline)
            progress.next_stage()
            continue
        optimizer = make_optimizer(stage, model, prompts, args.lr)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            optimizer_state = None
        set_train_mode(s, stage)
        while progress.epoch < n_epochs and not progress.stopped_early(args):
            epoch = progress.epoch
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(args.lr, epoch, n_epochs)
            sampler.set_epoch(si * 10000 + epoch)
            train_means = train_one_epoch(s, stage, train_loader, optimizer, progress,
                                          desc=f"{stage} {epoch + 1}/{n_epochs}")
            val_score, shown = train_means["loss"], None
            if val_loader is not None:
                val_score, shown = validate(s, stage, val_loader)
            improved = progress.end_epoch(stage, val_score, train_means)
            if s.is_main:
                log_epoch(s, stage, progress, n_epochs, train_means, val_score, improved, shown)
                save_epoch(s, progress, optimizer, val_score, improved)
            if world > 1:
                dist.barrier()
        end_stage(s, progress, optimizer)

    if rank == 0:
        write_results_record(s, progress)
        writer.close()
        print(f"done: {folder.root}")
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
