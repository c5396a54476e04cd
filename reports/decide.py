"""The answer first: which cell to deploy, per scenario and per target, under the user's limits.

A sweep produces tens of cells; what a user wants from it is "use this one". For each
scenario the pick is the fastest successful cell (offline: highest median throughput;
single-stream: lowest median p50 latency) that

* loses at most ``max_map_drop`` mAP points against its own target's dense fp32 model
  (a cell without a mAP drop is not eligible: its accuracy cost is unknown; only when
  the whole run measured no mAP at all is the choice made on speed alone, and said so),
* keeps its tail latency within ``max_latency_ms`` when given (p99 when the harness had
  enough samples for it, else p90, else p50; the row says which one was checked),
* and its peak resident memory within ``max_rss_mb`` MiB when given.

When a run sweeps several detectors, "its own target's dense fp32 model" is the *reference
detector's* (the first ``--detector``, the plain model the user starts from), so the cells of
every detector compete on the same footing, a pruning-aware detector's dense cost included,
and what a decision names says which detector to deploy.

Decisions are recomputed from ``results.jsonl`` on every report build, so other limits
need no new benchmark run: ``python -m reports.build RUN --max-map-drop 2``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from reports.table import (
    SCENARIO_ORDER,
    column,
    ensure_derived,
    figure_bounds,
    fmt,
    format_interval,
    format_keep,
    is_single_stream,
    ok_mask,
    reference_name,
    several_detectors,
    sort_cells,
    text_column,
    truthy,
)

ANY_TARGET = "any"
#: mAP drops are differences of floats scaled by 100; a cell exactly at the limit must pass.
_EPS = 1e-9

#: ``detector`` is the picked cell's detector; ``reference_detector`` the detector whose dense fp32
#: cells its drop and speed-up are against, set only when the run swept several detectors (then
#: every sentence names the detector; a one-detector run reads as before).
DECISION_COLUMNS: tuple[str, ...] = (
    "scenario", "target", "cell_id", "precision", "detector", "reducer", "keep", "batch",
    "reference_detector",
    "figure", "figure_lo", "figure_hi", "figure_unit",
    "speedup", "speedup_lo", "speedup_hi",
    "map", "map_drop_pts", "latency_ms", "latency_pct", "peak_rss_mib",
    "noisy", "noisy_reason", "note",
)


def check_limits(max_map_drop: float, max_latency_ms: float | None, max_rss_mb: float | None) -> None:
    """Reject limits that cannot mean anything (negative, NaN) before any work is done.

    Raises:
        ValueError: one line naming the option.
    """
    for name, value in (("max_map_drop", max_map_drop), ("max_latency_ms", max_latency_ms),
                        ("max_rss_mb", max_rss_mb)):
        if value is None and name != "max_map_drop":
            continue
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
        if math.isnan(number) or number < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def tail_latency(row: Mapping) -> tuple[float, str]:
    """(latency, which percentile): the highest percentile the harness could report.

    p99 is null below 100 pooled samples and p90 below 20; checking the worst figure
    available is the honest reading of a latency limit, and naming it tells the user
    how strong the check was."""
    for name, pct in (("latency_p99_ms", "p99"), ("latency_p90_ms", "p90"), ("latency_p50_ms", "p50")):
        try:
            value = float(row.get(name))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if not math.isnan(value):
            return value, pct
    return math.nan, ""


def _constraint_words(max_map_drop: float, max_latency_ms: float | None, max_rss_mb: float | None,
                      with_map: bool = True) -> str:
    parts = [f"within {max_map_drop:g} point{'' if max_map_drop == 1 else 's'}"] if with_map else []
    if max_latency_ms is not None:
        parts.append(f"latency ≤ {max_latency_ms:g} ms")
    if max_rss_mb is not None:
        parts.append(f"peak RSS ≤ {max_rss_mb:g} MiB")
    return ", ".join(parts)


def constraints_text(max_map_drop: float = 1.0, max_latency_ms: float | None = None,
                     max_rss_mb: float | None = None, reference_detector: str | None = None) -> str:
    """The limits a decision was made under, in words, for the top of every output; with
    ``reference_detector`` (a run of several detectors) it says whose dense fp32 drops are against."""
    whose = f" (reference detector: {reference_detector})" if reference_detector else ""
    parts = [f"mAP drop ≤ {max_map_drop:g} pts vs the target's dense fp32{whose}"]
    parts.append(f"tail latency (p99, else p90, else p50) ≤ {max_latency_ms:g} ms" if max_latency_ms is not None
                 else "no latency limit")
    parts.append(f"peak RSS ≤ {max_rss_mb:g} MiB" if max_rss_mb is not None else "no memory limit")
    return "; ".join(parts)


def _empty_decision(scenario: str, target: str, note: str, reference: str | None = None) -> dict:
    row: dict = {c: np.nan for c in DECISION_COLUMNS}
    row.update(scenario=scenario, target=target, cell_id=None, precision=None, detector=None, figure_unit=None,
               reference_detector=reference, latency_pct=None, noisy=None, noisy_reason=None, note=note)
    return row


def _pick(cells: pd.DataFrame, scenario: str, target: str, eligible: pd.Series, note_ok: str,
          note_none: str, reference: str | None = None) -> dict:
    """The fastest eligible row of ``cells`` as a decision row, or an empty one saying why.
    ``reference`` is the reference detector's name when the run swept several (else None)."""
    chosen = cells[eligible.loc[cells.index]]
    if chosen.empty:
        return _empty_decision(scenario, target, note_none, reference)
    single = is_single_stream(scenario)
    speed = chosen["latency_p50_ms"] if single else chosen["throughput_ips"]
    # fastest first; ties go to the more accurate cell, then to reading order (stable)
    order = pd.DataFrame({"speed": speed if single else -speed,
                          "map": -column(chosen, "map").fillna(-np.inf)}, index=chosen.index)
    best = chosen.loc[order.sort_values(["speed", "map"], kind="stable").index[0]]
    lo, hi = figure_bounds(best)
    latency, pct = tail_latency(best)
    return {
        "scenario": scenario, "target": target, "cell_id": best["cell_id"], "precision": best["precision"],
        "detector": best.get("detector"), "reducer": best.get("reducer"), "keep": best["keep"],
        "batch": best["batch"], "reference_detector": reference,
        "figure": best["latency_p50_ms"] if single else best["throughput_ips"],
        "figure_lo": lo, "figure_hi": hi, "figure_unit": "ms p50" if single else "img/s",
        "speedup": best["speedup_vs_target_dense_fp32"], "speedup_lo": best["speedup_lo"],
        "speedup_hi": best["speedup_hi"],
        "map": best.get("map"), "map_drop_pts": best["map_drop_pts"],
        "latency_ms": latency, "latency_pct": pct or None, "peak_rss_mib": best.get("peak_rss_mib"),
        "noisy": truthy(best.get("noisy")),
        "noisy_reason": best.get("noisy_reason") if truthy(best.get("noisy")) else None,
        "note": note_ok,
    }


