"""Load benchmark results and derive the comparison columns the report shows.

The harness (``bench/``) appends one flat JSON object per benchmark cell to
``RUN_DIR/results.jsonl``. This module is the only place that reads that file,
so the rest of ``reports`` can rely on one cleaned-up ``DataFrame``:

* re-runs of a cell are appended rather than rewritten, so the LAST row of a
  ``cell_id`` is the one that counts;
* numeric fields may be ``null`` (not measured) and become ``NaN``;
* unknown extra keys are kept untouched so they reach ``report.csv``.

It deliberately never imports ``bench/`` or ``targets/``: the report must be
buildable on a machine that has none of the backends installed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS_FILE = "results.jsonl"

#: Columns without which no row can be placed in the report.
REQUIRED_COLUMNS: tuple[str, ...] = ("cell_id", "target", "precision", "keep", "batch", "status")

#: Fields the schema defines as numbers. They are coerced so that a stray
#: string or ``null`` becomes NaN instead of turning the column into objects
#: (which would break arithmetic and plotting for every other row).
NUMERIC_COLUMNS: tuple[str, ...] = (
    "keep", "batch", "threads",
    "throughput_ips", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "iterations",
    "peak_rss_mb", "baseline_rss_mb", "rss_increase_mb",
    "map", "ap50", "ap75", "token_acc", "fg_recall", "fg_precision",
    "tokens_kept", "tokens_total", "images",
    "convert_s", "artifact_bytes", "load_start", "load_end",
    "sys_cores", "sys_ram_gb", "wall_s",
)

#: Columns added by :func:`add_derived`, in the order they are appended.
DERIVED_COLUMNS: tuple[str, ...] = (
    "speedup_vs_target_dense_fp32",
    "speedup_vs_torch_dense_fp32",
    "map_drop_pts",
    "pareto",
)

REFERENCE_TARGET = "torch"
REFERENCE_PRECISION = "fp32"
DENSE_KEEP = 1.0
PRECISION_ORDER: tuple[str, ...] = ("fp32", "bf16", "int8")


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """Read ``run_dir/results.jsonl`` into a DataFrame, one row per ``cell_id``.

    Lines are parsed one by one (rather than with ``pd.read_json``) so that a
    corrupt line is reported with its file and line number instead of a generic
    parser error. A last line without its newline is a harness killed mid-write:
    it is skipped with a warning, as ``--resume`` skips it, so the finished
    cells still make a report. The records are then handed to pandas in one go.

    Raises:
        FileNotFoundError: the run directory or its results file does not exist.
        ValueError: the file has no rows, a malformed line, or lacks a required column.
    """
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")

    records: list[dict] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):  # no newline after it: a harness killed mid-write
                warnings.warn(f"{path}:{lineno}: skipped a line cut short (its cell did not finish)", stacklevel=2)
                continue
            raise ValueError(f"{path}:{lineno}: malformed JSON line ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no result rows (file is empty)")

    df = pd.DataFrame.from_records(records)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s): {', '.join(missing)}")

    for col in NUMERIC_COLUMNS:  # a speed-only run (--images 0) has no mAP: the column is NaN
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else float("nan")
    return df.drop_duplicates("cell_id", keep="last").reset_index(drop=True)


def column(df: pd.DataFrame, name: str) -> pd.Series:
    """Return ``df[name]``, or an all-NaN float column if the harness never wrote it.

    Lets derived metrics and plots treat "never measured" and "null" alike
    without adding empty columns to the CSV.
    """
    if name in df.columns:
        return df[name]
    return pd.Series(np.nan, index=df.index, dtype=float)


def ok_mask(df: pd.DataFrame) -> pd.Series:
    """Rows whose measurement succeeded; only these feed comparisons."""
    return df["status"].eq("ok").fillna(False).astype(bool)


def _dense_fp32_refs(df: pd.DataFrame) -> pd.DataFrame:
    """Successful rows at fp32 and keep 1.0: the baselines every cell is compared to."""
    keep = pd.to_numeric(df["keep"], errors="coerce").to_numpy(dtype=float)
    dense = pd.Series(np.isclose(keep, DENSE_KEEP), index=df.index)
    return df[ok_mask(df) & df["precision"].eq(REFERENCE_PRECISION).fillna(False) & dense]


def _lookup(refs: pd.DataFrame, keys: list[str], value: str) -> dict:
    """Map key tuple -> value for reference rows where the value was measured."""
    measured = refs[column(refs, value).notna()]
    return {
        tuple(row[:-1]): row[-1]
        for row in measured[[*keys, value]].itertuples(index=False, name=None)
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Flag the points no other point dominates (higher is better on both axes).

    Point ``j`` dominates ``i`` when it is ``>=`` on both coordinates and
    strictly ``>`` on at least one, so exact duplicates are both kept on the
    front (neither is better) while a point that only ties on one axis and
    loses on the other is dropped. Points containing NaN are never on the
    front. Quadratic, which is fine for the tens of cells in a run.
    """
    finite = [not (math.isnan(x) or math.isnan(y)) for x, y in points]
    flags: list[bool] = []
    for i, (xi, yi) in enumerate(points):
        dominated = any(
            finite[j] and xj >= xi and yj >= yi and (xj > xi or yj > yi)
            for j, (xj, yj) in enumerate(points)
            if j != i
        )
        flags.append(finite[i] and not dominated)
    return flags


