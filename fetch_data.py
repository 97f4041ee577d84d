"""Organise downloaded UHSR archives into <data_root>/U-{CIFAR,CALTECH}/{train,test}/<index>.npz.

The real UHSR captures are only on a Baidu share (see github.com/Evin-X/UHSR) with no direct
URL: download them by hand (--manual_download prints how), then

    python fetch_data.py --download_file data/downloads/U-CALTECH.zip --download_file ... --verify

What it does (SPEC §2):
- archives (.zip, .tar, .tar.gz/.tgz, also nested inside each other) are extracted into a
  staging folder `<data_root>/.staging-*` (removed afterwards): tar archives through tarfile's
  'data' filter (no absolute paths, no '..', no links leaving the archive, no device files), zip
  archives after the same checks of every member; a refused member is named with its archive.
  Folders are read in place and copied from, never changed; a link in them that points outside
  the folder is refused;
- every `.npz` file is assigned a dataset by the deepest path component (the archive's own name
  counts) that contains "cifar" or "caltech", and a split by the deepest component with the word
  train(ing)/test(ing); without a split folder U-CALTECH files go by index (0-4999 train, 5000+
  test) and U-CIFAR files are an error, as no index rule is known for them;
- nothing is lost: every name collision is checked before any file is placed; a different file
  with the same destination name is an error naming both, identical content is skipped; each
  file lands atomically and the folder counts are reconciled at the end.

Exit codes: 0 ok, 1 verification found bad files, 2 usage or input error.
"""
import argparse
import filecmp
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections import Counter, defaultdict

from tqdm import tqdm

from dataset import (CLASS_NAMES, CROP_SIZE, DATASET_DIRS, UHSR_FRAMES, SpikeDataError, load_npz,
                     numeric_sort_key)
from utils import InputError, atomic_move, atomic_write, check_output_folder, report_input_error

SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "testing": "test"}
CALTECH_TRAIN_LAST = 4999          # U-CALTECH: index 0-4999 train, 5000+ test (SPEC §2)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
MAX_NESTING = 3                    # archives inside archives inside archives
DATASET_CHOICES = {"both": ["CIFAR", "CALTECH"], "cifar": ["CIFAR"], "caltech": ["CALTECH"]}


class FetchError(InputError):
    """A problem with the input (archive, folder, collision): exit code 2."""


def _progress(**kw):
    return tqdm(disable=None, leave=False, **kw)   # silent when stderr is not a terminal


def _strip_archive_suffix(name):
    return next((name[:-len(s)] for s in ARCHIVE_SUFFIXES if name.lower().endswith(s)), name)


def _same(a, b):
    return filecmp.cmp(a, b, shallow=False)


# ----------------------------------------------------------------------------------------------
# safe extraction

def _check_zip_member(archive, info):
    """Refuse what tarfile's 'data' filter refuses, for a zip member."""
    name = info.filename.replace("\\", "/")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        problem = "absolute path"
    elif ".." in name.split("/"):
        problem = "'..' would leave the extraction folder"
    elif kind == stat.S_IFLNK:
        problem = "symbolic link (links in zip archives are not extracted)"
    elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        problem = "device or special file"
    else:
        return
    raise FetchError(f"{archive}: refusing member '{info.filename}': {problem}")