def _unmeasured(cells: pd.DataFrame, ok: pd.Series) -> str:
    """Why a group has no candidate at all: every cell failed, or the ok ones lack the figure."""
    return "no cell with a speed figure" if ok.loc[cells.index].any() else "no successful cell"


def decide(df: pd.DataFrame, max_map_drop: float = 1.0, max_latency_ms: float | None = None,
           max_rss_mb: float | None = None) -> pd.DataFrame:
    """One decision per (scenario, target), preceded by an "any target" one per scenario.

    Cells of every detector compete: their drops and speed-ups are all against the reference
    detector's dense fp32 (see ``reports.table.add_derived``).

    Columns are :data:`DECISION_COLUMNS`: the picked cell, its headline ``figure``
    (offline: throughput img/s; single-stream: p50 ms) with its 95 % interval over rounds,
    its speed-up over the same target's dense fp32 with the paired interval, its mAP and
    drop, the latency that was checked (``latency_pct`` says which percentile), and a
    ``note``. When nothing qualifies the cell columns are empty and ``note`` says why.

    Raises:
        ValueError: a negative or NaN limit.
    """
    check_limits(max_map_drop, max_latency_ms, max_rss_mb)
    if df.empty:
        return pd.DataFrame(columns=list(DECISION_COLUMNS))
    data = sort_cells(ensure_derived(df))
    data["scenario"] = text_column(data, "scenario")
    ok = ok_mask(data)
    single = data["scenario"].map(is_single_stream).astype(bool)
    speed = column(data, "latency_p50_ms").where(single, column(data, "throughput_ips"))
    measured = ok & speed.notna()
    run_has_map = bool((ok & column(data, "map").notna()).any())

    fits = measured.copy()
    if run_has_map:
        fits &= column(data, "map_drop_pts").notna() & (column(data, "map_drop_pts") <= max_map_drop + _EPS)
    if max_latency_ms is not None:
        tails = pd.Series([tail_latency(r)[0] for r in data.to_dict("records")], index=data.index)
        fits &= tails.notna() & (tails <= max_latency_ms + _EPS)
    if max_rss_mb is not None:
        peak = column(data, "peak_rss_mib")
        fits &= peak.notna() & (peak <= max_rss_mb + _EPS)

    reference = reference_name(data) if several_detectors(data) else None
    limits = _constraint_words(max_map_drop, max_latency_ms, max_rss_mb, with_map=run_has_map)
    note_ok = "" if run_has_map else "no mAP in this run: picked on speed alone"
    none_within = f"no cell {limits}" if limits else "no cell qualifies"

    scenarios = sorted(data["scenario"].unique(), key=lambda s: (SCENARIO_ORDER.index(s) if s in SCENARIO_ORDER
                                                                 else len(SCENARIO_ORDER), s))
    rows: list[dict] = []
    for scenario in scenarios:
        in_scenario = data[data["scenario"] == scenario]
        if not measured.loc[in_scenario.index].any():
            rows.append(_empty_decision(scenario, ANY_TARGET, _unmeasured(in_scenario, ok), reference))
        else:
            rows.append(_pick(in_scenario, scenario, ANY_TARGET, fits, note_ok, none_within, reference))
        for target in sorted(in_scenario["target"].astype(str).unique()):
            cells = in_scenario[in_scenario["target"].astype(str) == target]
            if not measured.loc[cells.index].any():
                note = _unmeasured(cells, ok)
            elif run_has_map and not column(cells, "map_drop_pts").where(measured).notna().any():
                whose = f" of {reference}" if reference else ""
                note = f"no cell with a mAP drop (no ok dense fp32 reference{whose} with a mAP)"
            else:
                note = none_within
            rows.append(_pick(cells, scenario, target, fits, note_ok, note, reference))
    return pd.DataFrame(rows, columns=list(DECISION_COLUMNS))


