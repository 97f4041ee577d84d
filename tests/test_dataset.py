"""Tests for dataset.py: Vidar .dat I/O, UHSR .npz loading, voxelisation, UHSRDataset (SPEC §2)."""
import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import utils
from dataset import SpikeDataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDS = os.path.join(ROOT, "..", "shared", "datasets", "reds-base-sample", "203_part2_key_id151")


def random_spikes(shape, p=0.3, seed=0):
    return (np.random.default_rng(seed).random(shape) < p).astype(np.uint8)


def save_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    return str(path)


def good_npz(path, spk=None, label=3, **extra):
    spk = random_spikes((8, 6, 6)) if spk is None else spk
    return save_npz(path, spk=spk, label=np.int64(label), label_name=np.str_("x_frog.jpg"), **extra)


def raises_naming(path, fn, *args, match=None, **kwargs):
    """fn(*args) raises SpikeDataError whose message names `path`; returns the message."""
    with pytest.raises(SpikeDataError) as exc:
        fn(*args, **kwargs)
    msg = str(exc.value)
    assert str(path) in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


# ----------------------------------------------------------------------------------------------
# Vidar .dat

@pytest.mark.parametrize("shape", [(1, 8, 8), (5, 4, 6), (3, 7, 8), (4, 250, 400)])
def test_dat_round_trip(tmp_path, shape):
    spk = random_spikes(shape, seed=sum(shape))
    path = tmp_path / "s.dat"
    dataset.write_dat(path, spk)
    t, h, w = shape
    assert os.path.getsize(path) == t * h * w // 8
    back = dataset.read_dat(path, height=h, width=w)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, spk)
    # bool input writes the same bytes
    dataset.write_dat(tmp_path / "b.dat", spk.astype(bool))
    assert (tmp_path / "b.dat").read_bytes() == path.read_bytes()


def _hand_made_dat(t, h, w, spikes):
    """Raw bytes per SPEC §2: scene pixel (row, col) is pixel p = (h-1-row)*w + col of the
    stored (vertically flipped) frame, in byte p>>3 at bit p&7, LSB first."""
    frame_bytes = h * w // 8
    raw = bytearray(t * frame_bytes)
    for f, row, col in spikes:
        p = (h - 1 - row) * w + col
        raw[f * frame_bytes + (p >> 3)] |= 1 << (p & 7)
    return bytes(raw)


def test_dat_orientation_hand_made(tmp_path):
    t, h, w = 3, 4, 8
    path = tmp_path / "hand.dat"
    # one spike at the top-left of the scene in frame 2: flipped row 3 -> p = 24, byte 3, bit 0
    raw = _hand_made_dat(t, h, w, [(2, 0, 0)])
    assert raw[2 * 4 + 3] == 0x01 and sum(raw) == 1
    path.write_bytes(raw)
    spk = dataset.read_dat(path, height=h, width=w)
    assert spk.shape == (t, h, w)
    assert spk[2, 0, 0] == 1 and spk.sum() == 1

    # bottom-right of the scene: flipped row 0, col 7 -> p = 7, byte 0, most significant bit
    raw = _hand_made_dat(t, h, w, [(0, 3, 7)])
    assert raw[0] == 0x80
    path.write_bytes(raw)
    spk = dataset.read_dat(path, height=h, width=w)
    assert spk[0, 3, 7] == 1 and spk.sum() == 1

    # several spikes, and write_dat produces exactly the hand-made bytes
    spikes = [(0, 1, 2), (1, 2, 5), (1, 0, 7), (2, 3, 0)]
    raw = _hand_made_dat(t, h, w, spikes)
    path.write_bytes(raw)
    spk = dataset.read_dat(path, height=h, width=w)
    expected = np.zeros((t, h, w), np.uint8)
    for f, r, c in spikes:
        expected[f, r, c] = 1
    np.testing.assert_array_equal(spk, expected)
    dataset.write_dat(tmp_path / "w.dat", expected)
    assert (tmp_path / "w.dat").read_bytes() == raw


