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
    assert "torch" not in json.dumps(plain.get("runtime_modules", ""))
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


@pytest.mark.parametrize("args,needle", [
    (["--target", "nope"], "--target: unknown target 'nope'"),
    (["--keep", "0"], "--keep: keep ratios must be in (0, 1]"),
    (["--keep", "1.5"], "--keep: keep ratios must be in (0, 1]"),
    (["--data", "coco:/does/not/exist"], "path not found: /does/not/exist"),
    (["--precision", "int4"], "--precision: unknown precision 'int4'"),
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
