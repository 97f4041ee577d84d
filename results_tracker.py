"""Experiment results: one JSON file that train.py / evaluate.py / test.py append to, and a CLI
that lists, ranks, compares and exports the runs in it.

    python results_tracker.py                          # every run, best per dataset marked (*)
    python results_tracker.py --dataset cifar --metric niqe
    python results_tracker.py --compare run_a run_b
    python results_tracker.py --format csv > runs.csv  # or markdown / json

File (default ./experiment_results.json): {"format": "spikeclip-snn-results", "version": 1,
"runs": [record, ...]}. A bare JSON list of records (what the seed wrote) is read as version 0
and rewritten in the current format on the next append. Appends are atomic and locked, so
several processes can append at once; a file that cannot be read is reported and never
overwritten. Records the listing cannot place (no known kind, a dataset that is not text) are
named on stderr and left out.

A record, as the scripts write it (readers cope with any field missing):
  id, timestamp (UTC ISO 8601)   added by append_record
  run_name, dataset              runs are grouped by both; dataset "U-CIFAR", "U-CALTECH" or
                                 "file:<name>" for one raw stream
  kind                           "train" | "evaluate" | "benchmark" (older records: inferred
                                 from which of the three payload keys below they carry)
  checkpoint, arch ("snn"|"ann"), split, clip_model, clip_weights, clip_random_init, warnings
  model                          what the network is, e.g. "SNN (T=4, direct)", "ANN (plain-CNN
                                 LRN)", "the original SpikeCLIP LRN" (the authors' weights)
  kind "train" (train.py):       train = {"stage_epochs": [coarse, prompt, fine], "history":
                                 [{"stage", "epoch", "val_score", "train_<term>": ...}],
                                 "best_val_score": the validation loss of the checkpoint
                                 (checkpoint_best.pth), "best_stage" that selected it,
                                 "best_epoch" (epochs of that stage done),
                                 "hq_bank": str, "world_size": int}
  kind "evaluate" (evaluate.py): metrics = {<arch>: M, "tfp": M, "tfi": M, and for a network
                                 with a linear skip "linear": M, that fitted filter alone}, M
                                 holding top1, top5 (fractions), niqe, brisque, piqe, psnr, ssim; and
                                 num_samples, iqa_variant, input_size, firing_rates, device
  kind "benchmark" (test.py):    benchmark = {"device", "latency_ms": {"median", "p90", "p99",
                                 ...}, "throughput": {"<batch>": images/s},
                                 "energy_mj_per_image", "params", "macs", "sops",
                                 "theoretical_energy_mj", "firing_rates", ...}

Best run per dataset: the highest top1 among runs whose CLIP weights are known to be real
(accuracy from a random CLIP is not a semantic result); when no run has one, the highest psnr,
then the lowest niqe. --metric NAME ranks by NAME instead. Ties go to the lower NIQE. A footer
line per dataset names the rule used.
"""
import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import sys
import uuid
from datetime import datetime, timezone

from dataset import DATASET_DIRS
from utils import InputError, atomic_write, check_output_folder, format_count, report_input_error

RESULTS_FILE = "experiment_results.json"
FORMAT_NAME = "spikeclip-snn-results"
FORMAT_VERSION = 1
KINDS = ("evaluate", "benchmark", "train")   # also the payload key of train/benchmark records
MISSING = "—"
DAGGER = "†"
RANDOM_CLIP_LABEL = "none (random init)"
RANDOM_CLIP_NOTE = f"{DAGGER} accuracy from randomly initialised CLIP is not a semantic result"

# The one table of directions: True = higher is better, False = lower is better. Looked up by a
# field's last name, then its parent's (benchmark.latency_ms.median -> latency_ms).
HIGHER_IS_BETTER = {
    "top1": True, "top5": True, "psnr": True, "ssim": True, "fps": True, "throughput": True,
    "throughput_with_voxelisation": True,
    "niqe": False, "brisque": False, "piqe": False, "latency_ms": False,
    "latency_ms_with_voxelisation": False, "energy_mj_per_image": False,
    "theoretical_energy_mj": False, "params": False, "macs": False, "sops": False,
    "val_score": False, "best_val_score": False,   # validation losses
}
ACCURACY = ("top1", "top5")
DEFAULT_RULE = ("top1", "psnr", "niqe")
# (header, row key) of the table; csv adds the identity fields the table leaves out
COLUMNS = [("*", "best"), ("name", "name"), ("date", "date"), ("dataset", "dataset"), ("model", "model"),
           ("checkpoint", "checkpoint"), ("CLIP weights", "clip_weights"), ("top1", "top1"),
           ("top5", "top5"), ("NIQE", "niqe"), ("BRISQUE", "brisque"), ("PIQE", "piqe"),
           ("PSNR", "psnr"), ("SSIM", "ssim"), ("latency ms", "latency_ms"),
           ("FPS (batch)", "fps"), ("energy mJ/img", "energy_mj_per_image"), ("params", "params")]
