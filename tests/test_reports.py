"""Tests for the ``reports`` package: derived metrics, decisions, CSV/HTML output and the CLI.

A synthetic ``results.jsonl`` with hand-picked per-round numbers stands in for a real
run, so every derived value (paired ratio medians and 95 % intervals, fallbacks, decisions
under limits) can be checked against arithmetic done by hand. Rows are built through
``bench.contracts.Row`` so a renamed schema field breaks these tests, not the report.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.contracts import Row
from reports.build import build, compare, interval_check, main, markdown_report, summary_text
from reports.decide import ANY_TARGET, check_limits, decide, decision_markdown
from reports.table import (
    DERIVED_COLUMNS,
    DETECTOR_KEEP_COLUMNS,
    add_derived,
    detector_keeps,
    detectors_markdown,
    load_results,
    paired_speedup,
    pareto_front,
    round_bounds,
    sort_cells,
    summary_markdown,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = "s1"
OFF, SS = "offline", "single-stream"

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
NOISY_REASON = "load 3.1 > 2 cores during round 2"


def cell_id(target: str, precision: str, keep: float, batch: int, scenario: str, reducer: str | None = None,
            detector: str | None = None) -> str:
    return (f"{target}/{precision}/{detector + '/' if detector else ''}{reducer + '/' if reducer else ''}"
            f"keep{keep:g}/b{batch}/{scenario}")


def make_row(target: str, precision: str, keep: float, batch: int = 8, scenario: str = OFF, *,
             status: str = "ok", error: str | None = None, rounds: list[float] | None = None,
             throughput: float | None = None, p50: float | None = None, p90: float | None = None,
             p99: float | None = None, samples: int | None = None, mean_ap: float | None = None,
             peak: float | None = None, settings: str = SETTINGS, reducer: str | None = None,
             detector: str | None = None, reference: str | None = None, **extra: object) -> dict:
    """One results.jsonl line as ``bench.contracts.Row`` writes it.

    ``rounds`` are per-round throughputs (offline) or per-round p50 ms (single-stream);
    the headline median and min/max follow from them unless given. ``detector`` adds the
    detector segment to the ids (runs that sweep detectors); ``reference`` is the run's
    reference detector (blank, as in runs before detectors were swept, unless given)."""
    rounds = list(rounds or [])
    offline = scenario == OFF
    if rounds and offline:
        throughput = throughput if throughput is not None else float(pd.Series(rounds).median())
    if rounds and not offline:
        p50 = p50 if p50 is not None else float(pd.Series(rounds).median())
    model_id = (f"{target}/{precision}/{detector + '/' if detector else ''}{reducer + '/' if reducer else ''}"
                f"keep{keep:g}/b{batch}")
    row = Row(
        cell_id=cell_id(target, precision, keep, batch, scenario, reducer, detector), model_id=model_id,
        target=target,
        precision=precision, reducer=reducer or ("none" if keep == 1.0 else "bavit"), keep=keep, batch=batch,
        scenario=scenario, status=status, error=error,
        settings_key=settings, run_id="run-1", model="bavit-yolos-ti", detector=detector or "weights/ti/detector",
        reference_detector=reference or "",
        data="synthetic", threads=2, image_size="512x512", started_at="2026-05-01T10:00:00",
        recipe="default", executed_precision={"fp32": "f32", "int8": "i8+f32", "bf16": "bf16"}[precision],
        convert_s=1.5, artifact_bytes=25_000_000, tokens_kept=int(1024 * keep), tokens_total=1024,
        load_s=0.8 if status == "ok" else None, first_inference_ms=40.0 if status == "ok" else None,
        peak_rss_mib=peak, baseline_rss_mib=None if peak is None else 300.0,
        rss_increase_mib=None if peak is None else peak - 300.0,
        mode="sync" if scenario == SS else "async", streams=1, requests=1,
        rounds=len(rounds) or None, throughput_ips=throughput,
        throughput_min=min(rounds) if rounds and offline else None,
        throughput_max=max(rounds) if rounds and offline else None,
        latency_p50_ms=p50, latency_p90_ms=p90, latency_p99_ms=p99, latency_samples=samples,
        round_throughput_ips=rounds if offline else [], round_p50_ms=[] if offline else rounds,
        noisy=False if status == "ok" else None,
        map=mean_ap, ap50=None if mean_ap is None else mean_ap + 0.2, ap75=mean_ap,
        images=64 if mean_ap is not None else None, accuracy_from=model_id if mean_ap is not None else None,
        accuracy_reused=False if mean_ap is not None else None, **SYS,
    )
    data = dataclasses.asdict(row)
    unknown = set(extra) - set(data) - {"extra_harness_field"}
    assert not unknown, unknown  # a typo in a test must not slip past the schema
    data.update(extra)
    return data


# Offline, batch 8: per-round throughputs (img/s). Single-stream, batch 1: per-round p50 (ms).
OFFLINE_CELLS = {
    # (target, precision, keep): (rounds, mAP, peak MiB, p50, p90, p99, samples)
    ("torch", "fp32", 1.0): ([100.0, 110.0, 90.0], 0.400, 900.0, 80.0, 88.0, None, 60),
    ("torch", "int8", 0.5): ([300.0, 330.0, 240.0], 0.380, 690.0, 25.0, 27.0, 28.0, 150),
    ("openvino", "fp32", 1.0): ([200.0, 230.0, 180.0], 0.400, 600.0, 40.0, 42.0, 45.0, 150),
    ("openvino", "fp32", 0.5): ([300.0, 345.0, 270.0], 0.392, 430.0, 27.0, None, None, 10),
    ("openvino", "int8", 1.0): ([400.0, 414.0, 396.0], 0.395, 450.0, 20.0, 22.0, 30.0, 150),
    ("openvino", "int8", 0.5): ([600.0, 690.0, 540.0], 0.388, 440.0, 15.0, 16.0, None, 60),
}
SINGLE_CELLS = {
    # (target, precision, keep): (rounds p50 ms, pooled p50, mAP)
    ("torch", "fp32", 1.0): ([20.0, 22.0, 18.0], 20.0, None),       # mAP only scored offline
    ("torch", "int8", 0.5): ([8.0, 11.0, 6.0], 8.0, 0.380),
    ("openvino", "fp32", 1.0): ([10.0, 10.0, 9.0], 10.0, 0.400),
    ("openvino", "int8", 1.0): ([6.0, 5.0, 4.5], 5.2, 0.395),
    ("openvino", "int8", 0.5): ([5.0, 4.0, 6.0], 5.0, 0.388),
}
FAILED_REASON = "converter crashed: unsupported op GATHER_ND"
UNAVAILABLE_REASON = "no bf16 kernels on this CPU"


def sample_rows() -> list[dict]:
    rows = [make_row("openvino", "int8", 0.5, rounds=[1.0, 2.0, 3.0], mean_ap=0.1, peak=1.0)]  # superseded
    for (t, p, k), (rounds, m, peak, p50, p90, p99, n) in OFFLINE_CELLS.items():
        extra: dict = {"extra_harness_field": "passes-through"}
        if (t, p, k) == ("openvino", "int8", 1.0):
            extra.update(noisy=True, noisy_reason=NOISY_REASON, spread_pct=4.5, load_max=3.1)
        rows.append(make_row(t, p, k, rounds=rounds, mean_ap=m, peak=peak, p50=p50, p90=p90, p99=p99,
                             samples=n, **extra))
    for (t, p, k), (rounds, p50, m) in SINGLE_CELLS.items():
        extra = {"extra_harness_field": "passes-through"}
        if m is not None:  # one artifact scored for both scenarios: this row reuses the b8 outputs
            extra.update(accuracy_from=f"{t}/{p}/keep{k:g}/b8", accuracy_reused=(t, p, k) == ("openvino", "fp32", 1.0))
        rows.append(make_row(t, p, k, 1, SS, rounds=rounds, p50=p50, throughput=1000.0 / p50,
                             p90=p50 * 1.2, p99=p50 * 1.4, samples=300, mean_ap=m, peak=500.0, **extra))
    rows.append(make_row("tflite", "int8", 0.5, status="failed", error=FAILED_REASON + "\nTraceback ...",
                         extra_harness_field="passes-through"))
    rows.append(make_row("tflite", "bf16", 1.0, status="unavailable", error=UNAVAILABLE_REASON,
                         extra_harness_field="passes-through"))
    return rows


N_CELLS = len(OFFLINE_CELLS) + len(SINGLE_CELLS) + 2


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


@pytest.fixture(scope="module")
def derived(run_dir: Path) -> pd.DataFrame:
    return add_derived(load_results(run_dir)).set_index("cell_id")


def by_cell(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("cell_id")


def triple(df: pd.DataFrame, cell: str, stem: str = "target") -> tuple[float, float, float]:
    names = {"target": ("speedup_vs_target_dense_fp32", "speedup_lo", "speedup_hi"),
             "torch": ("speedup_vs_torch_dense_fp32", "speedup_torch_lo", "speedup_torch_hi")}[stem]
    return tuple(float(df.loc[cell, n]) for n in names)  # type: ignore[return-value]


OV_INT8_K1 = cell_id("openvino", "int8", 1.0, 8, OFF)
OV_INT8_K05 = cell_id("openvino", "int8", 0.5, 8, OFF)
OV_FP32_K05 = cell_id("openvino", "fp32", 0.5, 8, OFF)
SS_OV_INT8_K1 = cell_id("openvino", "int8", 1.0, 1, SS)
SS_OV_INT8_K05 = cell_id("openvino", "int8", 0.5, 1, SS)


# --- loading -----------------------------------------------------------------

def test_load_keeps_last_row_of_duplicated_cell_and_round_lists(run_dir: Path) -> None:
    df = load_results(run_dir)
    assert len(df) == N_CELLS
    assert df["cell_id"].is_unique
    row = by_cell(df).loc[OV_INT8_K05]
    assert row["throughput_ips"] == 600.0
    assert row["round_throughput_ips"] == [600.0, 690.0, 540.0]
    assert by_cell(df).loc[SS_OV_INT8_K05, "round_p50_ms"] == [5.0, 4.0, 6.0]
    assert by_cell(df).loc[cell_id("tflite", "int8", 0.5, 8, OFF), "round_p50_ms"] == []


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

def t95(ratios: list[float]) -> tuple[float, float, float]:
    """(median, lo, hi): the median of paired per-round ratios with the 95 % t interval of their
    mean log (scipy's), moved to sit around the median, as bench.stats.interval defines it."""
    from scipy import stats as scipy_stats

    logs = np.log(ratios)
    median = float(np.median(ratios))
    if np.ptp(logs) == 0:
        return median, median, median
    lo, hi = scipy_stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=scipy_stats.sem(logs))
    return median, median * math.exp(lo - logs.mean()), median * math.exp(hi - logs.mean())


