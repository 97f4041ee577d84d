"""train.py --recon_target teacher: a frozen trained reconstructor (ours or the original SpikeCLIP
LRN) as the L1 target; distillation lowers the student-teacher L1; the teacher is recorded."""
import json

import pytest
import torch
import torch.nn.functional as F

import generate_synthetic_data
import train
from dataset import UHSR_BINS, UHSRDataset
from models import (CHECKPOINT_FORMAT, ORIGINAL_NAME, CheckpointError, PlainLRN, SpikingLRN, load_checkpoint,
                    model_from_checkpoint)
from test_original_lrn import save_original

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = ["--crop_size", "32", "--clip_model", "tiny", "--clip_pretrained", "none", "--num_workers", "0",
        "--batch_size", "4", "--time_steps", "2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_data")
    generate_synthetic_data.main(["--num_train", "2", "--num_test", "0", "--frame_size", "40",
                                  "--data_root", str(root), "--workers", "1", "--light", "normal"])
    return str(root)


def student_teacher_l1(student, teacher, data_root, files):
    """Mean |student - teacher| over `files` of the training split, measured here, not by train.py."""
    dataset = UHSRDataset(data_root, "CIFAR", "train", crop_size=32)
    voxel = torch.stack([dataset[i]["voxel"] for i in files]).float()
    with torch.no_grad():
        return float(F.l1_loss(student.eval()(voxel), teacher.eval()(voxel)))


def test_distillation_from_the_original_lrn_lowers_the_student_teacher_l1(tmp_path, data_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher_path = tmp_path / "LRN_CALTECH.pth"
    save_original(teacher_path)
    epochs = 4
    assert train.main(["--data_root", data_root, "--exp_root", str(tmp_path / "exp"), "--exp_name", "distil",
                       *TINY, "--recon_target", "teacher", "--teacher", str(teacher_path), "--lr", "3e-3",
                       "--clip_weight", "0", "--epochs_coarse", str(epochs), "--epochs_prompt", "0",
                       "--epochs_fine", "0"]) == 0
    run_dir = tmp_path / "exp" / "distil"
    ckpt = load_checkpoint(str(run_dir / "ckpts" / "checkpoint_last.pth"))
    student = model_from_checkpoint(ckpt, "last")
    teacher = model_from_checkpoint(load_checkpoint(str(teacher_path)), str(teacher_path))
    val = train.split_files(UHSRDataset(data_root, "CIFAR", "train").files, 0.1, 0)[1]
    # with --clip_weight 0 the validation score is recon_weight x L1(student, teacher) on the val files
    val_l1 = [h["val_score"] / 1.5 for h in ckpt["history"]]
    assert len(val_l1) == epochs
    assert val_l1[-1] < 0.5 * val_l1[0], f"student-teacher L1 did not fall: {val_l1}"
    final = student_teacher_l1(student, teacher, data_root, val)
    assert final == pytest.approx(val_l1[-1], rel=1e-3)      # what train.py minimised is that L1
    torch.manual_seed(123)
    untrained = SpikingLRN(UHSR_BINS, time_steps=2)
    assert final < 0.4 * student_teacher_l1(untrained, teacher, data_root, val)
    # the teacher is recorded in opt.json, the checkpoint and the results record
    opt = json.loads((run_dir / "opt.json").read_text())
    record = json.loads((tmp_path / "experiment_results.json").read_text())["runs"][-1]
    for identity in (opt["teacher"], ckpt["teacher"], record["train"]["teacher"]):
        assert identity["checkpoint"] == str(teacher_path) and identity["model"] == ORIGINAL_NAME
        assert identity["sha256"] == load_checkpoint(str(teacher_path))["source"]["sha256"]
    assert opt["opt"]["recon_target"] == "teacher" and record["train"]["recon_target"] == "teacher"


def test_our_checkpoint_as_teacher_of_a_temporal_student(tmp_path):
    """A direct 50-bin teacher receives the temporal student's T*50 bins summed back to 50."""
    torch.manual_seed(0)
    net = PlainLRN(UHSR_BINS)
    path = tmp_path / "ann.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model_config": net.config(),
                "model": net.state_dict(), "opt": {"exp_name": "ann_run"}}, path)
    teacher = train.Teacher(str(path), student_bins=4 * UHSR_BINS, device="cpu")
    assert teacher.identity["model"] == "ANN (plain-CNN LRN)" and teacher.identity["run"] == "ann_run"
    assert not any(p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training
    # 200 frames, 1 frame per temporal bin; the direct voxel, written by hand: 4 frames per bin.
    # Pixel (0, 0) fires on frames 0-3 -> direct bin 0 holds 4; pixel (5, 7) on frames 1, 2 and
    # 199 -> bin 0 holds 2, bin 49 holds 1; pixel (11, 11) on every 8th frame -> even bins 1.
    temporal = torch.zeros(1, 4 * UHSR_BINS, 12, 12)
    temporal[0, 0:4, 0, 0] = 1
    temporal[0, [1, 2, 199], 5, 7] = 1
    temporal[0, 0::8, 11, 11] = 1
    direct = torch.zeros(1, UHSR_BINS, 12, 12)
    direct[0, 0, 0, 0] = 4
    direct[0, 0, 5, 7], direct[0, 49, 5, 7] = 2, 1
    direct[0, 0::2, 11, 11] = 1
    with torch.no_grad():
        assert torch.allclose(teacher(temporal), net.eval()(direct), atol=1e-6)
        assert not torch.allclose(teacher(temporal), net(direct.roll(1, dims=1)), atol=1e-6)   # bins matter
    out = teacher(temporal.requires_grad_())
    assert not out.requires_grad                                             # no graph through the teacher
    snn = SpikingLRN(UHSR_BINS, time_steps=4, encoding="temporal")
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model_config": snn.config(),
                "model": snn.state_dict()}, tmp_path / "temporal.pth")
    with pytest.raises(CheckpointError, match="200-bin voxel"):
        train.Teacher(str(tmp_path / "temporal.pth"), student_bins=UHSR_BINS, device="cpu")


def test_teacher_flags_go_together(tmp_path):
    with pytest.raises(SystemExit) as e:
        train.get_args(["--recon_target", "teacher"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        train.get_args(["--teacher", str(tmp_path / "t.pth")])