def _pts_change(drop: object) -> str:
    """A mAP drop as the change the user sees: 0.6 points lost reads "−0.6 pts"."""
    try:
        value = -float(drop)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    if math.isnan(value):
        return ""
    value = 0.0 if abs(value) < 0.05 else value
    sign = "−" if value < 0 else "+" if value > 0 else "±"
    return f" ({sign}{abs(value):.1f} pts)"


def figure_text(row: Mapping) -> str:
    """``133.5 img/s [131.0–135.2]`` or ``p50 7.49 ms [7.40–7.60]``: the headline figure with
    its 95 % interval over rounds (left out when unknown)."""
    single = row.get("figure_unit") != "img/s"
    spec = ".2f" if single else ".1f"
    number = fmt(row.get("figure"), spec)
    if number == "–":
        return number
    lo, hi = fmt(row.get("figure_lo"), spec), fmt(row.get("figure_hi"), spec)
    bracket = f" [{lo}–{hi}]" if "–" not in (lo, hi) else ""
    return f"p50 {number} ms{bracket}" if single else f"{number} img/s{bracket}"


def _names_detector(row: Mapping) -> bool:
    """Whether a decision row comes from a run of several detectors (``reference_detector`` set)."""
    reference = row.get("reference_detector")
    return isinstance(reference, str) and bool(reference)


def _reduction(row: Mapping) -> str:
    """'dense', or the reducer and its keep: what a user would deploy; in a run of several
    detectors prefixed by the detector ("detector-prune, bavit keep 0.5"), which is half of it."""
    reducer = row.get("reducer")
    if not isinstance(reducer, str) or not reducer:
        text = f"keep {format_keep(row.get('keep'))}"
    else:
        text = "dense" if reducer == "none" else f"{reducer} keep {format_keep(row.get('keep'))}"
    detector = row.get("detector")
    if _names_detector(row) and isinstance(detector, str) and detector:
        return f"{detector}, {text}"
    return text


