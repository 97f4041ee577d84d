"""
Image-quality metrics (SPEC §7).
- Full-reference: psnr, ssim on images in [0,1], one value per image.
- No-reference: NoReferenceIQA, pyiqa's NIQE / BRISQUE / PIQE (lower is better for all three).
"""

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# full-reference


def psnr(pred, target, data_range=1.0):
    """pred, target [B,C,H,W] -> PSNR in dB [B] (inf where the images are identical)."""
    mse_per_image = (pred.double() - target.double()).pow(2).flatten(1).mean(dim=1)
    return (10 * torch.log10(data_range**2 / mse_per_image)).to(pred.dtype)


def _gaussian_window_1d(size=11, sigma=1.5):
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x**2 / (2 * sigma**2))
    return w / w.sum()


def ssim(pred, target, data_range=1.0):
    """pred, target [B,C,H,W] -> SSIM [B] (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5,
    K1 0.01, K2 0.03, population (not sample) covariances, computed per channel and averaged.
    Like skimage's structural_similarity(gaussian_weights=True, use_sample_covariance=False), the map
    is averaged only where the window fits inside the image (a 'valid' convolution, no padding)."""
    B, C, H, W = pred.shape
    assert H >= 11 and W >= 11, "SSIM with an 11x11 window needs images of at least 11x11"
    x, y = pred.double(), target.double()
    w = _gaussian_window_1d().to(x.device)
    # separable blur of every channel on its own: [B*C,1,H,W] -> [B*C,1,H-10,W-10]
    def blur(img):
        img = img.reshape(B * C, 1, H, W)
        img = F.conv2d(img, w.view(1, 1, 11, 1))
        return F.conv2d(img, w.view(1, 1, 1, 11))
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(B, C, -1).mean(dim=2).mean(dim=1).to(pred.dtype)


# -----------------------------------------------------------------------------
# no-reference, through pyiqa


class NoReferenceIQA:
    """pyiqa's NIQE / BRISQUE / PIQE on images [B,1 or 3,H,W] in [0,1]; returns name -> scores [B].

    The NIQE and BRISQUE parameter files are checked (present, expected SHA-256) and handed to pyiqa
    by explicit path, so pyiqa never tries a download; prepare them with `bash setup.sh` or
    `python prepare_iqa_params.py`."""

    VARIANTS = {
        "niqe": "LIVE pristine params, 96-px blocks",
        "brisque": "LIVE SVM, 'original' version",
        "piqe": "no params, 16-px blocks",
    }

    def __init__(self, device, names=("niqe", "brisque", "piqe"), dtype=torch.float32):
        import prepare_iqa_params as prep
        self.names = tuple(names)
        # pyiqa computes BRISQUE (and PIQE) in the input's dtype. float32 is pyiqa's default and what the
        # SPEC check values were measured with, but its BRISQUE then moves by up to ~3e-4 relative with
        # batch composition and thread count (a table look-up by argmin amplifies rounding); float64 is
        # stable to ~1e-12 and differs from float32 by ~1e-4 relative (REDS check image: BRISQUE 25.0140
        # vs 25.0112). NIQE always runs in float64 inside pyiqa.
        self.dtype = dtype
        unknown = set(self.names) - set(self.VARIANTS)
        if unknown:
            raise ValueError(f"unknown no-reference metrics {sorted(unknown)}; known: {sorted(self.VARIANTS)}")
        param_paths = prep.param_paths()
        problems = [prep.check_file(n, param_paths[n]) for n in self.names if n in param_paths]
        problems = [p for p in problems if p]
        if problems:
            raise FileNotFoundError(
                "pyiqa parameter files not ready (" + "; ".join(problems) + "). "
                "Run `bash setup.sh` or `python prepare_iqa_params.py` first.")
        import pyiqa
        self.pyiqa_version = pyiqa.__version__
        self.device = torch.device(device)
        self.metrics = {}
        for name in self.names:
            extra = {"pretrained_model_path": param_paths[name]} if name in param_paths else {}
            self.metrics[name] = pyiqa.create_metric(name, as_loss=False, device=self.device, **extra)
        self.input_hw = None  # (H, W) of the last batch scored, for describe()

    @torch.no_grad()
    def __call__(self, images):
        """images [B,1 or 3,H,W] in [0,1] (clamped) -> {name: scores [B] float32 on the CPU}."""
        assert images.dim() == 4 and images.shape[1] in (1, 3), f"expected [B,1|3,H,W], got {tuple(images.shape)}"
        images = images.to(self.dtype).clamp(0, 1).to(self.device)
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)  # pyiqa is meant to get 3 channels (SPEC §7)
        self.input_hw = tuple(images.shape[2:])
        B = images.shape[0]
        # NIQE squeezes its output to a 0-d tensor when B == 1, hence the reshape
        return {name: metric(images).reshape(B).float().cpu() for name, metric in self.metrics.items()}

    def describe(self, height=None, width=None):
        """name -> one line naming the variant and the input size (default: the last batch scored)."""
        if height is None and self.input_hw is not None:
            height, width = self.input_hw
        out = {}
        for name in self.names:
            text = f"{name} (pyiqa {self.pyiqa_version}, {self.VARIANTS[name]}"
            if self.dtype != torch.float32:
                text += f", {str(self.dtype).replace('torch.', '')} input"
            if height is not None:
                text += f"; input {height}x{width}"
                if name == "niqe":  # NIQE drops the remainder past a multiple of 96 px
                    text += f" -> {height // 96}x{width // 96} blocks"
            out[name] = text + ")"
        return out
