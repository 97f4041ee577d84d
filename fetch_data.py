"""Organise downloaded UHSR archives into <data_root>/U-{CIFAR,CALTECH}/{train,test}/<index>.npz.

The real UHSR captures are only on a Baidu share (see github.com/Evin-X/UHSR); download them
by hand (--manual_download prints how), then:

    python fetch_data.py --download_file data/downloads/U-CALTECH.zip --download_file ... --verify

What it does (SPEC §2):
- archives (.zip, .tar, .tar.gz/.tgz, also nested inside each other) are checked member by member
  *before* anything is written: absolute paths, '..', links pointing outside the archive and
  device files are refused, naming the archive and the member. They are then extracted into a
  staging folder `<data_root>/.staging-*` (removed afterwards); already-extracted folders are
  read in place and copied, never moved;
- every `.npz` file is assigned a dataset by the deepest path component (the archive's own name
  counts) that contains "cifar" or "caltech", and a split by the deepest component with the word
  train(ing)/test(ing); without a split folder U-CALTECH files go by index (0-4999 train, 5000+
  test) and U-CIFAR files are an error, as no index rule is known for them;
- nothing is lost: every name collision is checked before any file is placed; a different file
  with the same destination name is an error naming both, identical content is skipped; each
  file lands atomically (temp file in the destination folder + os.replace) and the source and
  destination counts are reconciled at the end.

Exit codes: 0 ok, 1 verification found bad files, 2 usage or input error.
"""
import argparse
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import Counter, defaultdict

from tqdm import tqdm

from dataset import (CLASS_NAMES, DATASET_DIRS, UHSR_FRAMES, CROP_SIZE, SpikeDataError, load_npz,
                     numeric_sort_key)

SPLITS = ("train", "test")
SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "testing": "test"}
CALTECH_TRAIN_LAST = 4999          # U-CALTECH: index 0-4999 train, 5000+ test (SPEC §2)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
MAX_NESTING = 3                    # archives inside archives inside archives
MAX_LINK_HOPS = 16
DATASET_CHOICES = {"all": ["CIFAR", "CALTECH"], "cifar": ["CIFAR"], "caltech": ["CALTECH"]}


class FetchError(Exception):
    """A problem with the input (archive, folder, URL, collision): exit code 2."""


def _progress(**kw):
    return tqdm(disable=None, leave=False, **kw)   # silent when stderr is not a terminal


def _strip_archive_suffix(name):
    low = name.lower()
    for suf in ARCHIVE_SUFFIXES:
        if low.endswith(suf):
            return name[:-len(suf)]
    return name


def _is_archive_name(name):
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _same_content(a, b, chunk=1 << 20):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


# ----------------------------------------------------------------------------------------------
# download

def download(url, dest_dir, timeout=60, chunk=1 << 20):
    """Download url into dest_dir -> path of the complete file.

    Data goes to `<name>.part` and is renamed when complete. A `.part` left by an interrupted
    run is resumed when the server honours HTTP Range requests, otherwise the download restarts.
    An existing complete file is reused.
    """
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path)) or "uhsr_download"
    final = os.path.join(dest_dir, name)
    part = final + ".part"
    if os.path.exists(final):
        print(f"{final}: already downloaded (delete it to download again)")
        return final
    os.makedirs(dest_dir, exist_ok=True)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "SpikeCLIP-SNN fetch_data.py"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:      # the partial file is not a prefix the server knows
            print(f"{part}: server refused to resume (HTTP 416), restarting the download")
            os.remove(part)
            return download(url, dest_dir, timeout, chunk)
        raise FetchError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"download of {url} failed: {reason}. Check the URL and the network; "
                         f"the UHSR data itself is on a Baidu share (see --manual_download)") from e
    with resp:
        status = getattr(resp, "status", None)
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and status == 206:
            print(f"{part}: resuming after {have} bytes")
            mode, done = "ab", have
        else:
            if have:
                print(f"{part}: the server does not resume downloads, restarting")
            mode, done = "wb", 0
        total = None if length is None else done + length
        try:
            with open(part, mode) as f, _progress(total=total, initial=done, unit="B",
                                                  unit_scale=True, desc=name) as bar:
                while True:
                    buf = resp.read(chunk)
                    if not buf:
                        break
                    f.write(buf)
                    done += len(buf)
                    bar.update(len(buf))
        except (OSError, ValueError, EOFError) as e:   # socket errors, IncompleteRead, full disk
            raise FetchError(f"download of {url} interrupted after {done} bytes ({e}); run the "
                             f"same command again to resume ({part} is kept)") from e
    if total is not None and done != total:
        raise FetchError(f"download of {url} incomplete: {done} of {total} bytes; run the same "
                         f"command again to resume ({part} is kept)")
    os.replace(part, final)
    print(f"downloaded {url} -> {final} ({done} bytes)")
    return final