def test_dat_known_answer(tmp_path):
    """Two 2x8 frames written out by hand, byte for byte, and the frames they hold."""
    raw = bytes([0x01, 0x80,      # frame 0: stored row 0 (scene bottom) col 0; stored row 1 (top) col 7
                 0x00, 0x03])     # frame 1: stored row 1 (scene top), cols 0 and 1
    frames = np.array([[[0, 0, 0, 0, 0, 0, 0, 1],
                        [1, 0, 0, 0, 0, 0, 0, 0]],
                       [[1, 1, 0, 0, 0, 0, 0, 0],
                        [0, 0, 0, 0, 0, 0, 0, 0]]], np.uint8)
    path = tmp_path / "known.dat"
    path.write_bytes(raw)
    np.testing.assert_array_equal(dataset.read_dat(path, 2, 8), frames)
    packed = torch.tensor(list(raw), dtype=torch.uint8).view(2, 2)
    np.testing.assert_array_equal(dataset.unpack_dat_frames(packed, 2, 8).numpy(), frames)
    dataset.write_dat(tmp_path / "back.dat", frames)
    assert (tmp_path / "back.dat").read_bytes() == raw
    assert dataset.dat_frame_count(path, 2, 8) == (2, 0)
    assert dataset.dat_frame_count(path, 1, 24) == (1, 1)     # one 3-byte frame and a byte over


def test_dat_of_one_vidar_width_read_as_the_other_is_refused(tmp_path):
    path = tmp_path / "capture.dat"
    dataset.write_dat(path, np.zeros((3, 250, 400), np.uint8))     # 37500 bytes: 2.88 frames 416 wide
    raises_naming(path, dataset.read_dat, path, 250, 416, match="--width 400?")
    raises_naming(path, dataset.dat_frame_count, path, 250, 416, match="3 frames 400 wide")
    dataset.write_dat(path, np.zeros((3, 250, 416), np.uint8))     # 39000 bytes: 3.12 frames 400 wide
    raises_naming(path, dataset.read_dat, path, 250, 400, match="--width 416?")


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_dat_that_is_no_file(tmp_path, what):
    path = tmp_path / "capture.dat"
    if what == "folder":
        path.mkdir()
    raises_naming(path, dataset.read_dat, path, 4, 8, match="no such file" if what == "missing" else "a folder")


def test_dat_416_wide_drops_extra_columns(tmp_path):
    t, h, w = 2, 3, 416
    spikes = [(0, 0, 3), (0, 2, 399), (1, 1, 405), (1, 0, 415)]
    path = tmp_path / "raw416.dat"
    path.write_bytes(_hand_made_dat(t, h, w, spikes))
    spk = dataset.read_dat(path, height=h, width=w)
    assert spk.shape == (t, h, 400)
    assert spk[0, 0, 3] == 1 and spk[0, 2, 399] == 1 and spk.sum() == 2
    # same via write_dat of a full 416-wide array
    full = random_spikes((3, 5, 416), seed=7)
    dataset.write_dat(tmp_path / "full.dat", full)
    np.testing.assert_array_equal(dataset.read_dat(tmp_path / "full.dat", 5, 416), full[:, :, :400])


def test_dat_size_not_whole_frames(tmp_path):
    path = tmp_path / "cut.dat"
    dataset.write_dat(path, random_spikes((3, 4, 8)))
    path.write_bytes(path.read_bytes()[:-1])              # 11 bytes, frames of 4
    raises_naming(path, dataset.read_dat, path, 4, 8)
    # the right size read with the wrong geometry is also caught
    path.write_bytes(bytes(12))
    raises_naming(path, dataset.read_dat, path, 5, 8)     # frames of 5 bytes


def test_dat_empty_file(tmp_path):
    path = tmp_path / "empty.dat"
    path.write_bytes(b"")
    raises_naming(path, dataset.read_dat, path, 4, 8)


def test_dat_write_rejects_non_binary(tmp_path):
    path = tmp_path / "bad.dat"
    with pytest.raises(SpikeDataError):
        dataset.write_dat(path, np.full((2, 4, 8), 2, np.uint8))
    assert not path.exists()


