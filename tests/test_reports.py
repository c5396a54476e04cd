"""Tests for the ``reports`` package: derived metrics, CSV/HTML output and the CLI.

A synthetic ``results.jsonl`` with hand-picked numbers stands in for a real
run, so every derived value can be checked against arithmetic done by hand.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from reports.build import build, compare, main
from reports.table import (
    DERIVED_COLUMNS,
    add_derived,
    load_results,
    pareto_front,
    summary_markdown,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

SYS = {
    "sys_cpu": "Intel(R) Xeon(R) Platinum 8480+",
    "sys_cores": 16,
    "sys_isa": "avx2 avx512f avx512_vnni amx",
    "sys_ram_gb": 128.0,
    "sys_os": "Linux-6.8-x86_64",
    "sys_python": "3.11.9",
    "sys_versions": json.dumps({"torch": "2.13.0", "openvino": "2026.4.1"}),
    "sys_host": "bench-box-01",
}

# (target, precision, keep) -> (throughput img/s, p50 ms, mAP, peak MB)
OK_CELLS = {
    ("torch", "fp32", 1.0): (100.0, 10.0, 0.400, 900.0),
    ("torch", "fp32", 0.5): (150.0, 6.7, 0.380, 880.0),
    ("torch", "int8", 1.0): (200.0, 5.0, 0.390, 700.0),
    ("torch", "int8", 0.5): (300.0, 3.3, 0.360, 690.0),
    ("openvino", "fp32", 1.0): (250.0, 4.0, 0.400, 600.0),
    ("openvino", "fp32", 0.5): (400.0, 2.5, 0.385, 590.0),
    ("openvino", "int8", 1.0): (500.0, 2.0, 0.395, 450.0),
    ("openvino", "int8", 0.5): (800.0, 1.25, 0.370, 440.0),
}
FAILED_REASON = "converter crashed: unsupported op GATHER_ND"
UNAVAILABLE_REASON = "no bf16 kernels on this CPU"


def cell_id(target: str, precision: str, keep: float, batch: int = 1) -> str:
    return f"{target}/{precision}/keep{keep:g}/b{batch}"


def make_row(target: str, precision: str, keep: float, batch: int = 1, *, status: str = "ok",
             error: str | None = None, throughput: float | None = None, p50: float | None = None,
             mean_ap: float | None = None, peak: float | None = None) -> dict:
    """One results.jsonl row following the harness schema (unmeasured fields null)."""
    return {
        "cell_id": cell_id(target, precision, keep, batch), "target": target, "precision": precision,
        "keep": keep, "batch": batch, "threads": 16, "status": status, "error": error,
        "executed_precision": {"fp32": "f32", "int8": "i8+f32", "bf16": "bf16"}[precision],
        "recipe": "default", "recipe_settings": json.dumps({"calib": 32}), "fp32_kept": "",
        "throughput_ips": throughput, "latency_p50_ms": p50,
        "latency_p90_ms": None if p50 is None else p50 * 1.1,
        "latency_p99_ms": None if p50 is None else p50 * 1.3, "iterations": 50 if throughput else None,
        "peak_rss_mb": peak, "baseline_rss_mb": None if peak is None else 300.0,
        "rss_increase_mb": None if peak is None else peak - 300.0,
        "map": mean_ap, "ap50": None if mean_ap is None else mean_ap + 0.2, "ap75": mean_ap,
        "token_acc": 0.9, "fg_recall": 0.8, "fg_precision": 0.7, "tokens_kept": int(576 * keep),
        "tokens_total": 576, "images": 500 if mean_ap is not None else None,
        "convert_s": 1.5, "artifact_bytes": 25_000_000, "load_start": 0.0, "load_end": 1.0,
        **SYS, "model": "bavit-yolos-tiny", "data": "coco-val-500", "started_at": "2026-05-01T10:00:00",
        "wall_s": 12.0, "extra_harness_field": "passes-through",
    }


def sample_rows() -> list[dict]:
    rows = [make_row("openvino", "int8", 0.5, throughput=10.0, p50=99.0, mean_ap=0.1, peak=1.0)]  # superseded
    rows += [make_row(t, p, k, throughput=tp, p50=lat, mean_ap=m, peak=mb)
             for (t, p, k), (tp, lat, m, mb) in OK_CELLS.items()]
    rows.append(make_row("tflite", "int8", 0.5, status="failed", error=FAILED_REASON + "\nTraceback ..."))
    rows.append(make_row("tflite", "bf16", 1.0, status="unavailable", error=UNAVAILABLE_REASON))
    return rows


def write_run(run_dir: Path, rows: list[dict]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"), sample_rows())


@pytest.fixture(scope="module")
def built(run_dir: Path) -> dict[str, Path]:
    return build(run_dir)


def by_cell(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("cell_id")


# --- loading -----------------------------------------------------------------

def test_load_keeps_last_row_of_duplicated_cell(run_dir: Path) -> None:
    df = load_results(run_dir)
    assert len(df) == 10
    assert df["cell_id"].is_unique
    assert by_cell(df).loc["openvino/int8/keep0.5/b1", "throughput_ips"] == 800.0


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "results file not found"), ("", "empty"), ('{"cell_id": "a"}\n{not json\n', ":2: malformed")],
)
def test_load_errors_name_the_file(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "results.jsonl").write_text(content)
    with pytest.raises((FileNotFoundError, ValueError), match=message) as info:
        load_results(tmp_path)
    assert "results.jsonl" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        load_results(tmp_path / "nope")


# --- derived metrics ---------------------------------------------------------

def test_speedups_and_map_drop_match_hand_computed(run_dir: Path) -> None:
    df = by_cell(add_derived(load_results(run_dir)))
    expected = {
        # cell: (vs same target dense fp32, vs torch dense fp32, mAP drop pts)
        "torch/fp32/keep1/b1": (1.0, 1.0, 0.0),
        "torch/int8/keep0.5/b1": (3.0, 3.0, 4.0),
        "openvino/fp32/keep1/b1": (1.0, 2.5, 0.0),
        "openvino/fp32/keep0.5/b1": (1.6, 4.0, 1.5),
        "openvino/int8/keep1/b1": (2.0, 5.0, 0.5),
        "openvino/int8/keep0.5/b1": (3.2, 8.0, 3.0),
    }
    for cell, (vs_target, vs_torch, drop) in expected.items():
        assert df.loc[cell, "speedup_vs_target_dense_fp32"] == pytest.approx(vs_target), cell
        assert df.loc[cell, "speedup_vs_torch_dense_fp32"] == pytest.approx(vs_torch), cell
        assert df.loc[cell, "map_drop_pts"] == pytest.approx(drop), cell
    for cell in ("tflite/int8/keep0.5/b1", "tflite/bf16/keep1/b1"):
        assert df.loc[cell, DERIVED_COLUMNS[:3]].isna().all()
        assert not df.loc[cell, "pareto"]


def test_map_drop_falls_back_to_reference_of_other_batch() -> None:
    # mAP measured only at batch 1; the batch-8 dense reference has null mAP.
    rows = [
        make_row("torch", "fp32", 1.0, 1, throughput=100.0, mean_ap=0.40),
        make_row("torch", "fp32", 1.0, 8, throughput=400.0),
        make_row("torch", "int8", 0.5, 8, throughput=1000.0, mean_ap=0.37),
        make_row("openvino", "int8", 1.0, 8, throughput=900.0, mean_ap=0.39),  # no openvino reference at all
    ]
    df = by_cell(add_derived(pd.DataFrame(rows)))
    assert df.loc["torch/int8/keep0.5/b8", "map_drop_pts"] == pytest.approx(3.0)
    assert df.loc["torch/int8/keep0.5/b8", "speedup_vs_target_dense_fp32"] == pytest.approx(2.5)
    assert math.isnan(df.loc["openvino/int8/keep1/b8", "speedup_vs_target_dense_fp32"])
    assert math.isnan(df.loc["openvino/int8/keep1/b8", "map_drop_pts"])
    assert df.loc["openvino/int8/keep1/b8", "speedup_vs_torch_dense_fp32"] == pytest.approx(2.25)


def test_failed_reference_gives_nan_speedup() -> None:
    rows = [
        make_row("torch", "fp32", 1.0, throughput=100.0, mean_ap=0.4),
        make_row("openvino", "fp32", 1.0, status="failed", error="boom", throughput=999.0, mean_ap=0.4),
        make_row("openvino", "int8", 1.0, throughput=300.0, mean_ap=0.39),
    ]
    df = by_cell(add_derived(pd.DataFrame(rows)))
    assert math.isnan(df.loc["openvino/int8/keep1/b1", "speedup_vs_target_dense_fp32"])
    assert df.loc["openvino/int8/keep1/b1", "speedup_vs_torch_dense_fp32"] == pytest.approx(3.0)


def test_pareto_front_hand_made() -> None:
    points = [
        (1.0, 5.0),   # best mAP -> front
        (2.0, 4.0),   # front
        (2.0, 4.0),   # exact tie with the previous point -> both stay on the front
        (1.5, 3.0),   # dominated by (2, 4)
        (3.0, 1.0),   # fastest -> front
        (3.0, 0.5),   # ties on throughput but worse mAP -> dominated
        (float("nan"), 9.0),  # unmeasured -> never on the front
    ]
    assert pareto_front(points) == [True, True, True, False, True, False, False]
    assert pareto_front([]) == []


def test_pareto_column_per_batch(run_dir: Path) -> None:
    raw = load_results(run_dir)
    df = add_derived(raw)
    front = set(df.loc[df["pareto"], "cell_id"])
    assert front == {"openvino/fp32/keep1/b1", "openvino/int8/keep1/b1", "openvino/int8/keep0.5/b1"}
    # A slow, inaccurate cell alone at batch 8 is compared only within its own batch.
    slow = pd.DataFrame([make_row("torch", "int8", 0.5, 8, throughput=1.0, mean_ap=0.01)])
    assert by_cell(add_derived(pd.concat([raw, slow]))).loc["torch/int8/keep0.5/b8", "pareto"]


# --- outputs -----------------------------------------------------------------

def test_csv_rows_and_columns(built: dict[str, Path], run_dir: Path) -> None:
    csv = pd.read_csv(built["csv"])
    expected_ids = {cell_id(t, p, k) for t, p, k in OK_CELLS} | {
        "tflite/int8/keep0.5/b1", "tflite/bf16/keep1/b1"}
    assert len(csv) == 10
    assert set(csv["cell_id"]) == expected_ids
    original = list(sample_rows()[0].keys())
    assert list(csv.columns) == original + list(DERIVED_COLUMNS)
    assert (csv["extra_harness_field"] == "passes-through").all()
    row = csv.set_index("cell_id").loc["openvino/int8/keep0.5/b1"]
    assert row["speedup_vs_torch_dense_fp32"] == pytest.approx(8.0)
    assert bool(row["pareto"]) is True


def test_html_is_self_contained_and_complete(built: dict[str, Path]) -> None:
    page = built["html"].read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]+"', page)
    assert len(images) == 3
    assert page.count("data:image/png;base64") == 3
    assert all(base64.b64decode(img).startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert 'class="dataframe report-table summary"' in page
    for value in ("800.0", "3.20×", "8.00×", "0.370", "bench-box-01", "avx512_vnni", "2026.4.1"):
        assert value in page, value
    assert FAILED_REASON in page and UNAVAILABLE_REASON in page
    assert "tflite/int8/keep0.5/b1" in page
    assert "http://" not in page and "https://" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "Comparison with" not in page


def test_html_when_every_cell_failed(tmp_path: Path) -> None:
    rows = [make_row("tflite", "int8", 0.5, status="failed", error="x < y & z")]
    page = build(write_run(tmp_path / "bad", rows))["html"].read_text(encoding="utf-8")
    assert page.count("data:image/png;base64") == 3
    assert "x &lt; y &amp; z" in page


def test_summary_markdown(run_dir: Path) -> None:
    md = summary_markdown(load_results(run_dir))
    lines = md.strip().splitlines()
    assert lines[0].startswith("| target | precision | keep | batch | status | img/s | p50 ms | mAP")
    assert len(lines) == 2 + 10
    assert "| openvino | int8 | 0.5 | 1 | ok | 800.0 | 1.25 | 0.370 | 3.00 | 3.20x | 440 |" in md
    failed = next(line for line in lines if line.startswith("| tflite | int8"))
    assert "failed: converter crashed" in failed and "Traceback" not in failed


# --- comparison and CLI ------------------------------------------------------

def test_compare_ratio_and_one_sided_cells(run_dir: Path) -> None:
    this = load_results(run_dir)
    base_rows = [make_row("torch", "fp32", 1.0, throughput=50.0, p50=20.0, mean_ap=0.41, peak=950.0),
                 make_row("torch", "fp32", 0.25, throughput=70.0, mean_ap=0.30)]
    cmp = compare(this, pd.DataFrame(base_rows)).set_index(["target", "precision", "keep", "batch"])
    row = cmp.loc[("torch", "fp32", 1.0, 1)]
    assert row["throughput_ratio"] == pytest.approx(2.0)
    assert row["map_diff_pts"] == pytest.approx(-1.0)
    assert (row["p50_this"], row["p50_baseline"]) == (10.0, 20.0)
    assert (row["peak_mb_this"], row["peak_mb_baseline"]) == (900.0, 950.0)
    only_base = cmp.loc[("torch", "fp32", 0.25, 1)]
    assert math.isnan(only_base["throughput_this"]) and only_base["throughput_baseline"] == 70.0
    assert math.isnan(cmp.loc[("openvino", "int8", 0.5, 1), "throughput_baseline"])
    assert len(cmp) == 11


def test_cli_with_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    current = write_run(tmp_path / "current", sample_rows())
    slower = [dict(r, throughput_ips=r["throughput_ips"] / 2) if r["throughput_ips"] else r for r in sample_rows()]
    baseline = write_run(tmp_path / "baseline", slower)
    assert main([str(current), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| target |") and "openvino" in out
    cmp = pd.read_csv(current / "comparison.csv")
    assert cmp["throughput_ratio"].dropna().tolist() == pytest.approx([2.0] * 8)
    page = (current / "report.html").read_text(encoding="utf-8")
    assert "Comparison with baseline" in page and "2.00×" in page
    assert page.count("data:image/png;base64") == 3


def test_cli_missing_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "reports.build", str(tmp_path / "missing")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "run directory not found" in lines[0] and "missing" in lines[0]
    assert "Traceback" not in proc.stderr


def test_speed_only_run_builds_a_report(tmp_path: Path) -> None:
    """--images 0 writes no accuracy fields at all; the report must still build."""
    rows = [{k: v for k, v in r.items() if k not in ("map", "ap50", "ap75", "token_acc", "fg_recall",
                                                    "fg_precision")} for r in sample_rows()]
    paths = build(write_run(tmp_path / "speed", rows))
    df = pd.read_csv(paths["csv"])
    assert df["map"].isna().all() and df["map_drop_pts"].isna().all()
    assert df["speedup_vs_target_dense_fp32"].notna().any()
    assert paths["html"].read_text().count("data:image/png;base64") == 3
