"""Experiment results: one JSON file that train.py / evaluate.py / test.py append to, and a CLI
that lists, ranks, compares and exports the runs in it.

Library use:
    from results_tracker import append_record, load_records
    append_record({"run_name": "snn_cifar", "kind": "evaluate", "dataset": "U-CIFAR", ...})

CLI:
    python results_tracker.py                          # every run, best per dataset marked
    python results_tracker.py --dataset U-CIFAR --metric niqe
    python results_tracker.py --compare run_a run_b
    python results_tracker.py --format csv > runs.csv  # or markdown / json

File format (default ./experiment_results.json):
    {"format": "spikeclip-snn-results", "version": 1, "runs": [record, ...]}
A plain JSON list of records (what the old seed wrote) is read as version 0 and is rewritten in the
current format the next time a record is appended.

Record schema -- every field may be missing; readers must cope:
    id                str    uuid4 hex, added by append_record
    timestamp         str    UTC ISO 8601, added by append_record
    run_name          str    runs are grouped by (run_name, dataset)
    kind              str    "train" | "evaluate" | "benchmark"
                             (inferred from the "train"/"metrics"/"benchmark" key when absent)
    dataset           str    "U-CIFAR", "U-CALTECH", or "file:<name>" for a single-file run
    split             str    e.g. "test"
    checkpoint        str    path of the checkpoint that was run
    arch              str    "snn" | "ann"
    model             str    what the network is, e.g. "SNN (T=4, direct)", "ANN (plain-CNN LRN)",
                             "the original SpikeCLIP LRN" (the authors' trained weights)
    clip_model        str    e.g. "ViT-B-32"
    clip_weights      str    "openai", a file path, or "none (random init)"
    clip_random_init  bool   True when CLIP was randomly initialised
    warnings          [str]
  kind == "evaluate":
    metrics = {"snn" or "ann": M, "tfp": M, "tfi": M}   (the model, and the TFP / TFI baselines)
        M has any of: top1, top5 (fractions in [0, 1]), niqe, brisque, piqe, psnr, ssim (floats),
        num_samples (int), iqa_variant (str)
  kind == "benchmark":
    benchmark = {"device": str,
                 "latency_ms": {"median": f, "p90": f, "p99": f},
                 "throughput": {"<batch size>": images per second},
                 "energy_mj_per_image": f or null, "avg_power_w": f, "idle_power_w": f,
                 "params": int, "macs": int, "sops": f, "theoretical_energy_mj": f,
                 "firing_rates": {layer: rate}}
  kind == "train":
    train = {"epochs": int, "best_val_score": f, "stage_losses": {stage: loss}}

Best run per dataset (the "*" column, "best" in csv/json):
    Default: highest top1, counted only among runs whose CLIP weights are known to be real
    (accuracy from a randomly initialised CLIP is not a semantic result; a run that does not say
    which weights it used is not counted either). When no such run has a top1, fall back to the
    highest psnr, then to the lowest niqe, over all runs of the dataset. --metric NAME ranks by
    NAME instead (top1/top5 still only among real-CLIP runs). Runs missing the metric are never
    best. Ties go to the lower NIQE; runs still tied are all marked. A footer line per dataset
    names the rule that was used.
"""
import argparse
import csv
import fcntl
import json
import math
import os
import sys
import uuid
from datetime import datetime, timezone

RESULTS_FILE = "experiment_results.json"
FORMAT_NAME = "spikeclip-snn-results"
FORMAT_VERSION = 1
MISSING = "—"  # what a missing field prints as in table / markdown / compare output
DAGGER = "†"
RANDOM_CLIP_LABEL = "none (random init)"
RANDOM_CLIP_NOTE = f"{DAGGER} accuracy from randomly initialised CLIP is not a semantic result"
KINDS = ("evaluate", "benchmark", "train")


class ResultsFileError(Exception):
    """The results file exists but cannot be used; it has been left exactly as it was."""

    def __init__(self, path, problem):
        self.path = path
        self.problem = problem
        super().__init__(
            f"{path}: {problem}. The file was left untouched; move it aside "
            f"(e.g. mv {path} {path}.bak) to start a new one, or repair it by hand.")


# --------------------------------------------------------------------------- reading / writing