def extract(archive, dest):
    """Extract a zip/tar archive into dest, refusing members that would leave it."""
    with open(archive, "rb") as f:
        is_zip = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")   # by content: a tar of .npz holds zips
    try:
        if is_zip or (archive.lower().endswith(".zip") and zipfile.is_zipfile(archive)):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_zip_member(archive, info)
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")
        else:
            raise FetchError(f"{archive}: not a zip or tar archive (an HTML page instead of the "
                             f"data? Baidu shares need a browser: see --manual_download)")
    except tarfile.FilterError as e:
        raise FetchError(f"{archive}: refusing member '{e.tarinfo.name}': {e}") from e
    except (OSError, RuntimeError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise FetchError(f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------------------
# organise

class Item:
    """One .npz found in a source; `move` when it is our own copy in the staging folder."""

    def __init__(self, path, comps, move, origin):
        self.path, self.comps, self.name, self.move, self.origin = path, comps, comps[-1], move, origin
        self.dataset = self.split = None


def _scan(root, prefix, move, origin, staging, depth, items, ignored):
    """Collect the .npz files under root; nested archives are extracted into staging."""
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__MACOSX" and not d.startswith(".staging-"))
        rel = os.path.relpath(dirpath, root)
        rel_parts = [] if rel == "." else rel.split(os.sep)
        for fn in sorted(filenames):
            path = os.path.join(dirpath, fn)
            where = f"{origin}{'/'.join(rel_parts + [fn])}"
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.commonpath([real_root, target]) != real_root:
                    raise FetchError(f"{where}: a link to {target}, outside {root}: refusing it")
            if fn.startswith("._") or not os.path.isfile(path):
                ignored.append(where)
            elif fn.lower().endswith(".npz"):   # links are copied, never moved
                items.append(Item(path, prefix + rel_parts + [fn], move and not os.path.islink(path), where))
            elif fn.lower().endswith(ARCHIVE_SUFFIXES):
                if depth >= MAX_NESTING:
                    raise FetchError(f"{where}: archives nested more than {MAX_NESTING} deep")
                sub = tempfile.mkdtemp(prefix="nested-", dir=staging)
                extract(path, sub)
                _scan(sub, prefix + rel_parts + [_strip_archive_suffix(fn)], True, f"{where}:",
                      staging, depth + 1, items, ignored)
            else:
                ignored.append(where)


def collect(sources, staging):
    """Extract archives / walk folders -> (list of Item, list of ignored non-.npz files)."""
    items, ignored, seen = [], [], set()
    for src in sources:
        if os.path.realpath(src) in seen:
            continue
        seen.add(os.path.realpath(src))
        if not os.path.exists(src):
            raise FetchError(f"{src}: no such file or folder")
        base = os.path.basename(os.path.normpath(src))
        if os.path.isdir(src):
            _scan(src, [base], False, f"{src}/", staging, 0, items, ignored)
        elif src.lower().endswith(".npz"):
            raise FetchError(f"{src}: a single sample, not an archive; pass the folder that holds it")
        else:
            sub = tempfile.mkdtemp(prefix="archive-", dir=staging)
            print(f"extracting {src}")
            extract(src, sub)
            _scan(sub, [_strip_archive_suffix(base)], True, f"{src}:", staging, 1, items, ignored)
    return items, ignored


def classify(item, wanted):
    """Set item.dataset / item.split from its path components -> None or a problem."""
    for c in reversed(item.comps):
        hits = [dt for dt in CLASS_NAMES if dt.lower() in c.lower()]
        if len(hits) == 1:
            item.dataset = hits[0]
            break
    if item.dataset is None:
        if len(wanted) != 1:
            return "no path component names cifar or caltech (choose one with --dataset)"
        item.dataset = wanted[0]
    for c in reversed(item.comps):
        hits = {SPLIT_WORDS[t] for t in re.split(r"[^a-z0-9]+", c.lower()) if t in SPLIT_WORDS}
        if len(hits) == 1:
            item.split = hits.pop()
            break
    if item.split is None and item.dataset in wanted:
        stem = os.path.splitext(item.name)[0]
        if item.dataset == "CIFAR":
            return ("U-CIFAR split unknown: no train/test folder in the path and no index rule is "
                    "known for U-CIFAR; put the files under train/ and test/ folders and rerun")
        if not stem.isdigit():
            return "U-CALTECH file outside a train/test folder with a non-numeric name (need <index>.npz)"
        item.split = "train" if int(stem) <= CALTECH_TRAIN_LAST else "test"
    return None


def _count_npz(folder):
    return sum(f.endswith(".npz") for f in os.listdir(folder)) if os.path.isdir(folder) else 0


def _place(item, dest):
    """Move (our staging copy) or copy (the user's file) to dest atomically -> True if new."""
    if os.path.exists(dest):
        return False                     # identical: checked in organise()
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if item.move:
        atomic_move(item.path, dest)
    else:
        with open(item.path, "rb") as src:
            atomic_write(dest, lambda f: shutil.copyfileobj(src, f, 1 << 20))
    return True


def _examples(lines, k=5):
    more = f"\n    ... and {len(lines) - k} more" if len(lines) > k else ""
    return "\n    " + "\n    ".join(lines[:k]) + more


def organise(sources, data_root, wanted):
    """Organise archives/folders into data_root -> summary dict (counts). Raises FetchError."""
    os.makedirs(data_root, exist_ok=True)
    for stale in sorted(os.listdir(data_root)):
        if stale.startswith(".staging-"):
            print(f"removing {os.path.join(data_root, stale)} left by an interrupted run")
            shutil.rmtree(os.path.join(data_root, stale), ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=data_root)
    try:
        items, ignored = collect(sources, staging)
        problems, skipped = defaultdict(list), Counter()
        for it in items:
            why = classify(it, wanted)
            if why:
                problems[why].append(it.origin)
            elif it.dataset not in wanted:
                skipped[it.dataset] += 1
        if problems:
            raise FetchError("cannot place some files; nothing was moved:\n" + "\n".join(
                f"  {why} ({len(o)} files):{_examples(o)}" for why, o in problems.items()))
        plan = defaultdict(list)                        # destination -> items
        for it in items:
            if it.dataset in wanted:
                plan[os.path.join(data_root, DATASET_DIRS[it.dataset], it.split, it.name)].append(it)
        conflicts = [f"{g[0].origin} and {other.origin} -> {dest}" for dest, g in plan.items()
                     for other in g[1:] if not _same(g[0].path, other.path)]
        conflicts += [f"{g[0].origin} differs from the existing {dest}" for dest, g in plan.items()
                      if os.path.exists(dest) and not _same(g[0].path, dest)]
        if conflicts:
            raise FetchError("files with the same destination name but different content; nothing "
                             f"was moved ({len(conflicts)}):{_examples(conflicts, 20)}")

        folders = sorted({os.path.dirname(d) for d in plan})
        before = {f: _count_npz(f) for f in folders}
        new, identical, dups = Counter(), Counter(), Counter()
        for dest in _progress(iterable=sorted(plan, key=lambda p: (os.path.dirname(p), numeric_sort_key(p))),
                              desc="placing"):
            folder = os.path.dirname(dest)
            (new if _place(plan[dest][0], dest) else identical)[folder] += 1
            dups[folder] += len(plan[dest]) - 1
        after = {f: _count_npz(f) for f in folders}
        for f in folders:
            if after[f] != before[f] + new[f]:
                raise FetchError(f"{f}: holds {after[f]} .npz files, expected {before[f]} + "
                                 f"{new[f]} new: check the folder")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    n_src = sum(len(g) for g in plan.values())
    print(f"organised {n_src} .npz files from {len(sources)} source(s) into {data_root}:")
    for f in folders:
        n = sum(len(plan[d]) for d in plan if os.path.dirname(d) == f)
        print(f"  {os.path.relpath(f, data_root)}: {n} in the sources, {new[f]} new, "
              f"{identical[f]} identical already there, {dups[f]} duplicates in the sources; "
              f"folder {before[f]} -> {after[f]} files")
    placed, same = sum(new.values()), sum(identical.values()) + sum(dups.values())
    print(f"all {n_src} source files accounted for: {placed} placed, {same} identical copies skipped")
    for dt, n in skipped.items():
        print(f"  left alone: {n} {DATASET_DIRS[dt]} files (not selected by --dataset)")
    if ignored:
        print(f"  ignored {len(ignored)} files that are not .npz:{_examples(ignored)}")
    return {"sources": n_src, "placed": placed, "identical": same, "skipped": dict(skipped),
            "ignored": len(ignored), "folders": after}


# ----------------------------------------------------------------------------------------------
# verify

def verify(data_root, wanted):
    """Load every organised file -> True when all files are good and every split has files."""
    ok = True
    for dt in wanted:
        classes = CLASS_NAMES[dt]
        for split in ("train", "test"):
            folder = os.path.join(data_root, DATASET_DIRS[dt], split)
            names = sorted((f for f in os.listdir(folder) if f.endswith(".npz")), key=numeric_sort_key) \
                if os.path.isdir(folder) else []
            if not names:
                print(f"FAIL {folder}: {'no .npz files' if os.path.isdir(folder) else 'missing'}")
                ok = False
                continue
            bad, hist, shapes, mismatch = [], Counter(), Counter(), []
            for fn in _progress(iterable=names, desc=f"{DATASET_DIRS[dt]}/{split}"):
                try:
                    spk, label, label_name = load_npz(os.path.join(folder, fn), num_classes=len(classes))
                except SpikeDataError as e:
                    bad.append(str(e))
                    continue
                hist[label] += 1
                shapes[spk.shape] += 1
                if label_name and classes[label].lower() not in label_name.lower():
                    mismatch.append(f"{fn}: label {label} ({classes[label]}) vs label_name '{label_name}'")
            good = len(names) - len(bad)
            print(f"{'FAIL' if bad else 'ok  '} {DATASET_DIRS[dt]}/{split}: {len(names)} files, "
                  f"{good} good, {len(bad)} bad")
            for line in bad:
                print(f"     bad: {line}")
            ok = ok and not bad
            if not hist:
                continue
            counts = [hist[i] for i in range(len(classes))]
            missing = [classes[i] for i in range(len(classes)) if not hist[i]]
            if len(classes) <= 10:
                print("     labels: " + ", ".join(f"{classes[i]} {counts[i]}" for i in range(len(classes))))
            else:
                present = [c for c in counts if c]
                print(f"     labels: {len(present)}/{len(classes)} classes, {min(present)}-"
                      f"{max(present)} files per present class")
            if missing:
                print(f"     warning: no files of {len(missing)} classes: "
                      f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
            if len(hist) == 1 and good > 1:
                print(f"     warning: every file has label {next(iter(hist))}: a broken export?")
            if mismatch:
                print(f"     warning: {len(mismatch)} files whose label_name does not mention the "
                      f"class:{_examples(mismatch, 3)}")
            print("     shapes: " + ", ".join(f"{list(s)} x{n}" for s, n in shapes.most_common()))
            if any(s[0] < UHSR_FRAMES or min(s[1:]) < CROP_SIZE for s in shapes):
                print(f"     warning: the default model input needs {UHSR_FRAMES} frames of at least "
                      f"{CROP_SIZE}x{CROP_SIZE} px (real UHSR: [200, 250, 250])")
            if dt == "CALTECH":
                idx = [int(os.path.splitext(f)[0]) for f in names if os.path.splitext(f)[0].isdigit()]
                off = [i for i in idx if (i > CALTECH_TRAIN_LAST) == (split == "train")]
                if off:
                    print(f"     warning: {len(off)} indices against the 0-{CALTECH_TRAIN_LAST} train / "
                          f"{CALTECH_TRAIN_LAST + 1}+ test rule (e.g. {off[0]})")
    print("verification " + ("passed" if ok else "FAILED"))
    return ok


# ----------------------------------------------------------------------------------------------

def manual_instructions(data_root, dataset):
    downloads = os.path.join(data_root, "downloads")
    return f"""\
The real UHSR captures (U-CALTECH, U-CIFAR) are only distributed through a Baidu Netdisk share
linked from https://github.com/Evin-X/UHSR. There is no direct URL: you need a browser (or the
Baidu client), a Baidu account and the share's extraction code if the page gives one.

1. Open https://github.com/Evin-X/UHSR, follow the Baidu link and download the U-CALTECH and
   U-CIFAR data: the archives (.zip / .tar / .tar.gz) or folders of <index>.npz files
   (one sample a file, about 0.56 MB each; keys spk [200,250,250] uint8, label, label_name).
   If the share splits an archive into parts, join them into one archive first.
2. Put the archives (or extracted folders) in {downloads}/ (any folder works).
3. Run, with one --download_file per archive or folder:

   python fetch_data.py --data_root {data_root} --dataset {dataset} \\
       --download_file {downloads}/<archive or folder> [--download_file ...] --verify

Result: {data_root}/U-CALTECH/{{train,test}}/<index>.npz (index 0-4999 train, 5000+ test) and
{data_root}/U-CIFAR/{{train,test}}/<index>.npz. U-CIFAR files must come in train/ and test/ folders
(no index rule is known for them). Archives are left where they are; delete them when the
verification passes. Without the real data, simulated data in the same format works everywhere
(generate_synthetic_data.py)."""


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Organise downloaded UHSR archives into <data_root>/U-{CIFAR,CALTECH}/{train,test}/"
                    "<index>.npz and verify them. Exit codes: 0 ok, 1 verification failed, 2 input error.")
    p.add_argument("--data_root", default="data", help="where U-CIFAR/ and U-CALTECH/ go (default: data)")
    p.add_argument("--dataset", choices=sorted(DATASET_CHOICES), default="both", type=str.lower,
                   help="which dataset(s) to organise and verify; files of the other one are left in "
                        "the sources; with cifar or caltech, files whose path names neither "
                        "dataset are taken as that one (default: both)")
    p.add_argument("--download_file", action="append", default=[], metavar="PATH",
                   help="an archive (.zip, .tar, .tar.gz, .tgz) downloaded by hand, or a folder of "
                        "extracted files, to organise; may be repeated. Archives are kept; folders "
                        "are copied from, never changed")
    p.add_argument("--manual_download", action="store_true",
                   help="print how to get the UHSR data from its Baidu share by hand and exit")
    p.add_argument("--verify", action="store_true",
                   help="load every organised file (after organising, if sources are given); "
                        "report counts, bad files and label histograms; exit 1 if a file is bad "
                        "or a split is missing or empty")
    args = p.parse_args(argv)

    if args.manual_download:
        print(manual_instructions(args.data_root, args.dataset))
        return 0
    if not (args.download_file or args.verify):
        p.print_usage(sys.stderr)
        print("error: nothing to do: give --download_file, --verify or --manual_download", file=sys.stderr)
        return 2
    wanted = DATASET_CHOICES[args.dataset]
    try:
        if args.download_file:
            check_output_folder(args.data_root, "--data_root")
            organise(args.download_file, args.data_root, wanted)
    except InputError as e:
        return report_input_error(e)
    if args.verify:
        return 0 if verify(args.data_root, wanted) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