def add_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` with speed-up, mAP-drop and Pareto columns appended.

    * ``speedup_vs_target_dense_fp32``: gain from pruning/quantising *within*
      a backend (same target, fp32, keep 1.0, same batch).
    * ``speedup_vs_torch_dense_fp32``: gain over the plain PyTorch model, the
      number a user choosing a deployment path cares about.
    * ``map_drop_pts``: accuracy cost in mAP points (positive = worse) versus the
      same target's dense fp32 model. mAP is usually evaluated once per
      (target, precision, keep), so when the same-batch reference has no mAP the
      reference from any batch of that target is used (smallest batch first).
    * ``pareto``: on the throughput/mAP front among successful rows of the same
      batch size (comparing across batch sizes would mix latency regimes).

    Derived values are NaN for rows that did not succeed, or whose reference
    cell is missing/failed, rather than being silently computed from junk.
    """
    # Work on a fresh RangeIndex: the per-batch Pareto assignment aligns on the
    # index, which must be unique (a concatenated frame may repeat labels).
    out = df.reset_index(drop=True)
    ok = ok_mask(out)
    refs = _dense_fp32_refs(out)
    throughput = column(out, "throughput_ips").where(ok)
    mean_ap = column(out, "map").where(ok)

    ref_tp = _lookup(refs, ["target", "batch"], "throughput_ips")
    torch_tp = _lookup(refs[refs["target"].eq(REFERENCE_TARGET)], ["batch"], "throughput_ips")
    ref_map = _lookup(refs, ["target", "batch"], "map")
    ref_map_any_batch: dict = {}
    for (target, _batch), value in sorted(ref_map.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        ref_map_any_batch.setdefault(target, value)

    target_batch = list(zip(out["target"], out["batch"]))
    tp_ref = pd.Series([ref_tp.get(k, np.nan) for k in target_batch], index=out.index, dtype=float)
    tp_torch = pd.Series([torch_tp.get((b,), np.nan) for b in out["batch"]], index=out.index, dtype=float)
    map_ref = pd.Series(
        [ref_map.get((t, b), ref_map_any_batch.get(t, np.nan)) for t, b in target_batch],
        index=out.index,
        dtype=float,
    )

    out["speedup_vs_target_dense_fp32"] = throughput / tp_ref.where(tp_ref > 0)
    out["speedup_vs_torch_dense_fp32"] = throughput / tp_torch.where(tp_torch > 0)
    out["map_drop_pts"] = (map_ref - mean_ap) * 100.0

    pareto = pd.Series(False, index=out.index, dtype=bool)
    candidates = out[throughput.notna() & mean_ap.notna()]
    for _batch, group in candidates.groupby("batch", sort=True):
        points = list(zip(throughput[group.index].astype(float), mean_ap[group.index].astype(float)))
        pareto[group.index] = pareto_front(points)
    out["pareto"] = pareto
    out.index = df.index
    return out


def ensure_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add the derived columns unless present, so renderers accept raw or derived frames."""
    return df if all(c in df.columns for c in DERIVED_COLUMNS) else add_derived(df)


def sort_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Order rows for reading: batch, target, precision (fp32→bf16→int8), keep descending.

    Dense fp32 lands first within each target so each reference row sits above
    the cells that are compared to it. Unknown precisions sort after the known ones.
    """
    rank = {p: i for i, p in enumerate(PRECISION_ORDER)}
    key = pd.DataFrame({
        "batch": column(df, "batch"),
        "target": df["target"].astype(str),
        "precision": df["precision"].map(lambda p: rank.get(p, len(rank))),
        "precision_name": df["precision"].astype(str),
        "keep": -column(df, "keep"),
    })
    order = key.sort_values(list(key.columns), kind="stable").index
    return df.loc[order].reset_index(drop=True)


def short_reason(reason: object, limit: int = 60) -> str:
    """First line of an error message, truncated, for table cells.

    Full tracebacks stay in the CSV; tables only need enough to recognise the cause.
    """
    if reason is None or (isinstance(reason, float) and math.isnan(reason)):
        return ""
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def format_keep(value: object) -> str:
    """Keep ratio as a short decimal that always reads as a ratio: 1.0, 0.5, 0.25."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    if math.isnan(number):
        return "–"
    text = f"{number:g}"
    return text if "." in text or "e" in text else text + ".0"


def _fmt(value: object, spec: str, suffix: str = "") -> str:
    """Format a number, rendering missing values as an en dash."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(number) else f"{number:{spec}}{suffix}"


def summary_markdown(df: pd.DataFrame) -> str:
    """Short markdown table of every cell, in the spirit of ``yolo benchmark`` output.

    Meant for a terminal or a PR comment: failed/unavailable cells stay in the
    table (status plus a shortened reason) so a missing number is never
    mistaken for a cell that was not requested. ``speed-up`` is against the same
    target's dense fp32 cell at the same batch size.
    """
    headers = ["target", "precision", "keep", "batch", "status", "img/s", "p50 ms",
               "mAP", "drop pts", "speed-up", "peak MiB"]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] * 5 + ["---:"] * 6) + "|",
    ]
    if df.empty:
        return "\n".join(lines) + "\n\n(no cells)\n"
    table = sort_cells(ensure_derived(df))
    for _, row in table.iterrows():
        status = str(row["status"])
        if status != "ok":
            reason = short_reason(row.get("error"))
            status = f"{status}: {reason}" if reason else status
        elif short_reason(row.get("accuracy_note")):
            status = f"ok, no mAP: {short_reason(row.get('accuracy_note'))}"
        cells = [
            str(row["target"]), str(row["precision"]), format_keep(row["keep"]), _fmt(row["batch"], ".0f"),
            status,
            _fmt(row.get("throughput_ips"), ".1f"), _fmt(row.get("latency_p50_ms"), ".2f"),
            _fmt(row.get("map"), ".3f"), _fmt(row["map_drop_pts"], ".2f"),
            _fmt(row["speedup_vs_target_dense_fp32"], ".2f", "x"), _fmt(row.get("peak_rss_mb"), ".0f"),
        ]
        if str(row["status"]) != "ok":
            cells[5:] = ["–"] * 6
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
