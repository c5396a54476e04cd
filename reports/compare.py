"""python -m reports.compare BASE NEW [--fail-slower PCT] [--fail-map-drop PTS]: a CI gate
over two recorded runs.

Cells are paired by identity (target, precision, detector by role, reducer, keep, batch,
scenario; reports.build.compare). Each pair's change is printed with both runs' 95 %
intervals: throughput for offline cells, p50 latency for single-stream ones. A change in
speed is **real** only when the two intervals separate (one run's lower bound above the
other's upper bound); within them it is noise and never fails a gate. mAP is deterministic
for a given artifact and data, so its change is taken as it is.

Exit 1 when a gate is crossed: a cell is slower by more than `--fail-slower` % and the
change is real, a cell's mAP falls by more than `--fail-map-drop` points, or (with either
gate) a cell that was ok in BASE is not ok in NEW. Exit 0 otherwise, 2 on bad input."""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Change:
    cell: str
    metric: str                 # "img/s" or "p50 ms"
    base: float | None
    base_lo: float | None
    base_hi: float | None
    new: float | None
    new_lo: float | None
    new_hi: float | None
    faster_pct: float | None    # > 0: NEW is faster
    real: bool                  # the two intervals separate
    map_base: float | None
    map_new: float | None
    status_base: str
    status_new: str


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def changes(base: Path, new: Path) -> list[Change]:
    """Every cell of either run, paired (raises what load_results raises on bad input)."""
    from reports.build import compare
    from reports.table import load_results

    pairs = compare(load_results(new), load_results(base))
    out = []
    for _, r in pairs.iterrows():
        offline = r.scenario != "single-stream"
        stem = "throughput" if offline else "p50"
        b, n = _num(r[f"{stem}_baseline"]), _num(r[f"{stem}_this"])
        b_lo, b_hi = _num(r["figure_lo_baseline"]), _num(r["figure_hi_baseline"])
        n_lo, n_hi = _num(r["figure_lo_this"]), _num(r["figure_hi_this"])
        faster = None
        if b and n:
            faster = (n / b - 1) * 100 if offline else (b / n - 1) * 100
        real = None not in (b_lo, b_hi, n_lo, n_hi) and (n_lo > b_hi or n_hi < b_lo)
        detector = f" {r.detector}" if isinstance(r.detector, str) and r.detector else ""
        cell = f"{r.scenario} {r.target} {r.precision}{detector} {r.reducer or 'none'} keep {r.keep:g} b{int(r.batch)}"
        out.append(Change(cell, "img/s" if offline else "p50 ms", b, b_lo, b_hi, n, n_lo, n_hi, faster, bool(real),
                          _num(r.map_baseline), _num(r.map_this), str(r.status_baseline), str(r.status_this)))
    return out


def _fig(v: float | None, lo: float | None, hi: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.4g} [{lo:.4g}–{hi:.4g}]" if lo is not None and hi is not None else f"{v:.4g}"


def gate(items: list[Change], fail_slower: float | None, fail_map_drop: float | None) -> tuple[list[str], int]:
    """(printed lines, exit code)."""
    lines, crossed = [], 0
    gated = fail_slower is not None or fail_map_drop is not None
    for c in items:
        why = []
        if c.status_base == "ok" and c.status_new != "ok":
            if gated:
                why.append(f"was ok, now {c.status_new}")
        if fail_slower is not None and c.real and c.faster_pct is not None and c.faster_pct < -fail_slower:
            why.append(f"slower by {-c.faster_pct:.1f} % > {fail_slower:g} %")
        drop = None if c.map_base is None or c.map_new is None else (c.map_base - c.map_new) * 100
        if fail_map_drop is not None and drop is not None and drop > fail_map_drop:
            why.append(f"mAP down {drop:.2f} pts > {fail_map_drop:g}")
        speed = ("" if c.faster_pct is None else
                 f" ({c.faster_pct:+.1f} % {'faster' if c.faster_pct >= 0 else 'slower'}, "
                 f"{'real: intervals separate' if c.real else 'within noise'})")
        mean_ap = "" if drop is None else f"; mAP {c.map_base:.3f} → {c.map_new:.3f}"
        status = "" if c.status_base == c.status_new else f"; status {c.status_base} → {c.status_new}"
        mark = "FAIL " if why else ""
        lines.append(f"{mark}{c.cell}: {c.metric} {_fig(c.base, c.base_lo, c.base_hi)} → "
                     f"{_fig(c.new, c.new_lo, c.new_hi)}{speed}{mean_ap}{status}" + (f" — {'; '.join(why)}" if why
                                                                                    else ""))
        crossed += bool(why)
    summary = f"{crossed} of {len(items)} cells cross a gate" if gated else f"{len(items)} cells compared (no gate)"
    return lines + [summary], 1 if crossed else 0


def main(argv: list[str] | None = None) -> int:
    from reports.build import OneLineParser, nonnegative

    p = OneLineParser(prog="python -m reports.compare", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="the baseline run folder (results.jsonl)")
    p.add_argument("new", type=Path, help="the new run folder")
    p.add_argument("--fail-slower", type=nonnegative, default=None, metavar="PCT",
                   help="exit 1 when a cell is slower by more than PCT %% and the intervals separate")
    p.add_argument("--fail-map-drop", type=nonnegative, default=None, metavar="PTS",
                   help="exit 1 when a cell's mAP falls by more than PTS points")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        items = changes(args.base, args.new)
    except (OSError, ValueError) as err:
        print(f"reports.compare: error: {err}", file=sys.stderr)
        return 2
    lines, code = gate(items, args.fail_slower, args.fail_map_drop)
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
