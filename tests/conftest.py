"""Shared test set-up: import the top-level scripts as modules, never touch a model hub, and the
tiny simulated data and trained run that several test files use."""
import os
import sys

import pytest

# A missing CLIP/IQA download must fail at once instead of hanging on a dead network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# train.py options of every tiny run: 32-px crop, T=2, the tiny CLIP with random weights and every
# loss term kept (--random_clip_terms), no loader processes
TINY_TRAIN = ["--crop_size", "32", "--clip_model", "tiny", "--clip_pretrained", "none", "--num_workers", "0",
              "--batch_size", "4", "--time_steps", "2", "--random_clip_terms"]


def photo_folder(root, size, per_class=3):
    """A --simulate_from folder: random-noise photos of size x size, per_class of each of the
    first two U-CIFAR classes, named <k>.jpg -> its path."""
    import numpy as np
    from PIL import Image
    from dataset import UCIFAR_CLASSES
    rng = np.random.default_rng(0)
    for name in UCIFAR_CLASSES[:2]:
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / name / f"{k}.jpg")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Simulated U-CIFAR: 2 train + 1 test streams per class, 100x100 frames (a 96-px crop
    gives NIQE one block), normal light -> the data root."""
    import generate_synthetic_data
    root = tmp_path_factory.mktemp("data")
    generate_synthetic_data.main(["--num_train", "2", "--num_test", "1", "--frame_size", "100",
                                  "--data_root", str(root), "--workers", "1", "--light", "normal"])
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """A three-stage run on tiny_data (one epoch a stage, TINY_TRAIN options), named 'tinyrun'
    -> {"root": its working folder, "data": tiny_data, "ckpt": checkpoint_best.pth}."""
    import train
    root = tmp_path_factory.mktemp("tinyrun")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)   # train.py writes experiment_results.json into the cwd
        assert train.main(["--data_root", str(tiny_data), "--exp_root", str(root / "exp"),
                           "--exp_name", "tinyrun", "--epochs", "3", *TINY_TRAIN,
                           # a fitted linear image: a 2-epoch SNN alone can output one constant
                           # value, on which the no-reference metrics are undefined
                           "--linear_skip"]) == 0
    ckpt = root / "exp" / "tinyrun" / "ckpts" / "checkpoint_best.pth"
    assert ckpt.is_file()
    return {"root": root, "data": tiny_data, "ckpt": str(ckpt)}
