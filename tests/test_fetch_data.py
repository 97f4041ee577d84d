"""fetch_data.py: safe extraction, organising without losing files, verification."""
import io
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

import fetch_data
from fetch_data import FetchError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def npz_bytes(label, label_name="x.jpg", seed=0):
    """A tiny UHSR-style sample: spk uint8 [8, 6, 6]."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez_compressed(buf, spk=(rng.random((8, 6, 6)) < 0.3).astype(np.uint8),
                        label=np.int64(label), label_name=np.array(label_name))
    return buf.getvalue()


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


def make_tar(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def add_tar_special(path, name, kind, linkname="", mode="w"):
    with tarfile.open(path, mode) as tf:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        tf.addfile(info)


def listing(root):
    out = set()
    for dp, _, fns in os.walk(root):
        for fn in fns:
            out.add(os.path.relpath(os.path.join(dp, fn), root).replace(os.sep, "/"))
    return out


CIFAR_SPLIT = {  # layout with split folders, both datasets in one archive
    "UHSR/U-CIFAR/train/0.npz": npz_bytes(0, "1_frog.png", 0),
    "UHSR/U-CIFAR/train/1.npz": npz_bytes(4, "2_airplane.png", 1),
    "UHSR/U-CIFAR/test/2.npz": npz_bytes(9, "3_deer.png", 2),
    "UHSR/U-CALTECH/train/3.npz": npz_bytes(47, "3_helicopter.jpg", 3),
    "UHSR/U-CALTECH/test/5003.npz": npz_bytes(0, "9_accordion.jpg", 4),
    "UHSR/README.txt": b"hello",
}
CALTECH_FLAT = {  # U-CALTECH without split folders: split by index
    f"caltech_release/{i}.npz": npz_bytes(i % 101, seed=i) for i in (4998, 4999, 5000, 5001)}


def test_zip_with_split_folders(tmp_path):
    arc = make_zip(tmp_path / "uhsr.zip", CIFAR_SPLIT)
    data = tmp_path / "data"
    s = fetch_data.organise([arc], str(data), ["CIFAR", "CALTECH"])
    assert listing(data) == {"U-CIFAR/train/0.npz", "U-CIFAR/train/1.npz", "U-CIFAR/test/2.npz",
                             "U-CALTECH/train/3.npz", "U-CALTECH/test/5003.npz"}
    assert s["sources"] == s["placed"] == 5 and s["ignored"] == 1
    assert (data / "U-CIFAR/test/2.npz").read_bytes() == CIFAR_SPLIT["UHSR/U-CIFAR/test/2.npz"]
    assert os.path.exists(arc)                       # archives are kept
    # a second run finds every file already there and identical: nothing placed, nothing lost
    s = fetch_data.organise([arc], str(data), ["CIFAR", "CALTECH"])
    assert s["placed"] == 0 and s["identical"] == 5 and len(listing(data)) == 5


def test_targz_caltech_split_by_index_and_dataset_filter(tmp_path):
    arc = make_tar(tmp_path / "U-CALTECH.tar.gz", CALTECH_FLAT)
    cif = make_zip(tmp_path / "uhsr.zip", CIFAR_SPLIT)
    data = tmp_path / "data"
    s = fetch_data.organise([arc, cif], str(data), ["CALTECH"])
    assert listing(data) == {"U-CALTECH/train/4998.npz", "U-CALTECH/train/4999.npz",
                             "U-CALTECH/test/5000.npz", "U-CALTECH/test/5001.npz",
                             "U-CALTECH/train/3.npz", "U-CALTECH/test/5003.npz"}
    assert s["skipped"] == {"CIFAR": 3}


def test_folder_source_is_copied_and_nested_archive(tmp_path):
    src = tmp_path / "extracted"
    (src / "U-CIFAR" / "train").mkdir(parents=True)
    (src / "U-CIFAR" / "train" / "7.npz").write_bytes(npz_bytes(1))
    make_tar(src / "U-CALTECH.tar", {"4.npz": npz_bytes(2), "6000.npz": npz_bytes(3)}, mode="w")
    make_zip(src / "outer_cifar_test.zip",            # nested: a zip inside the folder holding a tgz
             {"inner.tgz": open(make_tar(tmp_path / "inner.tgz", {"test/8.npz": npz_bytes(5)}), "rb").read()})
    before = listing(src)
    data = tmp_path / "data"
    fetch_data.organise([str(src)], str(data), ["CIFAR", "CALTECH"])
    assert listing(data) == {"U-CIFAR/train/7.npz", "U-CIFAR/test/8.npz",
                             "U-CALTECH/train/4.npz", "U-CALTECH/test/6000.npz"}
    assert listing(src) == before                    # the user's folder is untouched


def test_cifar_without_split_is_an_error(tmp_path):
    arc = make_zip(tmp_path / "U-CIFAR.zip", {"7.npz": npz_bytes(1), "8.npz": npz_bytes(2)})
    data = tmp_path / "data"
    with pytest.raises(FetchError, match="U-CIFAR split unknown") as e:
        fetch_data.organise([arc], str(data), ["CIFAR", "CALTECH"])
    assert "U-CIFAR.zip:7.npz" in str(e.value)
    assert listing(data) == set()                    # nothing placed, staging removed
    assert os.listdir(data) == []


def test_collision_with_different_content(tmp_path):
    data = tmp_path / "data"
    existing = data / "U-CIFAR" / "train" / "0.npz"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(npz_bytes(3, seed=99))
    arc = make_zip(tmp_path / "uhsr.zip", CIFAR_SPLIT)
    with pytest.raises(FetchError, match="different content") as e:
        fetch_data.organise([arc], str(data), ["CIFAR", "CALTECH"])
    assert "uhsr.zip:UHSR/U-CIFAR/train/0.npz" in str(e.value) and str(existing) in str(e.value)
    assert existing.read_bytes() == npz_bytes(3, seed=99)
    assert listing(data) == {"U-CIFAR/train/0.npz"}  # nothing else placed
    # two sources with different files of the same name: also refused, naming both
    other = make_zip(tmp_path / "other.zip", {"U-CIFAR/test/2.npz": npz_bytes(1, seed=5)})
    with pytest.raises(FetchError, match="other.zip:U-CIFAR/test/2.npz"):
        fetch_data.organise([arc, other], str(tmp_path / "data2"), ["CIFAR"])


@pytest.mark.parametrize("name", ["../evil.npz", "/tmp/evil_abs.npz", "a/../../evil.npz",
                                  "..\\evil.npz"])
def test_zip_slip_refused(tmp_path, name):
    arc = make_zip(tmp_path / "bad.zip", {"U-CIFAR/train/0.npz": npz_bytes(0), name: npz_bytes(1)})
    data = tmp_path / "data"
    with pytest.raises(FetchError) as e:
        fetch_data.organise([arc], str(data), ["CIFAR"])
    assert "bad.zip" in str(e.value) and name in str(e.value)
    assert not (tmp_path / "evil.npz").exists() and not os.path.exists("/tmp/evil_abs.npz")
    assert listing(data) == set()


def test_zip_symlink_outside_refused(tmp_path):
    arc = tmp_path / "link.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        info = zipfile.ZipInfo("U-CIFAR/train/0.npz")
        info.external_attr = (0o120777 << 16)        # symbolic link
        zf.writestr(info, "../../../../etc/passwd")
    with pytest.raises(FetchError, match="symbolic link"):
        fetch_data.organise([str(arc)], str(tmp_path / "data"), ["CIFAR"])


@pytest.mark.parametrize("kind,name,linkname,msg", [
    (tarfile.REGTYPE, "../../evil.npz", "", "outside the destination"),
    (tarfile.SYMTYPE, "U-CIFAR/train/1.npz", "/etc/passwd", "absolute path"),
    (tarfile.SYMTYPE, "U-CIFAR/train/1.npz", "../../../outside.npz", "outside the destination"),
    (tarfile.LNKTYPE, "U-CIFAR/train/1.npz", "../outside.npz", "outside the destination"),
    (tarfile.CHRTYPE, "U-CIFAR/train/dev", "", "special file"),
    (tarfile.FIFOTYPE, "U-CIFAR/train/fifo", "", "special file"),
])
def test_tar_traversal_and_links_refused(tmp_path, kind, name, linkname, msg):
    arc = str(tmp_path / "bad.tar")
    make_tar(arc, {"U-CIFAR/train/0.npz": npz_bytes(0)}, mode="w")
    if kind == tarfile.REGTYPE:
        with tarfile.open(arc, "a") as tf:
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"bad"))
    else:
        add_tar_special(arc, name, kind, linkname, mode="a")
    data = tmp_path / "data"
    with pytest.raises(FetchError, match=msg) as e:
        fetch_data.organise([arc], str(data), ["CIFAR"])
    assert "bad.tar" in str(e.value) and name in str(e.value)
    assert listing(tmp_path) == {"bad.tar"}          # nothing written anywhere


def test_tar_absolute_member_lands_inside(tmp_path):
    """tarfile's data filter strips the leading '/': the member stays inside the data folder."""
    arc = make_tar(tmp_path / "abs.tar", {"/U-CIFAR/train/9.npz": npz_bytes(0)}, mode="w")
    data = tmp_path / "data"
    fetch_data.organise([arc], str(data), ["CIFAR"])
    assert listing(data) == {"U-CIFAR/train/9.npz"} and not os.path.exists("/U-CIFAR")


