"""The decoded training cache (dataset.SpikeCache, UHSRDataset(cache_path=...), train.py --cache):
same items as the .npz files, rebuilt when stale or damaged, refused when a record is corrupt."""
import os
import pickle

import numpy as np
import pytest
import torch

import dataset
from dataset import CacheError, SpikeDataError


def write_sample(folder, index, frames=12, size=(10, 10), label=None, gt=True, seed=None, lens_px=None):
    """<folder>/<index>.npz with random spikes; gt (uint8) and the lens blur when asked."""
    rng = np.random.default_rng(index if seed is None else seed)
    arrays = {"spk": (rng.random((frames, *size)) < 0.3).astype(np.uint8),
              "label": np.int64(index % 10 if label is None else label),
              "label_name": np.str_(f"{index}.png")}
    if gt:
        arrays["gt"] = rng.integers(0, 256, size, dtype=np.uint8)
    if lens_px is not None:
        arrays["lens_px"] = np.float32(lens_px)
    path = os.path.join(folder, f"{index}.npz")
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def split(tmp_path):
    """data root with U-CIFAR/train: 5 samples of 12 frames, 10x10, gt on the even ones, the
    lens blur on the first three."""
    folder = tmp_path / "U-CIFAR" / "train"
    folder.mkdir(parents=True)
    for i in range(5):
        write_sample(folder, i, gt=i % 2 == 0, lens_px=0.3 + 0.1 * i if i < 3 else None)
    return tmp_path


def make_ds(root, cache=True, **kw):
    cache_path = dataset.default_cache_path(str(root), "CIFAR", "train") if cache else None
    kw = {"bins": 4, "num_frames": 8, "crop_size": 8, "with_baselines": True, "cache_path": cache_path, **kw}
    return dataset.UHSRDataset(str(root), "CIFAR", "train", **kw)


def assert_same_items(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape, key
                torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, equal_nan=True,
                                           msg=f"item {i}: {key} differs")
            else:
                assert x[key] == y[key], f"item {i}: {key} differs"


@pytest.mark.parametrize("frames", [1, 8, 9, 12, 24, 200])
def test_pack_frames_and_voxelize_packed(frames):
    spk = (np.random.default_rng(frames).random((frames, 5, 7)) < 0.4).astype(np.uint8)
    packed = dataset.pack_frames(spk)
    np.testing.assert_array_equal(packed, np.packbits(spk, axis=0, bitorder="little"))
    for bins in [b for b in range(1, frames + 1) if frames % b == 0]:   # 1..8 frames per bin and more
        np.testing.assert_array_equal(dataset.voxelize_packed(packed, bins, frames),
                                      dataset.voxelize(spk, bins, np.uint8), err_msg=f"{bins} bins")


@pytest.mark.parametrize("kw", [
    {},                                                        # 4 bins of 2 frames, centre window
    {"bins": 8},                                               # one bin per frame (temporal encoding)
    {"with_baselines": False},
    {"bins": 3, "num_frames": 9, "crop_size": 7},              # 9 frames x 100 px: not whole bytes
    {"num_frames": 12, "bins": 12, "crop_size": 10},           # every frame, no crop
])
def test_cached_items_identical_to_uncached(split, kw):
    cached = make_ds(split, **kw)
    assert cached.cache is not None and os.path.isfile(cached.cache.path)
    assert_same_items(cached, make_ds(split, cache=False, **kw))


def test_cached_uhsr_size_sample(tmp_path):
    """A full UHSR-size sample (200 frames of 250x250, 224 crop, 50 bins, UHSR's own dtype)."""
    folder = tmp_path / "U-CALTECH" / "train"
    folder.mkdir(parents=True)
    write_sample(folder, 0, frames=200, size=(250, 250), label=100)
    kw = {"with_baselines": True}
    path = str(tmp_path / "c.cache")
    cached = dataset.UHSRDataset(str(tmp_path), "CALTECH", "train", cache_path=path, **kw)
    plain = dataset.UHSRDataset(str(tmp_path), "CALTECH", "train", **kw)
    assert_same_items(cached, plain)
    assert cached[0]["voxel"].shape == (50, 224, 224) and cached[0]["class_name"] == "background"
    # about 1.75 MB per sample: packed frames + uint16 intervals + uint8 gt
    assert os.path.getsize(path) > 200 * 250 * 250 // 8 + 3 * 250 * 250