@pytest.mark.skipif(not os.path.exists(REDS + ".dat"), reason="shared REDS sample not present")
def test_reds_base_sample_check_values():
    spk = dataset.read_dat(REDS + ".dat", height=250, width=400)
    assert spk.shape == (301, 250, 400)
    assert spk.mean() == pytest.approx(0.208, abs=0.001)
    gt = np.asarray(Image.open(REDS + ".png").convert("L"), dtype=np.float32) / 255.0
    assert gt.shape == (250, 400)

    def corr(img):
        return np.corrcoef(img.ravel(), gt.ravel())[0, 1]

    img = utils.tfp(spk, window=41, rate=0.6)
    assert corr(img) == pytest.approx(0.958, abs=0.002)
    mse = np.mean((np.clip(img, 0, 1) - gt) ** 2)
    assert 10 * np.log10(1.0 / mse) == pytest.approx(23.50, abs=0.05)
    # Without the flip the match collapses. (Measured 0.363, not "near zero": the GT itself
    # correlates 0.35 with its own upside-down copy, a top/bottom brightness gradient.)
    assert corr(utils.tfp(spk[:, ::-1], window=41, rate=0.6)) < 0.5
    # MSB-first bit order is also worse than the LSB-first convention
    raw = np.fromfile(REDS + ".dat", np.uint8).reshape(301, -1)
    msb = np.unpackbits(raw, axis=1).reshape(301, 250, 400)[:, ::-1]
    assert corr(utils.tfp(msb, window=41, rate=0.6)) < 0.9


# ----------------------------------------------------------------------------------------------
# load_npz

@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.float32, np.int64])
def test_load_npz_accepts_binary_dtypes(tmp_path, dtype):
    spk = random_spikes((8, 6, 6))
    path = good_npz(tmp_path / "0.npz", spk=spk.astype(dtype), label=4)
    out, label, name = dataset.load_npz(path, num_classes=10)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, spk)
    assert label == 4 and isinstance(label, int)
    assert name == "x_frog.jpg"


def test_load_npz_gt_and_optional_label_name(tmp_path):
    spk = random_spikes((8, 6, 6))
    gt = np.arange(36, dtype=np.uint8).reshape(6, 6)
    path = save_npz(tmp_path / "a.npz", spk=spk, label=np.int64(1), gt=gt)
    s, label, name, g = dataset.load_npz(path, with_gt=True)
    assert name is None and label == 1
    np.testing.assert_array_equal(g, gt)
    path = good_npz(tmp_path / "b.npz")
    assert dataset.load_npz(path, with_gt=True)[3] is None
    # float gt in [0,1] becomes uint8 0..255
    path = good_npz(tmp_path / "c.npz", gt=np.full((6, 6), 0.5, np.float32))
    g = dataset.load_npz(path, with_gt=True)[3]
    assert g.dtype == np.uint8 and (g == 128).all()
    # gt that does not match the frames
    path = good_npz(tmp_path / "d.npz", gt=np.zeros((5, 6), np.uint8))
    raises_naming(path, dataset.load_npz, path, with_gt=True)


@pytest.mark.parametrize("missing", ["spk", "label"])
def test_load_npz_missing_key(tmp_path, missing):
    arrays = {"spk": random_spikes((4, 4, 4)), "label": np.int64(0)}
    del arrays[missing]
    path = save_npz(tmp_path / "m.npz", **arrays)
    raises_naming(path, dataset.load_npz, path, match=missing)


@pytest.mark.parametrize("keep", [0.5, 0.95, 30])
def test_load_npz_truncated(tmp_path, keep):
    path = good_npz(tmp_path / "t.npz", spk=random_spikes((40, 16, 16)))
    data = open(path, "rb").read()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    open(path, "wb").write(data[:n])
    raises_naming(path, dataset.load_npz, path)


def test_load_npz_empty_and_not_a_zip(tmp_path):
    path = tmp_path / "e.npz"
    path.write_bytes(b"")
    raises_naming(path, dataset.load_npz, path)
    path.write_bytes(b"this is not a numpy file at all" * 10)
    raises_naming(path, dataset.load_npz, path, match="not a valid .npz")
    path.write_bytes(os.urandom(4096))                 # numpy alone says "allow_pickle"
    with pytest.raises(SpikeDataError) as e:
        dataset.load_npz(str(path))
    assert "not a valid .npz" in str(e.value) and "pickle" not in str(e.value)


def test_load_npz_plain_npy_under_npz_name(tmp_path):
    """A bare .npy saved under a .npz name: np.load returns an ndarray, not an NpzFile.
    (BUG, dataset.py load_npz: `with np.load(...) as f` raises TypeError, not SpikeDataError.)"""
    path = tmp_path / "npy.npz"
    with open(path, "wb") as f:
        np.save(f, random_spikes((4, 4, 4)))
    raises_naming(path, dataset.load_npz, path)


