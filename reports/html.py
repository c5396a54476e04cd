"""Render the whole report as one self-contained HTML page.

The page must open offline and survive being mailed or attached to a CI run,
so it references nothing external: CSS is inline, fonts are the system's,
and every plot is an embedded ``data:image/png;base64`` URI. All text coming
from results (error messages, host names, ...) is HTML-escaped, since a
backend's error string can contain ``<`` or ``&``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from reports import plots
from reports.decide import ANY_TARGET, constraints_text, decide, decision_line, decision_reference, figure_text
from reports.devices import DeviceRun
from reports.table import (
    PERCENTILE_FLOOR,
    column,
    ensure_derived,
    format_interval,
    format_keep,
    reference_name,
    round_bounds,
    several_detectors,
    short_reason,
    sort_cells,
    truthy,
)

Formatter = Callable[[object], str]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1400px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.fingerprint td { text-align: left; white-space: normal; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
.note { color: #666; font-size: 0.85rem; }
ul.decision li { font-size: 1.05rem; margin: 0.3rem 0; }
td[title] { text-decoration: underline dotted; cursor: help; }
"""

_SYS_LABELS: dict[str, str] = {
    "sys_cpu": "CPU", "sys_arch": "architecture", "sys_cores": "cores", "sys_isa": "ISA extensions", "sys_ram_gb": "RAM (GB)",
    "sys_os": "OS", "sys_python": "Python", "sys_host": "host", "sys_background_reclaim": "background reclaim",
}


Cell = str | tuple[str, str]
"""A rendered table cell: its text, or (text, tooltip) when the cell has more to say."""
RowFormatter = Callable[[Mapping], Cell]


def _num(spec: str, suffix: str = "", scale: float = 1.0) -> Formatter:
    """Formatter for numeric cells; missing values become an en dash."""
    def fmt(value: object) -> str:
        try:
            number = float(value) * scale  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return "–"
        return "–" if math.isnan(number) else f"{number:{spec}}{suffix}"
    return fmt


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return str(value)


def _flag(value: object) -> str:
    return "★" if value is True or value == 1 else ""


def _col(name: str, formatter: Formatter) -> RowFormatter:
    """A cell from one column of the row."""
    return lambda row: formatter(row.get(name))


def _measured(name: str, formatter: Formatter) -> RowFormatter:
    """A measured figure: only an ok row has one, whatever a failed row left in the column."""
    return lambda row: formatter(row.get(name)) if str(row.get("status")) == "ok" else "–"


def _interval(name: str, lo: str, hi: str, spec: str, suffix: str = "") -> RowFormatter:
    def cell(row: Mapping) -> str:
        if str(row.get("status")) != "ok":
            return "–"
        return format_interval(row.get(name), row.get(lo), row.get(hi), spec, suffix)
    return cell


def _percentile(pct: int) -> RowFormatter:
    """p90/p99 cell: the value, or "n=37<100" when the pooled samples were too few for it,
    so an empty cell is never mistaken for a latency that was not measured."""
    name, floor = f"latency_p{pct}_ms", PERCENTILE_FLOOR[pct]

    def cell(row: Mapping) -> Cell:
        if str(row.get("status")) != "ok":
            return "–"
        value = _num(".2f")(row.get(name))
        if value != "–":
            return value
        samples = _num(".0f")(row.get("latency_samples"))
        if samples == "–":
            return "–"
        return (f"n={samples}<{floor}", f"p{pct} needs at least {floor} pooled samples; this cell has {samples}")
    return cell


def _status(row: Mapping) -> Cell:
    status = _text(row.get("status"))
    reason = short_reason(row.get("error"))
    if status != "ok" and reason:
        return (f"{status}: {short_reason(reason, 40)}", _text(row.get("error")))
    if status == "ok" and short_reason(row.get("accuracy_note")):
        return ("ok, no mAP", _text(row.get("accuracy_note")))
    return status