def approx_t95(ratios: list[float]):
    """bench.stats's t table has 4 decimals: equal to scipy's interval within 1e-4."""
    return pytest.approx(t95(list(ratios)), rel=1e-4)


def figure_t95(figure: float, rounds: list[float]) -> tuple[float, float, float]:
    """(figure, lo, hi): the rounds' 95 % interval (t95) placed around a headline figure that
    need not be their median (a pooled p50), as reports.table.round_bounds does."""
    median, lo, hi = t95(list(rounds))
    return figure, figure * lo / median, figure * hi / median


def interval_text(triple_: tuple[float, float, float], spec: str, suffix: str = "") -> str:
    """``2.00× [1.54–2.60]``: a (figure, lo, hi) as reports.table.format_interval writes it."""
    value, lo, hi = triple_
    return f"{value:{spec}}{suffix} [{lo:{spec}}–{hi:{spec}}]"


def test_paired_offline_speedups_match_hand_computed(derived: pd.DataFrame) -> None:
    # ratio_i = tp_i / ref_i; figure = median, interval = 95 % t interval over the 3 rounds
    expected = {
        cell_id("torch", "fp32", 1.0, 8, OFF): ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
        cell_id("torch", "int8", 0.5, 8, OFF): ([300 / 100, 330 / 110, 240 / 90], [300 / 100, 330 / 110, 240 / 90]),
        cell_id("openvino", "fp32", 1.0, 8, OFF): ([1.0, 1.0, 1.0], [200 / 100, 230 / 110, 180 / 90]),
        OV_INT8_K1: ([400 / 200, 414 / 230, 396 / 180], [400 / 100, 414 / 110, 396 / 90]),
        OV_INT8_K05: ([3.0, 3.0, 3.0], [600 / 100, 690 / 110, 540 / 90]),
    }
    for cell, (vs_target, vs_torch) in expected.items():
        assert triple(derived, cell) == approx_t95(vs_target), cell
        assert triple(derived, cell, "torch") == approx_t95(vs_torch), cell
    # the interval is of the paired ratios [2, 1.8, 2.2], not of the two cells' own spreads
    lo, hi = triple(derived, OV_INT8_K1)[1:]
    assert lo < 1.8 and hi > 2.2 and lo != pytest.approx(396 / 230)


def test_paired_single_stream_speedups_are_latency_ratios(derived: pd.DataFrame) -> None:
    # ratio_i = ref_p50_i / p50_i: ov fp32 [10, 10, 9] over ov int8 k1 [6, 5, 4.5]
    assert triple(derived, SS_OV_INT8_K1) == approx_t95([10 / 6, 10 / 5, 9 / 4.5])
    # [10/5, 10/4, 9/6]; vs torch [20/5, 22/4, 18/6]
    assert triple(derived, SS_OV_INT8_K05) == approx_t95([10 / 5, 10 / 4, 9 / 6])
    assert triple(derived, SS_OV_INT8_K05, "torch") == approx_t95([20 / 5, 22 / 4, 18 / 6])
    # single-stream cells never borrow the offline reference of the same target: [20/8, 22/11, 18/6]
    assert triple(derived, cell_id("torch", "int8", 0.5, 1, SS)) == approx_t95([20 / 8, 22 / 11, 18 / 6])


def test_map_drop_prefers_same_scenario_then_any(derived: pd.DataFrame) -> None:
    assert derived.loc[OV_INT8_K05, "map_drop_pts"] == pytest.approx(1.2)
    assert derived.loc[SS_OV_INT8_K05, "map_drop_pts"] == pytest.approx(1.2)
    # the single-stream torch fp32 row has no mAP: the offline b8 reference (0.400) is used
    assert derived.loc[cell_id("torch", "int8", 0.5, 1, SS), "map_drop_pts"] == pytest.approx(2.0)
    assert math.isnan(derived.loc[cell_id("torch", "fp32", 1.0, 1, SS), "map_drop_pts"])


def test_map_drop_same_batch_reference_wins_over_other() -> None:
    rows = [make_row("torch", "fp32", 1.0, 1, SS, rounds=[10.0], mean_ap=0.30),
            make_row("torch", "fp32", 1.0, 8, OFF, rounds=[100.0], mean_ap=0.40),
            make_row("torch", "int8", 1.0, 8, OFF, rounds=[150.0], mean_ap=0.39)]
    df = by_cell(add_derived(pd.DataFrame(rows)))
    assert df.loc[cell_id("torch", "int8", 1.0, 8, OFF), "map_drop_pts"] == pytest.approx(1.0)


def test_failed_cells_have_no_derived_values(derived: pd.DataFrame) -> None:
    for cell in (cell_id("tflite", "int8", 0.5, 8, OFF), cell_id("tflite", "bf16", 1.0, 8, OFF)):
        assert derived.loc[cell, list(DERIVED_COLUMNS[:-1])].isna().all()
        assert not derived.loc[cell, "pareto"]


@pytest.mark.parametrize(("scenario", "mine", "theirs", "expected"), [
    # round lists of different length: ratio of medians, lo = my low bound / their high, hi = the other way
    (OFF, {"rounds": [200.0, 210.0]}, {"rounds": [100.0, 110.0, 90.0]},
     (205 / 100, t95([200.0, 210.0])[1] / t95([100.0, 110.0, 90.0])[2],
      t95([200.0, 210.0])[2] / t95([100.0, 110.0, 90.0])[1])),
    # no rounds at all, min/max columns recorded
    (OFF, {"throughput": 300.0, "throughput_min": 280.0, "throughput_max": 310.0},
     {"throughput": 100.0, "throughput_min": 95.0, "throughput_max": 105.0}, (3.0, 280 / 105, 310 / 95)),
    # no rounds and no min/max: the figure only
    (OFF, {"throughput": 300.0}, {"throughput": 100.0}, (3.0, math.nan, math.nan)),
    # single-stream, no rounds: ref p50 / p50, no interval
    (SS, {"p50": 4.0}, {"p50": 10.0}, (2.5, math.nan, math.nan)),
    # single-stream, lists of different length: bounds from the lists' intervals (around the pooled p50s)
    (SS, {"rounds": [4.0, 5.0]}, {"rounds": [10.0, 12.0, 11.0]},
     (11.0 / 4.5, t95([10.0, 12.0, 11.0])[1] / t95([4.0, 5.0])[2],
      t95([10.0, 12.0, 11.0])[2] / t95([4.0, 5.0])[1])),
])
def test_speedup_falls_back_to_ratio_of_medians(scenario: str, mine: dict, theirs: dict,
                                                 expected: tuple[float, float, float]) -> None:
    batch = 1 if scenario == SS else 8
    rows = [make_row("openvino", "fp32", 1.0, batch, scenario, **theirs),
            make_row("openvino", "int8", 1.0, batch, scenario, **mine)]
    df = by_cell(add_derived(pd.DataFrame(rows)))
    got = triple(df, cell_id("openvino", "int8", 1.0, batch, scenario))
    assert got == pytest.approx(expected, nan_ok=True, rel=1e-4)
    assert paired_speedup(rows[1], rows[0]) == pytest.approx(expected, nan_ok=True, rel=1e-4)