def test_load_npz_corrupt_deflate_stream(tmp_path):
    path = good_npz(tmp_path / "c.npz", spk=random_spikes((40, 16, 16)))
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("spk.npy")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    data = bytearray(open(path, "rb").read())
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    mid = start + info.compress_size // 2
    data[mid:mid + 64] = np.random.default_rng(1).integers(0, 256, 64, dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))
    raises_naming(path, dataset.load_npz, path)


@pytest.mark.parametrize("spk, what", [
    (np.full((4, 4, 4), 2, np.uint8), "uint8 2"),
    (np.full((4, 4, 4), 0.5, np.float32), "float 0.5"),
    (np.full((4, 4, 4), np.nan, np.float32), "nan"),
    (-np.ones((4, 4, 4), np.int8), "negative"),
])
def test_load_npz_non_binary(tmp_path, spk, what):
    path = good_npz(tmp_path / "nb.npz", spk=spk)
    raises_naming(path, dataset.load_npz, path, match="binary")


@pytest.mark.parametrize("shape", [(16, 16), (2, 4, 4, 4), (), (0, 4, 4)])
def test_load_npz_wrong_ndim_or_empty(tmp_path, shape):
    path = good_npz(tmp_path / "nd.npz", spk=np.zeros(shape, np.uint8))
    raises_naming(path, dataset.load_npz, path)


@pytest.mark.parametrize("spk", [np.zeros((4, 4, 4), np.complex64),
                                 np.full((4, 4, 4), "1"),
                                 np.zeros((4, 4, 4), "S1")])
def test_load_npz_wrong_dtype(tmp_path, spk):
    path = good_npz(tmp_path / "dt.npz", spk=spk)
    raises_naming(path, dataset.load_npz, path, match="dtype")


@pytest.mark.parametrize("label", [10, 11, -1])
def test_load_npz_label_out_of_range(tmp_path, label):
    path = good_npz(tmp_path / "l.npz", label=label)
    raises_naming(path, dataset.load_npz, path, num_classes=10, match="range")
    if label >= 0:   # without a class count only negatives are out of range
        assert dataset.load_npz(path)[1] == label


@pytest.mark.parametrize("label", [np.float32(1.5), np.float64(2.0), np.array([1, 2]),
                                   np.str_("3"), np.bool_(True)])
def test_load_npz_label_not_an_integer(tmp_path, label):
    path = save_npz(tmp_path / "li.npz", spk=random_spikes((4, 4, 4)), label=label)
    raises_naming(path, dataset.load_npz, path, num_classes=10)


def test_load_gt_only(tmp_path):
    gt = np.full((6, 6), 7, np.uint8)
    np.testing.assert_array_equal(dataset.load_gt(good_npz(tmp_path / "g.npz", gt=gt)), gt)
    assert dataset.load_gt(good_npz(tmp_path / "n.npz")) is None
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    raises_naming(bad, dataset.load_gt, bad)


# ----------------------------------------------------------------------------------------------
# voxelize, crop, window

def test_voxelize_sums_consecutive_frames():
    spk = random_spikes((12, 3, 5), seed=3)
    vox = dataset.voxelize(spk, bins=4)
    assert vox.shape == (4, 3, 5) and vox.dtype == np.float32
    for b in range(4):
        np.testing.assert_array_equal(vox[b], spk[3 * b:3 * b + 3].sum(0))
    assert vox.sum() == spk.sum()
    np.testing.assert_array_equal(dataset.voxelize(spk, bins=12), spk)   # 1 frame per bin
    # the UHSR convention: reshape(50, 4, H, W).sum(1)
    spk = random_spikes((200, 4, 4), seed=4)
    np.testing.assert_array_equal(dataset.voxelize(spk), spk.reshape(50, 4, 4, 4).sum(1))