def test_cache_is_reused_not_rebuilt(split, capsys):
    first = make_ds(split)
    assert "no cache yet" in capsys.readouterr().out
    stamp = os.stat(first.cache.path).st_mtime_ns
    second = make_ds(split, bins=8, crop_size=6)       # bins and crop do not matter to the cache
    assert capsys.readouterr().out == ""
    assert os.stat(second.cache.path).st_mtime_ns == stamp
    assert_same_items(second, make_ds(split, cache=False, bins=8, crop_size=6))


def test_parallel_and_serial_builds_write_the_same_file(split, tmp_path):
    files = make_ds(split, cache=False).files
    a, b = str(tmp_path / "a.cache"), str(tmp_path / "b.cache")
    dataset.build_cache(a, files, 8, 10, processes=1)
    dataset.build_cache(b, files, 8, 10, processes=2)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


# ----------------------------------------------------------------------------------------------
# stale caches are rebuilt

def test_changed_file_makes_the_cache_stale(split, capsys):
    make_ds(split)
    folder = split / "U-CIFAR" / "train"
    path = write_sample(folder, 3, seed=99)                   # new content for 3.npz
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # even within the clock's resolution
    capsys.readouterr()
    ds = make_ds(split)
    out = capsys.readouterr().out
    assert "stale: 1 of 5 files changed" in out and "3.npz" in out
    assert_same_items(ds, make_ds(split, cache=False))
    spk = np.load(path)["spk"]
    np.testing.assert_array_equal(ds[3]["voxel"].numpy(), dataset.voxelize(spk[2:10, 1:9, 1:9], 4))


def test_added_file_makes_the_cache_stale(split, capsys):
    make_ds(split)
    write_sample(split / "U-CIFAR" / "train", 7)
    capsys.readouterr()
    ds = make_ds(split)
    assert "stale: 1 of 6 files are not in it (first: train/7.npz)" in capsys.readouterr().out
    assert len(ds) == 6
    assert_same_items(ds, make_ds(split, cache=False))


def test_part_of_the_split_reads_the_split_cache(split, capsys):
    """train.py's training subset (and a split that lost a file) reads the records it needs."""
    full = make_ds(split)
    capsys.readouterr()
    part = make_ds(split, cache=False).files[3:0:-1]                  # 3, 2, 1
    cached = dataset.UHSRDataset(str(split), "CIFAR", "train", bins=4, num_frames=8, crop_size=8,
                                 with_baselines=True, files=part, cache_path=full.cache.path)
    assert capsys.readouterr().out == ""                               # not rebuilt
    assert cached.cache.record_of == [3, 2, 1]
    plain = dataset.UHSRDataset(str(split), "CIFAR", "train", bins=4, num_frames=8, crop_size=8,
                                with_baselines=True, files=part)
    assert_same_items(cached, plain)
    os.remove(split / "U-CIFAR" / "train" / "2.npz")
    ds = make_ds(split)
    assert capsys.readouterr().out == "" and len(ds) == 4
    assert_same_items(ds, make_ds(split, cache=False))


def test_augmented_views_identical_to_uncached(split):
    """Random crop, flip and rotation of the packed frames, intervals and gt from the cache give
    the items random_view gives on the .npz spikes, for the same torch RNG state."""
    kw = {"augment": True, "crop_size": 6}
    cached, plain = make_ds(split, **kw), make_ds(split, cache=False, **kw)
    for seed in range(6):
        torch.manual_seed(seed)
        a = [cached[i] for i in range(len(cached))]
        torch.manual_seed(seed)
        b = [plain[i] for i in range(len(plain))]
        assert_same_items(a, b)