def _noisy(row: Mapping) -> Cell:
    if str(row.get("status")) != "ok" or not truthy(row.get("noisy")):
        return ""
    reason = row.get("noisy_reason")
    return ("!", str(reason) if isinstance(reason, str) and reason else "flagged noisy by the harness")


#: Summary table: header -> cell renderer. Order is display order.
SUMMARY_COLUMNS: dict[str, RowFormatter] = {
    "scenario": _col("scenario", _text),
    "target": _col("target", _text),
    "precision": _col("precision", _text),
    "ran as": _col("executed_precision", _text),
    "reducer": _col("reducer", _text),
    "keep": _col("keep", format_keep),
    "batch": _col("batch", _num(".0f")),
    "status": _status,
    "rounds": _measured("rounds", _num(".0f")),
    "img/s [95 %]": lambda r: (format_interval(r.get("throughput_ips"), *round_bounds(r, False), ".1f")
                              if str(r.get("status")) == "ok" else "–"),
    "p50 ms": _measured("latency_p50_ms", _num(".2f")),
    "p90 ms": _percentile(90),
    "p99 ms": _percentile(99),
    "× target fp32 dense": _interval("speedup_vs_target_dense_fp32", "speedup_lo", "speedup_hi", ".2f", "×"),
    "× torch fp32 dense": _interval("speedup_vs_torch_dense_fp32", "speedup_torch_lo", "speedup_torch_hi",
                                    ".2f", "×"),
    "× ideal": _col("ideal_speedup", _num(".2f", "×")),
    "GFLOP/img": _col("gflop_per_image", _num(".2f")),
    "GOP/s": _measured("achieved_gops", _num(".1f")),
    "% peak": _measured("peak_pct", _num(".1f", "%")),
    "mAP": _measured("map", _num(".3f")),
    "mAP drop pts": _measured("map_drop_pts", _num(".2f")),
    "peak MiB": _measured("peak_rss_mib", _num(".0f")),
    "+RSS MiB": _measured("rss_increase_mib", _num(".0f")),
    "load s": _measured("load_s", _num(".2f")),
    "first ms": _measured("first_inference_ms", _num(".1f")),
    "convert s": _col("convert_s", _num(".1f")),
    "noisy": _noisy,
    "Pareto": _col("pareto", _flag),
}

#: Comparison table produced by ``reports.build.compare``.
COMPARISON_COLUMNS: dict[str, RowFormatter] = {
    "scenario": _col("scenario", _text),
    "target": _col("target", _text),
    "precision": _col("precision", _text),
    "detector": _col("detector", lambda v: _text(v) if _text(v) not in ("–", "") else "reference"),
    "reducer": _col("reducer", _text),
    "keep": _col("keep", format_keep),
    "batch": _col("batch", _num(".0f")),
    "status": _col("status_this", _text),
    "status (base)": _col("status_baseline", _text),
    "img/s": _col("throughput_this", _num(".1f")),
    "img/s (base)": _col("throughput_baseline", _num(".1f")),
    "ratio": _col("throughput_ratio", _num(".2f", "×")),
    "p50 ms": _col("p50_this", _num(".2f")),
    "p50 ms (base)": _col("p50_baseline", _num(".2f")),
    "mAP": _col("map_this", _num(".3f")),
    "mAP (base)": _col("map_baseline", _num(".3f")),
    "mAP diff pts": _col("map_diff_pts", _num("+.2f")),
    "peak MiB": _col("peak_mib_this", _num(".0f")),
    "peak MiB (base)": _col("peak_mib_baseline", _num(".0f")),
    "speed-up": lambda r: format_interval(r.get("speedup_this"), r.get("speedup_lo_this"), r.get("speedup_hi_this"),
                                          ".2f", "×"),
    "speed-up (base)": lambda r: format_interval(r.get("speedup_baseline"), r.get("speedup_lo_baseline"),
                                                 r.get("speedup_hi_baseline"), ".2f", "×"),
    "inside both intervals": _col("speedup_inside_both", lambda v: "–" if not isinstance(v, bool) else
                                  ("yes" if v else "no")),
}