IDENTITY = ("checkpoint", "arch", "model", "clip_model", "clip_weights", "clip_random_init", "split")
CSV_COLUMNS = ["best", "name", "date", "dataset", "split", "checkpoint", "arch", "model", "clip_model",
               "clip_weights", "clip_status", "top1", "top5", "niqe", "brisque", "piqe", "psnr",
               "ssim", "latency_ms", "fps", "fps_batch", "energy_mj_per_image", "params"]


class ResultsFileError(InputError):
    """The results file exists but cannot be used; it has been left exactly as it was."""

    def __init__(self, path, problem):
        if os.path.isfile(path):
            advice = (f"The file was left untouched; move it aside (e.g. mv {path} {path}.bak) to start a "
                      f"new one, or repair it by hand.")
        else:   # a folder, a device such as /dev/null, a pipe, or a path not there yet
            advice = "Choose another --results_file (a JSON file in a writable folder; created if missing)."
        super().__init__(f"{path}: {problem}. {advice}")


# --------------------------------------------------------------------------- reading / writing

def load_records(path=RESULTS_FILE):
    """All records in `path`, oldest first; [] when there is no file yet. No lock: writers
    replace the file atomically, so a reader sees a whole old file or a whole new one."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise ResultsFileError(path, "not a regular file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as e:
        raise ResultsFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ResultsFileError(path, f"not valid JSON ({e})") from None
    except OSError as e:
        raise ResultsFileError(path, f"cannot be read ({e.strerror})") from None
    runs = data   # version 0: a bare list
    if isinstance(data, dict):
        if data.get("format") != FORMAT_NAME:
            raise ResultsFileError(path, f"not a results file (\"format\" is {data.get('format')!r})")
        version = data.get("version")
        if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
            raise ResultsFileError(path, f"version {version!r}: this results_tracker reads versions "
                                         f"1 to {FORMAT_VERSION} (a newer one wrote it?)")
        runs = data.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ResultsFileError(path, "\"runs\" is not a list of JSON objects")
    return runs


def check_results_file(path=RESULTS_FILE):
    """Before a long job, what append_record() does at its end, short of writing: take the
    lock, read the file as a results file, create (and remove) a temp file beside it. So the
    job's record is not lost at the end."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"--results_file {path}: its folder does not exist")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"--results_file {path}: the file is not writable")
    with _locked(path):
        load_records(path)
        check_output_folder(folder, "--results_file", path)     # where the atomic write puts its temp file


@contextlib.contextmanager
def _locked(path):
    """An exclusive flock on `path + ".lock"` (a sidecar: the data file is replaced on every
    write, and a lock on a replaced inode protects nothing)."""
    try:
        lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise InputError(f"--results_file {path}: cannot create its lock file {path}.lock "
                         f"({e.strerror})") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock_fd)   # releases the flock


def _json_safe(value, where, warnings):
    """NaN/inf -> None (with a warning): they are not JSON, and a strict reader would reject
    the whole file because of one bad metric."""
    if isinstance(value, float) and not math.isfinite(value):
        warnings.append(f"{where} was {value!r}; stored as null")
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v, f"{where}.{k}" if where else str(k), warnings) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", warnings) for i, v in enumerate(value)]
    return value


def append_record(record, path=RESULTS_FILE):
    """Append one record to `path` and return it (a copy, with id and timestamp filled in).

    The read-modify-write runs under the lock of _locked(); check_results_file() tries the same
    steps before a long job."""
    warnings = record.get("warnings") or []
    warnings = [warnings] if isinstance(warnings, str) else list(warnings)
    record = _json_safe(dict(record), "", warnings)
    if warnings:
        record["warnings"] = warnings
    record.setdefault("id", uuid.uuid4().hex)
    record.setdefault("timestamp", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    record = json.loads(json.dumps(record))   # fail on values JSON cannot hold before touching the file
    with _locked(path):
        runs = load_records(path) + [record]   # re-read under the lock: others may have appended
        text = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "runs": runs},
                          indent=1, ensure_ascii=False) + "\n"
        atomic_write(path, lambda f: f.write(text), mode="w")
    return record


