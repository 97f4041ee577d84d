"""Tests for metrics.py (PSNR, SSIM, pyiqa no-reference IQA) and prepare_iqa_params.py."""
import math
import os

import numpy as np
import pytest
import torch

import metrics
import prepare_iqa_params as prep
from utils import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDS_PNG = os.path.join(ROOT, "..", "shared", "datasets", "reds-base-sample", "203_part2_key_id151.png")
REDS_EXPECTED = {"niqe": 3.2025, "brisque": 25.0112, "piqe": 43.0548}  # SPEC §7, pyiqa 0.1.16


# -----------------------------------------------------------------------------
# PSNR / SSIM

def test_psnr_identical_is_inf_and_known_mse():
    target = torch.rand(3, 1, 16, 16)
    assert torch.isinf(metrics.psnr(target, target)).all()
    pred = target.clone()
    pred[1] = target[1] + 0.1                 # MSE 0.01 -> 20 dB
    pred[2] = target[2] + 0.01                # MSE 1e-4 -> 40 dB
    db = metrics.psnr(pred, target)
    assert db.shape == (3,)
    assert math.isinf(db[0])
    assert db[1].item() == pytest.approx(20.0, abs=1e-4)
    assert db[2].item() == pytest.approx(40.0, abs=1e-3)
    assert metrics.psnr(pred * 255, target * 255, data_range=255.0)[1].item() == pytest.approx(20.0, abs=1e-4)


def test_ssim_identical_is_one_and_constant_images():
    img = torch.rand(2, 3, 20, 24)
    assert torch.allclose(metrics.ssim(img, img), torch.ones(2), atol=1e-6)
    # constant images a and b: zero variances, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.6, 0.01**2
    pred, target = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    assert metrics.ssim(pred, target).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)


def test_ssim_matches_skimage():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 32, 40, generator=g)
    pred = (target + 0.2 * torch.randn(2, 3, 32, 40, generator=g)).clamp(0, 1)
    ours = metrics.ssim(pred, target)
    for i in range(2):
        ref = structural_similarity(pred[i].numpy(), target[i].numpy(), channel_axis=0, data_range=1.0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)


# -----------------------------------------------------------------------------
# BRISQUE model parsing (synthetic libsvm text, no download)

def test_parse_libsvm_model_fills_omitted_features():
    header = "svm_type epsilon_svr\nkernel_type rbf\ngamma 0.05\nnr_class 2\ntotal_sv 774\nrho -153.591\nSV\n"
    rows = [f"{i} " + " ".join(f"{j}:{j / 100}" for j in range(1, 37) if not (i == 5 and j == 7))
            for i in range(774)]
    sv_coef, sv = prep.parse_libsvm_model(header + "\n".join(rows) + "\n")
    assert sv_coef.shape == (774,) and sv.shape == (774, 36)
    assert sv_coef[5] == 5 and sv[5, 6] == 0 and sv[4, 6] == 0.07 and sv[0, 35] == 0.36
    with pytest.raises(prep.PrepareError, match="rho"):
        prep.parse_libsvm_model(header.replace("-153.591", "-1") + "\n".join(rows))


# -----------------------------------------------------------------------------
# no-reference IQA through pyiqa

def test_missing_params_give_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub dir
    with pytest.raises(InputError, match="setup.sh"):
        metrics.NoReferenceIQA("cpu")


@pytest.fixture(scope="module")
def iqa():
    pytest.importorskip("pyiqa")
    problems = [p for p in (prep.check_file(n, path) for n, path in prep.param_paths().items()) if p]
    if problems:
        pytest.skip("IQA parameter files not prepared (run `python prepare_iqa_params.py`): " + "; ".join(problems))
    return metrics.NoReferenceIQA("cpu")


def test_no_reference_iqa_runs_on_96px(iqa):
    g = torch.Generator().manual_seed(0)
    # a smooth gradient plus noise, grey [B=2,1,96,96]; values outside [0,1] get clamped
    ramp = torch.linspace(0, 1, 96)
    grey = (ramp[None, :] * ramp[:, None])[None, None].repeat(2, 1, 1, 1) + 0.05 * torch.randn(2, 1, 96, 96, generator=g)
    scores = iqa(grey)
    assert set(scores) == {"niqe", "brisque", "piqe"}
    for name, s in scores.items():
        assert s.shape == (2,) and s.dtype == torch.float32, name
        assert torch.isfinite(s).all(), f"{name}: {s}"
    # grey and the same image repeated to 3 channels give the same scores
    scores_rgb = iqa(grey.clamp(0, 1).repeat(1, 3, 1, 1))
    for name in scores:
        assert torch.allclose(scores[name], scores_rgb[name]), name
    described = iqa.describe()
    assert "input 96x96" in described["brisque"] and "1x1 blocks" in described["niqe"]
    assert "2x2 blocks" in iqa.describe(224, 224)["niqe"]


@pytest.mark.skipif(not os.path.exists(REDS_PNG), reason="shared REDS sample not present")
def test_reds_check_values(iqa):
    from PIL import Image
    grey = np.asarray(Image.open(REDS_PNG).convert("L"), dtype=np.float32) / 255.0
    scores = iqa(torch.from_numpy(grey)[None, None])
    for name, expected in REDS_EXPECTED.items():
        assert scores[name].item() == pytest.approx(expected, rel=1e-3), name


def test_a_flat_image_scores_nan_instead_of_crashing():
    """NIQE is undefined on a constant image (pyiqa's SVD fails): a network that outputs one
    value must still be evaluated, its no-reference scores NaN, the other images scored."""
    from metrics import NoReferenceIQA
    iqa = NoReferenceIQA("cpu")
    rng = torch.Generator().manual_seed(0)
    images = torch.stack([torch.full((1, 96, 96), 0.04), torch.rand(1, 96, 96, generator=rng)])
    scores = iqa(images)
    for name, s in scores.items():
        assert torch.isnan(s[0]) and torch.isfinite(s[1]), name


def test_linear_skip_is_counted_once_at_mac_cost():
    """The --linear_skip conv reads the analog voxel once per image: MACs, outside the spiking chain."""
    from models import SpikingLRN
    plain, skip = SpikingLRN(time_steps=4), SpikingLRN(time_steps=4, linear_skip=True)
    a, b = metrics.count_macs(plain, (50, 16, 16)), metrics.count_macs(skip, (50, 16, 16))
    assert b["skip_macs"] == 16 * 16 * 1 * 50 * 9 and b["layers"] == a["layers"]
    assert b["total"] == a["total"] + b["skip_macs"]
    ops = metrics.synaptic_ops(skip, (50, 16, 16), [0.1, 0.2, 0.3, 0.4])
    assert ops["layers"][-1]["name"] == "skip" and ops["layers"][-1]["op"] == "MAC"
    assert ops["mac_ops"] == pytest.approx(metrics.synaptic_ops(plain, (50, 16, 16), [0.1, 0.2, 0.3, 0.4])["mac_ops"]
                                           + b["skip_macs"])