def _decision_figure(row: Mapping) -> str:
    if not isinstance(row.get("cell_id"), str):
        return "–"
    return figure_text(row)


#: Per-target decision table produced by ``reports.decide.decide``.
DECISION_COLUMNS: dict[str, RowFormatter] = {
    "scenario": _col("scenario", _text),
    "target": _col("target", _text),
    "cell": _col("cell_id", _text),
    "figure [95 % over rounds]": _decision_figure,
    "× target fp32 dense": lambda r: format_interval(r.get("speedup"), r.get("speedup_lo"), r.get("speedup_hi"),
                                                     ".2f", "×"),
    "mAP": _col("map", _num(".3f")),
    "mAP drop pts": _col("map_drop_pts", _num(".2f")),
    "latency checked": lambda r: (f"{r.get('latency_pct')} {_num('.2f')(r.get('latency_ms'))} ms"
                                  if isinstance(r.get("latency_pct"), str) else "–"),
    "peak MiB": _col("peak_rss_mib", _num(".0f")),
    "noisy": lambda r: ("!", _text(r.get("noisy_reason"))) if truthy(r.get("noisy")) else "",
    "note": _col("note", lambda v: "" if _text(v) == "–" else _text(v)),
}


def with_detector(spec: dict[str, RowFormatter], named: bool) -> dict[str, RowFormatter]:
    """``spec`` with a "detector" column after "precision" when ``named`` (a run of several
    detectors, whose rows would otherwise read as duplicates); unchanged otherwise, so a
    one-detector report looks as it always did."""
    if not named:
        return spec
    out: dict[str, RowFormatter] = {}
    for header, render in spec.items():
        out[header] = render
        if header == "precision":
            out["detector"] = _col("detector", _text)
    return out


def format_table(df: pd.DataFrame, spec: dict[str, RowFormatter], css_class: str) -> str:
    """Render ``df`` as an HTML table, one column per entry of ``spec``.

    Cells are computed from whole rows (an interval needs three columns, a missing p99 its
    sample count) and every text and tooltip is escaped here, the one place HTML is made.
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h in spec)
    body = []
    for row in df.to_dict("records"):
        cells = []
        for render in spec.values():
            cell = render(row)
            text, tip = (cell, None) if isinstance(cell, str) else cell
            title = f' title="{html.escape(tip, quote=True)}"' if tip else ""
            cells.append(f"<td{title}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="report-table {html.escape(css_class, quote=True)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _distinct(values: pd.Series) -> list[str]:
    """Distinct non-missing values as text, in first-seen order."""
    return list(dict.fromkeys(_text(v) for v in values if _text(v) != "–"))


def fingerprint_rows(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, value) rows describing the machine and run.

    All rows of one run should share a fingerprint; if they do not (results
    merged from two machines) every distinct value is shown and flagged so the
    numbers are not compared as if they came from one box.
    """
    rows: list[tuple[str, str]] = []
    sys_cols = [c for c in df.columns if c.startswith("sys_") and c != "sys_versions"]
    ordered = [c for c in _SYS_LABELS if c in sys_cols] + [c for c in sys_cols if c not in _SYS_LABELS]
    for col in ordered:
        values = _distinct(df[col])
        if values:
            flag = "  ⚠ differs between rows" if len(values) > 1 else ""
            rows.append((_SYS_LABELS.get(col, col.removeprefix("sys_")), " | ".join(values) + flag))

    versions: dict[str, list[str]] = {}
    for raw in _distinct(column(df, "sys_versions")):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = None
        items = parsed.items() if isinstance(parsed, dict) else [("versions", raw)]
        for name, version in items:
            versions.setdefault(str(name), [])
            if str(version) not in versions[str(name)]:
                versions[str(name)].append(str(version))
    for name in sorted(versions):
        rows.append((f"version: {name}", " | ".join(versions[name])))

    reference = reference_name(df) if several_detectors(df) else ""
    for col, label in (("model", "model"), ("detector", "detector"), ("data", "data"), ("threads", "threads"),
                       ("run_id", "run id")):
        values = _distinct(column(df, col))
        if col == "detector" and reference:  # drops and speed-ups are against this one: say which
            label = "detectors"
            values = [f"{v} (reference)" if v == reference else v for v in values]
        if values:
            rows.append((label, ", ".join(values)))
    keys = _distinct(column(df, "settings_key"))
    if keys:  # rows compare only within one settings key: say so when a run mixes them
        flag = "  ⚠ differs between rows: cells compare only with cells of the same settings" if len(keys) > 1 else ""
        rows.append(("settings key", " | ".join(keys) + flag))
    started = sorted(_distinct(column(df, "started_at")))
    if started:
        rows.append(("started", started[0] if len(started) == 1 else f"{started[0]} … {started[-1]}"))
    return rows