def _reference_words(row: Mapping) -> str:
    """What a speed-up is over: "openvino dense fp32", naming the reference detector when the run
    had several ("openvino detector dense fp32")."""
    reference = f" {row['reference_detector']}" if _names_detector(row) else ""
    return f"{_target_of(row)}{reference} dense fp32"


def decision_line(row: Mapping, show_latency: bool = False) -> str:
    """One sentence for one decision row, e.g. ``offline: openvino int8 keep 0.5 b8 — 133.5 img/s
    [131.0–135.2], 3.00× [2.95–3.04] over openvino dense fp32, mAP 0.690 (−0.6 pts)``.
    ``show_latency`` adds the latency that was checked (when a latency limit was set), naming
    its percentile, since a p50 passing a limit says less than a p99 would."""
    scenario = row.get("scenario") or "–"
    if not isinstance(row.get("cell_id"), str):
        where = scenario if row.get("target") == ANY_TARGET else f"{scenario} / {row.get('target')}"
        return f"{where}: {row.get('note') or 'nothing qualifies'}"
    text = (f"{scenario}: {_target_of(row)} {row.get('precision')} {_reduction(row)} "
            f"b{fmt(row.get('batch'), '.0f')} — {figure_text(row)}")
    speedup = format_interval(row.get("speedup"), row.get("speedup_lo"), row.get("speedup_hi"), ".2f", "×")
    if speedup != "–":
        text += f", {speedup} over {_reference_words(row)}"
    mean_ap = fmt(row.get("map"), ".3f")
    text += f", mAP {mean_ap}{_pts_change(row.get('map_drop_pts'))}" if mean_ap != "–" else ", no mAP"
    if show_latency and isinstance(row.get("latency_pct"), str):
        text += f", {row['latency_pct']} {fmt(row.get('latency_ms'), '.2f')} ms"
    if truthy(row.get("noisy")):
        reason = row.get("noisy_reason")
        text += f" ! noisy{': ' + str(reason) if isinstance(reason, str) and reason else ''}"
    if row.get("note"):
        text += f" ({row['note']})"
    return text


def _target_of(row: Mapping) -> str:
    """The target of a picked cell (an "any target" row names it only in its cell id)."""
    cell_id = row.get("cell_id")
    if row.get("target") != ANY_TARGET or not isinstance(cell_id, str):
        return str(row.get("target"))
    return cell_id.split("/", 1)[0]


def decision_markdown(decisions: pd.DataFrame, max_map_drop: float = 1.0, max_latency_ms: float | None = None,
                      max_rss_mb: float | None = None) -> str:
    """The block a terminal user reads first: the limits, one line per scenario for the overall
    pick, then the per-target picks as a markdown table (whose picks name the detector when the
    run swept several)."""
    limits = constraints_text(max_map_drop, max_latency_ms, max_rss_mb, decision_reference(decisions))
    lines = [f"## Decision ({limits})", ""]
    if decisions.empty:
        return "\n".join(lines + ["(no cells)"]) + "\n"
    records = decisions.to_dict("records")
    lines += [decision_line(r, show_latency=max_latency_ms is not None) for r in records if r["target"] == ANY_TARGET]
    lines += ["", "| scenario | target | pick | figure | speed-up vs dense fp32 | mAP | drop pts | note |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for r in records:
        if r["target"] == ANY_TARGET:
            continue
        picked = isinstance(r.get("cell_id"), str)
        cells = [
            str(r["scenario"] or "–"), str(r["target"]),
            f"{r['precision']} {_reduction(r)} b{fmt(r['batch'], '.0f')}" if picked else "–",
            figure_text(r) if picked else "–",
            format_interval(r["speedup"], r["speedup_lo"], r["speedup_hi"], ".2f", "×") if picked else "–",
            fmt(r["map"], ".3f"), fmt(r["map_drop_pts"], ".2f"),
            "; ".join(filter(None, ["! noisy" if truthy(r.get("noisy")) else "", str(r.get("note") or "")])),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def decision_reference(decisions: pd.DataFrame) -> str | None:
    """The reference detector a decision frame was made against, None for a one-detector run."""
    named = [v for v in column(decisions, "reference_detector") if isinstance(v, str) and v]
    return ", ".join(dict.fromkeys(named)) or None