def test_settings_key_mismatch_gives_nan() -> None:
    rows = [make_row("torch", "fp32", 1.0, rounds=[100.0, 100.0, 100.0], mean_ap=0.4),
            make_row("openvino", "fp32", 1.0, rounds=[200.0, 200.0, 200.0], mean_ap=0.4),
            make_row("openvino", "int8", 1.0, rounds=[400.0, 400.0, 400.0], mean_ap=0.39, settings="s2")]
    df = by_cell(add_derived(pd.DataFrame(rows)))
    other = cell_id("openvino", "int8", 1.0, 8, OFF)
    assert all(math.isnan(v) for v in triple(df, other) + triple(df, other, "torch"))
    assert math.isnan(df.loc[other, "map_drop_pts"])
    # with the same settings the same rows compare: 2.0 and 4.0, drop 1 point
    rows[2]["settings_key"] = SETTINGS
    df = by_cell(add_derived(pd.DataFrame(rows)))
    assert triple(df, other) == pytest.approx((2.0, 2.0, 2.0))
    assert triple(df, other, "torch") == pytest.approx((4.0, 4.0, 4.0))
    assert df.loc[other, "map_drop_pts"] == pytest.approx(1.0)


def test_failed_reference_gives_nan_speedup() -> None:
    rows = [make_row("torch", "fp32", 1.0, rounds=[100.0], mean_ap=0.4),
            make_row("openvino", "fp32", 1.0, status="failed", error="boom", rounds=[999.0], mean_ap=0.4),
            make_row("openvino", "int8", 1.0, rounds=[300.0], mean_ap=0.39)]
    df = by_cell(add_derived(pd.DataFrame(rows)))
    cell = cell_id("openvino", "int8", 1.0, 8, OFF)
    assert math.isnan(df.loc[cell, "speedup_vs_target_dense_fp32"])
    assert math.isnan(df.loc[cell, "map_drop_pts"])
    assert df.loc[cell, "speedup_vs_torch_dense_fp32"] == pytest.approx(3.0)
    # its mAP drop is unknown, so decide() cannot vouch for it, and says why
    notes = decide(pd.DataFrame(rows)).set_index(["scenario", "target"])["note"]
    assert notes[(OFF, "openvino")] == "no cell with a mAP drop (no ok dense fp32 reference with a mAP)"


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


def test_pareto_column_per_scenario_and_batch(derived: pd.DataFrame) -> None:
    front = set(derived.index[derived["pareto"].astype(bool)])
    assert front == {
        cell_id("openvino", "fp32", 1.0, 8, OFF), OV_INT8_K1, OV_INT8_K05,
        # (200 img/s, 0.388) would be dominated by offline (400, 0.395): panels are separate
        cell_id("openvino", "fp32", 1.0, 1, SS), SS_OV_INT8_K1, SS_OV_INT8_K05,
    }


# --- decisions ---------------------------------------------------------------

def picks(decisions: pd.DataFrame) -> dict[tuple[str, str], str | None]:
    """(scenario, target) -> picked cell id, None when nothing qualified (empty cell columns)."""
    return {(r["scenario"], r["target"]): r["cell_id"] if isinstance(r["cell_id"], str) else None
            for r in decisions.to_dict("records")}


def test_decide_default_limit(run_dir: Path) -> None:
    decisions = decide(load_results(run_dir))
    got = picks(decisions)
    assert got[(OFF, ANY_TARGET)] == OV_INT8_K1          # 400 img/s, −0.5; 600 img/s loses 1.2
    assert got[(OFF, "openvino")] == OV_INT8_K1
    assert got[(OFF, "torch")] == cell_id("torch", "fp32", 1.0, 8, OFF)  # int8 keep 0.5 loses 2.0
    assert got[(SS, ANY_TARGET)] == SS_OV_INT8_K1        # p50 5.2 ms; 5.0 ms loses 1.2
    assert got[(SS, "torch")] is None                   # fp32 has no mAP, int8 loses 2.0
    assert got[(OFF, "tflite")] is None
    assert list(decisions["scenario"]) == [SS] * 3 + [OFF] * 4   # "any" first, targets sorted
    row = decisions.set_index(["scenario", "target"]).loc[(OFF, ANY_TARGET)]
    # 95 % interval of its rounds [400, 414, 396] around its 400 img/s; paired ratios [2, 1.8, 2.2]
    assert row["figure"] == 400.0
    assert (row["figure"], row["figure_lo"], row["figure_hi"]) == pytest.approx(
        figure_t95(400.0, [400.0, 414.0, 396.0]), rel=1e-4)
    assert (row["speedup"], row["speedup_lo"], row["speedup_hi"]) == approx_t95([400 / 200, 414 / 230, 396 / 180])
    assert row["map_drop_pts"] == pytest.approx(0.5) and row["noisy"] and row["noisy_reason"] == NOISY_REASON
    assert (row["latency_ms"], row["latency_pct"]) == (30.0, "p99")
    ss = decisions.set_index(["scenario", "target"]).loc[(SS, ANY_TARGET)]
    # rounds [6, 5, 4.5] (median 5): their interval moved around the pooled p50 5.2
    assert (ss["figure"], ss["figure_unit"]) == (5.2, "ms p50")
    assert (ss["figure"], ss["figure_lo"], ss["figure_hi"]) == pytest.approx(figure_t95(5.2, [6.0, 5.0, 4.5]),
                                                                             rel=1e-4)
    notes = decisions.set_index(["scenario", "target"])["note"]
    assert notes[(SS, "torch")] == "no cell within 1 point"
    assert notes[(OFF, "tflite")] == "no successful cell"


def test_decide_looser_map_limit_and_boundary(run_dir: Path) -> None:
    got = picks(decide(load_results(run_dir), max_map_drop=2.0))
    assert got[(OFF, ANY_TARGET)] == OV_INT8_K05
    # (0.400 − 0.380) × 100 is 2.0000000000000018 in floats: exactly at the limit still qualifies
    assert got[(OFF, "torch")] == cell_id("torch", "int8", 0.5, 8, OFF)
    assert got[(SS, ANY_TARGET)] == SS_OV_INT8_K05


def test_decide_latency_limit_uses_highest_reported_percentile(run_dir: Path) -> None:
    df = load_results(run_dir)
    loose = decide(df, max_map_drop=2.0, max_latency_ms=25.0).set_index(["scenario", "target"])
    # ov int8 keep 0.5 has no p99 (60 samples): its p90 16 ms is what is checked
    assert loose.loc[(OFF, ANY_TARGET), "cell_id"] == OV_INT8_K05
    assert loose.loc[(OFF, ANY_TARGET), "latency_pct"] == "p90"
    # torch int8 keep 0.5: p99 28 ms > 25
    assert pd.isna(loose.loc[(OFF, "torch"), "cell_id"])
    # within 1 point: ov int8 k1 p99 30, ov fp32 k0.5 (only p50: 27), ov fp32 p99 45, torch 80 — nothing fits
    strict = decide(df, max_map_drop=1.0, max_latency_ms=25.0).set_index(["scenario", "target"])
    row = strict.loc[(OFF, ANY_TARGET)]
    assert pd.isna(row["cell_id"]) and math.isnan(row["figure"]) and math.isnan(row["speedup"])
    assert row["note"] == "no cell within 1 point, latency ≤ 25 ms"
    assert strict.loc[(SS, ANY_TARGET), "cell_id"] == SS_OV_INT8_K1  # p99 5.2 × 1.4 = 7.28 ms


