"""results_tracker: file safety (locking, corrupt files, legacy upgrade), best run, CLI output."""
import csv
import io
import json
import multiprocessing
import os
import subprocess
import sys

import pytest

import results_tracker as rt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def evaluate(name, dataset="U-CIFAR", weights="openai", random_init=False, **snn):
    return {"run_name": name, "kind": "evaluate", "dataset": dataset, "clip_weights": weights,
            "clip_random_init": random_init, "metrics": {"snn": snn}}


def random_clip(name, dataset="U-CIFAR", **snn):
    return evaluate(name, dataset, weights="none (random init)", random_init=True, **snn)


def best_names(records, metric=None):
    rows = rt.merge_runs(records)
    footers = rt.mark_best(rows, metric)
    return {r["name"] for r in rows if r["best"]}, footers


def cli(capsys, *argv):
    code = rt.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def results(tmp_path):
    return str(tmp_path / "experiment_results.json")


# --------------------------------------------------------------------------- best-run rule

def test_best_is_top1_among_real_clip_only():
    best, footers = best_names([
        evaluate("real_low", top1=0.60, niqe=5.0),
        evaluate("real_high", top1=0.70, niqe=6.0),
        random_clip("random_higher", top1=0.99, niqe=1.0),
    ])
    assert best == {"real_high"}
    assert "top1" in footers["U-CIFAR"] and "real CLIP" in footers["U-CIFAR"]


def test_unknown_clip_weights_do_not_count_for_accuracy():
    unknown = {"run_name": "legacy", "kind": "evaluate", "dataset": "U-CIFAR",
               "metrics": {"snn": {"top1": 0.99}}}
    best, _ = best_names([unknown, evaluate("real", top1=0.5)])
    assert best == {"real"}


def test_best_is_per_dataset():
    best, footers = best_names([
        evaluate("cifar_a", top1=0.8), evaluate("cifar_b", top1=0.7),
        evaluate("caltech_a", "U-CALTECH", top1=0.3), evaluate("caltech_b", "U-CALTECH", top1=0.4),
    ])
    assert best == {"cifar_a", "caltech_b"}
    assert set(footers) == {"U-CIFAR", "U-CALTECH"}


def test_fallback_to_psnr_then_niqe_without_real_clip():
    best, footers = best_names([
        random_clip("r1", top1=0.9, psnr=20.0), random_clip("r2", top1=0.1, psnr=25.0),
        random_clip("n1", "U-CALTECH", top1=0.9, niqe=6.0),
        random_clip("n2", "U-CALTECH", top1=0.1, niqe=4.0),
    ])
    assert best == {"r2", "n2"}
    assert "by psnr" in footers["U-CIFAR"] and "fallback" in footers["U-CIFAR"]
    assert "by niqe" in footers["U-CALTECH"] and "lower is better" in footers["U-CALTECH"]


def test_a_stream_models_stateful_score_is_its_row():
    """evaluate.py --dat scores a temporal SNN from rest ("snn") and as reconstruct.py runs it
    ("stateful"): the row shows the stateful figures and says so, and they decide the best run."""
    stream = random_clip("stream", "file:a.dat", psnr=29.6)
    stream["metrics"]["stateful"] = {"psnr": 29.8}
    stream["model"] = "SNN (T=4, temporal)"
    rows = rt.merge_runs([stream, random_clip("direct", "file:a.dat", psnr=29.7)])
    row = next(r for r in rows if r["name"] == "stream")
    assert row["psnr"] == 29.8 and row["model"] == "SNN (T=4, temporal), stateful"
    assert best_names([stream, random_clip("direct", "file:a.dat", psnr=29.7)])[0] == {"stream"}


def test_no_metric_at_all_marks_nobody():
    best, footers = best_names([random_clip("r", top1=0.5)])
    assert best == set()
    assert "none marked" in footers["U-CIFAR"]


def test_metric_lower_is_better_and_missing_metric_never_best():
    best, footers = best_names([
        evaluate("a", top1=0.9, niqe=6.0), evaluate("b", top1=0.1, niqe=4.5),
        evaluate("no_niqe", top1=0.95),
    ], metric="niqe")
    assert best == {"b"}
    assert "lower is better" in footers["U-CIFAR"]