# ----------------------------------------------------------------------------------------------
# safe extraction

def _member_path(archive, name):
    """Normalised relative path of an archive member; refuses absolute paths and '..'."""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        raise FetchError(f"{archive}: refusing member '{name}': absolute path")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FetchError(f"{archive}: refusing member '{name}': '..' would leave the extraction folder")
    return "/".join(parts)


def _link_target(archive, name, rel, linkname, hard):
    """Archive-relative path a link member points to; refuses targets outside the archive."""
    t = linkname.replace("\\", "/")
    kind = "hard link" if hard else "symbolic link"
    if t.startswith("/") or re.match(r"^[A-Za-z]:", t):
        raise FetchError(f"{archive}: refusing member '{name}': {kind} to absolute path '{linkname}'")
    base = "" if hard else posixpath.dirname(rel)    # tar hard links are relative to the root
    target = posixpath.normpath(posixpath.join(base, t))
    if target == ".." or target.startswith("../"):
        raise FetchError(f"{archive}: refusing member '{name}': {kind} to '{linkname}' points "
                         f"outside the extraction folder")
    return target


def _zip_entries(archive, zf):
    """(name, rel, kind, link_target, opener) for every member of a zip file."""
    out = []
    for info in zf.infolist():
        rel = _member_path(archive, info.filename)
        mode = info.external_attr >> 16
        if info.is_dir() or stat.S_ISDIR(mode):
            out.append((info.filename, rel, "dir", None, None))
        elif stat.S_ISLNK(mode):
            linkname = zf.read(info).decode("utf-8", "replace")
            target = _link_target(archive, info.filename, rel, linkname, hard=False)
            out.append((info.filename, rel, "link", target, None))
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise FetchError(f"{archive}: refusing member '{info.filename}': device or special file")
        else:
            out.append((info.filename, rel, "file", None, lambda info=info: zf.open(info)))
    return out


def _tar_entries(archive, tf):
    out = []
    for m in tf.getmembers():
        rel = _member_path(archive, m.name)
        if m.isdir():
            out.append((m.name, rel, "dir", None, None))
        elif m.isreg():
            out.append((m.name, rel, "file", None, lambda m=m: tf.extractfile(m)))
        elif m.issym() or m.islnk():
            target = _link_target(archive, m.name, rel, m.linkname, hard=m.islnk())
            out.append((m.name, rel, "link", target, None))
        else:
            raise FetchError(f"{archive}: refusing member '{m.name}': device or special file")
    return out


def _write_file(read_from, dest, archive, name):
    """Write a stream to dest atomically; a second member with the same name must be identical."""
    d = os.path.dirname(dest)
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".extract-", suffix=".tmp", dir=d)
        with os.fdopen(fd, "wb") as out, read_from() as src:
            shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, RuntimeError) as e:   # RuntimeError: encrypted zip member
        raise FetchError(f"{archive}: cannot extract member '{name}': {e}") from e
    if os.path.lexists(dest):
        same = os.path.isfile(dest) and _same_content(tmp, dest)
        os.remove(tmp)
        if not same:
            raise FetchError(f"{archive}: member '{name}' occurs twice with different content")
        return
    os.replace(tmp, dest)


