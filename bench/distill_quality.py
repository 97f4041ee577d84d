"""Distilling the SNN from a trained ANN (train.py --recon_target teacher) against training it
from gt or TFI, on the data of the quality benchmark (bench/train_quality.py): simulated U-CIFAR
made from real CIFAR-10 test images, T=4 direct encoding, scored on its 64x64 test crop. To fit
a busy 2-core CPU the networks train on the central 32x32 (they are fully convolutional).

1. the teacher: the plain-CNN LRN (--arch ann) trained on gt;
2. three SNNs with the same schedule, from the teacher's output, from gt, from TFI;
3. evaluate.py on the test split: PSNR/SSIM of each network next to TFP/TFI.
Coarse stage only with --clip_weight 0 (as the quality benchmark's rows): with the tiny random
CLIP of a machine without hub access the CLIP terms carry no meaning. Each training is timed
(wall and process CPU seconds; --num_workers 0 keeps the data loading in the timed process).
Finished runs are reused, with the times recorded when they ran.

    python bench/distill_quality.py --source_dir ../shared/datasets/cifar10-test
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
from utils import atomic_write_json  # noqa: E402


def get_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source_dir", default="../shared/datasets/cifar10-test", help="ImageFolder of CIFAR-10 images")
    p.add_argument("--work_dir", default="bench_runs/distill_quality", help="data, runs and results go here")
    p.add_argument("--light", default="low", choices=["low", "normal"])
    p.add_argument("--num_train", type=int, default=6, help="training images per class")
    p.add_argument("--num_test", type=int, default=2, help="test images per class")
    p.add_argument("--frame_size", type=int, default=80)
    p.add_argument("--crop_size", type=int, default=64, help="evaluation crop (the quality benchmark's)")
    p.add_argument("--train_crop", type=int, default=32, help="training crop")
    p.add_argument("--teacher_epochs", type=int, default=30, help="coarse epochs of the ANN teacher")
    p.add_argument("--epochs", type=int, default=12, help="coarse epochs of each SNN")
    p.add_argument("--students", default="teacher,gt,tfi", help="recon targets of the SNNs")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--time_steps", type=int, default=4)
    return p.parse_args()


def timed_train(args, data, name, extra, timings):
    """train.py coarse stage only -> its best checkpoint; the times are kept in `timings`."""
    exp_root = os.path.join(args.work_dir, "exp")
    ckpt = os.path.join(exp_root, name, "ckpts", "checkpoint_best.pth")
    if name in timings and os.path.exists(ckpt):
        print(f"{name}: reusing the finished run")
        return ckpt
    wall, cpu = time.perf_counter(), time.process_time()
    code = train.main(["--data_root", data, "--exp_root", exp_root, "--exp_name", name,
                       "--crop_size", str(args.train_crop), "--epochs_prompt", "0", "--epochs_fine", "0",
                       "--batch_size", str(args.batch_size), "--lr", str(args.lr), "--clip_weight", "0",
                       "--clip_model", "tiny", "--clip_pretrained", "none", "--num_workers", "0", *extra])
    if code != 0:
        raise SystemExit(f"train.py failed for {name}")
    timings[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    atomic_write_json(timings, os.path.join(args.work_dir, "timings.json"))
    return ckpt


def psnr_ssim(args, data, ckpt, results_file):
    """evaluate.py on the test split -> the record's metrics {method: {psnr, ssim, ...}}."""
    if evaluate.main(["--checkpoint", ckpt, "--data_root", data, "--exp_root", os.path.join(args.work_dir, "exp"),
                      "--crop_size", str(args.crop_size), "--results_file", results_file, "--num_workers", "0"]) != 0:
        raise SystemExit(f"evaluate.py failed for {ckpt}")
    with open(results_file) as f:
        return json.load(f)["runs"][-1]["metrics"]


def main():
    args = get_args()
    os.makedirs(args.work_dir, exist_ok=True)
    timings_path = os.path.join(args.work_dir, "timings.json")
    timings = json.load(open(timings_path)) if os.path.exists(timings_path) else {}
    results_file = os.path.abspath(os.path.join(args.work_dir, "results.json"))
    data = os.path.join(args.work_dir, f"data_{args.light}")
    generate_synthetic_data.main(["--dataset", "cifar", "--source_dir", args.source_dir, "--light", args.light,
                                  "--num_train", str(args.num_train), "--num_test", str(args.num_test),
                                  "--frame_size", str(args.frame_size), "--data_root", data])

    teacher = timed_train(args, data, "ann_gt", ["--arch", "ann", "--recon_target", "gt",
                                                 "--epochs_coarse", str(args.teacher_epochs)], timings)
    rows = [("ANN (teacher)", "gt", "ann_gt", psnr_ssim(args, data, teacher, results_file))]
    for target in args.students.split(","):
        extra = ["--recon_target", target] + (["--teacher", teacher] if target == "teacher" else [])
        name = f"snn_{target}"
        ckpt = timed_train(args, data, name, extra + ["--time_steps", str(args.time_steps),
                                                      "--epochs_coarse", str(args.epochs)], timings)
        rows.append(("SNN", "ANN teacher" if target == "teacher" else target, name,
                     psnr_ssim(args, data, ckpt, results_file)))

    base = rows[0][3]
    print(f"\n# distill_quality: {args.light} light, {args.num_train}/{args.num_test} images per class, "
          f"frames {args.frame_size}, train crop {args.train_crop}, test crop {args.crop_size}, T={args.time_steps}, "
          f"coarse epochs: teacher "
          f"{args.teacher_epochs}, SNNs {args.epochs}; batch {args.batch_size}, lr {args.lr}, CLIP weight 0")
    print("| method | target | PSNR dB | SSIM | train wall s | train CPU s | CPU s vs SNN from gt |")
    print("|---|---|---|---|---|---|---|")
    for m in ("tfp", "tfi"):
        print(f"| {m.upper()} | — | {base[m]['psnr']:.2f} | {base[m]['ssim']:.3f} | — | — | — |")
    gt_cpu = timings.get("snn_gt", {}).get("cpu_s")
    for method, target, name, metrics in rows:
        arch = "ann" if name.startswith("ann") else "snn"
        t = timings[name]
        ratio = f"{t['cpu_s'] / gt_cpu:.2f}×" if gt_cpu and arch == "snn" else "—"
        print(f"| {method} | {target} | {metrics[arch]['psnr']:.2f} | {metrics[arch]['ssim']:.3f} | "
              f"{t['wall_s']:.0f} | {t['cpu_s']:.0f} | {ratio} |")
    if "snn_teacher" in timings:
        total = timings["snn_teacher"]["cpu_s"] + timings["ann_gt"]["cpu_s"]
        print(f"teacher + distilled student: {total:.0f} CPU s"
              + (f" ({total / gt_cpu:.2f}× the SNN from gt)" if gt_cpu else ""))


if __name__ == "__main__":
    main()