def _fingerprint_html(df: pd.DataFrame) -> str:
    rows = fingerprint_rows(df)
    if not rows:
        return '<p class="note">no system information recorded</p>'
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="fingerprint">{body}</table>'


def _failed_html(df: pd.DataFrame) -> str:
    """List cells that produced no numbers, with the full (escaped) reason."""
    bad = df[df["status"].astype(str) != "ok"]
    if bad.empty:
        return "<p>none</p>"
    items = "".join(
        f"<li><code>{html.escape(_text(row['cell_id']))}</code> — <strong>{html.escape(_text(row['status']))}</strong>: "
        f"{html.escape(_text(row.get('error')) if _text(row.get('error')) != '–' else 'no reason recorded')}</li>"
        for _, row in bad.iterrows()
    )
    return f"<ul>{items}</ul>"


def _notes_html(df: pd.DataFrame) -> str:
    """Where each cell's accuracy and speed came from, when not simply "measured here, now".

    Lists cells that ran but have no accuracy figures and why (class mismatch, a failed
    pass), cells whose mAP is another model's outputs scored (``mAP from <model_id>``:
    the same artifact serves several scenarios) and cells whose mAP was reused from the
    cache (unchanged artifact, unchanged data), and cells whose speed figures are another
    detector's cell with the same network (``timing_from``), so no figure's origin is hidden."""
    items: list[str] = []
    for row in df[df["status"].astype(str) == "ok"].to_dict("records"):
        notes: list[str] = []
        if _text(row.get("accuracy_note")) != "–":
            notes.append(f"no mAP: {_text(row.get('accuracy_note'))}")
        source = row.get("accuracy_from")
        if isinstance(source, str) and source and source != row.get("model_id"):
            notes.append(f"mAP from {source}")
        if truthy(row.get("accuracy_reused")):
            notes.append("reused from cache (unchanged artifact, unchanged data)")
        timing = row.get("timing_from")
        if isinstance(timing, str) and timing:
            notes.append(f"speed figures from {timing} (the same network with other weights, timed once)")
        if notes:
            items.append(f"<li><code>{html.escape(_text(row.get('cell_id')))}</code>: "
                         f"{html.escape('; '.join(notes))}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else "<p>none</p>"


def _noisy_html(df: pd.DataFrame) -> str:
    """Cells the harness flagged noisy, with its reason: their intervals deserve a second look."""
    noisy = [r for r in df[df["status"].astype(str) == "ok"].to_dict("records") if truthy(r.get("noisy"))]
    if not noisy:
        return "<p>none</p>"
    items = []
    for r in noisy:
        reason = _text(r.get("noisy_reason"))
        detail = f"spread {_num('.1f', '%')(r.get('spread_pct'))}, load max {_num('.2f')(r.get('load_max'))}"
        items.append(f"<li><code>{html.escape(_text(r.get('cell_id')))}</code>: "
                     f"{html.escape(reason if reason != '–' else 'no reason recorded')} ({html.escape(detail)})</li>")
    return f"<ul>{''.join(items)}</ul>"


def _decision_html(decisions: pd.DataFrame, max_map_drop: float, max_latency_ms: float | None,
                   max_rss_mb: float | None) -> str:
    """The answer first: the limits used, the overall pick per scenario, then per target."""
    limits = constraints_text(max_map_drop, max_latency_ms, max_rss_mb, decision_reference(decisions))
    parts = [(f'<p class="note">Limits: {html.escape(limits)}. Re-decide without re-running: <code>python -m '
              "reports.build RUN --max-map-drop N [--max-latency-ms MS] [--max-rss-mb MIB]</code>.</p>")]
    if decisions.empty:
        return parts[0] + "<p>no cells</p>"
    overall = decisions[decisions["target"] == ANY_TARGET]
    lines = "".join(f"<li>{html.escape(decision_line(r, show_latency=max_latency_ms is not None))}</li>"
                    for r in overall.to_dict("records"))
    parts.append(f'<ul class="decision">{lines}</ul>')
    per_target = decisions[decisions["target"] != ANY_TARGET]
    if not per_target.empty:
        parts.append(format_table(per_target, DECISION_COLUMNS, "decision"))
    return "\n".join(parts)


def _method_html(df: pd.DataFrame) -> str:
    """How each figure is computed, so an interval is read as what it is."""
    rounds = sorted({int(r) for r in column(df, "rounds").dropna()})
    n = ", ".join(str(r) for r in rounds) if rounds else "N"
    # with several detectors every reference is a cell of the reference detector: say which
    of_reference = f" of the reference detector {html.escape(reference_name(df))}" if several_detectors(df) else ""
    return (
        '<p class="note">How the figures are computed. img/s and p50 are medians over '
        f"{html.escape(n)} interleaved rounds (every cell measured once per round, in the same round order), "
        "spread over fresh serving processes (a new process's memory layout and thread placement move a "
        "figure as a rerun would); every interval is 95 %: a Student t interval of the mean log figure over "
        "all rounds, placed around the figure (the median; for a p50, the pooled p50). "
        "A speed-up compares a cell with its reference "
        f"(same target, or torch; fp32, keep 1.0, same batch, scenario and settings{of_reference}) round by "
        "round: the figure is the median of the paired per-round ratios, the interval theirs. "
        "Offline ratios are of throughput (cell / reference), single-stream ratios of p50 latency "
        "(reference / cell), so &gt; 1 is faster either way. When the two cells' round lists differ, the "
        "ratio of the figures is shown and its interval combines the two cells' intervals pessimistically and "
        "optimistically. p50/p90/p99 are "
        "pooled over all samples of all rounds; p90 is reported only with at least "
        f"{PERCENTILE_FLOOR[90]} samples and p99 with at least {PERCENTILE_FLOOR[99]} (otherwise the cell "
        "shows the sample count, e.g. n=37&lt;100). mAP drop is in points versus the same target's dense "
        f"fp32 model{of_reference} (positive = worse). ! = the harness flagged the cell noisy "
        "(hover for its reason).</p>"
    )


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


BEST_REDUCER_HTML: dict[str, RowFormatter] = {
    "scenario": _col("scenario", _text),
    "batch": _col("batch", _num(".0f")),
    "target": _col("target", _text),
    "precision": _col("precision", _text),
    "keep": _col("keep", format_keep),
    "best reducer": _col("best_reducer", _text),
    "mAP": _col("map", _num(".3f")),
    "mAP drop pts": _col("map_drop_pts", _num(".2f")),
    "× target fp32 dense": _interval("speedup_vs_target_dense_fp32", "speedup_lo", "speedup_hi", ".2f", "×"),
    "× ideal": _col("ideal_speedup", _num(".2f", "×")),
    "others: mAP (× dense)": _col("others", _text),
}


def _best_reducers_html(data: pd.DataFrame) -> str:
    from reports.table import best_reducers

    best = best_reducers(data)
    if best.empty:
        return '<p class="note">No keep below 1.0 with mAP.</p>'
    return ('<p class="note">Per keep ratio, the reducer with the highest mAP (at one keep the reducers '
            "cost about the same token-layers: × ideal); the others follow.</p>"
            + format_table(best, with_detector(BEST_REDUCER_HTML, several_detectors(data)), "best-reducers"))


def _reducer_of_keep(row: Mapping) -> Cell:
    """The reducer a detector × keep row shows; when that keep had several, a tooltip says so."""
    reducer, measured = _text(row.get("reducer")), _num(".0f")(row.get("reducers_measured"))
    if measured in ("–", "1"):
        return reducer
    return (reducer, f"{measured} reducers measured at this keep: the best-reducer table compares them")


DETECTOR_KEEP_HTML: dict[str, RowFormatter] = {
    "scenario": _col("scenario", _text),
    "batch": _col("batch", _num(".0f")),
    "target": _col("target", _text),
    "precision": _col("precision", _text),
    "detector": _col("detector", _text),
    "keep": _col("keep", format_keep),
    "reducer": _reducer_of_keep,
    "mAP": _col("map", _num(".3f")),
    "mAP drop pts": _col("map_drop_pts", _num(".2f")),
    # every row of the table succeeded (it lists ok cells only) and carries no status to check
    "× reference fp32 dense": lambda r: format_interval(r.get("speedup_vs_target_dense_fp32"), r.get("speedup_lo"),
                                                        r.get("speedup_hi"), ".2f", "×"),
}


def _detectors_html(data: pd.DataFrame) -> str:
    """The detector × keep table (``reports.table.detector_keeps``): does a pruning-aware
    detector pay, at each keep, against the plain model the user has today."""
    from reports.table import DEFAULT_REDUCER, detector_keeps

    table = detector_keeps(data)
    if table.empty:
        return '<p class="note">No successful cell.</p>'
    reference = html.escape(reference_name(data))
    return (f'<p class="note">mAP drop and speed-up are against the reference detector <strong>{reference}'
            "</strong>'s dense fp32 cell of the same target, batch and scenario (for "
            f"{reference} itself, its own dense cell), so a detector's keep 1.0 row shows what its training "
            f"cost and its pruned rows what it gains over {reference}. One reducer per keep: "
            f"{html.escape(DEFAULT_REDUCER)} where it was measured, else the one with the highest mAP.</p>"
            + format_table(table, DETECTOR_KEEP_HTML, "detectors"))


PROFILE_TOP_NODES = 15


def _profiles_html(data: pd.DataFrame, nodes: dict[str, pd.DataFrame]) -> str:
    """The stage split of every profiled cell, then its top nodes by time; cells whose runtime
    has no per-node profiler say so."""
    from reports.table import profile_stages

    stages = profile_stages(data)
    notes = [(str(r["cell_id"]), str(r["profile_note"])) for _, r in data.iterrows()
             if isinstance(r.get("profile_note"), str) and r.get("profile_note")]
    if stages.empty and not notes:
        return '<p class="note">No cell was profiled (bench.run --profile).</p>'
    parts = []
    if not stages.empty:
        parts.append(_img(plots.stage_times(stages), "Stacked bar chart of per-stage time per profiled cell",
                          "Per-stage time (ms per call, one sync request at the cell's batch: the runtime's "
                          "own per-node profiler, summed by the module each node was traced from, or, for "
                          "LiteRT and inductor, each stage built as its own artifact and timed). The tick is the "
                          "cell's unprofiled p50 latency (single-stream)."))
        rows = "".join(
            f"<tr><td>{html.escape(str(r['cell_id']))}</td>"
            + "".join(f"<td>{r[c]:.3f}</td>" for c in stages.columns if c not in _NOT_STAGES)
            + f"<td>{_fmt(r['profile_vs_p50'], '.2f', '×')}</td>"
            + f"<td>{_fmt(r.get('profile_vs_plain'), '.2f', '×')}</td></tr>" for _, r in stages.iterrows())
        heads = "".join(f"<th>{html.escape(c)} ms</th>" for c in stages.columns if c not in _NOT_STAGES)
        parts.append(f'<table class="summary"><thead><tr><th>cell</th>{heads}<th>node sum / p50</th>'
                     "<th>node sum / unprofiled calls of the same minutes</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    for cell, table in nodes.items():
        top = table.head(PROFILE_TOP_NODES)
        body = "".join(f"<tr><td>{html.escape(str(r['node']))}</td><td>{html.escape(str(r['kind']))}</td>"
                       f"<td>{html.escape(str(r['exec_type']) if isinstance(r['exec_type'], str) else '')}</td>"
                       f"<td>{html.escape(str(r['stage']))}</td><td>{float(r['ms_per_call']):.3f}</td>"
                       f"<td>{100 * float(r['share']):.1f}%</td></tr>" for _, r in top.iterrows())
        parts.append(f"<h3>{html.escape(cell)}: top {len(top)} of {len(table)} nodes</h3>"
                     '<table class="summary"><thead><tr><th>node</th><th>kind</th><th>ran as</th><th>stage</th>'
                     f"<th>ms/call</th><th>share</th></tr></thead><tbody>{body}</tbody></table>")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(c)}: {html.escape(n)}</li>" for c, n in notes) + "</ul>")
    return "\n".join(parts)


_NOT_STAGES = ("cell_id", "latency_p50_ms", "profile_vs_p50", "profile_vs_plain")


def _fmt(value: object, spec: str, suffix: str = "") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(v) else f"{v:{spec}}{suffix}"


def render_html(df: pd.DataFrame, title: str = "bavit-bench report",
                comparison: pd.DataFrame | None = None, baseline_name: str | None = None,
                decisions: pd.DataFrame | None = None, max_map_drop: float = 1.0,
                max_latency_ms: float | None = None, max_rss_mb: float | None = None,
                profiles: dict[str, pd.DataFrame] | None = None) -> str:
    """Build the complete report page for one run (optionally compared to a baseline run).

    ``df`` may be raw or already derived; ``decisions`` is the frame from
    ``reports.decide.decide`` made under the given limits (computed here when omitted);
    ``comparison`` is the frame from ``reports.build.compare`` and adds a comparison
    section when given. The decision opens the page: it is what a reader came for.
    """
    data = sort_cells(ensure_derived(df))
    if decisions is None:
        decisions = decide(data, max_map_drop, max_latency_ms, max_rss_mb)
    status = data["status"].astype(str).value_counts()
    counts = ", ".join(f"{n} {s}" for s, n in status.items())
    figures = [
        _img(plots.throughput_vs_keep(data),
             "Line chart of throughput (images/s) against keep ratio per target and precision",
             "Throughput vs keep ratio, one panel per scenario and batch; "
             "error bars span the slowest to the fastest round."),
        _img(plots.map_vs_throughput(data), "Scatter plot of mAP against throughput with the Pareto front marked",
             "mAP vs throughput; ringed points joined by the dashed line form the Pareto front "
             "(per scenario and batch)."),
        _img(plots.reducer_tradeoff(data), "Scatter plot of mAP against throughput, one colour per token reducer",
             "mAP vs throughput per token reducer (colour) and target (marker); the dashed line is the "
             "Pareto front across every reducer, target and precision."),
        _img(plots.roofline(data), "Scatter plot of achieved GOP/s against work per image, with each precision's peak",
             "Achieved GOP/s (analytic matmul, convolution and attention work × throughput) against work per "
             "image; dashed lines are each precision's peak at the cells' threads (formula in docs/methodology.md and "
             "each row's peak_basis)."),
        _img(plots.peak_memory(data), "Bar chart of peak resident memory (MiB) per benchmark cell",
             "Peak RSS per successful cell; grey = baseline RSS once the runtime was loaded, before the model."),
    ]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Decision</h2>", _decision_html(decisions, max_map_drop, max_latency_ms, max_rss_mb),
        "<h2>Machine</h2>", _fingerprint_html(data),
        "<h2>Summary</h2>", f'<p class="note">{len(data)} cells: {html.escape(counts)}.</p>',
        format_table(data, with_detector(SUMMARY_COLUMNS, several_detectors(data)), "summary"), _method_html(data),
        *(["<h2>Detectors × keep ratio</h2>", _detectors_html(data)] if several_detectors(data) else []),
        "<h2>Best reducer per keep ratio</h2>", _best_reducers_html(data),
        "<h2>Plots</h2>", *figures,
        "<h2>Profiles</h2>", _profiles_html(data, profiles or {}),
        "<h2>Noisy cells</h2>", _noisy_html(data),
        "<h2>Failed or unavailable cells</h2>", _failed_html(data),
        "<h2>Where accuracy and speed figures came from</h2>", _notes_html(data),
    ]
    if comparison is not None:
        name = html.escape(baseline_name or "baseline")
        # the detector column only when a run swept several: otherwise every row reads "reference"
        named = column(comparison, "detector").map(lambda v: isinstance(v, str) and v != "").any()
        spec = COMPARISON_COLUMNS if named else {k: v for k, v in COMPARISON_COLUMNS.items() if k != "detector"}
        parts += [
            f"<h2>Comparison with {name}</h2>",
            ('<p class="note">ratio = this run / baseline throughput; mAP diff = (this − baseline) × 100 '
             "(positive = this run is more accurate). Cells present in only one run show – for the other. "
             "Cells are joined on target, precision, detector, reducer, keep, batch and scenario, whatever their "
             "settings; each run's reference detector joins the other's (detector: reference).</p>"),
            format_table(comparison, spec, "comparison"),
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_devices_html(groups: Sequence[DeviceRun], across: pd.DataFrame, title: str = "bavit-bench devices",
                        max_map_drop: float = 1.0, max_latency_ms: float | None = None,
                        max_rss_mb: float | None = None) -> str:
    """The page for runs of several devices (``reports.build RUN_A RUN_B ...``).

    Each device keeps its own decision and cell table, derived within its own run (see
    ``reports.devices``); one table then reads the same cell across devices. Plots and
    per-node profiles stay in each run's own ``report.html``: drawn together they would put
    figures of different machines on one axis as if comparable.
    """
    across_spec: dict[str, RowFormatter] = {
        "scenario": _col("scenario", _text), "target": _col("target", _text),
        "precision": _col("precision", _text), "detector": _col("detector", _text),
        "reducer": _col("reducer", _text), "keep": _col("keep", format_keep), "batch": _col("batch", _num(".0f")),
    }
    formats = {"status": _text, "img/s": _num(".1f"), "p50 ms": _num(".2f"), "mAP": _num(".3f"),
               "speed-up": _num(".2f", "×")}
    for name in across.columns[len(across_spec):]:
        stem = str(name).split(" @ ", 1)[0]
        across_spec[str(name)] = _col(str(name), formats.get(stem, _text))
    overview = pd.DataFrame([{
        "device": g.device, "run": str(g.run_dir), "cells": len(g.cells),
        "ok": int(g.cells["status"].astype(str).eq("ok").sum()),
        "built on": ", ".join(_distinct(column(g.cells, "built_on"))) or "this machine",
    } for g in groups])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        ('<p class="note">Speed-ups and mAP drops are derived within each device\'s own run (its dense fp32 cell, '
         "timed in the same interleaved rounds); figures of different devices are laid side by side, never "
         "divided by one another. Plots and profiles: each run's own report.html.</p>"),
        "<h2>Devices</h2>",
        format_table(overview, {c: _col(c, _text) for c in overview.columns}, "fingerprint"),
    ]
    for g in groups:
        parts += [f"<h2>Decision on {html.escape(g.device)}</h2>",
                  _decision_html(g.decisions, max_map_drop, max_latency_ms, max_rss_mb)]
    parts += ["<h2>The same cell on each device</h2>", format_table(across, across_spec, "summary")]
    for g in groups:
        parts += [f"<h2>Cells on {html.escape(g.device)}</h2>", _fingerprint_html(g.cells),
                  format_table(g.cells, with_detector(SUMMARY_COLUMNS, several_detectors(g.cells)), "summary"),
                  "<h3>Failed or unavailable cells</h3>", _failed_html(g.cells)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