def test_cache_for_other_settings_is_rebuilt(split, capsys):
    make_ds(split)                                            # 8-frame window
    capsys.readouterr()
    ds = make_ds(split, num_frames=12, bins=4)
    assert "num_frames 8" in capsys.readouterr().out
    assert_same_items(ds, make_ds(split, cache=False, num_frames=12, bins=4))


# ----------------------------------------------------------------------------------------------
# damaged caches of ours are rebuilt when opened; a file that is not a cache is never replaced

def _damage(path, how):
    data = bytearray(open(path, "rb").read())
    if how == "truncated":
        data = data[:len(data) // 2]
    elif how == "footer byte":
        i = data.rindex(b'"labels"') + 12                     # inside the label list
        data[i] ^= 0x01
    elif how == "extra bytes":
        data = data[:100] + b"\0" + data[100:]
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "footer byte", "extra bytes"])
def test_damaged_cache_is_rebuilt(split, capsys, how):
    path = make_ds(split).cache.path
    _damage(path, how)
    capsys.readouterr()
    with pytest.raises(CacheError, match="damaged|not a spike cache"):
        dataset.SpikeCache(path, make_ds(split, cache=False).files, 8, 10)
    ds = make_ds(split)
    assert "building it" in capsys.readouterr().out
    assert_same_items(ds, make_ds(split, cache=False))


def test_corrupt_record_is_found_when_the_cache_is_opened(split, capsys):
    """Not mid-epoch: opening checks every record it will serve, names the cache and the
    sample's file, and the dataset rebuilds its own cache."""
    ds = make_ds(split)
    path = ds.cache.path
    with open(path, "r+b") as f:                               # flip one spike bit of record 2
        f.seek(len(dataset.CACHE_MAGIC) + 3 * ds.cache.record_bytes - 1)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))
    files = make_ds(split, cache=False).files
    dataset.SpikeCache(path, files[3:], 8, 10)                 # records it does not serve: not read
    with pytest.raises(CacheError) as exc:
        dataset.SpikeCache(path, files, 8, 10)
    assert path in str(exc.value) and "2.npz" in str(exc.value) and "checksum" in str(exc.value)
    capsys.readouterr()
    ds = make_ds(split)
    assert "fails its checksum" in capsys.readouterr().out
    assert_same_items(ds, make_ds(split, cache=False))


@pytest.mark.parametrize("what", ["npz", "png", "empty", "text", "folder"])
def test_a_file_that_is_not_a_cache_is_refused_and_kept(split, tmp_path, what):
    """--cache FILE naming a training file, an image, any file not ours: never rebuilt over."""
    target = tmp_path / f"precious.{what}"
    if what == "npz":
        target = split / "U-CIFAR" / "train" / "1.npz"
    elif what == "png":
        from PIL import Image
        Image.new("L", (8, 8), 7).save(target)
    elif what == "text":
        target.write_text("not a cache at all\n" * 10)
    elif what == "empty":
        target.write_bytes(b"")
    else:
        target.mkdir()
    before = target.read_bytes() if target.is_file() else None
    with pytest.raises(CacheError, match="not a spike cache.*left as it is"):
        make_ds(split, cache=False, cache_path=str(target))
    assert (target.read_bytes() if target.is_file() else None) == before and target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_cache_of_another_dataset_is_ours_and_rebuilt(split, tmp_path, capsys):
    other = tmp_path / "other" / "U-CIFAR" / "train"
    other.mkdir(parents=True)
    for i in range(3):
        write_sample(other, i, seed=50 + i)
    path = str(tmp_path / "shared.cache")
    make_ds(tmp_path / "other", cache=False, cache_path=path)
    capsys.readouterr()
    ds = make_ds(split, cache=False, cache_path=path)
    assert "stale" in capsys.readouterr().out
    assert_same_items(ds, make_ds(split, cache=False))


