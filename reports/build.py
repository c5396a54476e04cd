"""Build ``report.csv``, ``decision.csv`` and ``report.html`` for a run directory; also the CLI.

Usage::

    python -m reports.build RUN_DIR [--baseline OTHER_RUN] [--max-map-drop PTS]
                                    [--max-latency-ms MS] [--max-rss-mb MIB]
    python -m reports.build RUN_A RUN_B ... --out DIR [limits]

Writes ``RUN_DIR/report.csv`` (every cell, original columns plus derived
ones), ``RUN_DIR/decision.csv`` (the pick per scenario and target under the limits),
``RUN_DIR/reducers.csv`` (the best reducer per keep ratio), ``RUN_DIR/detectors.csv`` (detector
× keep, only when the run swept several detectors), ``RUN_DIR/report.html`` (self-contained)
and, with ``--baseline``, ``RUN_DIR/comparison.csv``; prints the decision, then the markdown
summary, to stdout.
With several run folders (one per device, e.g. ``bench.measure`` of one bundle on each), the
report goes to ``--out``: ``report.csv`` and ``decision.csv`` with a ``device`` column (every
figure derived within its own device's run, see ``reports.devices``), ``devices.csv`` (the same
cell on each device) and ``report.html``.
The limits only change the decision, which is recomputed from results.jsonl, so other
limits never need a new benchmark run. Bad input (missing directory/results file,
malformed rows, a negative limit) is reported as one line on stderr with exit code 2,
because this runs at the end of long benchmark jobs and CI logs where a traceback
would bury the actual cause.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from reports.decide import check_limits, decide, decision_markdown
from reports.devices import across_devices, device_runs
from reports.html import render_devices_html, render_html
from reports.table import (
    add_derived,
    best_reducers,
    column,
    detector_keeps,
    detectors_markdown,
    ensure_derived,
    load_profiles,
    load_results,
    ok_mask,
    reference_rows,
    round_bounds,
    several_detectors,
    sort_cells,
    summary_markdown,
    text_column,
)

#: ``detector`` joins by role: blank for each run's reference detector (a one-detector run's only
#: one), the detector's name for the others; see :func:`_comparable`.
JOIN_KEYS: list[str] = ["target", "precision", "detector", "reducer", "keep", "batch", "scenario"]

#: comparison column stem -> source column in results.jsonl
_COMPARED: dict[str, str] = {
    "status": "status",
    "throughput": "throughput_ips",
    "p50": "latency_p50_ms",
    "map": "map",
    "peak_mib": "peak_rss_mib",
    "speedup": "speedup_vs_target_dense_fp32",
    "speedup_lo": "speedup_lo",
    "speedup_hi": "speedup_hi",
}

#: two runs' speed-ups "agree" when their medians are within this many % of each other
AGREE_PCT = 5.0

COMPARISON_COLUMNS: list[str] = [
    *JOIN_KEYS, "status_this", "status_baseline",
    "throughput_this", "throughput_baseline", "throughput_ratio",
    "p50_this", "p50_baseline",
    "figure_lo_this", "figure_hi_this", "figure_lo_baseline", "figure_hi_baseline",
    "map_this", "map_baseline", "map_diff_pts",
    "peak_mib_this", "peak_mib_baseline",
    "speedup_this", "speedup_lo_this", "speedup_hi_this",
    "speedup_baseline", "speedup_lo_baseline", "speedup_hi_baseline",
    "speedup_ratio", "speedup_inside_both",
]


def _comparable(df: pd.DataFrame, suffix: str) -> pd.DataFrame:
    """Key columns plus the compared metrics of one run, renamed ``<stem>_<suffix>``.

    Metrics of cells that did not succeed are blanked so a failed cell never
    contributes a ratio. If a run holds several cells with the same key (e.g.
    different thread counts) the last one is used, matching ``load_results``.
    A run written before scenarios existed has no scenario column: its key is "".

    The detector key is blank for the reference detector's rows and the detector's name for
    the others: a run of several detectors then keeps them apart (one key per cell, none
    dropped as a duplicate), while the reference cells of any two runs still meet, whatever
    their detector folders are called, as they did before detectors were swept.
    """
    ok = ok_mask(df)
    out = pd.DataFrame({k: column(df, k) for k in JOIN_KEYS})
    out["detector"] = text_column(df, "detector").where(~reference_rows(df), "")
    out["keep"] = pd.to_numeric(out["keep"], errors="coerce").round(6)  # float keys must match exactly
    out["batch"] = pd.to_numeric(out["batch"], errors="coerce")
    out["scenario"] = out["scenario"].map(lambda v: v if isinstance(v, str) else "")
    out["reducer"] = out["reducer"].map(lambda v: v if isinstance(v, str) else "")   # runs before reducers: ""
    # a speed-up is compared where it is a figure of its own: not a reference against itself (the
    # same rounds: a zero-width interval) nor a cell that takes another's rounds (timing_from)
    own = (column(df, "speedup_hi") > column(df, "speedup_lo")) & ~text_column(df, "timing_from").astype(bool)
    for stem, source in _COMPARED.items():
        values = column(df, source)
        out[f"{stem}_{suffix}"] = values if stem == "status" else values.where(ok)
    out[f"speedup_own_{suffix}"] = own & ok
    # the headline figure's 95 % interval (throughput offline, p50 single-stream), for reports.compare
    bounds = [round_bounds(r, r.get("scenario") == "single-stream") if ok_ else (math.nan, math.nan)
              for r, ok_ in zip(df.to_dict("records"), ok)]
    out[f"figure_lo_{suffix}"] = [b[0] for b in bounds]
    out[f"figure_hi_{suffix}"] = [b[1] for b in bounds]
    return out.drop_duplicates(JOIN_KEYS, keep="last")


def compare(df: pd.DataFrame, base_df: pd.DataFrame) -> pd.DataFrame:
    """Outer-join this run with a baseline run on (target, precision, detector, reducer, keep, batch,
    scenario), the detector by role (blank = each run's reference detector, see :func:`_comparable`).

    ``throughput_ratio`` = this / baseline (> 1 means faster now);
    ``map_diff_pts`` = (this − baseline) × 100 (> 0 means more accurate now);
    ``speedup_ratio`` = this run's speed-up over its dense fp32 / the baseline's, and
    ``speedup_inside_both`` whether each run's speed-up lies inside the other's 95 % interval:
    the test of an interval is that it holds the next run's figure (:func:`interval_check`).
    Even calibrated 95 % intervals of a mean hold the other run's median both ways only about
    83 % of the time (the two medians' difference has twice the variance of one): read the
    count against that, not against 95 %.
    Cells found in only one run are kept with NaN for the other, so
    disappearing or new cells are visible rather than silently dropped.
    """
    merged = pd.merge(_comparable(ensure_derived(df), "this"), _comparable(ensure_derived(base_df), "baseline"),
                      on=JOIN_KEYS, how="outer")
    base_tp = merged["throughput_baseline"].astype(float)
    merged["throughput_ratio"] = merged["throughput_this"].astype(float) / base_tp.where(base_tp > 0)
    merged["map_diff_pts"] = (merged["map_this"].astype(float) - merged["map_baseline"].astype(float)) * 100.0
    this, base = merged["speedup_this"].astype(float), merged["speedup_baseline"].astype(float)
    merged["speedup_ratio"] = this / base.where(base > 0)
    inside = ((this >= merged["speedup_lo_baseline"]) & (this <= merged["speedup_hi_baseline"])
              & (base >= merged["speedup_lo_this"]) & (base <= merged["speedup_hi_this"]))
    checked = merged["speedup_own_this"].fillna(False).astype(bool) & merged["speedup_own_baseline"].fillna(
        False).astype(bool) & this.notna() & base.notna()
    merged["speedup_inside_both"] = inside.astype(object).where(checked)
    merged = merged.replace([np.inf, -np.inf], np.nan)
    return sort_cells(merged)[COMPARISON_COLUMNS]


def interval_check(comparison: pd.DataFrame) -> str:
    """One line on whether this run's intervals hold the baseline's figures: of the speed-ups
    both runs measured (references and borrowed timings left out), how many lie inside the
    other run's 95 % interval both ways, and how many agree within AGREE_PCT %. Empty when
    the runs share no such speed-up."""
    both = comparison[comparison["speedup_inside_both"].notna()]
    if both.empty:
        return ""
    n = len(both)
    inside = int(both["speedup_inside_both"].astype(bool).sum())
    agree = int(((both["speedup_ratio"] - 1).abs() * 100 <= AGREE_PCT).sum())
    worst = float((both["speedup_ratio"] - 1).abs().max() * 100)
    return (f"Speed-ups of both runs ({n}): each inside the other's 95 % interval for {inside} of {n} "
            f"({inside / n:.0%}); medians within {AGREE_PCT:g} % for {agree} of {n} ({agree / n:.0%}); "
            f"largest change {worst:.1f} %")


def markdown_report(df: pd.DataFrame, max_map_drop: float = 1.0, max_latency_ms: float | None = None,
                    max_rss_mb: float | None = None) -> str:
    """The text a terminal user reads after a run: the decision first, then every cell.

    ``df`` may be raw (as loaded) or derived.
    """
    derived = sort_cells(add_derived(df))
    decisions = decide(derived, max_map_drop, max_latency_ms, max_rss_mb)
    return decision_markdown(decisions, max_map_drop, max_latency_ms, max_rss_mb) + "\n" + summary_markdown(derived)


def summary_text(run_dir: str | Path, max_map_drop: float = 1.0, max_latency_ms: float | None = None,
            max_rss_mb: float | None = None) -> str:
    """:func:`markdown_report` of ``run_dir/results.jsonl`` (what ``bench.run`` prints after a run)."""
    return markdown_report(load_results(run_dir), max_map_drop, max_latency_ms, max_rss_mb)


DETECTORS_FILE = "detectors.csv"


def _build(run_dir: Path, baseline: Path | None, max_map_drop: float, max_latency_ms: float | None,
           max_rss_mb: float | None) -> tuple[dict[str, Path], pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """Do the work of :func:`build`, also returning the derived, decision and comparison frames
    for the CLI."""
    check_limits(max_map_drop, max_latency_ms, max_rss_mb)
    df = sort_cells(add_derived(load_results(run_dir)))
    decisions = decide(df, max_map_drop, max_latency_ms, max_rss_mb)
    comparison = compare(df, load_results(baseline)) if baseline is not None else None

    # rendered before anything is written: a page that fails leaves the old report whole
    page = render_html(
        df,
        title=f"bavit-bench report: {run_dir.resolve().name}",
        comparison=comparison,
        baseline_name=baseline.resolve().name if baseline is not None else None,
        decisions=decisions, max_map_drop=max_map_drop, max_latency_ms=max_latency_ms, max_rss_mb=max_rss_mb,
        profiles=load_profiles(run_dir, df),
    )
    paths = {"csv": run_dir / "report.csv", "decision_csv": run_dir / "decision.csv",
             "reducers_csv": run_dir / "reducers.csv", "html": run_dir / "report.html"}
    df.to_csv(paths["csv"], index=False)
    decisions.to_csv(paths["decision_csv"], index=False)
    best_reducers(df).to_csv(paths["reducers_csv"], index=False)
    if several_detectors(df):
        paths["detectors_csv"] = run_dir / DETECTORS_FILE
        detector_keeps(df).to_csv(paths["detectors_csv"], index=False)
    else:  # a table left from another build of this folder would describe cells no longer here
        (run_dir / DETECTORS_FILE).unlink(missing_ok=True)
    if comparison is not None:
        paths["comparison_csv"] = run_dir / "comparison.csv"
        comparison.to_csv(paths["comparison_csv"], index=False)
    paths["html"].write_text(page, encoding="utf-8")
    return paths, df, decisions, comparison


def build(run_dir: str | Path, baseline: str | Path | None = None, max_map_drop: float = 1.0,
          max_latency_ms: float | None = None, max_rss_mb: float | None = None) -> dict[str, Path]:
    """Write the report files for ``run_dir`` and return their paths.

    Keys: ``"csv"``, ``"decision_csv"``, ``"reducers_csv"`` (the best reducer per keep ratio),
    ``"html"``, plus ``"detectors_csv"`` (detector × keep) when the run swept more than one
    detector and ``"comparison_csv"`` when ``baseline`` is given. ``max_map_drop`` is in mAP
    points, ``max_latency_ms`` bounds the tail latency (p99, else p90, else p50), ``max_rss_mb``
    the peak RSS in MiB.
    Raises ``FileNotFoundError``/``ValueError`` (one-line messages) on bad input
    before anything is written, so a half-built report never replaces a good one.
    """
    paths, _, _, _ = _build(Path(run_dir), Path(baseline) if baseline is not None else None,
                         max_map_drop, max_latency_ms, max_rss_mb)
    return paths


DEVICES_FILE = "devices.csv"


def _build_devices(run_dirs: Sequence[Path], out: Path, max_map_drop: float, max_latency_ms: float | None,
                   max_rss_mb: float | None) -> tuple[dict[str, Path], list]:
    """The report of several runs (devices) into ``out``; also returns the device groups for the CLI."""
    check_limits(max_map_drop, max_latency_ms, max_rss_mb)
    groups = device_runs(run_dirs, max_map_drop, max_latency_ms, max_rss_mb)
    across = across_devices(groups)
    page = render_devices_html(groups, across, title=f"bavit-bench devices: {out.resolve().name}",
                               max_map_drop=max_map_drop, max_latency_ms=max_latency_ms, max_rss_mb=max_rss_mb)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "report.csv", "decision_csv": out / "decision.csv", "devices_csv": out / DEVICES_FILE,
             "html": out / "report.html"}
    pd.concat([g.cells for g in groups], ignore_index=True).to_csv(paths["csv"], index=False)
    pd.concat([g.decisions for g in groups], ignore_index=True).to_csv(paths["decision_csv"], index=False)
    across.to_csv(paths["devices_csv"], index=False)
    paths["html"].write_text(page, encoding="utf-8")
    return paths, groups


def build_devices(run_dirs: Sequence[str | Path], out: str | Path, max_map_drop: float = 1.0,
                  max_latency_ms: float | None = None, max_rss_mb: float | None = None) -> dict[str, Path]:
    """Write the report of several runs (one per device) into ``out`` and return the paths
    (``"csv"``, ``"decision_csv"``, ``"devices_csv"``, ``"html"``). Each figure is derived within
    its own run and machine; see ``reports.devices``."""
    paths, _ = _build_devices([Path(d) for d in run_dirs], Path(out), max_map_drop, max_latency_ms, max_rss_mb)
    return paths


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2), like every other error
    here; the line starts with the command's module (`prog` without "python -m ")."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog.removeprefix('python -m ')}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def nonnegative(text: str) -> float:
    """A limit option's value: a number >= 0 (a negative limit would silently pick nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 2 bad input or unwritable output)."""
    parser = OneLineParser(prog="python -m reports.build", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="run directory containing results.jsonl; several (one per device) need --out")
    parser.add_argument("--baseline", type=Path, default=None, help="another run directory to compare against")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the report of several runs goes (default for one run: the run directory)")
    parser.add_argument("--max-map-drop", type=nonnegative, default=1.0, metavar="PTS",
                        help="largest mAP loss (points) vs the target's dense fp32 a pick may have (default 1.0)")
    parser.add_argument("--max-latency-ms", type=nonnegative, default=None, metavar="MS",
                        help="largest tail latency (p99, else p90, else p50) a pick may have")
    parser.add_argument("--max-rss-mb", type=nonnegative, default=None, metavar="MIB",
                        help="largest peak resident memory (MiB) a pick may have")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if len(args.run_dirs) > 1:
        return _main_devices(args)
    if args.out is not None:
        print("reports.build: error: --out is for several run directories; one run's report goes into its own "
              "directory", file=sys.stderr)
        return 2
    try:
        paths, df, decisions, comparison = _build(args.run_dirs[0], args.baseline, args.max_map_drop,
                                                  args.max_latency_ms, args.max_rss_mb)
    except (OSError, ValueError) as exc:  # FileNotFoundError is an OSError
        print(f"reports.build: error: {exc}", file=sys.stderr)
        return 2
    print(decision_markdown(decisions, args.max_map_drop, args.max_latency_ms, args.max_rss_mb))
    print(summary_markdown(df), end="")
    if detectors := detectors_markdown(df):
        print("\n" + detectors, end="")
    if comparison is not None and (check := interval_check(comparison)):
        print(f"\n{check} (comparison.csv: speedup_ratio, speedup_inside_both)")
    for name, path in paths.items():
        print(f"wrote {name}: {path}", file=sys.stderr)
    return 0


def _main_devices(args: argparse.Namespace) -> int:
    """``reports.build RUN_A RUN_B ... --out DIR``: one decision per device, then the files written."""
    if args.out is None:
        print("reports.build: error: several run directories need --out DIR (where their joint report goes)",
              file=sys.stderr)
        return 2
    if args.baseline is not None:
        print("reports.build: error: --baseline compares one run with another; give one RUN_DIR with it",
              file=sys.stderr)
        return 2
    try:
        paths, groups = _build_devices(args.run_dirs, args.out, args.max_map_drop, args.max_latency_ms,
                                       args.max_rss_mb)
    except (OSError, ValueError) as exc:
        print(f"reports.build: error: {exc}", file=sys.stderr)
        return 2
    for g in groups:
        print(f"# {g.device} ({g.run_dir})\n")
        print(decision_markdown(g.decisions, args.max_map_drop, args.max_latency_ms, args.max_rss_mb))
    for name, path in paths.items():
        print(f"wrote {name}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