# --------------------------------------------------------------------------- one row per run

def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _dict(d, *keys):
    """d[k1][k2]... when every level is a dict, else {} (hand-edited files must not crash us)."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d if isinstance(d, dict) else {}


def _kind(rec):
    if rec.get("kind") in KINDS:
        return rec["kind"]
    return next((k for k, key in zip(KINDS, ("metrics", "benchmark", "train")) if key in rec), None)


def clip_status(row):
    """"real", "random" or "unknown" CLIP weights of a record or row."""
    weights = row.get("clip_weights")
    if row.get("clip_random_init") is True or (isinstance(weights, str) and weights.lower().startswith("none")):
        return "random"
    return "real" if row.get("clip_random_init") is False or weights else "unknown"


def merge_runs(records):
    """One row per (run_name, dataset), from its latest record of each kind, in order of first
    appearance; records that cannot be placed (left_out() says which and why) are skipped."""
    groups = {}
    for rec in records:
        if _why_left_out(rec) is None:
            key = (str(rec.get("run_name") or "(unnamed)"), rec.get("dataset"))
            groups.setdefault(key, {})[_kind(rec)] = rec      # later records replace earlier ones
    return [_row(name, dataset, latest) for (name, dataset), latest in groups.items()]


def _why_left_out(rec):
    if _kind(rec) is None:
        return f"no known kind (\"kind\" is none of {', '.join(KINDS)}, and no payload tells it)"
    dataset = rec.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        return f"\"dataset\" is a {type(dataset).__name__}, not text"
    return None


def left_out(records):
    """A line for each record merge_runs() skips: record number, run name, why."""
    return [f"record {i + 1} (run {str(rec.get('run_name') or '(unnamed)')!r}): {why}"
            for i, rec in enumerate(records) for why in [_why_left_out(rec)] if why]


def _row(name, dataset, latest):
    recs = [latest[k] for k in KINDS if k in latest]    # the evaluation's identity wins
    ev, bench = latest.get("evaluate", {}), _dict(latest.get("benchmark", {}), "benchmark")
    row = {"name": name, "dataset": None if dataset is None else str(dataset),
           "date": max(str(r.get("timestamp") or "") for r in recs) or None}
    row.update({k: next((r[k] for r in recs if r.get(k) is not None), None) for k in IDENTITY})
    if row["model"] is None and row["arch"] is not None:   # records from before the "model" field
        row["model"] = str(row["arch"]).upper()
    # a stream model's --dat record also scores it stateful, as reconstruct.py runs it: that counts
    model = _dict(ev, "metrics", "stateful")
    if model and row["model"] is not None:
        row["model"] += ", stateful"
    model = model or _dict(ev, "metrics", "snn") or _dict(ev, "metrics", "ann")
    row.update({k: model.get(k) for k in ("top1", "top5", "niqe", "brisque", "piqe", "psnr", "ssim")})
    batches = [(int(b), v) for b, v in _dict(bench, "throughput").items() if b.isdigit() and _number(v)]
    row["fps_batch"], row["fps"] = max(batches) if batches else (None, None)   # the largest batch
    row["latency_ms"] = _dict(bench, "latency_ms").get("median")
    row["energy_mj_per_image"], row["params"] = bench.get("energy_mj_per_image"), bench.get("params")
    row["clip_status"] = clip_status(row)
    row["warnings"] = [str(w) for r in recs if isinstance(r.get("warnings"), list) for w in r["warnings"]]
    row.update({key: latest.get(kind, {}).get(key) for kind, key in
                zip(KINDS, ("metrics", "benchmark", "train"))})
    return row


# --------------------------------------------------------------------------- best run

def _better(metric, a, b):
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def mark_best(rows, metric=None):
    """Set row["best"] per dataset -> {dataset: footer line naming the rule that was used}."""
    footers = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset]
        rule = DEFAULT_RULE if metric is None else (metric,)
        label = dataset or MISSING
        footers[dataset] = f"best {label}: none marked -- no run has {_needed(rule)}"
        for r in group:
            r["best"] = False
        for i, m in enumerate(rule):
            cands = [r for r in group if _number(r.get(m)) and (m not in ACCURACY or r["clip_status"] == "real")]
            if not cands:
                continue
            top = [r for r in cands if not any(_better(m, o[m], r[m]) for o in cands)]
            niqes = [r["niqe"] for r in top if _number(r.get("niqe"))]
            for r in top:   # ties go to the lower NIQE; runs still tied are all best
                r["best"] = not niqes or r.get("niqe") == min(niqes)
            text = f"{m} ({'higher' if HIGHER_IS_BETTER[m] else 'lower'} is better"
            text += ", runs with real CLIP weights only" if m in ACCURACY else ""
            fallback = f" -- fallback: no run has {_needed(rule[:i])}" if i else ""
            footers[dataset] = f"best {label}: by {text}; ties -> lower NIQE){fallback}"
            break
    return footers


def _needed(metrics):
    return " or ".join(f"{m} (real CLIP)" if m in ACCURACY else m for m in metrics)


# --------------------------------------------------------------------------- output

def _cell(key, v, random_clip=False):
    """How a value prints in the table, markdown and compare views."""
    if v is None:
        return MISSING
    if not _number(v):
        return str(v)
    if key in ACCURACY:
        return f"{100 * v:.2f}%" + (DAGGER if random_clip else "")
    if key in ("params", "macs", "sops"):
        return format_count(v)
    return f"{v:.4f}" if key == "ssim" else f"{v:.2f}" if isinstance(v, float) else str(v)


def _raw(v):
    """A csv cell: missing -> empty, True -> yes, False -> empty, anything else as it is."""
    return "" if v is None or v is False else "yes" if v is True else v


def _table_cells(row):
    random_clip = row["clip_status"] == "random"
    special = {"best": "*" if row.get("best") else "",
               "date": (row["date"] or MISSING)[:16].replace("T", " "),
               "clip_weights": RANDOM_CLIP_LABEL if random_clip else row["clip_weights"] or MISSING,
               "fps": MISSING if row["fps"] is None else f"{row['fps']:.1f} (b={row['fps_batch']})"}
    return [special[k] if k in special else _cell(k, row.get(k), random_clip) for _, k in COLUMNS]


def write_table(headers, rows, fmt, out, right=()):
    """Rows of cells as an aligned text table (columns in `right` right-aligned), markdown or csv."""
    if fmt == "csv":
        csv.writer(out, lineterminator="\n").writerows([headers] + rows)
        return
    if fmt == "markdown":
        for cells in [headers, ["---"] * len(headers)] + rows:
            out.write("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |\n")
        return
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    for cells in [headers, ["-" * w for w in widths]] + rows:
        out.write("  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                            for i, (c, w) in enumerate(zip(cells, widths))).rstrip() + "\n")


def print_runs(rows, footers, fmt, out=None):
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    elif fmt == "csv":   # raw values (accuracy as a fraction); no footer, it would break readers
        write_table(CSV_COLUMNS, [[_raw(r.get(k)) for k in CSV_COLUMNS] for r in rows], "csv", out)
    else:
        numeric = {i for i, (_, k) in enumerate(COLUMNS) if k in HIGHER_IS_BETTER}
        write_table([h for h, _ in COLUMNS], [_table_cells(r) for r in rows], fmt, out, numeric)
        notes = list(footers.values())
        if any(r["clip_status"] == "random" and (r["top1"] is not None or r["top5"] is not None) for r in rows):
            notes.append(RANDOM_CLIP_NOTE)
        out.write("\n" + "".join(("- " if fmt == "markdown" else "") + n + "\n" for n in notes))


def _flatten(value, prefix, out):
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = f"{len(value)} entries" if isinstance(value, list) and value else value
    return out


def compare_rows(a, b):
    """[{field, a, b, diff (B - A), better}] over every field of either run. No "better" for
    accuracy when either run used a random CLIP: that accuracy is not a semantic result; nor
    for best_val_score of checkpoints chosen in different stages (different losses)."""
    def fields(row):
        out = {k: row[k] for k in ("dataset", "date", *IDENTITY, "clip_status")}
        out["warnings"] = "; ".join(row["warnings"]) or None
        for key in ("metrics", "benchmark", "train"):
            if row.get(key) is not None:
                _flatten(row[key], key, out)
        return out
    fa, fb = fields(a), fields(b)
    random_clip = "random" in (a["clip_status"], b["clip_status"])
    other_loss = fa.get("train.best_stage") != fb.get("train.best_stage")   # stages' losses differ
    table = []
    for field in dict.fromkeys(list(fa) + list(fb)):
        va, vb = fa.get(field), fb.get(field)
        names = field.split(".")
        higher = HIGHER_IS_BETTER.get(names[-1], HIGHER_IS_BETTER.get(names[-2]) if len(names) > 1 else None)
        diff = better = None
        if _number(va) and _number(vb):
            diff = vb - va
            if higher is not None and not (random_clip and names[-1] in ACCURACY) \
                    and not (other_loss and names[-1] == "best_val_score"):
                better = "=" if diff == 0 else "B" if (diff > 0) == higher else "A"
        table.append({"field": field, "a": va, "b": vb, "diff": diff, "better": better})
    return table


def print_compare(a, b, fmt, out=None):
    out = out or sys.stdout
    table = compare_rows(a, b)
    if fmt == "json":
        out.write(json.dumps({"a": a["name"], "b": b["name"], "fields": table}, indent=1,
                             ensure_ascii=False) + "\n")
        return
    headers = ["field", f"A: {a['name']}", f"B: {b['name']}", "B - A", "better"]
    if fmt == "csv":
        write_table(headers, [[_raw(t[k]) for k in ("field", "a", "b", "diff", "better")] for t in table],
                    "csv", out)
        return
    cells = []
    for t in table:
        leaf = t["field"].split(".")[-1]
        diff = "" if t["diff"] is None else f"{100 * t['diff']:+.2f} pp" if leaf in ACCURACY else f"{t['diff']:+.4g}"
        cells.append([t["field"], _cell(leaf, t["a"], a["clip_status"] == "random"),
                      _cell(leaf, t["b"], b["clip_status"] == "random"), diff, t["better"] or ""])
    write_table(headers, cells, fmt, out, right={3})
    if any(DAGGER in c for row in cells for c in row):
        out.write(("\n- " if fmt == "markdown" else "\n") + RANDOM_CLIP_NOTE + "\n")


# --------------------------------------------------------------------------- CLI

def main(argv=None):
    p = argparse.ArgumentParser(description="List, rank, compare and export experiment results.")
    p.add_argument("--file", default=RESULTS_FILE, help="results file (default: %(default)s)")
    p.add_argument("--dataset", help="only runs on this dataset: cifar, caltech, or a record's "
                                     "dataset as it is written (e.g. file:capture.dat)")
    p.add_argument("--metric", choices=sorted(k for _, k in COLUMNS if k in HIGHER_IS_BETTER),
                   help="rank the best run per dataset by this metric instead of the default rule "
                        "(top1 among real-CLIP runs, else psnr, else niqe)")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="side-by-side of two runs, with B - A and which is better")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    args = p.parse_args(argv)
    try:
        records = load_records(args.file)
    except InputError as e:
        return report_input_error(e)
    rows = merge_runs(records)
    for line in left_out(records):   # on stderr: stdout stays parseable
        print(f"note: {args.file}: {line}; left out", file=sys.stderr)
    if args.dataset is not None:
        wanted = DATASET_DIRS.get(args.dataset.lower(), args.dataset)
        rows = [r for r in rows if r["dataset"] == wanted]
    if not rows:
        where = os.path.abspath(args.file)
        what = (f"no runs yet: {where} does not exist" if not os.path.exists(args.file) else
                f"no runs{' for dataset ' + args.dataset if args.dataset else ''} in {where}")
        if args.format in ("json", "csv"):   # keep stdout parseable; say why on stderr
            print("[]" if args.format == "json" else ",".join(CSV_COLUMNS))
        print(what, file=sys.stderr if args.format in ("json", "csv") else sys.stdout)
        return 1 if args.compare else 0
    if args.compare:
        named = [[r for r in rows if r["name"] == name] for name in args.compare]
        for name, matches in zip(args.compare, named):
            if len(matches) != 1:
                known = ", ".join(sorted({r["name"] for r in rows}))
                print(f"error: no run named {name!r} (known: {known})" if not matches else
                      f"error: run {name!r} exists for several datasets; pick one with --dataset",
                      file=sys.stderr)
                return 1
        print_compare(named[0][0], named[1][0], args.format)
        return 0
    print_runs(rows, mark_best(rows, args.metric), args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