def _archive_kind(path):
    """'zip', 'tar' (plain or compressed) or None, by content: a plain tar holding .npz files
    (themselves zips) must not be taken for a zip, so the zip magic has to open the file."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    if path.lower().endswith(".zip") and zipfile.is_zipfile(path):   # e.g. data prepended
        return "zip"
    return None


def safe_extract(archive, dest_dir):
    """Extract a zip/tar archive into dest_dir after checking every member -> number of files.

    Nothing is written when a member is refused. Links inside the archive are materialised as
    copies of the regular file they point to, so the extracted tree holds no links at all.
    """
    try:
        kind = _archive_kind(archive)
        if kind == "zip":
            opened, entries_of = zipfile.ZipFile(archive), _zip_entries
        elif kind == "tar":
            opened, entries_of = tarfile.open(archive), _tar_entries
        else:
            raise FetchError(f"{archive}: not a zip or tar archive (an HTML page instead of the "
                             f"data? Baidu shares need a browser: see --manual_download)")
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise FetchError(f"{archive}: cannot open archive ({type(e).__name__}: {e})") from e
    with opened:
        try:
            entries = entries_of(archive, opened)          # every check happens here, first
            files = {rel: name for name, rel, kind, _, _ in entries if kind == "file" and rel}
            dirs = {rel for _, rel, kind, _, _ in entries if kind == "dir"}
            links = {rel: (name, target) for name, rel, kind, target, _ in entries if kind == "link"}
            resolved = {}
            for rel, (name, target) in links.items():
                for _ in range(MAX_LINK_HOPS):
                    if target in links:
                        target = links[target][1]
                        continue
                    break
                if target in files:
                    resolved[rel] = target
                elif target in dirs or target == "." or target in links:
                    raise FetchError(f"{archive}: refusing member '{name}': link to a directory "
                                     f"or a link loop ('{target}')")
                else:
                    raise FetchError(f"{archive}: refusing member '{name}': link target '{target}' "
                                     f"is not a file in the archive")
            os.makedirs(dest_dir, exist_ok=True)
            n = 0
            for name, rel, kind, _, opener in _progress(iterable=entries, desc=os.path.basename(archive)):
                if kind == "dir" and rel:
                    os.makedirs(os.path.join(dest_dir, rel), exist_ok=True)
                elif kind == "file" and rel:
                    _write_file(opener, os.path.join(dest_dir, rel), archive, name)
                    n += 1
            for rel, src in resolved.items():
                _write_file(lambda src=src: open(os.path.join(dest_dir, src), "rb"),
                            os.path.join(dest_dir, rel), archive, links[rel][0])
                n += 1
        except FetchError:
            raise
        except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise FetchError(f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e})") from e
    return n


# ----------------------------------------------------------------------------------------------
# organise

class _Item:
    __slots__ = ("path", "comps", "name", "move", "origin", "dataset", "split")

    def __init__(self, path, comps, name, move, origin):
        self.path, self.comps, self.name, self.move, self.origin = path, comps, name, move, origin
        self.dataset = self.split = None


def _scan(root, prefix, move, origin, staging, depth, items, ignored):
    """Collect the .npz files under root; nested archives are extracted into staging."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__MACOSX" and not d.startswith(".staging-"))
        rel = os.path.relpath(dirpath, root)
        rel_parts = [] if rel == "." else rel.split(os.sep)
        for fn in sorted(filenames):
            path = os.path.join(dirpath, fn)
            where = "/".join(rel_parts + [fn])
            if fn.startswith("._") or fn.startswith(".extract-"):
                ignored.append(f"{origin}{where}")
            elif fn.lower().endswith(".npz"):
                items.append(_Item(path, prefix + rel_parts, fn, move, f"{origin}{where}"))
            elif _is_archive_name(fn):
                if depth >= MAX_NESTING:
                    raise FetchError(f"{origin}{where}: archives nested more than {MAX_NESTING} deep")
                sub = tempfile.mkdtemp(prefix="nested-", dir=staging)
                safe_extract(path, sub)
                if move:                    # a copy inside staging: not needed any more
                    os.remove(path)
                _scan(sub, prefix + rel_parts + [_strip_archive_suffix(fn)], True,
                      f"{origin}{where}:", staging, depth + 1, items, ignored)
            else:
                ignored.append(f"{origin}{where}")


def collect(sources, staging):
    """Extract archives / walk folders -> (list of _Item, list of ignored non-.npz files)."""
    items, ignored, seen = [], [], set()
    for src in sources:
        real = os.path.realpath(src)
        if real in seen:
            continue
        seen.add(real)
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
            safe_extract(src, sub)
            _scan(sub, [_strip_archive_suffix(base)], True, f"{src}:", staging, 1, items, ignored)
    return items, ignored


def classify(item, wanted):
    """Set item.dataset / item.split from its path components -> None or a problem kind."""
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
    return sum(1 for f in os.listdir(folder) if f.endswith(".npz")) if os.path.isdir(folder) else 0