def test_metric_latency_uses_benchmark_records():
    def bench(name, median):
        return {"run_name": name, "kind": "benchmark", "dataset": "U-CIFAR",
                "benchmark": {"latency_ms": {"median": median}}}
    best, _ = best_names([bench("slow", 9.0), bench("fast", 2.0), evaluate("eval_only", top1=1)],
                         metric="latency_ms")
    assert best == {"fast"}


def test_tie_broken_by_lower_niqe_and_full_tie_marks_both():
    best, _ = best_names([evaluate("a", top1=0.8, niqe=5.0), evaluate("b", top1=0.8, niqe=4.0),
                          evaluate("c", top1=0.7, niqe=1.0)])
    assert best == {"b"}
    best, _ = best_names([evaluate("a", top1=0.8, niqe=4.0), evaluate("b", top1=0.8, niqe=4.0)])
    assert best == {"a", "b"}


def test_latest_record_of_each_kind_is_merged(results):
    rt.append_record(dict(evaluate("run", top1=0.5), timestamp="2024-01-01T00:00:00+00:00"),
                     results)
    rt.append_record(dict(evaluate("run", top1=0.7), timestamp="2024-02-01T00:00:00+00:00"),
                     results)
    rt.append_record({"run_name": "run", "kind": "benchmark", "dataset": "U-CIFAR",
                      "benchmark": {"throughput": {"1": 10.0, "64": 500.0, "8": 90.0},
                                    "params": 1000}}, results)
    [row] = rt.merge_runs(rt.load_records(results))
    assert row["top1"] == 0.7
    assert (row["fps"], row["fps_batch"]) == (500.0, 64)
    assert row["params"] == 1000


# --------------------------------------------------------------------------- CLI output

def test_missing_fields_print_dash(results, capsys):
    rt.append_record({"run_name": "bare", "kind": "evaluate"}, results)
    rt.append_record({"kind": "benchmark", "benchmark": {"throughput": None}}, results)
    rt.append_record({"run_name": "odd", "kind": "evaluate", "metrics": {"snn": None}}, results)
    code, out, _ = cli(capsys, "--file", results)
    assert code == 0
    assert "bare" in out and "odd" in out and rt.MISSING in out


def test_random_clip_is_labelled_with_footnote(results, capsys):
    rt.append_record(random_clip("rand", top1=0.42), results)
    _, out, _ = cli(capsys, "--file", results)
    assert "none (random init)" in out
    assert "42.00%" + rt.DAGGER in out
    assert rt.RANDOM_CLIP_NOTE in out


def test_dataset_filter(results, capsys):
    rt.append_record(evaluate("cifar", top1=0.5), results)
    rt.append_record(evaluate("caltech", "U-CALTECH", top1=0.5), results)
    _, out, _ = cli(capsys, "--file", results, "--dataset", "U-CALTECH")
    assert "caltech" in out and "cifar" not in out


@pytest.fixture
def two_runs(results):
    rt.append_record(evaluate("a", top1=0.6, niqe=5.0, psnr=20.0, ssim=0.7), results)
    rt.append_record(evaluate("b", "U-CIFAR", top1=0.8, niqe=6.0, psnr=22.0), results)
    rt.append_record({"run_name": "b", "kind": "benchmark", "dataset": "U-CIFAR",
                      "benchmark": {"latency_ms": {"median": 3.0}, "throughput": {"4": 99.5},
                                    "energy_mj_per_image": None, "params": 12345678}}, results)
    return results


def test_csv_parses(two_runs, capsys):
    code, out, _ = cli(capsys, "--file", two_runs, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["name"] for r in rows] == ["a", "b"]
    b = rows[1]
    assert b["best"] == "yes" and float(b["top1"]) == 0.8 and b["fps_batch"] == "4"
    assert b["energy_mj_per_image"] == "" and rows[0]["latency_ms"] == ""


def test_json_parses(two_runs, capsys):
    _, out, _ = cli(capsys, "--file", two_runs, "--format", "json")
    rows = json.loads(out)
    assert [(r["name"], r["best"]) for r in rows] == [("a", False), ("b", True)]
    assert rows[1]["params"] == 12345678 and rows[0]["latency_ms"] is None