def test_voxelize_dtype_option():
    spk = np.ones((8, 2, 2), np.uint8)
    vox = dataset.voxelize(spk, bins=2, dtype=np.uint8)
    assert vox.dtype == np.uint8 and (vox == 4).all()
    assert dataset.voxelize(spk, bins=2, dtype=np.int32).dtype == np.int32
    # counts above 255 would wrap in uint8
    with pytest.raises(SpikeDataError):
        dataset.voxelize(np.ones((512, 1, 1), np.uint8), bins=2, dtype=np.uint8)
    assert dataset.voxelize(np.ones((512, 1, 1), np.uint8), bins=2)[0, 0, 0] == 256


def test_voxelize_torch_batches_and_bins_of_bins():
    spk = random_spikes((3, 200, 4, 5), seed=5)
    want = np.stack([dataset.voxelize(s, 50) for s in spk])
    got = dataset.voxelize(torch.from_numpy(spk), 50, dim=1)
    assert got.dtype == torch.float32 and got.shape == (3, 50, 4, 5)
    np.testing.assert_array_equal(got.numpy(), want)
    # a 200-bin voxel summed into 50 bins is the 50-bin voxel of the same frames
    fine = dataset.voxelize(torch.from_numpy(spk), 200, dim=1)
    np.testing.assert_array_equal(dataset.voxelize(fine, 50, dim=1).numpy(), want)
    with pytest.raises(SpikeDataError):
        dataset.voxelize(torch.from_numpy(spk), 3, dim=1)


@pytest.mark.parametrize("t, bins", [(10, 4), (3, 4), (200, 3)])
def test_voxelize_bins_not_dividing(t, bins):
    with pytest.raises(SpikeDataError):
        dataset.voxelize(np.zeros((t, 2, 2), np.uint8), bins=bins)


def test_center_crop_and_window():
    x = np.arange(250 * 250).reshape(1, 250, 250)
    np.testing.assert_array_equal(dataset.center_crop(x, 224), x[:, 13:237, 13:237])
    with pytest.raises(SpikeDataError, match="f.npz"):
        dataset.center_crop(np.zeros((2, 10, 30)), 12, "f.npz")
    spk = np.arange(10)[:, None, None]
    assert dataset.center_window(spk, 4)[:, 0, 0].tolist() == [3, 4, 5, 6]
    with pytest.raises(SpikeDataError, match="g.npz"):
        dataset.center_window(spk, 11, "g.npz")


def test_numeric_sort_key():
    names = ["10.npz", "2.npz", "a.npz", "1.npz", "100.npz", "b.npz"]
    assert sorted(names, key=dataset.numeric_sort_key) == [
        "1.npz", "2.npz", "10.npz", "100.npz", "a.npz", "b.npz"]


# ----------------------------------------------------------------------------------------------
# UHSRDataset

def make_split(root, data_type="CIFAR", split="train", items=()):
    """items: (index, spk, label, gt or None) -> <root>/U-<type>/<split>/<index>.npz"""
    folder = os.path.join(root, dataset.DATASET_DIRS[data_type], split)
    os.makedirs(folder, exist_ok=True)
    for index, spk, label, gt in items:
        extra = {} if gt is None else {"gt": gt}
        good_npz(os.path.join(folder, f"{index}.npz"), spk=spk, label=label, **extra)
    return folder


def small_ds(root, **kw):
    kw = {"bins": 4, "num_frames": 8, "crop_size": 8, **kw}
    return dataset.UHSRDataset(str(root), "CIFAR", "train", **kw)


def test_dataset_numeric_order_and_items(tmp_path):
    items = [(i, random_spikes((8, 10, 10), seed=i), i % 10, None) for i in (10, 2, 1, 0, 9)]
    make_split(tmp_path, items=items)
    ds = small_ds(tmp_path)
    assert [os.path.basename(f) for f in ds.files] == ["0.npz", "1.npz", "2.npz", "9.npz", "10.npz"]
    assert len(ds) == 5
    item = ds[1]
    assert item["index"] == 1
    assert item["voxel"].dtype == torch.uint8 and item["voxel"].shape == (4, 8, 8)
    np.testing.assert_array_equal(item["voxel"].numpy(),
                                  dataset.voxelize(items[2][1][:, 1:9, 1:9], 4))
    assert item["label"].dtype == torch.int64 and item["label"].item() == 1
    assert item["class_name"] == "horse"
    assert ds[4]["index"] == 10 and ds[4]["class_name"] == "frog"      # label 10 % 10