def test_decide_memory_limit(run_dir: Path) -> None:
    got = picks(decide(load_results(run_dir), max_rss_mb=449.0))
    assert got[(OFF, ANY_TARGET)] == OV_FP32_K05   # ov int8 keep 1.0 peaks at 450 MiB
    assert got[(SS, ANY_TARGET)] is None           # every single-stream cell peaks at 500 MiB


def test_decide_names_cells_without_a_speed_figure() -> None:
    rows = [make_row("torch", "fp32", 1.0, mean_ap=0.4),  # ok, but the timed rounds recorded nothing
            make_row("tflite", "fp32", 1.0, status="failed", error="boom")]
    notes = decide(pd.DataFrame(rows)).set_index(["scenario", "target"])["note"]
    assert notes[(OFF, ANY_TARGET)] == "no cell with a speed figure"
    assert notes[(OFF, "torch")] == "no cell with a speed figure"
    assert notes[(OFF, "tflite")] == "no successful cell"


def test_decide_without_any_map_picks_on_speed(tmp_path: Path) -> None:
    rows = [dict(r, map=None, accuracy_from=None) for r in sample_rows()]
    decisions = decide(load_results(write_run(tmp_path / "speed", rows))).set_index(["scenario", "target"])
    assert decisions.loc[(OFF, ANY_TARGET), "cell_id"] == OV_INT8_K05
    assert decisions.loc[(SS, ANY_TARGET), "cell_id"] == SS_OV_INT8_K05
    assert decisions.loc[(OFF, "torch"), "cell_id"] == cell_id("torch", "int8", 0.5, 8, OFF)
    assert decisions.loc[(OFF, ANY_TARGET), "note"] == "no mAP in this run: picked on speed alone"


@pytest.mark.parametrize("limits", [(-1.0, None, None), (1.0, -5.0, None), (1.0, None, -1.0),
                                    (float("nan"), None, None)])
def test_negative_limits_are_rejected(limits: tuple) -> None:
    with pytest.raises(ValueError, match="must be a number >= 0"):
        check_limits(*limits)


def test_decision_markdown_reads_as_the_answer(run_dir: Path) -> None:
    md = decision_markdown(decide(load_results(run_dir)))
    lines = md.splitlines()
    assert lines[0].startswith("## Decision (mAP drop ≤ 1 pts")
    # p50 5.2 ms with the 95 % interval of rounds [6, 5, 4.5] around it; paired [10/6, 10/5, 9/4.5]
    _, ss_lo, ss_hi = figure_t95(5.2, [6.0, 5.0, 4.5])
    ss_figure = f"p50 5.20 ms [{ss_lo:.2f}–{ss_hi:.2f}]"
    assert lines[2] == (f"single-stream: openvino int8 dense b1 — {ss_figure}, "
                        f"{interval_text(t95([10 / 6, 10 / 5, 9 / 4.5]), '.2f', '×')} over openvino dense fp32, "
                        "mAP 0.395 (−0.5 pts)")
    _, off_lo, off_hi = figure_t95(400.0, [400.0, 414.0, 396.0])
    off_figure = f"400.0 img/s [{off_lo:.1f}–{off_hi:.1f}]"
    assert lines[3] == (f"offline: openvino int8 dense b8 — {off_figure}, "
                        f"{interval_text(t95([400 / 200, 414 / 230, 396 / 180]), '.2f', '×')} over openvino "
                        f"dense fp32, mAP 0.395 (−0.5 pts) ! noisy: {NOISY_REASON}")
    assert "| single-stream | torch | – | – | – | – | – | no cell within 1 point |" in md
    with_latency = decision_markdown(decide(load_results(run_dir), max_latency_ms=50.0), max_latency_ms=50.0)
    assert "p99 30.00 ms" in with_latency and "≤ 50 ms" in with_latency


# --- outputs -----------------------------------------------------------------

def test_csv_rows_and_columns(built: dict[str, Path]) -> None:
    csv = pd.read_csv(built["csv"])
    assert len(csv) == N_CELLS
    assert set(csv["cell_id"]) == {r["cell_id"] for r in sample_rows()}
    original = list(sample_rows()[1].keys())
    assert list(csv.columns) == original + list(DERIVED_COLUMNS)
    assert (csv["extra_harness_field"] == "passes-through").all()
    row = csv.set_index("cell_id").loc[OV_INT8_K05]
    assert row["speedup_vs_torch_dense_fp32"] == pytest.approx(6.0)
    assert json.loads(row["round_throughput_ips"]) == [600.0, 690.0, 540.0]
    assert bool(row["pareto"]) is True
    decisions = pd.read_csv(built["decision_csv"])
    assert built["decision_csv"].parent == built["csv"].parent
    assert decisions.set_index(["scenario", "target"]).loc[(OFF, ANY_TARGET), "cell_id"] == OV_INT8_K1