def test_markdown_and_table(two_runs, capsys):
    _, out, _ = cli(capsys, "--file", two_runs, "--format", "markdown")
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 4 and len({line.count("|") for line in table}) == 1
    _, out, _ = cli(capsys, "--file", two_runs)
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["*", "name"]
    assert "80.00%" in out and "12.35M" in out and "99.5 (b=4)" in out


def test_compare(two_runs, capsys):
    code, out, _ = cli(capsys, "--file", two_runs, "--compare", "a", "b", "--format", "json")
    fields = {f["field"]: f for f in json.loads(out)["fields"]}
    assert code == 0
    assert fields["metrics.snn.top1"]["diff"] == pytest.approx(0.2)
    assert fields["metrics.snn.top1"]["better"] == "B"
    assert fields["metrics.snn.niqe"]["better"] == "A"  # lower NIQE is better
    assert fields["metrics.snn.ssim"]["b"] is None and fields["metrics.snn.ssim"]["diff"] is None
    assert fields["benchmark.latency_ms.median"]["a"] is None
    _, out, _ = cli(capsys, "--file", two_runs, "--compare", "a", "b")
    assert "+20.00 pp" in out


def test_compare_accuracy_with_random_clip_names_no_winner(results, capsys):
    rt.append_record(evaluate("real", top1=0.5), results)
    rt.append_record(random_clip("rand", top1=0.9), results)
    _, out, _ = cli(capsys, "--file", results, "--compare", "real", "rand", "--format", "json")
    fields = {f["field"]: f for f in json.loads(out)["fields"]}
    assert fields["metrics.snn.top1"]["better"] is None


def test_compare_a_lower_validation_loss_is_better(results, capsys):
    for name, score in (("a", 0.5), ("b", 0.3)):
        rt.append_record({"run_name": name, "kind": "train", "dataset": "U-CIFAR",
                          "train": {"stage_epochs": [1, 1, 1], "best_val_score": score,
                                    "history": [{"stage": "fine", "epoch": 0, "val_score": score}]}}, results)
    _, out, _ = cli(capsys, "--file", results, "--compare", "a", "b", "--format", "json")
    fields = {f["field"]: f for f in json.loads(out)["fields"]}
    assert fields["train.best_val_score"]["better"] == "B"     # a loss: lower is better
    assert fields["train.history"]["a"] == "1 entries"


def test_compare_ranks_validation_losses_of_the_same_stage_only(results, capsys):
    """best_val_score of a checkpoint chosen in stage 1 and one chosen in stage 3 are different
    losses: shown side by side, no winner."""
    for name, score, stage in (("a", 0.5, "coarse"), ("b", 0.3, "fine"), ("c", 0.4, "coarse")):
        rt.append_record({"run_name": name, "kind": "train", "dataset": "U-CIFAR",
                          "train": {"best_val_score": score, "best_stage": stage}}, results)
    _, out, _ = cli(capsys, "--file", results, "--compare", "a", "b", "--format", "json")
    assert {f["field"]: f for f in json.loads(out)["fields"]}["train.best_val_score"]["better"] is None
    _, out, _ = cli(capsys, "--file", results, "--compare", "a", "c", "--format", "json")
    assert {f["field"]: f for f in json.loads(out)["fields"]}["train.best_val_score"]["better"] == "B"


def test_compare_unknown_run(two_runs, capsys):
    code, _, err = cli(capsys, "--file", two_runs, "--compare", "a", "nope")
    assert code == 1 and "nope" in err


def test_missing_file_is_not_an_error(tmp_path, capsys):
    path = str(tmp_path / "none.json")
    code, out, _ = cli(capsys, "--file", path)
    assert code == 0 and "no runs yet" in out and path in out
    assert not os.path.exists(path)


def test_cli_subprocess(two_runs):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "results_tracker.py"),
                           "--file", two_runs, "--format", "json"],
                          capture_output=True, text=True, encoding="utf-8", timeout=60,
                          env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    assert proc.returncode == 0, proc.stderr
    assert [r["name"] for r in json.loads(proc.stdout)] == ["a", "b"]


# --------------------------------------------------------------------------- file safety

CORRUPT = {
    "not JSON": b'{"format": "spikeclip-snn-results", "runs": [',
    "not a results file": b'{"some": "other tool"}',
    "newer": b'{"format": "spikeclip-snn-results", "version": 99, "runs": []}',
    "runs not a list": b'{"format": "spikeclip-snn-results", "version": 1, "runs": 3}',
    "record not an object": b'[1, 2]',
}