def _parse(text, path):
    """Return the list of records in `text`, or raise ResultsFileError saying what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsFileError(path, f"not valid JSON ({e})") from None
    if isinstance(data, list):  # version 0: the old seed wrote a bare list of records
        runs = data
    elif isinstance(data, dict):
        if data.get("format") != FORMAT_NAME:
            raise ResultsFileError(
                path, f"not a results file (\"format\" is {data.get('format')!r}, "
                      f"expected {FORMAT_NAME!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ResultsFileError(path, f"unknown version {version!r}")
        if version > FORMAT_VERSION:
            raise ResultsFileError(
                path, f"written by a newer results_tracker (version {version}; this one reads "
                      f"up to {FORMAT_VERSION})")
        runs = data.get("runs")
        if not isinstance(runs, list):
            raise ResultsFileError(path, "\"runs\" is missing or not a list")
    else:
        raise ResultsFileError(path, f"top level is a JSON {type(data).__name__}, "
                                     f"expected an object")
    for i, rec in enumerate(runs):
        if not isinstance(rec, dict):
            raise ResultsFileError(path, f"run #{i} is a JSON {type(rec).__name__}, "
                                         f"expected an object")
    return runs


def load_records(path=RESULTS_FILE):
    """All records in `path` (oldest first); [] when the file does not exist yet.

    No lock is taken: writers replace the file atomically, so a reader sees a whole old file or a
    whole new one, never half of one.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as e:
        raise ResultsFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    return _parse(text, path)


def _json_safe(value, where, warnings):
    """Copy of `value` with NaN/inf replaced by None: they are not valid JSON, and a strict reader
    (jq, a browser) would reject the whole file because of one bad metric."""
    if isinstance(value, float) and not math.isfinite(value):
        warnings.append(f"{where} was {value!r}; stored as null")
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v, f"{where}.{k}" if where else str(k), warnings)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", warnings) for i, v in enumerate(value)]
    return value


def _write_atomically(path, text):
    """Write `text` to `path` so that a crash leaves either the old or the new file, never a torn
    one: temp file in the same directory (os.replace is only atomic within one filesystem), fsync,
    rename over the old file, fsync the directory so the rename itself is durable."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):  # keep the permissions the user gave the file
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def append_record(record, path=RESULTS_FILE):
    """Append one record to `path` and return it (a copy, with `id` and `timestamp` filled in).

    Safe with several processes appending at once: the read-modify-write happens under an
    exclusive flock on `path + ".lock"` (a sidecar, because the data file itself is replaced on
    every write and a lock on a replaced inode protects nothing). A corrupt or newer-version file
    raises ResultsFileError and is not overwritten.
    """
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    warnings = record.get("warnings") or []
    warnings = [warnings] if isinstance(warnings, str) else list(warnings)
    record = _json_safe(dict(record), "", warnings)
    if warnings:
        record["warnings"] = warnings
    record.setdefault("id", uuid.uuid4().hex)
    record.setdefault("timestamp", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    text_of_record = json.dumps(record)  # fail on unserialisable values before touching the file

    lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        runs = load_records(path)  # re-read under the lock: another writer may have appended
        runs.append(json.loads(text_of_record))
        doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "runs": runs}
        _write_atomically(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    finally:
        os.close(lock_fd)  # closing the descriptor releases the flock
    return record


# --------------------------------------------------------------------------- merging runs

def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _get(d, *keys):
    """d[k1][k2]... or None when any level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _kind(rec):
    kind = rec.get("kind")
    if kind in KINDS:
        return kind
    # Legacy records carry no kind; the payload key says what they are.
    for kind, key in (("evaluate", "metrics"), ("benchmark", "benchmark"), ("train", "train")):
        if key in rec:
            return kind
    return None


def _time_key(rec, index):
    """Sort key for "latest": the timestamp, then position in the file (appends are in order)."""
    try:
        t = datetime.fromisoformat(str(rec.get("timestamp")))
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)  # our timestamps are UTC; assume the same
        return (t.timestamp(), index)
    except ValueError:
        return (float("-inf"), index)


