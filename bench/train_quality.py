"""Reconstruction quality after training, against ground truth, on simulated U-CIFAR made from
real CIFAR-10 test images (../shared/datasets/cifar10-test), in normal and low light.

For each light regime: TFP and TFI (no training), then the SNN and the plain-CNN LRN (`--arch
ann`) trained with train.py's three stages for `--recon_target tfi` (no ground truth used) and
`gt` (supervised upper bound); PSNR/SSIM on the test split via evaluate.py. Sized for a 2-core
CPU: small frames and crop (the networks are fully convolutional), the tiny CLIP with random
weights (CLIP terms are then not semantic; they are part of the schedule, not of this figure).

    python bench/train_quality.py --source_dir ../shared/datasets/cifar10-test
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate  # noqa: E402
import generate_synthetic_data  # noqa: E402
import train  # noqa: E402


def get_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source_dir", default="../shared/datasets/cifar10-test", help="ImageFolder of CIFAR-10 images")
    p.add_argument("--work_dir", default="bench_runs/train_quality", help="data, runs and results go here")
    p.add_argument("--lights", default="normal,low")
    p.add_argument("--configs", default="snn:tfi,snn:gt,ann:tfi,ann:gt", help="arch:recon_target list")
    p.add_argument("--num_train", type=int, default=6, help="training images per class")
    p.add_argument("--num_test", type=int, default=4, help="test images per class")
    p.add_argument("--frame_size", type=int, default=80)
    p.add_argument("--crop_size", type=int, default=64)
    p.add_argument("--epochs_coarse", type=int, default=30)
    p.add_argument("--epochs_prompt", type=int, default=1)
    p.add_argument("--epochs_fine", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--time_steps", type=int, default=4)
    p.add_argument("--clip_model", default="tiny")
    p.add_argument("--clip_pretrained", default="none")
    return p.parse_args()


def main():
    args = get_args()
    os.makedirs(args.work_dir, exist_ok=True)
    results_file = os.path.abspath(os.path.join(args.work_dir, "results.json"))
    table = []
    for light in args.lights.split(","):
        data = os.path.join(args.work_dir, f"data_{light}")
        generate_synthetic_data.main(["--dataset", "cifar", "--source_dir", args.source_dir, "--light", light,
                                      "--num_train", str(args.num_train), "--num_test", str(args.num_test),
                                      "--frame_size", str(args.frame_size), "--data_root", data])
        baselines = None
        for config in args.configs.split(","):
            arch, target = config.split(":")
            name = f"{light}_{arch}_{target}"
            run_dir = os.path.join(args.work_dir, "exp", name)
            common = ["--data_root", data, "--exp_root", os.path.join(args.work_dir, "exp"), "--exp_name", name]
            t0 = time.time()
            if not os.path.exists(os.path.join(run_dir, "ckpts", "checkpoint_last.pth")):
                train.main(common + ["--arch", arch, "--recon_target", target, "--crop_size", str(args.crop_size),
                                     "--epochs_coarse", str(args.epochs_coarse), "--epochs_prompt", str(args.epochs_prompt),
                                     "--epochs_fine", str(args.epochs_fine), "--batch_size", str(args.batch_size),
                                     "--lr", str(args.lr), "--time_steps", str(args.time_steps),
                                     "--clip_model", args.clip_model, "--clip_pretrained", args.clip_pretrained,
                                     "--num_workers", "1"])
            train_s = time.time() - t0
            evaluate.main(["--checkpoint", os.path.join(run_dir, "ckpts", "checkpoint_best.pth"), "--data_root", data,
                           "--exp_root", os.path.join(args.work_dir, "exp"), "--results_file", results_file,
                           "--num_workers", "1"])
            with open(results_file) as f:
                record = json.load(f)["runs"][-1]
            metrics = record["metrics"]
            if baselines is None:
                baselines = {m: metrics[m] for m in ("tfp", "tfi")}
                for m in ("tfp", "tfi"):
                    table.append((light, m.upper(), "—", metrics[m]["psnr"], metrics[m]["ssim"], None))
            n_train = args.num_train * 10 * 0.9 * (args.epochs_coarse + args.epochs_prompt + args.epochs_fine)
            table.append((light, arch.upper(), target, metrics[arch]["psnr"], metrics[arch]["ssim"],
                          n_train / train_s if train_s > 5 else None))
    print(f"\n# train_quality: {args.num_train}/{args.num_test} images per class, frames {args.frame_size}, "
          f"crop {args.crop_size}, T={args.time_steps}, epochs {args.epochs_coarse}/{args.epochs_prompt}/"
          f"{args.epochs_fine}, CLIP {args.clip_model} ({args.clip_pretrained})")
    print("| light | method | recon target | PSNR dB | SSIM | train samples/s (all stages, incl. val) |")
    print("|---|---|---|---|---|---|")
    for light, method, target, p, s, speed in table:
        print(f"| {light} | {method} | {target} | {p:.2f} | {s:.4f} | {speed:.2f} |" if speed else
              f"| {light} | {method} | {target} | {p:.2f} | {s:.4f} | — |")
    for light in args.lights.split(","):
        rows = [r for r in table if r[0] == light]
        best_baseline = max(r[3] for r in rows if r[1] in ("TFP", "TFI"))
        for r in rows:
            if r[1] == "SNN":
                print(f"{light}: SNN ({r[2]}) - best of TFP/TFI = {r[3] - best_baseline:+.2f} dB")


if __name__ == "__main__":
    main()