@pytest.mark.parametrize("problem", sorted(CORRUPT))
def test_corrupt_file_is_reported_and_left_untouched(results, capsys, problem):
    with open(results, "wb") as f:
        f.write(CORRUPT[problem])
    with pytest.raises(rt.ResultsFileError) as e:
        rt.append_record(evaluate("x", top1=0.5), results)
    assert results in str(e.value)
    code, out, err = cli(capsys, "--file", results)
    assert code == 2 and out == ""
    assert results in err and "untouched" in err
    with open(results, "rb") as f:
        assert f.read() == CORRUPT[problem]
    assert [n for n in os.listdir(os.path.dirname(results)) if n.endswith(".tmp")] == []


def test_corrupt_file_subprocess_exit_2(results):
    with open(results, "wb") as f:
        f.write(CORRUPT["not JSON"])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "results_tracker.py"),
                           "--file", results], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_legacy_list_is_read_and_upgraded(results):
    legacy = [{"run_name": "old", "metrics": {"snn": {"top1": 0.5}}}]
    with open(results, "w") as f:
        json.dump(legacy, f)
    assert rt.load_records(results) == legacy
    new = rt.append_record(evaluate("new", top1=0.6), results)
    with open(results) as f:
        doc = json.load(f)
    assert doc["format"] == rt.FORMAT_NAME and doc["version"] == rt.FORMAT_VERSION
    assert doc["runs"] == legacy + [new]
    assert {r["name"] for r in rt.merge_runs(doc["runs"])} == {"old", "new"}  # kind inferred


def test_append_fills_id_and_timestamp_and_cleans_nan(results):
    original = evaluate("nan_run", top1=0.5, niqe=float("nan"))
    rec = rt.append_record(original, results)
    assert len(rec["id"]) == 32 and rec["timestamp"].endswith("+00:00")
    assert rec["metrics"]["snn"]["niqe"] is None and "metrics.snn.niqe" in rec["warnings"][0]
    assert "id" not in original  # the caller's dict is not modified
    with open(results) as f:
        json.load(f, parse_constant=pytest.fail)  # strict JSON: no NaN literal written
    assert rt.load_records(results) == [rec]


def _append_many(path, worker, n):
    for i in range(n):
        rt.append_record({"run_name": f"w{worker}", "kind": "train", "train": {"epochs": i}},
                         path)


def test_concurrent_writers_lose_nothing(results):
    ctx = multiprocessing.get_context("fork")  # fcntl is POSIX-only anyway
    procs = [ctx.Process(target=_append_many, args=(results, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    with open(results) as f:
        runs = json.load(f)["runs"]
    assert len(runs) == 100 and len({r["id"] for r in runs}) == 100
    for w in range(4):  # each writer's records are all there, in its own order
        assert [r["train"]["epochs"] for r in runs if r["run_name"] == f"w{w}"] == list(range(25))
    assert [n for n in os.listdir(os.path.dirname(results)) if n.endswith(".tmp")] == []


@pytest.mark.parametrize("case", ["lock is a folder", "lock in /proc", "lock is a dangling link"])
def test_start_check_fails_exactly_where_the_append_would(tmp_path, case):
    """A results file whose lock cannot be made passed the start check, and the job's record
    was lost at its end: the check must try what append_record() does."""
    path = str(tmp_path / "results.json")
    if case == "lock is a folder":
        os.mkdir(path + ".lock")
    elif case == "lock in /proc":
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc")
        path = "/proc/results.json"
    else:
        os.symlink(str(tmp_path / "gone" / "x.lock"), path + ".lock")
    with pytest.raises(rt.InputError, match="results.json") as exc:
        rt.check_results_file(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(Exception):
        rt.append_record({"run_name": "r", "kind": "evaluate"}, path)
    assert not os.path.exists(path)


def test_start_check_leaves_nothing_but_the_lock(tmp_path):
    path = tmp_path / "results.json"
    rt.check_results_file(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json.lock"]
    rt.append_record({"run_name": "r", "kind": "evaluate"}, str(path))
    rt.check_results_file(str(path))
    assert len(rt.load_records(str(path))) == 1