def clip_status(row):
    """"real", "random" or "unknown" CLIP weights for a record or merged row."""
    weights = row.get("clip_weights")
    if row.get("clip_random_init") is True:
        return "random"
    if isinstance(weights, str) and weights.strip().lower().startswith("none"):
        return "random"
    if row.get("clip_random_init") is False or weights:
        return "real"
    return "unknown"


def _largest_batch_fps(throughput):
    """(images/s, batch) at the largest batch size measured, or (None, None)."""
    best = (None, None)
    if not isinstance(throughput, dict):
        return best
    for batch, fps in throughput.items():
        try:
            b = int(batch)
        except (TypeError, ValueError):
            continue
        if _is_number(fps) and (best[1] is None or b > best[1]):
            best = (fps, b)
    return best


IDENTITY = ("checkpoint", "arch", "model", "clip_model", "clip_weights", "clip_random_init", "split")


def _merge_group(name, dataset, latest):
    """One row from the latest record of each kind of one (run_name, dataset)."""
    ev, bm, tr = (latest.get(k) for k in KINDS)
    recs = [r for r in (ev, bm, tr) if r is not None]
    row = {"name": name, "dataset": dataset}
    # Identity fields: the evaluation is what the accuracy columns describe, so it wins.
    for key in IDENTITY:
        row[key] = next((r[key] for r in recs if r.get(key) is not None), None)
    if row["model"] is None and row["arch"] is not None:   # records from before the "model" field
        row["model"] = str(row["arch"]).upper()
    row["date"] = max(recs, key=lambda r: _time_key(r, 0)).get("timestamp")
    model = _get(ev, "metrics", "snn") or _get(ev, "metrics", "ann") or {}
    for key in ("top1", "top5", "niqe", "brisque", "piqe", "psnr", "ssim"):
        row[key] = model.get(key) if isinstance(model, dict) else None
    bench = (bm or {}).get("benchmark")
    bench = bench if isinstance(bench, dict) else {}
    row["latency_ms"] = _get(bench, "latency_ms", "median")
    row["fps"], row["fps_batch"] = _largest_batch_fps(bench.get("throughput"))
    row["energy_mj_per_image"] = bench.get("energy_mj_per_image")
    row["params"] = bench.get("params")
    row["clip_status"] = clip_status(row)
    row["warnings"] = [str(w) for r in recs if isinstance(r.get("warnings"), list)
                       for w in r["warnings"]]
    row["metrics"] = (ev or {}).get("metrics")
    row["benchmark"] = (bm or {}).get("benchmark")
    row["train"] = (tr or {}).get("train")
    row["record_ids"] = {k: r.get("id") for k, r in latest.items()}
    return row


def merge_runs(records):
    """One row per (run_name, dataset), merging its latest evaluate, benchmark and train record.
    Rows come out in order of first appearance in the file; a record whose kind is neither given
    nor inferable from its payload is skipped (there is nothing in it to show)."""
    groups = {}  # (name, dataset) -> {kind: (time key, record)}
    for i, rec in enumerate(records):
        kind = _kind(rec)
        if kind is None:
            continue
        name = str(rec.get("run_name") or f"(unnamed {str(rec.get('id') or i)[:8]})")
        dataset = rec.get("dataset")
        dataset = None if dataset is None else str(dataset)  # a hand-edited list must not crash
        latest = groups.setdefault((name, dataset), {})
        key = _time_key(rec, i)
        if kind not in latest or key >= latest[kind][0]:
            latest[kind] = (key, rec)
    return [_merge_group(name, ds, {k: r for k, (_, r) in latest.items()})
            for (name, ds), latest in groups.items()]


# --------------------------------------------------------------------------- best run

# CLI metric name -> (row key, higher is better)
METRICS = {
    "top1": ("top1", True), "top5": ("top5", True), "psnr": ("psnr", True),
    "ssim": ("ssim", True), "fps": ("fps", True),
    "niqe": ("niqe", False), "brisque": ("brisque", False), "piqe": ("piqe", False),
    "latency": ("latency_ms", False), "energy": ("energy_mj_per_image", False),
    "params": ("params", False),
}
ACCURACY = {"top1", "top5"}
DEFAULT_CHAIN = ("top1", "psnr", "niqe")


def _candidates(rows, metric):
    key, _ = METRICS[metric]
    return [r for r in rows if _is_number(r.get(key))
            and (metric not in ACCURACY or r["clip_status"] == "real")]


