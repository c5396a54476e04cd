"""The harness: rows and columns, failure isolation, resume, per-cell memory, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fake_targets import PLUGINS

ROOT = Path(__file__).resolve().parents[1]
CHILD_PATH = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
FAST = ["--weights", "random:tiny", "--images", "4", "--warmup", "0", "--min-iters", "2", "--min-seconds", "0",
        "--calib-images", "8", "--threads", "1"]


def bench(out: Path, *args: str, env_extra: dict | None = None, check: bool = False, **kw):
    env = dict(os.environ, BAVIT_TARGET_PLUGINS=PLUGINS, PYTHONPATH=CHILD_PATH, **(env_extra or {}))
    env.setdefault("BAVIT_CACHE", str(out.parent / "cache"))
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--out", str(out), *FAST, *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, **kw)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_failed_and_unavailable_cells_do_not_stop_the_sweep(tmp_path):
    out = tmp_path / "run"
    proc = bench(out, "--target", "fake,fake-raise,fake-missing", "--keep", "1.0,0.5", "--batch", "2",
                 "--precision", "fp32")
    assert proc.returncode == 1, proc.stderr[-2000:]            # a cell failed
    by_id = {r["cell_id"]: r for r in rows(out)}
    assert len(by_id) == 6
    assert by_id["fake/fp32/keep1/b2"]["status"] == "ok"
    assert by_id["fake/fp32/keep0.5/b2"]["status"] == "ok"
    bad = by_id["fake-raise/fp32/keep0.5/b2"]
    assert bad["status"] == "failed" and "boom" in bad["error"] and "\n" not in bad["error"]
    assert by_id["fake-missing/fp32/keep1/b2"]["status"] == "unavailable"
    assert "not installed" in by_id["fake-missing/fp32/keep1/b2"]["error"]
    ok = by_id["fake/fp32/keep0.5/b2"]
    assert ok["tokens_kept"] == 32 and ok["tokens_total"] == 64
    assert ok["iterations"] >= 2 and ok["throughput_ips"] > 0 and ok["images"] == 4
    assert Path(ok["detections_file"]).is_file()
    for key in ("sys_cpu", "sys_isa", "sys_versions", "load_start", "load_end", "peak_rss_mb", "latency_p99_ms"):
        assert key in ok
    # the report was built and names the failure
    csv = pd.read_csv(out / "report.csv")
    assert len(csv) == 6
    assert "boom" in (out / "report.html").read_text()
    assert "fake-raise" in proc.stdout                            # summary table on stdout


def test_hanging_cell_times_out(tmp_path):
    out = tmp_path / "run"
    proc = bench(out, "--target", "fake-hang,fake", "--keep", "1.0", "--batch", "1", "--precision", "fp32",
                 "--timeout", "20")
    assert proc.returncode == 1
    by_id = {r["cell_id"]: r for r in rows(out)}
    assert by_id["fake-hang/fp32/keep1/b1"]["status"] == "failed"
    assert "timeout" in by_id["fake-hang/fp32/keep1/b1"]["error"]
    assert by_id["fake/fp32/keep1/b1"]["status"] == "ok"


def test_peak_memory_belongs_to_the_cell(tmp_path):
    out = tmp_path / "run"
    bench(out, "--target", "fake,fake-alloc", "--keep", "1.0", "--batch", "1", "--precision", "fp32",
          "--images", "0", check=True)
    by_id = {r["cell_id"]: r for r in rows(out)}
    plain, heavy = by_id["fake/fp32/keep1/b1"], by_id["fake-alloc/fp32/keep1/b1"]
    # the fake allocates 200 MiB; *_mb figures are MiB (2**20 bytes), the bar is 200 MB
    assert (heavy["peak_rss_mb"] - plain["peak_rss_mb"]) * 2**20 >= 200e6
    assert (heavy["rss_increase_mb"] - plain["rss_increase_mb"]) * 2**20 >= 200e6
    assert plain["torch_imported"] is False
    assert plain["baseline_rss_mb"] < 150, "the measured process must not import torch"


def test_killed_run_resumes_without_redoing_cells(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, BAVIT_TARGET_PLUGINS=PLUGINS, PYTHONPATH=CHILD_PATH, BAVIT_CACHE=str(tmp_path / "cache"))
    args = [sys.executable, "-m", "bench.run", "--out", str(out), *FAST, "--target", "fake", "--keep",
            "1.0,0.75,0.5,0.25", "--batch", "1", "--precision", "fp32", "--no-report"]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "results.jsonl").is_file() and len(rows(out)) >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    first = rows(out)
    assert 1 <= len(first) < 4
    started = {r["cell_id"]: r["started_at"] for r in first}
    done = subprocess.run(args + ["--resume"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    final = rows(out)
    ids = [r["cell_id"] for r in final]
    assert sorted(set(ids)) == sorted(f"fake/fp32/keep{k}/b1" for k in ("1", "0.75", "0.5", "0.25"))
    assert len(ids) == 4                                          # nothing measured twice
    for r in final:
        if r["cell_id"] in started:
            assert r["started_at"] == started[r["cell_id"]]


def test_resume_refuses_a_run_measured_with_other_settings(tmp_path):
    out = tmp_path / "run"
    cell = ["--target", "fake", "--keep", "1.0", "--batch", "1", "--precision", "fp32", "--no-report"]
    bench(out, *cell, check=True)
    proc = bench(out, *cell, "--resume", "--dilate", "3")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "run.json was measured with other settings (dilate 0 -> 3)" in proc.stderr
    assert len(rows(out)) == 1
    bench(out, *cell, "--resume", check=True)  # same settings: nothing left to run
    assert len(rows(out)) == 1


def test_failed_accuracy_pass_keeps_the_speed_figures(tmp_path):
    out = tmp_path / "run"
    bench(out, "--target", "fake-badacc", "--keep", "1.0", "--batch", "2", "--precision", "fp32", check=True)
    row = rows(out)[0]
    assert row["status"] == "ok" and row["throughput_ips"] > 0 and "map" not in row
    assert row["accuracy_note"] == "accuracy pass failed: RuntimeError: boom: only the timed batch runs"
    assert "boom: only the timed batch runs" in (out / "report.html").read_text()


def test_missing_converter_is_unavailable_not_failed(tmp_path):
    out = tmp_path / "run"
    proc = bench(out, "--target", "fake-noconv", "--keep", "1.0", "--batch", "1", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = rows(out)[0]
    assert row["status"] == "unavailable" and "fake converter is not installed" in row["error"]


def test_a_line_cut_by_a_crash_is_dropped_not_glued(tmp_path):
    from bench.cells import append_row, finished_cells
    from reports.table import load_results

    def row(cell_id: str) -> dict:
        return {"cell_id": cell_id, "target": "fake", "precision": "fp32", "keep": 1.0, "batch": 1, "status": "ok"}

    (tmp_path / "results.jsonl").write_text(json.dumps(row("a")) + '\n{"cell_id": "b", "sta')
    with pytest.warns(UserWarning, match=r"results.jsonl:2: skipped a line cut short"):
        assert list(load_results(tmp_path)["cell_id"]) == ["a"]
    append_row(tmp_path, row("c"))
    assert [r["cell_id"] for r in rows(tmp_path)] == ["a", "c"]
    assert finished_cells(tmp_path) == {"a", "c"}


@pytest.mark.parametrize("args,needle", [
    (["--target", "nope"], "--target: unknown target 'nope'"),
    (["--keep", "0"], "--keep: keep ratios must be in (0, 1]"),
    (["--keep", "1.5"], "--keep: keep ratios must be in (0, 1]"),
    (["--data", "coco:/does/not/exist"], "path not found: /does/not/exist"),
    (["--precision", "int4"], "--precision: unknown precision 'int4'"),
    (["--dilate", "2"], "--dilate must be 0 (off), 1 or an odd kernel size"),
    (["--min-iters", "0"], "--min-iters must be >= 1"),
    (["--calib-images", "0"], "--calib-images must be >= 1"),
    (["--timeout", "0"], "--timeout > 0"),
    (["--weights", "weights/tiny", "--bavit-layers", "7", "--keep", "0.5"], "no bavit7/ classifier"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    proc = bench(tmp_path / "run", *args)
    assert proc.returncode == 2
    assert needle in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "Traceback" not in proc.stderr


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = bench(blocker / "run", "--target", "fake")
    assert proc.returncode == 2 and "--out" in proc.stderr and "not writable" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


EXPECTED_COLUMNS = {"cell_id", "target", "precision", "keep", "batch", "threads", "status", "error",
                    "executed_precision", "recipe", "recipe_settings", "fp32_kept", "throughput_ips",
                    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "iterations", "peak_rss_mb",
                    "baseline_rss_mb", "rss_increase_mb", "map", "ap50", "ap75", "token_acc", "fg_recall",
                    "fg_precision", "tokens_kept", "tokens_total", "images", "convert_s", "artifact_bytes",
                    "load_start", "load_end", "sys_cpu", "sys_cores", "sys_isa", "sys_ram_gb", "sys_os",
                    "sys_python", "sys_versions", "model", "data", "started_at", "wall_s"}


def test_two_target_two_keep_sweep_rows_and_columns(tmp_path):
    """Real backends on a tiny random model: 2 targets x 2 keeps x fp32 x batch 2."""
    out = tmp_path / "run"
    bench(out, "--target", "torch,openvino", "--keep", "1.0,0.5", "--batch", "2", "--precision", "fp32",
          check=True)
    got = rows(out)
    assert sorted(r["cell_id"] for r in got) == sorted(
        f"{t}/fp32/keep{k}/b2" for t in ("torch", "openvino") for k in ("1", "0.5"))
    for r in got:
        assert r["status"] == "ok", r.get("error")
        assert EXPECTED_COLUMNS <= set(r), EXPECTED_COLUMNS - set(r)
        assert r["tokens_kept"] == (64 if r["keep"] == 1.0 else 32)
        assert r["executed_precision"] == "f32"
        assert r["images"] == 4
        if r["keep"] == 1.0:   # dense detector alone: BAViT does not run
            assert r["token_acc"] is None and r["fg_recall"] is None
        else:
            assert 0.0 <= r["token_acc"] <= 1.0
    ov = [r for r in got if r["target"] == "openvino"]
    assert all(json.loads(r["runtime_details"]).get("inference_precision_hint") for r in ov)
    assert all(r["baseline_rss_mb"] < 200 for r in ov), "OpenVINO cells must not carry torch's memory"
    csv = pd.read_csv(out / "report.csv")
    assert len(csv) == 4 and {"speedup_vs_target_dense_fp32", "map_drop_pts"} <= set(csv.columns)
    # a second run finds every artifact in the cache
    again = tmp_path / "again"
    bench(again, "--target", "torch,openvino", "--keep", "1.0,0.5", "--batch", "2", "--precision", "fp32",
          "--images", "0", check=True)
    assert all(r["artifact_cached"] for r in rows(again))


def test_a_cache_folder_without_manifest_is_rebuilt(tmp_path):
    """A build killed between its rename and its manifest (older versions wrote the manifest
    last) must not wedge the cell: the next prepare rebuilds in place."""
    from fake_targets import FAKE

    from bavit.pipeline import PruneConfig, build_pipeline
    from targets.base import MANIFEST

    pipe = build_pipeline("random:tiny", PruneConfig(keep=1.0))
    first = FAKE.prepare(pipe, "fp32", 1, None, tmp_path, "weights")
    assert (first.path / MANIFEST).is_file() and not first.cached
    (first.path / MANIFEST).unlink()
    again = FAKE.prepare(pipe, "fp32", 1, None, tmp_path, "weights")
    assert again.path == first.path and (again.path / MANIFEST).is_file() and not again.cached
    assert not list(tmp_path.glob("*.tmp"))


def test_stock_style_detector_runs_at_image_size(tmp_path):
    """Stock HF YOLOS configs are not square: refused in one line without --image-size,
    measured at N x N with it. Their classes are named, with "N/A" gaps: scored by name."""
    from bavit.data.synthetic import CATEGORIES
    from bavit.yolos import PrunedYolos, init_embeddings, tiny_config

    names = ["N/A", CATEGORIES[0], CATEGORIES[1], "N/A", *CATEGORIES[2:]]
    det = PrunedYolos(tiny_config(image_size=[64, 96], conv_stem=False, anchored_boxes=False,
                                  num_labels=len(names), id2label=dict(enumerate(names))))
    init_embeddings(det, seed=0)
    det.save_pretrained(tmp_path / "w" / "detector")
    cell = ["--weights", str(tmp_path / "w"), "--target", "fake", "--keep", "1.0", "--batch", "2",
            "--precision", "fp32"]
    proc = bench(tmp_path / "run", *cell)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "image_size 64x96 is not square" in proc.stderr and "--image-size N" in proc.stderr
    bench(tmp_path / "run", *cell, "--image-size", "64", check=True)
    row = rows(tmp_path / "run")[0]
    assert row["status"] == "ok" and row["image_size"] == 64 and row["tokens_total"] == 64 and row["images"] == 4
    assert row["accuracy_note"] is None and row["map"] is not None


def test_int8_calibrates_past_the_scored_images_when_only_they_exist(tmp_path):
    from bavit.data import make_synthetic

    data = make_synthetic(tmp_path / "coco", n_images=12, size=64, seed=0, split="val")
    out = tmp_path / "run"
    proc = bench(out, "--data", f"coco:{data}", "--target", "fake,torch", "--keep", "1.0", "--batch", "1",
                 "--precision", "int8", check=True)
    by_id = {r["cell_id"]: r for r in rows(out)}
    assert by_id["fake/int8/keep1/b1"]["calibration"] == "val images 4+ (not scored)"
    assert by_id["torch/int8/keep1/b1"]["calibration"] is None  # dynamic int8: no calibration loaded
    assert "int8 calibrates on val images 4+ (not scored)" in proc.stderr