# ----------------------------------------------------------------------------------------------
# building: bad sources are named, nothing half-written is left

def test_bad_source_file_fails_the_build_naming_it(split):
    folder = split / "U-CIFAR" / "train"
    (folder / "3.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SpikeDataError, match="3.npz"):
        make_ds(split)
    assert os.listdir(split / "U-CIFAR") == ["train"]          # no cache, no temp file


def test_frame_size_mismatch_fails_the_build(split):
    write_sample(split / "U-CIFAR" / "train", 5, size=(12, 10))
    with pytest.raises(CacheError, match="5.npz.*one frame size"):
        make_ds(split)


def test_unwritable_cache_location_is_a_clear_error(split, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot write"):
        dataset.UHSRDataset(str(split), "CIFAR", "train", bins=4, num_frames=8, crop_size=8,
                            cache_path=str(blocker / "sub" / "train.cache"))


def test_pickled_dataset_maps_the_file_itself(split):
    """DataLoader workers started by spawn get a pickled Dataset: it must not carry the data."""
    ds = make_ds(split)
    ds[0]                                                       # maps the file in this process
    blob = pickle.dumps(ds)
    assert len(blob) < os.path.getsize(ds.cache.path)
    assert_same_items(pickle.loads(blob), ds)


def test_dataloader_workers_read_the_cache(split):
    ds = make_ds(split)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    seen = sorted(int(i) for batch in loader for i in batch["index"])
    assert seen == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------
# train.py --cache

def test_train_with_cache_learns_the_same_weights(tmp_path, monkeypatch, capsys):
    import generate_synthetic_data
    import train
    data = str(tmp_path / "data")
    generate_synthetic_data.main(["--num_train", "1", "--num_test", "1", "--frame_size", "40",
                                  "--data_root", data, "--workers", "1"])
    monkeypatch.chdir(tmp_path)    # train.py writes experiment_results.json into the cwd

    def weights(name, *extra):
        assert train.main(["--data_root", data, "--exp_root", str(tmp_path / "exp"), "--exp_name", name,
                           "--crop_size", "32", "--clip_model", "tiny", "--clip_pretrained", "none",
                           "--num_workers", "0", "--time_steps", "2", "--epochs", "3", "--augment",
                           *extra]) == 0
        return torch.load(tmp_path / "exp" / name / "ckpts" / "checkpoint_last.pth", weights_only=True)["model"]

    plain = weights("plain")
    cached = weights("cached", "--cache")
    assert "train.cache: no cache yet" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(data, "U-CIFAR", "train.cache"))
    assert plain.keys() == cached.keys()
    for key in plain:
        assert torch.equal(plain[key], cached[key]), key
    assert train.get_args(["--cache", "elsewhere.cache"]).cache == "elsewhere.cache"
    assert train.get_args([]).cache is None


def test_train_refuses_a_cache_path_that_is_a_training_file(tmp_path, monkeypatch, capsys):
    import train
    from conftest import TINY_TRAIN
    folder = tmp_path / "data" / "U-CIFAR" / "train"
    folder.mkdir(parents=True)
    for i in range(4):
        write_sample(folder, i, frames=200, size=(40, 40))
    monkeypatch.chdir(tmp_path)
    victim = folder / "2.npz"
    before = victim.read_bytes()
    assert train.main(["--data_root", str(tmp_path / "data"), "--exp_root", str(tmp_path / "exp"),
                       "--cache", str(victim), "--epochs", "3", *TINY_TRAIN]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {victim}: exists and is not a spike cache") and err.count("\n") == 1
    assert victim.read_bytes() == before


def test_cached_items_keep_each_files_lens(split):
    """train.py --lens_input --cache: the cache hands on the lens blur the files store."""
    items = [make_ds(split)[i] for i in range(5)]
    assert [float(x["lens_px"]) for x in items[:3]] == pytest.approx([0.3, 0.4, 0.5])
    assert all(torch.isnan(x["lens_px"]) for x in items[3:])