def _winners(cands, metric):
    """The best of `cands` by `metric`, ties to the lower NIQE, still-tied runs all returned."""
    key, higher = METRICS[metric]
    pick = max if higher else min
    top = pick(r[key] for r in cands)
    tied = [r for r in cands if r[key] == top]
    niqes = [r["niqe"] for r in tied if _is_number(r.get("niqe"))]
    if len(tied) > 1 and niqes:
        tied = [r for r in tied if r.get("niqe") == min(niqes)]
    return tied


def _rule_text(metric):
    _, higher = METRICS[metric]
    text = f"{metric} ({'higher' if higher else 'lower'} is better"
    if metric in ACCURACY:
        text += ", runs with real CLIP weights only"
    return text + "; ties -> lower NIQE)"


def _needed(metrics):
    """'top1 (real CLIP) or psnr': what a run would have needed to be ranked."""
    return " or ".join(f"{m} (real CLIP)" if m in ACCURACY else m for m in metrics)


def mark_best(rows, metric=None):
    """Set row["best"] per dataset; return {dataset: footer line saying which rule was used}.

    metric=None is the default rule: top1 among real-CLIP runs, else psnr, else niqe.
    """
    by_dataset = {}
    for r in rows:
        r["best"] = False
        by_dataset.setdefault(r["dataset"], []).append(r)
    footers = {}
    for ds, group in by_dataset.items():
        label = ds if ds is not None else MISSING
        chain = DEFAULT_CHAIN if metric is None else (metric,)
        for i, m in enumerate(chain):
            cands = _candidates(group, m)
            if cands:
                for r in _winners(cands, m):
                    r["best"] = True
                why = "" if i == 0 else f" -- fallback: no run has {_needed(chain[:i])}"
                footers[ds] = f"best {label}: by {_rule_text(m)}{why}"
                break
        else:
            footers[ds] = f"best {label}: none marked -- no run has {_needed(chain)}"
        for r in group:
            r["best_rule"] = footers[ds]
    return footers


# --------------------------------------------------------------------------- formatting

def _fmt_date(ts):
    try:
        t = datetime.fromisoformat(str(ts))
    except ValueError:
        return str(ts) if ts else MISSING
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M")


def _fmt_count(n):
    """11234567 -> 11.23M: parameter / MAC counts are read at a glance, not digit by digit."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


# How each numeric field prints. Accuracy is stored as a fraction and shown as a percentage.
def fmt_value(key, v):
    if v is None:
        return MISSING
    if not _is_number(v):
        return str(v)
    if key in ACCURACY:
        return f"{100 * v:.2f}%"
    if key in ("params", "macs", "sops"):
        return _fmt_count(v)
    if key in ("niqe", "brisque", "piqe", "psnr", "latency_ms", "median", "p90", "p99"):
        return f"{v:.2f}"
    if key == "ssim":
        return f"{v:.4f}"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


# (header, row key) of the table columns; _table_cells knows how each one prints
COLUMNS = [
    ("*", "best"), ("name", "name"), ("date", "date"), ("dataset", "dataset"), ("model", "model"),
    ("checkpoint", "checkpoint"), ("CLIP weights", "clip_weights"), ("top1", "top1"),
    ("top5", "top5"), ("NIQE", "niqe"), ("BRISQUE", "brisque"), ("PIQE", "piqe"),
    ("PSNR", "psnr"), ("SSIM", "ssim"), ("latency ms", "latency_ms"), ("FPS (batch)", "fps"),
    ("energy mJ/img", "energy_mj_per_image"), ("params", "params"),
]
NUMERIC = {"top1", "top5", "niqe", "brisque", "piqe", "psnr", "ssim", "latency_ms", "fps",
           "energy_mj_per_image", "params"}


def _table_cells(row):
    cells = []
    for _, key in COLUMNS:
        v = row.get(key)
        if key == "best":
            cell = "*" if v else ""
        elif key == "date":
            cell = _fmt_date(v)
        elif key == "clip_weights":
            cell = RANDOM_CLIP_LABEL if row["clip_status"] == "random" else (v or MISSING)
        elif key == "fps":
            cell = MISSING if v is None else f"{v:.1f} (b={row['fps_batch']})"
        else:
            cell = fmt_value(key, v)
            if key in ACCURACY and v is not None and row["clip_status"] == "random":
                cell += DAGGER
        cells.append(str(cell))
    return cells


# csv carries raw values for spreadsheets (accuracy as a fraction, missing = empty cell) and the
# identity fields the table leaves out to stay narrow.
CSV_COLUMNS = ["best", "name", "date", "dataset", "split", "checkpoint", "arch", "model", "clip_model",
               "clip_weights", "clip_status", "top1", "top5", "niqe", "brisque", "piqe", "psnr",
               "ssim", "latency_ms", "fps", "fps_batch", "energy_mj_per_image", "params"]


def _csv_cells(row):
    return ["yes" if k == "best" and row[k] else "" if row.get(k) in (None, False) else row[k]
            for k in CSV_COLUMNS]


def render_text(headers, rows, right=()):
    """Aligned plain-text table; columns whose index is in `right` are right-aligned (numbers)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    return "\n".join(out + [line(r) for r in rows])


