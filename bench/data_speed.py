"""Data pipeline speed on the CPU: the spike-camera simulator and .npz -> voxel loading.

    python bench/data_speed.py                      # defaults finish in ~1-2 min on 2 cores
    python bench/data_speed.py --sim_samples 5 --load_files 32 --repeats 3

1. Simulator: samples/s of generate_synthetic_data's camera (UHSR size: 250x250, 200 frames),
   one process, normal and low light, built-in procedural images; "+ write" adds
   np.savez_compressed of the sample, i.e. what one worker of the generator does.
2. Loading: items/s of UHSRDataset (load, check, crop, voxelise to 50 bins) on one core, for
   the simulator's files (uint8 `spk`), for the same spikes stored as float32 `spk` (the old
   seed's format, savez_compressed), and from the decoded cache of the uint8 files (train.py
   --cache; its one-process build time too), with and without the TFP/TFI baselines, the passes
   of all six taking turns. All files are read warm (just written, in the page cache).
Everything is written to a temporary folder that is removed at the end.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generate_synthetic_data as gen  # noqa: E402
from dataset import UHSRDataset, build_cache  # noqa: E402


def bench_simulator(light, n, frame_size, num_frames, seed, out_dir):
    cfg = gen.LIGHT[light]
    size = (frame_size, frame_size)
    sensor = gen.make_sensor(cfg, size, seed)
    sim_time, write_time, samples = 0.0, 0.0, []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        label = i % 10
        t0 = time.perf_counter()
        canvas = gen.image_to_canvas(gen.procedural_image(label, rng), frame_size)
        spk, gt = gen.simulate_spikes(canvas, num_frames, cfg, sensor, rng, size)
        t1 = time.perf_counter()
        gen.save_sample(os.path.join(out_dir, f"{light}_{i}.npz"), spk, label, f"p{i}.png", gt)
        t2 = time.perf_counter()
        sim_time += t1 - t0
        write_time += t2 - t1
        samples.append((spk, label, gt))
    return n / sim_time, n / (sim_time + write_time), samples


def write_load_files(samples, n_files, folder, dtype):
    os.makedirs(folder, exist_ok=True)
    files = []
    for i in range(n_files):
        spk, label, gt = samples[i % len(samples)]
        path = os.path.join(folder, f"{i}.npz")
        np.savez_compressed(path, spk=spk.astype(dtype), label=np.int64(label),
                            label_name=np.str_(f"p{i}.png"), gt=gt)
        files.append(path)
    return files


def bench_loading(datasets, repeats):
    """name -> items/s of each UHSRDataset; their passes take turns, so a load that changes during
    the run (a shared machine) slows them alike and the ratios stay fair."""
    elapsed = dict.fromkeys(datasets, 0.0)
    for ds in datasets.values():
        ds[0]  # warm-up (imports, page cache)
    for _ in range(repeats):
        for name, ds in datasets.items():
            t0 = time.perf_counter()
            for i in range(len(ds)):
                item = ds[i]
            elapsed[name] += time.perf_counter() - t0
            assert item["voxel"].shape == (50, 224, 224)
    return {name: repeats * len(ds) / elapsed[name] for name, ds in datasets.items()}


def bench_loader(files, workers, batch, repeats, cache_path=None):
    """samples/s of train.py's DataLoader set-up alone (workers, pinned memory, prefetch),
    with the TFP/TFI pseudo-targets train.py asks for, after the first batch."""
    from torch.utils.data import ConcatDataset, DataLoader
    copies = max(repeats, -(-5 * batch // len(files)))    # at least 5 batches: 4 are timed
    ds = ConcatDataset([UHSRDataset("", "CIFAR", "train", with_baselines=True, files=files,
                                    cache_path=cache_path)] * copies)
    kw = dict(num_workers=workers, pin_memory=torch.cuda.is_available())
    if workers:
        kw.update(prefetch_factor=4, persistent_workers=False)
    loader = DataLoader(ds, batch_size=batch, shuffle=False, **kw)
    batches = iter(loader)
    next(batches)     # steady state: worker start-up and the first batch are not timed
    t0 = time.perf_counter()
    n = sum(len(b["label"]) for b in batches)
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sim_samples", type=int, default=3, help="samples simulated per light regime")
    p.add_argument("--frame_size", type=int, default=250)
    p.add_argument("--num_frames", type=int, default=200)
    p.add_argument("--load_files", type=int, default=12, help="files per format for the loading test")
    p.add_argument("--repeats", type=int, default=2, help="passes over the files when loading")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    tmp = tempfile.mkdtemp(prefix="data_speed_")
    try:
        print(f"# data_speed: {args.frame_size}x{args.frame_size}x{args.num_frames} frames, "
              f"numpy {np.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, one process")
        print()
        print("| simulator (1 process) | samples/s | s/sample | samples/s incl. write | mean firing rate |")
        print("|---|---|---|---|---|")
        low = None
        for light in ("normal", "low"):
            sim, total, samples = bench_simulator(light, args.sim_samples, args.frame_size,
                                                  args.num_frames, args.seed, tmp)
            rate = np.mean([s[0].mean() for s in samples])
            print(f"| {light} light, {args.sim_samples} samples | {sim:.2f} | {1 / sim:.2f} | "
                  f"{total:.2f} | {rate:.3f} |")
            if light == "low":
                low = samples

        formats = {"uint8 spk (simulator)": np.uint8, "float32 spk (old seed)": np.float32}
        files = {name: write_load_files(low, args.load_files, os.path.join(tmp, f"load_{i}"), dt)
                 for i, (name, dt) in enumerate(formats.items())}
        print()
        print(f"| UHSRDataset -> 50x224x224 voxel, 1 core, {args.load_files} files x {args.repeats} "
              f"| MB/file | items/s | items/s with_baselines |")
        print("|---|---|---|---|")
        uint8_files = files["uint8 spk (simulator)"]
        cache = os.path.join(tmp, "train.cache")
        t0 = time.perf_counter()
        build_cache(cache, uint8_files, args.num_frames, 10, processes=1)
        build_rate = len(uint8_files) / (time.perf_counter() - t0)
        sources = {**{name: (fl, None) for name, fl in files.items()},
                   f"cache of the uint8 files (decoded at {build_rate:.1f} files/s)": (uint8_files, cache)}
        speed = bench_loading({(name, base): UHSRDataset("", "CIFAR", "train", with_baselines=base,
                                                         files=fl, cache_path=cache_path)
                               for name, (fl, cache_path) in sources.items() for base in (False, True)},
                              args.repeats)
        for name, (fl, cache_path) in sources.items():
            size_mb = (os.path.getsize(cache) if cache_path else sum(map(os.path.getsize, fl))) / len(fl) / 1e6
            print(f"| {name} | {size_mb:.2f} | {speed[name, False]:.1f} | {speed[name, True]:.1f} |")
        u, f, c = list(sources)
        for a, b in ((u, f), (c, u)):
            print(f"| ratio {a.split()[0]} / {b.split()[0]} | | {speed[a, False] / speed[b, False]:.2f}x "
                  f"| {speed[a, True] / speed[b, True]:.2f}x |")
        print()
        print("| DataLoader alone (uint8 files, with_baselines, batch 4) | samples/s | from the cache | ratio |")
        print("|---|---|---|---|")
        for workers in sorted({0, max(1, (os.cpu_count() or 2) - 1), os.cpu_count() or 1}):
            npz = bench_loader(uint8_files, workers, 4, args.repeats)
            cached = bench_loader(uint8_files, workers, 4, args.repeats, cache)
            print(f"| {workers} worker processes | {npz:.1f} | {cached:.1f} | {cached / npz:.2f}x |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
