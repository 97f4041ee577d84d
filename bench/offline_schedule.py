"""Does the default three-stage schedule hurt when CLIP has random weights (offline)?

On simulated U-CIFAR made from real CIFAR-10 test images, three runs with the same seed and the
same stage 1: stage 1 alone; the three-stage schedule as train.py runs it offline by default
(CLIP terms off, stages 2 and 3 skipped, their LRN epochs given to stage 1); and the same
schedule forced to keep the random-CLIP class and quality terms (--random_clip_terms).
PSNR/SSIM on the test split.

    python bench/offline_schedule.py --source_dir ../shared/datasets/cifar10-test
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source_dir", default="../shared/datasets/cifar10-test")
    p.add_argument("--work_dir", default="bench_runs/offline_schedule")
    p.add_argument("--light", default="low", choices=["low", "normal"])
    p.add_argument("--epochs", type=int, nargs=3, default=(6, 2, 4), metavar=("COARSE", "PROMPT", "FINE"))
    p.add_argument("--crop_size", type=int, default=48)
    p.add_argument("--recon_target", default="tfi", choices=["tfi", "tfp", "gt"])
    args = p.parse_args()
    data = os.path.join(args.work_dir, f"data_{args.light}")
    generate_synthetic_data.main(["--dataset", "cifar", "--source_dir", args.source_dir, "--light", args.light,
                                  "--num_train", "6", "--num_test", "2", "--frame_size", "64", "--data_root", data])
    results = os.path.abspath(os.path.join(args.work_dir, "results.json"))
    coarse, prompt, fine = (str(e) for e in args.epochs)
    runs = {"stage 1 alone": [coarse, "0", "0"],
            "default schedule, offline (CLIP terms off: stage 1 for coarse+fine epochs)": [coarse, prompt, fine],
            "same schedule with --random_clip_terms": [coarse, prompt, fine, "--random_clip_terms"]}
    rows = []
    for i, (label, (c, pr, f, *extra)) in enumerate(runs.items()):
        name = f"run{i}"
        t0 = time.time()
        exp_root = os.path.join(args.work_dir, "exp")
        if not os.path.exists(os.path.join(exp_root, name, "ckpts", "checkpoint_last.pth")):
            train.main(["--data_root", data, "--exp_root", exp_root, "--exp_name", name, "--crop_size",
                        str(args.crop_size), "--clip_model", "tiny", "--clip_pretrained", "none",
                        "--recon_target", args.recon_target, "--batch_size", "8", "--lr", "1e-3",
                        "--num_workers", "0", "--epochs_coarse", c, "--epochs_prompt", pr, "--epochs_fine", f, *extra])
        seconds = time.time() - t0
        evaluate.main(["--checkpoint", os.path.join(exp_root, name, "ckpts", "checkpoint_best.pth"),
                       "--data_root", data, "--exp_root", exp_root, "--results_file", results, "--num_workers", "0"])
        with open(results) as fh:
            m = json.load(fh)["runs"][-1]["metrics"]
        rows.append((label, m["snn"]["psnr"], m["snn"]["ssim"], seconds))
        baselines = (m["tfp"]["psnr"], m["tfi"]["psnr"])
    print(f"\n# offline_schedule: U-CIFAR ({args.light} light) from {args.source_dir}, 6/2 images per class, "
          f"crop {args.crop_size}, target {args.recon_target}, epochs {'/'.join(map(str, args.epochs))}, "
          f"tiny CLIP with random weights; test PSNR of TFP {baselines[0]:.2f} / TFI {baselines[1]:.2f} dB")
    print("| run | PSNR dB | SSIM | vs stage 1 alone | train s |")
    print("|---|---|---|---|---|")
    for label, psnr, ssim, s in rows:
        print(f"| {label} | {psnr:.2f} | {ssim:.4f} | {psnr - rows[0][1]:+.2f} dB | {s:.0f} |")


if __name__ == "__main__":
    main()