def render_markdown(headers, rows):
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|"]
                     + [line(r) for r in rows])


def render_csv(headers, rows, out):
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)


def _footer_lines(rows, footers):
    lines = [footers[ds] for ds in footers]
    if any(r["clip_status"] == "random" and (r.get("top1") is not None or r.get("top5") is not None)
           for r in rows):
        lines.append(RANDOM_CLIP_NOTE)
    return lines


def print_runs(rows, footers, fmt, out=None):
    """Write the merged rows to `out` (default stdout) in `fmt`: table, markdown, csv or json."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump(rows, out, indent=1, ensure_ascii=False)
        out.write("\n")
    elif fmt == "csv":  # no footer: it would break csv readers; the rule is in best_rule (json)
        render_csv(CSV_COLUMNS, [_csv_cells(r) for r in rows], out)
    else:
        headers = [h for h, _ in COLUMNS]
        cells = [_table_cells(r) for r in rows]
        if fmt == "markdown":
            out.write(render_markdown(headers, cells) + "\n\n")
            out.write("".join(f"- {line}\n" for line in _footer_lines(rows, footers)))
        else:
            right = {i for i, (_, k) in enumerate(COLUMNS) if k in NUMERIC}
            out.write(render_text(headers, cells, right) + "\n\n")
            out.write("".join(line + "\n" for line in _footer_lines(rows, footers)))


# --------------------------------------------------------------------------- compare

def _flatten(value, prefix, out):
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


HIGHER_BETTER = {"top1", "top5", "psnr", "ssim", "fps", "best_val_score"}
LOWER_BETTER = {"niqe", "brisque", "piqe", "energy_mj_per_image", "theoretical_energy_mj",
                "params", "macs", "sops"}


def direction(field):
    """+1 if bigger is better for this dotted field, -1 if smaller is, 0 if it is not a score."""
    parts = field.split(".")
    leaf, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if parent == "throughput":
        return 1
    if parent in ("latency_ms", "stage_losses") or leaf == "latency_ms":
        return -1
    return 1 if leaf in HIGHER_BETTER else -1 if leaf in LOWER_BETTER else 0


def _compare_fields(row):
    fields = {"dataset": row["dataset"], "date": row["date"]}
    fields.update({k: row[k] for k in IDENTITY})
    fields["clip_status"] = row["clip_status"]
    fields["warnings"] = "; ".join(row["warnings"]) or None
    for key in ("metrics", "benchmark", "train"):
        if row.get(key) is not None:
            _flatten(row[key], key, fields)
    return fields


def compare_rows(a, b):
    """[{field, a, b, diff, better}] over every field of either run; diff is B - A.

    No "better" is given for accuracy when either run used a randomly initialised CLIP: such
    accuracy is not a semantic result, so calling it better would mislead.
    """
    fa, fb = _compare_fields(a), _compare_fields(b)
    random_clip = "random" in (a["clip_status"], b["clip_status"])
    out = []
    for field in list(fa) + [f for f in fb if f not in fa]:
        va, vb = fa.get(field), fb.get(field)
        diff, better = None, None
        if _is_number(va) and _is_number(vb):
            diff = vb - va
            d = direction(field)
            if random_clip and field.split(".")[-1] in ACCURACY:
                d = 0
            if d:
                better = "=" if diff == 0 else "B" if diff * d > 0 else "A"
        out.append({"field": field, "a": va, "b": vb, "diff": diff, "better": better})
    return out


def _fmt_field(field, v, row):
    """Compare-view value: formatted by its leaf name, dagger on random-CLIP accuracy."""
    parts = field.split(".")
    if len(parts) > 1 and parts[-2] == "throughput" and _is_number(v):
        return f"{v:.1f}"
    text = fmt_value(parts[-1], v)
    if parts[-1] in ACCURACY and v is not None and row["clip_status"] == "random":
        text += DAGGER
    return text


def _fmt_diff(field, diff):
    if diff is None:
        return ""
    leaf = field.split(".")[-1]
    if leaf in ACCURACY:
        return f"{100 * diff:+.2f} pp"
    return f"{diff:+.4g}"


def print_compare(a, b, fmt, out=None):
    """Side-by-side of merged rows `a` and `b` written to `out` (default stdout) in `fmt`."""
    out = out or sys.stdout
    table = compare_rows(a, b)
    if fmt == "json":
        json.dump({"a": a["name"], "b": b["name"], "fields": table}, out, indent=1,
                  ensure_ascii=False)
        out.write("\n")
        return
    headers = ["field", f"A: {a['name']}", f"B: {b['name']}", "B - A", "better"]
    if fmt == "csv":
        render_csv(headers, [["" if x is None else x for x in (t["field"], t["a"], t["b"],
                                                                t["diff"], t["better"])]
                             for t in table], out)
        return
    cells = [[t["field"], _fmt_field(t["field"], t["a"], a), _fmt_field(t["field"], t["b"], b),
              _fmt_diff(t["field"], t["diff"]), t["better"] or ""] for t in table]
    note = RANDOM_CLIP_NOTE + "\n" if any(DAGGER in c for row in cells for c in row) else ""
    if fmt == "markdown":
        out.write(render_markdown(headers, cells) + "\n" + ("\n- " + note if note else ""))
    else:
        out.write(render_text(headers, cells, right={3}) + "\n" + ("\n" + note if note else ""))


# --------------------------------------------------------------------------- CLI

def _find_run(rows, name):
    matches = [r for r in rows if r["name"] == name]
    if not matches:
        raise LookupError(f"no run named {name!r} (known: "
                          f"{', '.join(sorted({r['name'] for r in rows})) or 'none'})")
    if len(matches) > 1:
        raise LookupError(f"run {name!r} exists for several datasets "
                          f"({', '.join(str(r['dataset']) for r in matches)}); pick one with "
                          f"--dataset")
    return matches[0]


def main(argv=None):
    p = argparse.ArgumentParser(description="List, rank, compare and export experiment results.")
    p.add_argument("--file", default=RESULTS_FILE, help="results file (default: %(default)s)")
    p.add_argument("--dataset", help="only runs on this dataset (e.g. U-CIFAR)")
    p.add_argument("--metric", choices=sorted(METRICS),
                   help="rank the best run per dataset by this metric instead of the default "
                        "rule (top1 among real-CLIP runs, else psnr, else niqe)")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="side-by-side of two runs, with B - A and which is better")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    args = p.parse_args(argv)

    try:
        records = load_records(args.file)
    except ResultsFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = merge_runs(records)
    if args.dataset is not None:
        rows = [r for r in rows if r["dataset"] == args.dataset]
    if not rows:
        where = os.path.abspath(args.file)
        what = (f"no runs yet: {where} does not exist" if not os.path.exists(args.file) else
                f"no runs{' for dataset ' + args.dataset if args.dataset else ''} in {where}")
        if args.format in ("json", "csv"):  # keep stdout parseable; say why on stderr
            print("[]" if args.format == "json" else ",".join(CSV_COLUMNS))
            print(what, file=sys.stderr)
        else:
            print(what)
        return 1 if args.compare else 0

    if args.compare:
        try:
            a, b = (_find_run(rows, name) for name in args.compare)
        except LookupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print_compare(a, b, args.format)
        return 0
    footers = mark_best(rows, args.metric)
    print_runs(rows, footers, args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