def test_dataset_ucifar_label_order(tmp_path):
    items = [(i, random_spikes((8, 8, 8), seed=i), i, None) for i in range(10)]
    make_split(tmp_path, items=items)
    ds = small_ds(tmp_path)
    names = [ds[i]["class_name"] for i in range(10)]
    assert names == ["frog", "horse", "dog", "truck", "airplane", "automobile", "bird", "ship",
                     "cat", "deer"]
    assert [ds[i]["label"].item() for i in range(10)] == list(range(10))


def test_dataset_uhsr_crop_marked_pixels(tmp_path):
    spk = np.zeros((200, 250, 250), np.uint8)
    spk[:, 13, 13] = 1            # first pixel of the crop
    spk[1::2, 236, 236] = 1       # last pixel of the crop, every other frame
    spk[:, 12, 12] = 1            # just outside the crop
    spk[:, 237, 100] = 1          # just outside the crop
    make_split(tmp_path, items=[(0, spk, 4, None)])
    ds = dataset.UHSRDataset(str(tmp_path), "CIFAR", "train")   # UHSR defaults
    vox = ds[0]["voxel"]
    assert vox.shape == (50, 224, 224) and vox.dtype == torch.uint8
    assert (vox[:, 0, 0] == 4).all()
    assert (vox[:, 223, 223] == 2).all()
    assert vox.sum().item() == 50 * 4 + 50 * 2
    assert ds[0]["class_name"] == "airplane"


def test_dataset_gt_present_and_absent(tmp_path):
    gt = np.random.default_rng(0).integers(0, 256, (10, 10), dtype=np.uint8)
    make_split(tmp_path, items=[(0, random_spikes((8, 10, 10)), 0, gt),
                                (1, random_spikes((8, 10, 10)), 0, None)])
    ds = small_ds(tmp_path)
    a, b = ds[0], ds[1]
    assert a["has_gt"] is True and b["has_gt"] is False
    assert a["gt"].shape == (1, 8, 8) and a["gt"].dtype == torch.float32
    np.testing.assert_allclose(a["gt"][0].numpy(), gt[1:9, 1:9] / 255.0, atol=1e-6)
    assert b["gt"].shape == (1, 8, 8) and (b["gt"] == 0).all()
    # default collation works on the mixed batch
    batch = torch.utils.data.default_collate([a, b])
    assert batch["voxel"].shape == (2, 4, 8, 8)
    assert batch["has_gt"].tolist() == [True, False]
    assert batch["class_name"] == ["frog", "frog"]


def test_dataset_with_baselines(tmp_path):
    spk = random_spikes((12, 10, 10), seed=5)      # 12 frames, the centre 8 are used
    make_split(tmp_path, items=[(0, spk, 0, None)])
    item = small_ds(tmp_path, with_baselines=True)[0]
    used = spk[2:10, 1:9, 1:9]
    for key, fn in (("tfp", utils.tfp), ("tfi", utils.tfi)):
        assert item[key].shape == (1, 8, 8) and item[key].dtype == torch.float32
        np.testing.assert_allclose(item[key][0].numpy(), fn(used), atol=1e-6)
        assert 0 <= item[key].min() and item[key].max() <= 1
    np.testing.assert_array_equal(item["voxel"].numpy(), dataset.voxelize(used, 4))
    assert "tfp" not in small_ds(tmp_path)[0]


def test_dataset_temporal_bins(tmp_path):
    spk = random_spikes((200, 10, 10), seed=6)
    make_split(tmp_path, items=[(0, spk, 0, None)])
    ds = dataset.UHSRDataset(str(tmp_path), "CIFAR", "train", bins=200, crop_size=8)
    vox = ds[0]["voxel"]
    assert vox.shape == (200, 8, 8) and vox.dtype == torch.uint8   # T=4 steps x 50 bins
    np.testing.assert_array_equal(vox.numpy(), spk[:, 1:9, 1:9])
    with pytest.raises(ValueError):
        dataset.UHSRDataset(str(tmp_path), "CIFAR", "train", bins=60)   # 200 % 60


def test_dataset_too_few_frames_names_file(tmp_path):
    folder = make_split(tmp_path, items=[(0, random_spikes((100, 10, 10)), 0, None)])
    ds = dataset.UHSRDataset(str(tmp_path), "CIFAR", "train", crop_size=8)
    raises_naming(os.path.join(folder, "0.npz"), ds.__getitem__, 0)


