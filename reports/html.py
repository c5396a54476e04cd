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
from collections.abc import Callable

import pandas as pd

from reports import plots
from reports.table import column, ensure_derived, format_keep, sort_cells

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
"""

_SYS_LABELS: dict[str, str] = {
    "sys_cpu": "CPU", "sys_cores": "cores", "sys_isa": "ISA extensions", "sys_ram_gb": "RAM (GB)",
    "sys_os": "OS", "sys_python": "Python", "sys_host": "host",
}


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


#: Summary table: source column -> (header, formatter). Order is display order.
SUMMARY_COLUMNS: dict[str, tuple[str, Formatter]] = {
    "target": ("target", _text),
    "precision": ("precision", _text),
    "executed_precision": ("ran as", _text),
    "keep": ("keep", format_keep),
    "batch": ("batch", _num(".0f")),
    "threads": ("threads", _num(".0f")),
    "status": ("status", _text),
    "throughput_ips": ("img/s", _num(".1f")),
    "latency_p50_ms": ("p50 ms", _num(".2f")),
    "latency_p99_ms": ("p99 ms", _num(".2f")),
    "map": ("mAP", _num(".3f")),
    "ap50": ("AP50", _num(".3f")),
    "map_drop_pts": ("mAP drop pts", _num(".2f")),
    "speedup_vs_target_dense_fp32": ("× target fp32 dense", _num(".2f", "×")),
    "speedup_vs_torch_dense_fp32": ("× torch fp32 dense", _num(".2f", "×")),
    "peak_rss_mb": ("peak MiB", _num(".0f")),
    "rss_increase_mb": ("+RSS MiB", _num(".0f")),
    "artifact_bytes": ("artifact MB", _num(".1f", scale=1e-6)),
    "convert_s": ("convert s", _num(".1f")),
    "pareto": ("Pareto", _flag),
}

#: Comparison table produced by ``reports.build.compare``.
COMPARISON_COLUMNS: dict[str, tuple[str, Formatter]] = {
    "target": ("target", _text),
    "precision": ("precision", _text),
    "keep": ("keep", format_keep),
    "batch": ("batch", _num(".0f")),
    "status_this": ("status", _text),
    "status_baseline": ("status (base)", _text),
    "throughput_this": ("img/s", _num(".1f")),
    "throughput_baseline": ("img/s (base)", _num(".1f")),
    "throughput_ratio": ("ratio", _num(".2f", "×")),
    "p50_this": ("p50 ms", _num(".2f")),
    "p50_baseline": ("p50 ms (base)", _num(".2f")),
    "map_this": ("mAP", _num(".3f")),
    "map_baseline": ("mAP (base)", _num(".3f")),
    "map_diff_pts": ("mAP diff pts", _num("+.2f")),
    "peak_mb_this": ("peak MiB", _num(".0f")),
    "peak_mb_baseline": ("peak MiB (base)", _num(".0f")),
}


def format_table(df: pd.DataFrame, spec: dict[str, tuple[str, Formatter]], css_class: str) -> str:
    """Render the columns of ``df`` named in ``spec`` (those present) via ``DataFrame.to_html``.

    Values are formatted to strings first so each column gets its own
    precision and NaN reads as "–"; ``to_html`` then escapes them.
    """
    present = [c for c in spec if c in df.columns]
    shown = pd.DataFrame({spec[c][0]: [spec[c][1](v) for v in df[c]] for c in present})
    return shown.to_html(index=False, escape=True, border=0, classes=["report-table", css_class])


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

    for col, label in (("model", "model"), ("data", "data"), ("threads", "threads")):
        values = _distinct(column(df, col))
        if values:
            rows.append((label, ", ".join(values)))
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
    """Cells that ran but have no accuracy figures, and why (class mismatch, a failed pass)."""
    if "accuracy_note" not in df.columns:
        return "<p>none</p>"
    noted = df[(df["status"].astype(str) == "ok") & df["accuracy_note"].map(lambda v: _text(v) != "–")]
    if noted.empty:
        return "<p>none</p>"
    items = "".join(f"<li><code>{html.escape(_text(row['cell_id']))}</code>: {html.escape(_text(row['accuracy_note']))}</li>"
                    for _, row in noted.iterrows())
    return f"<ul>{items}</ul>"


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_html(df: pd.DataFrame, title: str = "bavit-bench report",
                comparison: pd.DataFrame | None = None, baseline_name: str | None = None) -> str:
    """Build the complete report page for one run (optionally compared to a baseline run).

    ``df`` may be raw or already derived; ``comparison`` is the frame from
    ``reports.build.compare`` and adds a comparison section when given.
    """
    data = sort_cells(ensure_derived(df))
    status = data["status"].astype(str).value_counts()
    counts = ", ".join(f"{n} {s}" for s, n in status.items())
    figures = [
        _img(plots.throughput_vs_keep(data), "Line chart of throughput (images/s) against keep ratio per target and precision",
             "Throughput vs keep ratio, one panel per batch size."),
        _img(plots.map_vs_throughput(data), "Scatter plot of mAP against throughput with the Pareto front marked",
             "mAP vs throughput; ringed points joined by the dashed line form the Pareto front (per batch size)."),
        _img(plots.peak_memory(data), "Bar chart of peak resident memory (MiB) per benchmark cell",
             "Peak RSS per successful cell; grey = process baseline before the model was loaded."),
    ]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(data)} cells: {html.escape(counts)}. Speed-ups are against the dense (keep 1.0) fp32 '
        "cell at the same batch size; mAP drop is in points versus the same target's dense fp32 model "
        "(positive = worse).</p>",
        "<h2>Machine</h2>", _fingerprint_html(data),
        "<h2>Summary</h2>", format_table(data, SUMMARY_COLUMNS, "summary"),
        "<h2>Plots</h2>", *figures,
        "<h2>Failed or unavailable cells</h2>", _failed_html(data),
        "<h2>Cells without accuracy figures</h2>", _notes_html(data),
    ]
    if comparison is not None:
        name = html.escape(baseline_name or "baseline")
        parts += [
            f"<h2>Comparison with {name}</h2>",
            '<p class="note">ratio = this run / baseline throughput; mAP diff = (this − baseline) × 100 '
            "(positive = this run is more accurate). Cells present in only one run show – for the other.</p>",
            format_table(comparison, COMPARISON_COLUMNS, "comparison"),
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