def test_tar_link_inside_is_materialised(tmp_path):
    arc = str(tmp_path / "ok.tar")
    make_tar(arc, {"U-CIFAR/train/0.npz": npz_bytes(0)}, mode="w")
    add_tar_special(arc, "U-CIFAR/test/5.npz", tarfile.SYMTYPE, "../train/0.npz", mode="a")
    data = tmp_path / "data"
    fetch_data.organise([arc], str(data), ["CIFAR"])
    t = data / "U-CIFAR" / "test" / "5.npz"
    assert not t.is_symlink() and t.read_bytes() == npz_bytes(0)


def test_verify_catches_bad_files(tmp_path, capsys):
    data = tmp_path / "data"
    arc = make_zip(tmp_path / "uhsr.zip", CIFAR_SPLIT)
    assert fetch_data.main(["--data_root", str(data), "--download_file", arc, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "U-CIFAR/train: 2 files, 2 good, 0 bad" in out and "verification passed" in out
    good = (data / "U-CIFAR/train/0.npz").read_bytes()
    (data / "U-CIFAR/train/0.npz").write_bytes(good[:len(good) // 2])          # truncated
    (data / "U-CIFAR/test/3.npz").write_bytes(npz_bytes(10))                  # label out of range
    corrupt = bytearray(good)
    corrupt[60:120] = bytes(b ^ 0xFF for b in corrupt[60:120])                # corrupt deflate data
    (data / "U-CIFAR/test/4.npz").write_bytes(bytes(corrupt))
    assert fetch_data.main(["--data_root", str(data), "--dataset", "cifar", "--verify"]) == 1
    out = capsys.readouterr().out
    assert "0.npz: unreadable or truncated" in out
    assert "3.npz: label 10 out of range [0, 10)" in out
    assert "4.npz: unreadable" in out
    assert "verification FAILED" in out
    # a missing dataset is a failure too
    assert fetch_data.verify(str(tmp_path / "empty"), ["CALTECH"]) is False


def test_folder_source_link_leaving_the_folder_is_refused(tmp_path):
    src = tmp_path / "extracted" / "U-CIFAR" / "train"
    src.mkdir(parents=True)
    (src / "0.npz").write_bytes(npz_bytes(0))
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (src / "1.npz").symlink_to(secret)
    data = tmp_path / "data"
    with pytest.raises(FetchError, match="outside") as e:
        fetch_data.organise([str(tmp_path / "extracted")], str(data), ["CIFAR"])
    assert "1.npz" in str(e.value)
    assert listing(data) == set()                    # nothing placed
    # a link that stays inside the folder is a file like any other: copied, not linked
    (src / "1.npz").unlink()
    (src / "1.npz").symlink_to(src / "0.npz")
    fetch_data.organise([str(tmp_path / "extracted")], str(data), ["CIFAR"])
    assert not (data / "U-CIFAR/train/1.npz").is_symlink()
    assert (data / "U-CIFAR/train/1.npz").read_bytes() == npz_bytes(0)


def test_cli_subprocess_and_usage(tmp_path, capsys):
    arc = make_tar(tmp_path / "U-CALTECH.tgz", CALTECH_FLAT)
    data = tmp_path / "data"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "fetch_data.py"), "--data_root", str(data),
                        "--dataset", "caltech", "--download_file", arc, "--verify"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all 4 source files accounted for: 4 placed" in r.stdout
    assert "U-CALTECH/test: 2 files, 2 good, 0 bad" in r.stdout
    assert len(listing(data / "U-CALTECH")) == 4
    # usage and input errors exit 2, the instructions exit 0
    assert fetch_data.main(["--data_root", str(data)]) == 2
    assert fetch_data.main(["--download_file", str(tmp_path / "missing.zip")]) == 2
    assert "missing.zip: no such file" in capsys.readouterr().err
    not_archive = tmp_path / "page.zip"
    not_archive.write_text("<html>baidu</html>")
    assert fetch_data.main(["--data_root", str(data), "--download_file", str(not_archive)]) == 2
    assert "not a zip or tar archive" in capsys.readouterr().err
    assert fetch_data.main(["--manual_download", "--data_root", "mydata"]) == 0
    out = capsys.readouterr().out
    assert "github.com/Evin-X/UHSR" in out and "Baidu" in out and "--download_file mydata/downloads/" in out