def test_dataset_frames_smaller_than_crop(tmp_path):
    folder = make_split(tmp_path, items=[(0, random_spikes((8, 6, 12)), 0, None)])
    raises_naming(os.path.join(folder, "0.npz"), small_ds(tmp_path).__getitem__, 0)


def test_dataset_label_out_of_range_names_file(tmp_path):
    folder = make_split(tmp_path, items=[(0, random_spikes((8, 10, 10)), 10, None)])
    raises_naming(os.path.join(folder, "0.npz"), small_ds(tmp_path).__getitem__, 0)


def test_dataset_missing_or_empty_folder(tmp_path):
    with pytest.raises(SpikeDataError, match="no such folder"):
        small_ds(tmp_path)
    make_split(tmp_path)
    with pytest.raises(SpikeDataError, match="no .npz files"):
        small_ds(tmp_path)
    with pytest.raises(ValueError):
        dataset.UHSRDataset(str(tmp_path), "MNIST", "train")


def test_dataset_ignores_interrupted_writes(tmp_path):
    """generate_synthetic_data.save_sample writes `<i>.npz.tmp` and renames it; a crash
    leaves that file behind. It is not a sample and must not be listed."""
    folder = make_split(tmp_path, items=[(0, random_spikes((8, 10, 10)), 0, None),
                                         (1, random_spikes((8, 10, 10)), 1, None)])
    open(os.path.join(folder, "2.npz.tmp"), "wb").write(b"PK\x03\x04half-written")
    ds = small_ds(tmp_path)
    assert [os.path.basename(f) for f in ds.files] == ["0.npz", "1.npz"]


def test_dataset_explicit_file_list(tmp_path):
    folder = make_split(tmp_path, items=[(i, random_spikes((8, 10, 10)), i, None) for i in range(3)])
    files = [os.path.join(folder, "2.npz"), os.path.join(folder, "0.npz")]
    ds = dataset.UHSRDataset(str(tmp_path / "nowhere"), "CIFAR", "test", bins=4, num_frames=8,
                             crop_size=8, files=files)
    assert len(ds) == 2 and ds[0]["class_name"] == "dog" and ds[1]["index"] == 0


# ----------------------------------------------------------------------------------------------
# class names

def test_class_lists():
    assert len(dataset.UCIFAR_CLASSES) == 10 and len(dataset.UCALTECH_CLASSES) == 101
    assert len(set(dataset.UCALTECH_CLASSES)) == 101
    assert dataset.UCALTECH_CLASSES[0] == "accordion" and dataset.UCALTECH_CLASSES[-1] == "background"


def test_class_index_mapping():
    assert dataset.class_index("CIFAR", "frog") == 0
    assert dataset.class_index("CIFAR", "airplane") == 4
    assert dataset.class_index("CIFAR", "Automobile") == 5
    ci = dataset.UCALTECH_CLASSES.index("ceilingfan")
    assert dataset.class_index("CALTECH", "ceiling_fan") == ci
    assert dataset.class_index("CALTECH", "Ceiling Fan") == ci
    assert dataset.class_index("CALTECH", "ceiling-fan") == ci
    assert dataset.class_index("CALTECH", "leopards") == dataset.UCALTECH_CLASSES.index("Leopards")
    assert dataset.class_index("CALTECH", "Motorbikes") == dataset.UCALTECH_CLASSES.index("Motorbikes")
    for data_type, names in dataset.CLASS_NAMES.items():
        assert [dataset.class_index(data_type, n) for n in names] == list(range(len(names)))
    with pytest.raises(KeyError):
        dataset.class_index("CIFAR", "spaceship")
    with pytest.raises(KeyError):
        dataset.class_index("CIFAR", "airplanes")   # the Caltech name is not a CIFAR class


def test_prompt_name():
    assert dataset.prompt_name("ceilingfan") == "ceiling fan"
    assert dataset.prompt_name("Leopards") == "leopard"
    assert dataset.prompt_name("frog") == "frog"
    for name in dataset.UCALTECH_CLASSES:     # every prompt name is readable lower-case words
        p = dataset.prompt_name(name)
        assert p == p.lower() and "_" not in p and p.strip() == p
