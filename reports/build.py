"""Build ``report.csv`` and ``report.html`` for a run directory; also the CLI.

Usage::

    python -m reports.build RUN_DIR [--baseline OTHER_RUN]

Writes ``RUN_DIR/report.csv`` (every cell, original columns plus derived
ones), ``RUN_DIR/report.html`` (self-contained) and, with ``--baseline``,
``RUN_DIR/comparison.csv``; prints the markdown summary to stdout. Bad input
(missing directory/results file, malformed rows) is reported as one line on
stderr with exit code 2, because this runs at the end of long benchmark jobs
and CI logs where a traceback would bury the actual cause.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from reports.html import render_html
from reports.table import add_derived, column, load_results, ok_mask, sort_cells, summary_markdown

JOIN_KEYS: list[str] = ["target", "precision", "keep", "batch"]

#: comparison column stem -> source column in results.jsonl
_COMPARED: dict[str, str] = {
    "status": "status",
    "throughput": "throughput_ips",
    "p50": "latency_p50_ms",
    "map": "map",
    "peak_mb": "peak_rss_mb",
}

COMPARISON_COLUMNS: list[str] = [
    *JOIN_KEYS, "status_this", "status_baseline",
    "throughput_this", "throughput_baseline", "throughput_ratio",
    "p50_this", "p50_baseline",
    "map_this", "map_baseline", "map_diff_pts",
    "peak_mb_this", "peak_mb_baseline",
]


def _comparable(df: pd.DataFrame, suffix: str) -> pd.DataFrame:
    """Key columns plus the compared metrics of one run, renamed ``<stem>_<suffix>``.

    Metrics of cells that did not succeed are blanked so a failed cell never
    contributes a ratio. If a run holds several cells with the same key (e.g.
    different thread counts) the last one is used, matching ``load_results``.
    """
    ok = ok_mask(df)
    out = pd.DataFrame({k: df[k] for k in JOIN_KEYS})
    out["keep"] = pd.to_numeric(out["keep"], errors="coerce").round(6)  # float keys must match exactly
    for stem, source in _COMPARED.items():
        values = column(df, source)
        out[f"{stem}_{suffix}"] = values if stem == "status" else values.where(ok)
    return out.drop_duplicates(JOIN_KEYS, keep="last")


def compare(df: pd.DataFrame, base_df: pd.DataFrame) -> pd.DataFrame:
    """Outer-join this run with a baseline run on (target, precision, keep, batch).

    ``throughput_ratio`` = this / baseline (> 1 means faster now);
    ``map_diff_pts`` = (this − baseline) × 100 (> 0 means more accurate now).
    Cells found in only one run are kept with NaN for the other, so
    disappearing or new cells are visible rather than silently dropped.
    """
    merged = pd.merge(_comparable(df, "this"), _comparable(base_df, "baseline"), on=JOIN_KEYS, how="outer")
    base_tp = merged["throughput_baseline"].astype(float)
    merged["throughput_ratio"] = merged["throughput_this"].astype(float) / base_tp.where(base_tp > 0)
    merged["map_diff_pts"] = (merged["map_this"].astype(float) - merged["map_baseline"].astype(float)) * 100.0
    merged = merged.replace([np.inf, -np.inf], np.nan)
    return sort_cells(merged)[COMPARISON_COLUMNS]


def _build(run_dir: Path, baseline: Path | None) -> tuple[dict[str, Path], pd.DataFrame]:
    """Do the work of :func:`build`, also returning the derived frame for the CLI summary."""
    df = sort_cells(add_derived(load_results(run_dir)))
    comparison = compare(df, load_results(baseline)) if baseline is not None else None

    # rendered before anything is written: a page that fails leaves the old report whole
    page = render_html(
        df,
        title=f"bavit-bench report: {run_dir.resolve().name}",
        comparison=comparison,
        baseline_name=baseline.resolve().name if baseline is not None else None,
    )
    paths = {"csv": run_dir / "report.csv", "html": run_dir / "report.html"}
    df.to_csv(paths["csv"], index=False)
    if comparison is not None:
        paths["comparison_csv"] = run_dir / "comparison.csv"
        comparison.to_csv(paths["comparison_csv"], index=False)
    paths["html"].write_text(page, encoding="utf-8")
    return paths, df


def build(run_dir: str | Path, baseline: Path | None = None) -> dict[str, Path]:
    """Write the report files for ``run_dir`` and return their paths.

    Keys: ``"csv"``, ``"html"``, plus ``"comparison_csv"`` when ``baseline`` is given.
    Raises ``FileNotFoundError``/``ValueError`` (one-line messages) on bad input
    before anything is written, so a half-built report never replaces a good one.
    """
    paths, _ = _build(Path(run_dir), Path(baseline) if baseline is not None else None)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 2 bad input or unwritable output)."""
    parser = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run directory containing results.jsonl")
    parser.add_argument("--baseline", type=Path, default=None, help="another run directory to compare against")
    args = parser.parse_args(argv)
    try:
        paths, df = _build(args.run_dir, args.baseline)
    except (OSError, ValueError) as exc:  # FileNotFoundError is an OSError
        print(f"reports.build: error: {exc}", file=sys.stderr)
        return 2
    print(summary_markdown(df), end="")
    for name, path in paths.items():
        print(f"wrote {name}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