def _place(item, dest):
    """Move/copy one file to dest atomically -> 'new' or 'identical'."""
    if os.path.exists(dest):
        if _same_content(item.path, dest):
            return "identical"
        raise FetchError(f"{item.origin} and {dest} have the same name but different content")
    d = os.path.dirname(dest)
    os.makedirs(d, exist_ok=True)
    if item.move and os.stat(item.path).st_dev == os.stat(d).st_dev:
        os.replace(item.path, dest)
        return "new"
    fd, tmp = tempfile.mkstemp(prefix=f".{item.name}.", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        shutil.copyfile(item.path, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if item.move:
        os.remove(item.path)
    return "new"


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
                dest = os.path.join(data_root, DATASET_DIRS[it.dataset], it.split, it.name)
                plan[dest].append(it)
        conflicts = []
        for dest, group in plan.items():
            first = group[0]
            for other in group[1:]:
                if not _same_content(first.path, other.path):
                    conflicts.append(f"{first.origin} and {other.origin} -> {dest}")
            if os.path.exists(dest) and not _same_content(first.path, dest):
                conflicts.append(f"{first.origin} differs from the existing {dest}")
        if conflicts:
            raise FetchError("files with the same destination name but different content; nothing "
                             f"was moved ({len(conflicts)}):{_examples(conflicts, 20)}")

        folders = sorted({os.path.dirname(d) for d in plan})
        before = {f: _count_npz(f) for f in folders}
        new, identical, dups = Counter(), Counter(), Counter()
        for dest in _progress(iterable=sorted(plan, key=lambda p: (os.path.dirname(p), numeric_sort_key(p))),
                              desc="placing"):
            group = plan[dest]
            folder = os.path.dirname(dest)
            outcome = _place(group[0], dest)
            (new if outcome == "new" else identical)[folder] += 1
            dups[folder] += len(group) - 1
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
        for split in SPLITS:
            folder = os.path.join(data_root, DATASET_DIRS[dt], split)
            if not os.path.isdir(folder):
                print(f"FAIL {folder}: missing")
                ok = False
                continue
            names = sorted((f for f in os.listdir(folder) if f.endswith(".npz")), key=numeric_sort_key)
            if not names:
                print(f"FAIL {folder}: no .npz files")
                ok = False
                continue
            bad, hist, shapes, mismatch = [], Counter(), Counter(), []
            for fn in _progress(iterable=names, desc=f"{DATASET_DIRS[dt]}/{split}"):
                path = os.path.join(folder, fn)
                try:
                    spk, label, label_name = load_npz(path, num_classes=len(classes))
                except SpikeDataError as e:
                    bad.append(str(e))
                    continue
                except Exception as e:    # e.g. zlib.error from a corrupt compressed member
                    bad.append(f"{path}: unreadable ({type(e).__name__}: {e})")
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
linked from https://github.com/Evin-X/UHSR. There is no direct URL, so --download_url cannot
fetch them: you need a browser (or the Baidu client), a Baidu account and the share's
extraction code if the page gives one.

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
    p.add_argument("--dataset", choices=sorted(DATASET_CHOICES), default="all",
                   help="which dataset(s) to organise and verify; files of the other one are left in "
                        "the sources; with cifar or caltech, files whose path names neither "
                        "dataset are taken as that one (default: all)")
    p.add_argument("--download_url", action="append", default=[], metavar="URL",
                   help="download an archive into <data_root>/downloads/ (resumes a partial "
                        "download where the server allows) and organise it; may be repeated")
    p.add_argument("--download_file", action="append", default=[], metavar="PATH",
                   help="an archive (.zip, .tar, .tar.gz, .tgz) already downloaded, or a folder of "
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
    if not (args.download_url or args.download_file or args.verify):
        p.print_usage(sys.stderr)
        print("error: nothing to do: give --download_url, --download_file, --verify or "
              "--manual_download", file=sys.stderr)
        return 2
    wanted = DATASET_CHOICES[args.dataset]
    try:
        sources = list(args.download_file)
        for url in args.download_url:
            sources.append(download(url, os.path.join(args.data_root, "downloads")))
        if sources:
            organise(sources, args.data_root, wanted)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.verify:
        return 0 if verify(args.data_root, wanted) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