def test_html_is_self_contained_and_complete(built: dict[str, Path]) -> None:
    page = built["html"].read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]+"', page)
    assert len(images) == 5
    assert page.count("data:image/png;base64") == 5
    assert all(base64.b64decode(img).startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    # the answer first: decision, then machine, then the table
    assert page.index("<h1>") < page.index("<h2>Decision</h2>") < page.index("<h2>Machine</h2>") \
        < page.index("<h2>Summary</h2>")
    assert "Limits: mAP drop ≤ 1 pts" in page and "no latency limit" in page
    assert 'class="report-table summary"' in page and 'class="report-table decision"' in page
    # ov int8 keep 1.0: rounds [400, 414, 396]; paired [2, 1.8, 2.2] and vs torch [4, 3.76, 4.4]
    for value in (interval_text(figure_t95(400.0, [400.0, 414.0, 396.0]), ".1f"),
                  interval_text(t95([400 / 200, 414 / 230, 396 / 180]), ".2f", "×"),
                  interval_text(t95([400 / 100, 414 / 110, 396 / 90]), ".2f", "×"), "0.388",
                  "bench-box-01", "avx512_vnni", "2026.4.1", "n=60&lt;100", "n=10&lt;20",
                  "median", "<th>img/s [95 %]</th>", "every interval is 95 %: a Student t interval",
                  "at least 20", "at least 100"):
        assert value in page, value
    assert "min–max" not in page   # no interval is a min–max over rounds any more
    reason = html.escape(NOISY_REASON)  # "3.1 > 2" must reach the page as "3.1 &gt; 2"
    assert f'<td title="{reason}">!</td>' in page
    noisy_section = page[page.index("<h2>Noisy cells</h2>"):page.index("<h2>Failed")]
    assert OV_INT8_K1 in noisy_section and reason in noisy_section and OV_INT8_K05 not in noisy_section
    assert FAILED_REASON in page and UNAVAILABLE_REASON in page
    accuracy = page[page.index("<h2>Where accuracy and speed figures came from</h2>"):]
    assert f"{SS_OV_INT8_K05}</code>: mAP from openvino/int8/keep0.5/b8" in accuracy
    assert "reused from cache" in accuracy and accuracy.count("reused from cache") == 1
    assert "http://" not in page and "https://" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "Comparison with" not in page


def test_html_escapes_results_text(tmp_path: Path) -> None:
    rows = [make_row("tflite", "int8", 0.5, status="failed", error="x < y & z"),
            make_row("openvino", "fp32", 1.0, rounds=[10.0], noisy=True, noisy_reason='<b>"hot"</b>')]
    page = build(write_run(tmp_path / "bad", rows))["html"].read_text(encoding="utf-8")
    assert page.count("data:image/png;base64") == 5
    assert "x &lt; y &amp; z" in page and "x < y" not in page
    assert "&lt;b&gt;&quot;hot&quot;&lt;/b&gt;" in page and "<b>" not in page


def test_html_when_every_cell_failed(tmp_path: Path) -> None:
    rows = [make_row("tflite", "int8", 0.5, status="failed", error="boom")]
    paths = build(write_run(tmp_path / "bad", rows))
    page = paths["html"].read_text(encoding="utf-8")
    assert page.count("data:image/png;base64") == 5 and "no successful cell" in page
    assert pd.read_csv(paths["decision_csv"])["cell_id"].isna().all()


def test_summary_markdown(run_dir: Path) -> None:
    md = summary_markdown(load_results(run_dir))
    lines = md.strip().splitlines()
    assert lines[0].startswith("| scenario | target | precision | reducer | keep | batch | status | rounds | img/s")
    assert lines[2].startswith("| single-stream | openvino | fp32 | none | 1.0 | 1 |")   # scenario, batch, target
    assert ("| offline | openvino | int8 | none | 1.0 | 8 | ok | 3 | 400.0 | 20.00 | 0.395 | 0.50 | "
            f"{interval_text(t95([400 / 200, 414 / 230, 396 / 180]), '.2f', '×')} | – | 450 | ! |") in md
    assert ("| offline | openvino | int8 | bavit | 0.5 | 8 | ok | 3 | 600.0 | 15.00 | 0.388 | 1.20 | "
            f"{interval_text(t95([600 / 200, 690 / 230, 540 / 180]), '.2f', '×')} | – | 440 |  |") in md
    failed = next(line for line in lines if line.startswith("| offline | tflite | int8"))
    assert "failed: converter crashed" in failed and "Traceback" not in failed
    assert lines[-1].startswith("! = noisy")


def test_markdown_report_starts_with_the_decision(run_dir: Path) -> None:
    text = summary_text(run_dir, max_map_drop=2.0)
    assert text.startswith("## Decision (mAP drop ≤ 2 pts")
    assert text.index("offline: openvino int8 bavit keep 0.5 b8") < text.index("| scenario | target | precision")
    assert markdown_report(load_results(run_dir), 2.0) == text


# --- comparison and CLI ------------------------------------------------------

def test_compare_ratio_and_one_sided_cells(run_dir: Path) -> None:
    this = load_results(run_dir)
    base_rows = [make_row("torch", "fp32", 1.0, rounds=[50.0], p50=160.0, mean_ap=0.41, peak=950.0),
                 make_row("torch", "fp32", 0.25, rounds=[70.0], mean_ap=0.30),
                 make_row("torch", "fp32", 1.0, 1, SS, rounds=[40.0], throughput=25.0)]
    cmp = compare(this, pd.DataFrame(base_rows)).set_index(["target", "precision", "keep", "batch", "scenario"])
    row = cmp.loc[("torch", "fp32", 1.0, 8, OFF)]
    assert row["throughput_ratio"] == pytest.approx(2.0)
    assert row["map_diff_pts"] == pytest.approx(-1.0)
    assert (row["p50_this"], row["p50_baseline"]) == (80.0, 160.0)
    assert (row["peak_mib_this"], row["peak_mib_baseline"]) == (900.0, 950.0)
    assert cmp.loc[("torch", "fp32", 1.0, 1, SS), "throughput_ratio"] == pytest.approx(50.0 / 25.0)
    only_base = cmp.loc[("torch", "fp32", 0.25, 8, OFF)]
    assert math.isnan(only_base["throughput_this"]) and only_base["throughput_baseline"] == 70.0
    assert math.isnan(cmp.loc[("openvino", "int8", 0.5, 8, OFF), "throughput_baseline"])
    assert len(cmp) == N_CELLS + 1


def test_cli_with_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    current = write_run(tmp_path / "current", sample_rows())
    slower = [dict(r, throughput_ips=r["throughput_ips"] / 2) if r["throughput_ips"] else r for r in sample_rows()]
    baseline = write_run(tmp_path / "baseline", slower)
    assert main([str(current), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Decision") and "\n| scenario | target | precision |" in out
    cmp = pd.read_csv(current / "comparison.csv")
    assert cmp["throughput_ratio"].dropna().tolist() == pytest.approx([2.0] * 11)
    page = (current / "report.html").read_text(encoding="utf-8")
    assert "Comparison with baseline" in page and "2.00×" in page
    assert page.count("data:image/png;base64") == 5


def test_compare_says_whether_each_runs_speedups_lie_inside_the_others_interval(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The test of an interval: does it hold the next run's figure? Per speed-up both runs
    measured (a reference against itself and a borrowed timing left out), and in one line."""
    def run(int8: list[float], half: list[float], twin: list[float]) -> list[dict]:
        ref = [100.0, 102.0, 98.0, 101.0]
        return [make_row("openvino", "fp32", 1.0, rounds=ref, mean_ap=0.40),
                make_row("openvino", "int8", 1.0, rounds=int8, mean_ap=0.39),
                make_row("openvino", "fp32", 0.5, rounds=half, mean_ap=0.38),
                make_row("openvino", "bf16", 1.0, rounds=twin, mean_ap=0.40,
                         timing_from="openvino/fp32/keep1/b8/offline")]

    this = run([200.0, 206.0, 195.0, 203.0], [150.0, 151.0, 149.0, 152.0], [300.0] * 4)
    base = run([201.0, 205.0, 196.0, 204.0], [170.0, 171.0, 172.0, 169.0], [300.0] * 4)   # keep 0.5: +13 %
    cmp = compare(pd.DataFrame(this), pd.DataFrame(base)).set_index(["precision", "keep"])
    assert cmp.loc[("int8", 1.0), "speedup_inside_both"] is True
    assert cmp.loc[("fp32", 0.5), "speedup_inside_both"] is False
    assert cmp.loc[("fp32", 0.5), "speedup_ratio"] == pytest.approx(1.5 / 1.7, rel=0.01)
    assert pd.isna(cmp.loc[("fp32", 1.0), "speedup_inside_both"])     # the reference itself
    assert pd.isna(cmp.loc[("bf16", 1.0), "speedup_inside_both"])     # its rounds are another cell's
    line = interval_check(cmp.reset_index())
    assert line.startswith("Speed-ups of both runs (2): each inside the other's 95 % interval for 1 of 2 (50%); "
                           "medians within 5 % for 1 of 2 (50%); largest change 11.")
    assert main([str(write_run(tmp_path / "a", this)), "--baseline", str(write_run(tmp_path / "b", base))]) == 0
    assert line in capsys.readouterr().out


def test_one_round_has_no_interval() -> None:
    row = make_row("torch", "fp32", 1.0, rounds=[10.0])
    assert (row["throughput_min"], row["throughput_max"]) == (10.0, 10.0)
    assert all(math.isnan(v) for v in round_bounds(row, False))
    assert all(math.isnan(v) for v in paired_speedup(make_row("torch", "int8", 1.0, rounds=[20.0]), row)[1:])


def test_cli_redecides_with_other_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "run", sample_rows())
    assert main([str(run)]) == 0
    first = pd.read_csv(run / "decision.csv").set_index(["scenario", "target"])
    assert first.loc[(OFF, ANY_TARGET), "cell_id"] == OV_INT8_K1
    capsys.readouterr()
    assert main([str(run), "--max-map-drop", "2", "--max-latency-ms", "25", "--max-rss-mb", "445"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("## Decision (mAP drop ≤ 2 pts vs the target's dense fp32; tail latency "
                                   "(p99, else p90, else p50) ≤ 25 ms; peak RSS ≤ 445 MiB)")
    again = pd.read_csv(run / "decision.csv").set_index(["scenario", "target"])
    assert again.loc[(OFF, ANY_TARGET), "cell_id"] == OV_INT8_K05
    assert "peak RSS ≤ 445 MiB" in (run / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("args", [["--max-map-drop", "-1"], ["--max-latency-ms", "-3"],
                                  ["--max-rss-mb", "lots"]])
def test_cli_bad_limit_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              args: list[str]) -> None:
    run = write_run(tmp_path / "run", sample_rows())
    assert main([str(run), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and args[0] in lines[0] and "usage" not in captured.err
    assert not (run / "report.html").exists()


def test_cli_missing_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "reports.build", str(tmp_path / "missing")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "run directory not found" in lines[0] and "missing" in lines[0]
    assert "Traceback" not in proc.stderr


def test_speed_only_run_builds_a_report(tmp_path: Path) -> None:
    """--images 0 writes no accuracy fields at all; the report must still build."""
    rows = [{k: v for k, v in r.items() if k not in ("map", "ap50", "ap75", "token_acc", "fg_recall",
                                                    "fg_precision", "accuracy_from", "accuracy_reused")}
            for r in sample_rows()]
    paths = build(write_run(tmp_path / "speed", rows))
    df = pd.read_csv(paths["csv"])
    assert df["map"].isna().all() and df["map_drop_pts"].isna().all()
    assert df["speedup_vs_target_dense_fp32"].notna().any()
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64") == 5
    assert "no mAP in this run: picked on speed alone" in page


def test_best_reducer_per_keep_and_the_reducer_plot(tmp_path):
    from reports.html import render_html
    from reports.plots import reducer_tradeoff
    from reports.table import best_reducers

    rows = [make_row("openvino", "fp32", 1.0, rounds=[100.0, 100.0, 100.0], mean_ap=0.40, reducer="none")]
    for reducer, tp, m in (("bavit", 150.0, 0.380), ("tome", 140.0, 0.391), ("random", 160.0, 0.300)):
        rows.append(make_row("openvino", "fp32", 0.5, rounds=[tp] * 3, mean_ap=m, reducer=reducer,
                             ideal_speedup=1.6))
    rows.append(make_row("openvino", "fp32", 0.25, rounds=[200.0] * 3, mean_ap=0.2, reducer="bavit"))
    df = pd.DataFrame(rows)
    best = best_reducers(df)
    assert list(best["keep"]) == [0.25, 0.5]
    half = best[best["keep"] == 0.5].iloc[0]
    assert half["best_reducer"] == "tome" and half["reducers_compared"] == 3
    assert half["speedup_vs_target_dense_fp32"] == pytest.approx(1.4) and half["map_drop_pts"] == pytest.approx(0.9)
    assert half["others"].startswith("bavit 0.380 (1.50×); random 0.300")
    png = reducer_tradeoff(df)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    page = render_html(df)
    assert "Best reducer per keep ratio" in page and "<td>tome</td>" in page


def test_work_and_efficiency_columns_and_the_roofline_plot():
    """Achieved GOP/s and % of peak reach the summary table; the roofline plot draws the
    cells under their precision's peak, and says so when no cell has the figures."""
    from reports.html import render_html
    from reports.plots import roofline

    rows = [make_row("openvino", p, k, rounds=[tp] * 3, gflop_per_image=g, achieved_gops=g * tp,
                     peak_gops=pk, peak_pct=100 * g * tp / pk, peak_basis="2 cores x 2.45 GHz")
            for p, k, tp, g, pk in (("fp32", 1.0, 20.0, 3.2, 156.5), ("fp32", 0.5, 33.0, 1.7, 156.5),
                                    ("int8", 0.5, 40.0, 1.7, 313.0))]
    df = pd.DataFrame(rows)
    page = render_html(df)
    assert "% peak" in page and "40.9%" in page and "Achieved GOP/s (analytic" in page
    png = roofline(df)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    empty = roofline(pd.DataFrame([make_row("openvino", "fp32", 1.0, rounds=[20.0] * 3)]))
    assert empty != png and len(empty) < len(png)


# --- several detectors ---------------------------------------------------------

REF, PRUNE = "detector", "detector-prune"
DETECTOR_CELLS = {
    # (detector, target, precision, reducer, keep): (per-round img/s, mAP)
    (PRUNE, "openvino", "fp32", "none", 1.0): ([99.0, 101.0, 100.0], 0.396),  # its own dense: costs 0.4 pts
    (PRUNE, "openvino", "fp32", "bavit", 0.5): ([160.0, 160.0, 160.0], 0.392),
    (PRUNE, "openvino", "fp32", "tome", 0.5): ([155.0, 155.0, 155.0], 0.394),
    (PRUNE, "openvino", "int8", "bavit", 0.5): ([320.0, 320.0, 320.0], 0.391),  # the fastest within 1 point
    (PRUNE, "torch", "fp32", "none", 1.0): ([25.0, 25.0, 25.0], 0.396),  # never a reference: x2 would show
    (REF, "openvino", "fp32", "none", 1.0): ([100.0, 100.0, 100.0], 0.400),
    (REF, "openvino", "fp32", "bavit", 0.5): ([150.0, 150.0, 150.0], 0.370),
    (REF, "openvino", "int8", "none", 1.0): ([200.0, 200.0, 200.0], 0.395),
    (REF, "openvino", "int8", "bavit", 0.5): ([300.0, 300.0, 300.0], 0.365),
    (REF, "torch", "fp32", "none", 1.0): ([50.0, 50.0, 50.0], 0.400),
}


def detector_rows(prune_first: bool = True) -> list[dict]:
    """A run of two detectors; the pruning-aware one's rows come first unless told otherwise,
    so a reference picked by reading order (first or last) would be the wrong one either way."""
    rows = [make_row(t, p, k, rounds=rounds, mean_ap=m, reducer=r, detector=d, reference=REF)
            for (d, t, p, r, k), (rounds, m) in DETECTOR_CELLS.items()]
    return rows if prune_first else rows[::-1]


def det_cell(detector: str, target: str, precision: str, reducer: str, keep: float) -> str:
    return cell_id(target, precision, keep, 8, OFF, reducer, detector)


@pytest.mark.parametrize("prune_first", [True, False])
def test_references_are_the_reference_detectors_dense_fp32(prune_first: bool) -> None:
    df = by_cell(add_derived(pd.DataFrame(detector_rows(prune_first))))
    own_dense = det_cell(PRUNE, "openvino", "fp32", "none", 1.0)
    # vs the plain detector's dense fp32 round by round: [99/100, 101/100, 100/100]
    assert triple(df, own_dense) == approx_t95([99 / 100, 101 / 100, 100 / 100])
    assert df.loc[own_dense, "map_drop_pts"] == pytest.approx(0.4)  # what its training cost
    # vs torch: the reference's torch dense (50 img/s), not its own (25)
    assert triple(df, own_dense, "torch") == approx_t95([99 / 50, 101 / 50, 100 / 50])
    pruned = det_cell(PRUNE, "openvino", "fp32", "bavit", 0.5)
    assert triple(df, pruned) == pytest.approx((1.6, 1.6, 1.6))
    assert df.loc[pruned, "map_drop_pts"] == pytest.approx(0.8)
    assert df.loc[det_cell(PRUNE, "openvino", "int8", "bavit", 0.5), "map_drop_pts"] == pytest.approx(0.9)
    assert df.loc[det_cell(PRUNE, "torch", "fp32", "none", 1.0), "speedup_vs_target_dense_fp32"] == pytest.approx(0.5)
    # the reference's own cells are unchanged by the other detector being there
    ref_dense = det_cell(REF, "openvino", "fp32", "none", 1.0)
    assert triple(df, ref_dense) == pytest.approx((1.0, 1.0, 1.0)) and df.loc[ref_dense, "map_drop_pts"] == 0.0
    assert df.loc[det_cell(REF, "openvino", "fp32", "bavit", 0.5), "map_drop_pts"] == pytest.approx(3.0)


def test_without_the_reference_detectors_dense_cell_nothing_is_derived() -> None:
    """Another detector's dense cell never stands in for the reference's."""
    rows = [r for r in detector_rows() if r["cell_id"] != det_cell(REF, "openvino", "fp32", "none", 1.0)]
    df = by_cell(add_derived(pd.DataFrame(rows)))
    pruned = det_cell(PRUNE, "openvino", "fp32", "bavit", 0.5)
    assert math.isnan(df.loc[pruned, "speedup_vs_target_dense_fp32"]) and math.isnan(df.loc[pruned, "map_drop_pts"])
    assert df.loc[pruned, "speedup_vs_torch_dense_fp32"] == pytest.approx(3.2)


def test_rows_without_reference_detector_compare_as_before(run_dir: Path, derived: pd.DataFrame) -> None:
    """Runs written before detectors were swept have no reference_detector key at all."""
    rows = [{k: v for k, v in r.items() if k != "reference_detector"} for r in sample_rows()]
    old = add_derived(pd.DataFrame(rows)).drop_duplicates("cell_id", keep="last").set_index("cell_id")
    columns = [c for c in DERIVED_COLUMNS if c != "pareto"]
    pd.testing.assert_frame_equal(old.loc[derived.index, columns], derived[columns])


def test_sort_puts_the_reference_detector_first_within_a_target() -> None:
    order = list(sort_cells(add_derived(pd.DataFrame(detector_rows())))["cell_id"])
    assert order[:7] == [det_cell(REF, "openvino", "fp32", "none", 1.0),
                         det_cell(REF, "openvino", "fp32", "bavit", 0.5),
                         det_cell(REF, "openvino", "int8", "none", 1.0),
                         det_cell(REF, "openvino", "int8", "bavit", 0.5),
                         det_cell(PRUNE, "openvino", "fp32", "none", 1.0),
                         det_cell(PRUNE, "openvino", "fp32", "bavit", 0.5),
                         det_cell(PRUNE, "openvino", "fp32", "tome", 0.5)]
    assert order[8:] == [det_cell(REF, "torch", "fp32", "none", 1.0), det_cell(PRUNE, "torch", "fp32", "none", 1.0)]


def test_decision_picks_the_other_detector_and_names_it() -> None:
    decisions = decide(pd.DataFrame(detector_rows()))
    row = decisions.set_index(["scenario", "target"]).loc[(OFF, ANY_TARGET)]
    assert row["cell_id"] == det_cell(PRUNE, "openvino", "int8", "bavit", 0.5)   # 320 img/s, −0.9 pts
    assert (row["detector"], row["reference_detector"]) == (PRUNE, REF)
    assert row["speedup"] == pytest.approx(3.2) and row["map_drop_pts"] == pytest.approx(0.9)
    # the plain detector's best within 1 point is its int8 dense (200 img/s): it loses to the pruned one
    md = decision_markdown(decisions)
    assert md.splitlines()[0] == ("## Decision (mAP drop ≤ 1 pts vs the target's dense fp32 (reference detector: "
                                  "detector); no latency limit; no memory limit)")
    assert md.splitlines()[2] == ("offline: openvino int8 detector-prune, bavit keep 0.5 b8 — 320.0 img/s "
                                  "[320.0–320.0], 3.20× [3.20–3.20] over openvino detector dense fp32, "
                                  "mAP 0.391 (−0.9 pts)")
    assert "| offline | torch | fp32 detector, dense b8 |" in md   # the reference named too
    # within 0.5 points only the reference's own int8 dense qualifies on openvino
    strict = decide(pd.DataFrame(detector_rows()), max_map_drop=0.5).set_index(["scenario", "target"])
    assert strict.loc[(OFF, "openvino"), "cell_id"] == det_cell(REF, "openvino", "int8", "none", 1.0)


def test_one_detector_decisions_do_not_name_it(run_dir: Path) -> None:
    decisions = decide(load_results(run_dir))
    assert decisions["reference_detector"].isna().all()
    assert decisions.set_index(["scenario", "target"]).loc[(OFF, ANY_TARGET), "detector"] == "weights/ti/detector"
    assert "detector" not in decision_markdown(decisions)


def test_detectors_table_and_csv(tmp_path: Path) -> None:
    run = write_run(tmp_path / "two", detector_rows())
    paths = build(run)
    assert paths["detectors_csv"] == run / "detectors.csv"
    table = pd.read_csv(paths["detectors_csv"])
    assert list(table.columns) == list(DETECTOR_KEEP_COLUMNS)
    got = [(r.target, r.precision, r.detector, r.keep, r.reducer) for r in table.itertuples()]
    assert got == [("openvino", "fp32", REF, 1.0, "none"), ("openvino", "fp32", REF, 0.5, "bavit"),
                   ("openvino", "fp32", PRUNE, 1.0, "none"), ("openvino", "fp32", PRUNE, 0.5, "bavit"),
                   ("openvino", "int8", REF, 1.0, "none"), ("openvino", "int8", REF, 0.5, "bavit"),
                   ("openvino", "int8", PRUNE, 0.5, "bavit"),
                   ("torch", "fp32", REF, 1.0, "none"), ("torch", "fp32", PRUNE, 1.0, "none")]
    assert (table["reference_detector"] == REF).all() and (table["scenario"] == OFF).all()
    own_dense = table.iloc[2]
    assert own_dense["map_drop_pts"] == pytest.approx(0.4)
    own_ratios = [99 / 100, 101 / 100, 100 / 100]   # paired with the reference detector's dense rounds
    assert (own_dense["speedup_vs_target_dense_fp32"], own_dense["speedup_lo"], own_dense["speedup_hi"]) == \
        approx_t95(own_ratios)
    pruned = table.iloc[3]   # bavit shown although tome has the higher mAP: the table compares detectors
    assert pruned["reducers_measured"] == 2 and pruned["map"] == pytest.approx(0.392)
    assert pruned["speedup_vs_target_dense_fp32"] == pytest.approx(1.6)
    # without bavit at a keep, the reducer with the highest mAP stands in
    no_bavit = [r for r in detector_rows() if r["cell_id"] != det_cell(PRUNE, "openvino", "fp32", "bavit", 0.5)]
    alone = detector_keeps(pd.DataFrame(no_bavit))
    assert alone.iloc[3]["reducer"] == "tome" and alone.iloc[3]["reducers_measured"] == 1

    page = paths["html"].read_text(encoding="utf-8")
    assert page.index("<h2>Summary</h2>") < page.index("<h2>Detectors × keep ratio</h2>") \
        < page.index("<h2>Best reducer per keep ratio</h2>")
    section = page[page.index("<h2>Detectors × keep ratio</h2>"):page.index("<h2>Best reducer per keep ratio</h2>")]
    assert "reference detector <strong>detector</strong>" in section and 'class="report-table detectors"' in section
    own_text = interval_text(t95(own_ratios), ".2f", "×")
    assert own_text in section and "<th>precision</th><th>detector</th><th>ran as</th>" in page
    assert "detector (reference), detector-prune" in page
    assert page.count("data:image/png;base64") == 5   # the plots draw one series per detector
    best = pd.read_csv(paths["reducers_csv"])
    assert list(zip(best["precision"], best["detector"])) == [("fp32", REF), ("fp32", PRUNE), ("int8", REF),
                                                              ("int8", PRUNE)]
    assert best.set_index(["detector", "precision"]).loc[(PRUNE, "fp32"), "best_reducer"] == "tome"
    text = summary_text(run)
    assert "offline: openvino int8 detector-prune, bavit keep 0.5 b8" in text
    assert "| scenario | target | precision | detector | reducer |" in text
    md = detectors_markdown(load_results(run)).splitlines()
    assert md[0].startswith("Detectors × keep ratio (drop and speed-up against detector's dense fp32 cell")
    assert md[4] == f"| {OFF} | 8 | openvino | fp32 | detector | 1.0 | none | 0.400 | 0.00 | 1.00× [1.00–1.00] |"
    assert md[6].startswith(f"| {OFF} | 8 | openvino | fp32 | detector-prune | 1.0 | none | ")
    assert own_text in md[6] and len(md) == 4 + len(table)
    assert detectors_markdown(load_results(write_run(tmp_path / "one", [
        r for r in detector_rows() if r["detector"] == REF]))) == ""


def test_detectors_csv_only_with_several_detectors(built: dict[str, Path], tmp_path: Path) -> None:
    assert "detectors_csv" not in built and not (built["csv"].parent / "detectors.csv").exists()
    page = built["html"].read_text(encoding="utf-8")
    assert "Detectors × keep ratio" not in page and "<th>precision</th><th>detector</th>" not in page
    # a table left by an earlier build of the folder goes when the run now holds one detector
    run = write_run(tmp_path / "one", [r for r in detector_rows() if r["detector"] == REF])
    (run / "detectors.csv").write_text("stale\n")
    assert "detectors_csv" not in build(run) and not (run / "detectors.csv").exists()


def test_compare_keeps_detectors_apart_and_meets_references() -> None:
    """A two-detector run against an older one-detector baseline: the reference rows join the
    baseline's cells, the other detector's are one-sided instead of overwriting them."""
    base = [make_row("openvino", "fp32", 1.0, rounds=[50.0] * 3, mean_ap=0.41, reducer="none", detector="old")]
    cmp = compare(pd.DataFrame(detector_rows()), pd.DataFrame(base))
    assert len(cmp) == len(DETECTOR_CELLS)
    dense = cmp[(cmp["target"] == "openvino") & (cmp["precision"] == "fp32") & (cmp["keep"] == 1.0)]
    assert list(dense["detector"]) == ["", PRUNE]
    assert dense.iloc[0]["throughput_ratio"] == pytest.approx(2.0) and math.isnan(dense.iloc[1]["throughput_ratio"])


# --- several devices, one report ---------------------------------------------

BOARD = {"sys_cpu": "ARM Cortex-A76", "sys_cores": 4, "sys_host": "board-7", "sys_isa": "neon asimddp"}


def board_rows() -> list[dict]:
    """The same offline cells measured on a slower board: its own dense fp32 (50 img/s) and its
    int8 keep-0.5 cell (150); no torch cells (torch is not installed there)."""
    return [
        make_row("openvino", "fp32", 1.0, rounds=[50.0, 52.0, 48.0], mean_ap=0.400, **BOARD),
        make_row("openvino", "int8", 0.5, rounds=[150.0, 156.0, 120.0], mean_ap=0.394, **BOARD),
        make_row("openvino", "int8", 1.0, rounds=[90.0, 91.0, 89.0], mean_ap=0.395, **BOARD),
    ]


def test_devices_pair_only_within_one_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reports.devices import device_runs

    here = write_run(tmp_path / "xeon", sample_rows())
    board = write_run(tmp_path / "board", board_rows())
    # a board run without its dense fp32 cell must not borrow the Xeon's
    orphan = write_run(tmp_path / "orphan", [make_row("openvino", "int8", 0.5, rounds=[150.0, 151.0, 149.0],
                                                      mean_ap=0.388, sys_cpu="RISC-V", sys_cores=1, sys_host="r")])
    groups = {g.device: g for g in device_runs([here, board, orphan])}
    assert len(groups) == 3
    xeon = by_cell(groups["Intel(R) Xeon(R) Platinum 8480+ (16 cores, host bench-box-01)"].cells)
    arm = by_cell(groups["ARM Cortex-A76 (4 cores, host board-7)"].cells)
    lone = by_cell(groups["RISC-V (1 cores, host r)"].cells)
    # the board's speed-up is its own paired rounds: 150/50, 156/52, 120/48 = [3, 3, 2.5] -> median 3.0
    assert triple(arm, OV_INT8_K05) == approx_t95([150 / 50, 156 / 52, 120 / 48])
    assert triple(xeon, OV_INT8_K05) == pytest.approx(triple(add_derived(load_results(here)).set_index("cell_id"),
                                                             OV_INT8_K05))
    assert math.isnan(float(lone.loc[OV_INT8_K05, "speedup_vs_target_dense_fp32"]))
    assert math.isnan(float(lone.loc[OV_INT8_K05, "map_drop_pts"]))

    out = tmp_path / "joint"
    assert main([str(here), str(board), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("## Decision") == 2 and "# ARM Cortex-A76 (4 cores, host board-7)" in printed
    decisions = pd.read_csv(out / "decision.csv")
    board_pick = decisions[(decisions["device"].str.startswith("ARM")) & (decisions["target"] == ANY_TARGET)]
    assert board_pick["cell_id"].tolist() == [OV_INT8_K05]      # fastest within 1 pt on the board
    assert set(pd.read_csv(out / "report.csv")["device"]) == {
        "Intel(R) Xeon(R) Platinum 8480+ (16 cores, host bench-box-01)", "ARM Cortex-A76 (4 cores, host board-7)"}
    across = pd.read_csv(out / "devices.csv")
    row = across[(across["target"] == "openvino") & (across["precision"] == "int8") & (across["keep"] == 0.5)
                 & (across["scenario"] == OFF)]
    assert len(row) == 1
    assert float(row["img/s @ ARM Cortex-A76 (4 cores, host board-7)"].iloc[0]) == 150.0
    assert float(row["img/s @ Intel(R) Xeon(R) Platinum 8480+ (16 cores, host bench-box-01)"].iloc[0]) == 600.0
    assert "The same cell on each device" in (out / "report.html").read_text(encoding="utf-8")


def test_devices_same_machine_twice_kept_apart(tmp_path: Path) -> None:
    from reports.devices import device_runs

    first = write_run(tmp_path / "monday", board_rows())
    second = write_run(tmp_path / "tuesday", board_rows())
    names = [g.device for g in device_runs([first, second])]
    assert names == ["ARM Cortex-A76 (4 cores, host board-7) [monday]", "ARM Cortex-A76 (4 cores, host board-7) [tuesday]"]


@pytest.mark.parametrize(("extra", "message"), [
    ([], "several run directories need --out"),
    (["--out", "OUT", "--baseline", "B"], "--baseline compares one run"),
])
def test_devices_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                       message: str) -> None:
    a = write_run(tmp_path / "a", board_rows())
    b = write_run(tmp_path / "b", board_rows())
    args = [str(tmp_path / x) if x in ("OUT", "B") else x for x in extra]
    assert main([str(a), str(b), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert main([str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err


def test_targets_side_by_side(tmp_path, capsys):
    import pandas as pd

    from reports import targets

    base = dict(status="ok", reference_detector="detector", reducer="bavit", batch=8, scenario="offline",
                latency_p50_ms=300.0, latency_p50_lo=290.0, latency_p50_hi=310.0, throughput_lo=20.0,
                throughput_hi=30.0, speedup_lo=0.9, speedup_hi=1.3, executed_precision="i8+f32")
    rows = [dict(base, target="onnxruntime", detector="detector-prune", precision="int8", keep=0.5,
                 throughput_ips=25.0, speedup_vs_target_dense_fp32=1.1, map=0.7),
            dict(base, target="openvino", detector="detector-prune", precision="bf16", keep=0.5,
                 throughput_ips=50.0, speedup_vs_target_dense_fp32=2.0, map=0.7),
            dict(base, target="openvino", detector="detector", precision="fp32", keep=1.0,
                 throughput_ips=20.0, speedup_vs_target_dense_fp32=1.0, map=0.7),
            dict(base, target="torch", detector="detector-prune", precision="fp32", keep=1.0, status="failed",
                 throughput_ips=None, speedup_vs_target_dense_fp32=None, map=None)]
    pd.DataFrame(rows).to_csv(tmp_path / "report.csv", index=False)
    assert targets.main([str(tmp_path)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("| offline")]
    # the pruning-aware detector by default, fp32/int8 only, ok cells only
    assert lines == ["| offline b8 | onnxruntime | int8 | 0.5 | 25.0 img/s [20.0–30.0] | 1.10× [0.90–1.30] | 0.700 "
                     "| i8+f32 |"]
    assert targets.main([str(tmp_path / "nowhere")]) == 2


def test_compare_gate_exit_codes(tmp_path: Path, capsys) -> None:
    """Two recorded runs: a real slow-down (intervals separate), a slow-down within noise, an
    mAP drop and a cell that stopped working, each against its gate; 2 on bad input."""
    from reports import compare

    def run(name: str, fast: list[float], noisy: list[float], mean_ap: float, status: str = "ok") -> Path:
        rows = [make_row("openvino", "fp32", 1.0, rounds=[100.0, 101.0, 99.0, 100.5], mean_ap=0.40),
                make_row("openvino", "int8", 1.0, rounds=fast, mean_ap=mean_ap),
                make_row("openvino", "fp32", 0.5, rounds=noisy, mean_ap=0.39),
                make_row("tflite", "fp32", 1.0, rounds=[50.0, 51.0, 49.0] if status == "ok" else None,
                         status=status, error=None if status == "ok" else "converter crashed", mean_ap=0.4)]
        return write_run(tmp_path / name, rows)

    base = run("base", [200.0, 202.0, 198.0, 201.0], [150.0, 140.0, 160.0, 150.0], 0.395)
    slower = run("slower", [170.0, 171.0, 169.0, 170.5], [140.0, 150.0, 130.0, 141.0], 0.395)
    assert compare.main([str(base), str(base), "--fail-slower", "5", "--fail-map-drop", "1"]) == 0
    # int8 15 % slower, intervals apart: real; fp32 keep 0.5 6 % slower inside the noise: not
    assert compare.main([str(base), str(slower), "--fail-slower", "5"]) == 1
    out = capsys.readouterr().out
    fails = [x for x in out.splitlines() if x.startswith("FAIL")]
    assert len(fails) == 1 and "int8" in fails[0] and "real: intervals separate" in fails[0]
    assert any("keep 0.5" in x and "within noise" in x and not x.startswith("FAIL") for x in out.splitlines())
    assert compare.main([str(base), str(slower), "--fail-slower", "20"]) == 0
    assert compare.main([str(base), str(slower)]) == 0                               # no gate: report only
    dropped = run("dropped", [200.0, 202.0, 198.0, 201.0], [150.0, 140.0, 160.0, 150.0], 0.37)
    assert compare.main([str(base), str(dropped), "--fail-map-drop", "1"]) == 1      # 2.5 points
    assert compare.main([str(base), str(dropped), "--fail-map-drop", "3"]) == 0
    broken = run("broken", [200.0, 202.0, 198.0, 201.0], [150.0, 140.0, 160.0, 150.0], 0.395, status="failed")
    assert compare.main([str(base), str(broken), "--fail-map-drop", "1"]) == 1
    assert "was ok, now failed" in capsys.readouterr().out
    assert compare.main([str(base), str(tmp_path / "missing"), "--fail-slower", "5"]) == 2
    assert compare.main([str(base), str(slower), "--fail-slower", "-1"]) == 2
    assert compare.main([str(base), str(slower), "--fail-slower", "x"]) == 2
