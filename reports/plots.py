"""The report's figures, each rendered to PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas instead
of ``pyplot``: no global backend switch (other code in the process may use an
interactive one), no figure registry to leak, and it works headless. Each
function returns PNG bytes so the HTML writer can embed them without temp files.

All functions accept a raw or derived results frame and degrade to a figure
saying "no successful cells" when there is nothing to draw, so a run where
every backend failed still yields a complete report.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reports.table import (
    SCENARIO_ORDER,
    column,
    ensure_derived,
    ok_mask,
    round_bounds,
    several_detectors,
    sort_cells,
    text_column,
)

NO_DATA = "no successful cells"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
_MAX_SUBPLOT_COLS = 3


def _png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes; Software metadata is dropped to keep output reproducible."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _message_png(message: str, title: str) -> bytes:
    """A placeholder figure, so a report section is never silently missing."""
    fig = Figure(figsize=(6, 2.5))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="0.4", transform=ax.transAxes)
    return _png(fig)


def _series_label(target: object, precision: object, detector: str = "") -> str:
    return f"{target} {precision} {detector}" if detector else f"{target} {precision}"


def _series_detectors(df: pd.DataFrame) -> pd.Series:
    """The detector part of each row's series: its name when the run swept several detectors
    (one line per detector, not a zigzag between two models at each keep), else blank."""
    if several_detectors(df):
        return text_column(df, "detector")
    return pd.Series("", index=df.index, dtype=object)


def _styles(df: pd.DataFrame) -> dict[str, tuple[object, str]]:
    """Colour per target×precision(×detector) and marker per target, shared by every plot.

    Computed from the whole frame (not per subplot) so a series keeps its
    colour across figures and batch sizes.
    """
    cmap = matplotlib.colormaps["tab10"]
    targets = sorted(df["target"].astype(str).unique())
    labels = sorted({_series_label(t, p, d) for t, p, d in zip(df["target"], df["precision"], _series_detectors(df))})
    styles: dict[str, tuple[object, str]] = {}
    for i, label in enumerate(labels):
        target = label.split(" ", 1)[0]
        styles[label] = (cmap(i % cmap.N), _MARKERS[targets.index(target) % len(_MARKERS)])
    return styles


def _grid_axes(fig: Figure, n: int) -> list:
    """``n`` subplots in rows of at most three, the unused slots hidden."""
    ncols = min(n, _MAX_SUBPLOT_COLS)
    nrows = -(-n // ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    return list(axes[:n])


def _figure_for_panels(n: int, height: float = 3.8) -> Figure:
    ncols = min(n, _MAX_SUBPLOT_COLS)
    nrows = -(-n // ncols)
    return Figure(figsize=(max(6.5, 4.6 * ncols), height * nrows + 0.9), layout="constrained")


def _panel_keys(data: pd.DataFrame) -> list[tuple[str, float]]:
    """(scenario, batch) pairs in reading order: single-stream latency and offline batches are
    different regimes, so each gets its own panel."""
    scenario = text_column(data, "scenario")
    keys = set(zip(scenario, data["batch"]))
    return sorted(keys, key=lambda k: (SCENARIO_ORDER.index(k[0]) if k[0] in SCENARIO_ORDER
                                       else len(SCENARIO_ORDER), k[0], k[1]))


def _panels(data: pd.DataFrame, height: float = 3.8) -> tuple[Figure, list, list]:
    """A figure with one titled panel per (scenario, batch), each with its target x precision
    series as (label, colour, marker, rows): the layout every per-panel plot shares."""
    styles = _styles(data)
    keys = _panel_keys(data)
    scenario = text_column(data, "scenario")
    detector = _series_detectors(data)
    fig = _figure_for_panels(len(keys), height)
    axes = _grid_axes(fig, len(keys))
    panels = []
    for ax, (scen, batch) in zip(axes, keys):
        in_panel = data[(scenario == scen) & (data["batch"] == batch)]
        series = []
        for (target, precision, det), group in in_panel.groupby(
                [in_panel["target"], in_panel["precision"], detector[in_panel.index]], sort=True):
            label = _series_label(target, precision, det)
            series.append((label, *styles[label], group))
        ax.set_title(f"{scen or 'scenario?'} · batch {batch:g}")
        ax.grid(alpha=0.3)
        panels.append((ax, in_panel, series))
    return fig, axes, panels


def _legend(fig: Figure, axes: Iterable) -> None:
    """One legend for the whole figure, deduplicated across subplots."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center",
                   ncols=min(len(seen), 4), fontsize="small", frameon=False)


def throughput_vs_keep(df: pd.DataFrame) -> bytes:
    """Throughput against keep ratio, one line per target×precision (×detector when the run swept
    several), one panel per (scenario, batch).

    Shows how much of the theoretical token-pruning gain each backend actually
    realises (a flat line means the backend does not benefit from fewer tokens).
    Error bars are the 95 % interval over rounds (of every serving process), so a gap
    smaller than them is not a difference.
    """
    title = "Throughput vs keep ratio"
    data = df[ok_mask(df) & column(df, "throughput_ips").notna()] if not df.empty else df
    if data.empty:
        return _message_png(NO_DATA, title)
    fig, axes, panels = _panels(data)
    for ax, _, series in panels:
        for label, color, marker, group in series:
            group = group.sort_values("keep")
            tp = group["throughput_ips"].to_numpy(dtype=float)
            bounds = np.array([round_bounds(r, False) for r in group.to_dict("records")], dtype=float).reshape(-1, 2)
            below = np.clip(np.nan_to_num(tp - bounds[:, 0]), 0, None)
            above = np.clip(np.nan_to_num(bounds[:, 1] - tp), 0, None)
            ax.errorbar(group["keep"], tp, yerr=np.vstack([below, above]), marker=marker, color=color,
                        label=label, capsize=3)
        ax.set_xlabel("keep ratio (fraction of tokens kept)")
        ax.set_ylabel("throughput (images/s)")
        ax.set_ylim(bottom=0)
    fig.suptitle(title)
    _legend(fig, axes)
    return _png(fig)


def _with_map(df: pd.DataFrame) -> pd.DataFrame | None:
    """Successful cells with throughput and mAP, derived columns added; None for an empty frame."""
    if df.empty:
        return None
    derived = ensure_derived(df)
    return derived[ok_mask(derived) & column(derived, "throughput_ips").notna() & column(derived, "map").notna()]


def _draw_front(ax, in_panel: pd.DataFrame) -> None:
    """The panel's Pareto front: large hollow rings joined by a dashed line; the axes' labels."""
    front = in_panel[in_panel["pareto"].astype(bool)].sort_values("throughput_ips")
    if not front.empty:
        ax.plot(front["throughput_ips"], front["map"], linestyle="--", color="black", linewidth=1, zorder=2)
        ax.scatter(front["throughput_ips"], front["map"], s=190, facecolors="none", edgecolors="black",
                   linewidths=1.4, label="Pareto front", zorder=4)
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("mAP@[.5:.95]")


def map_vs_throughput(df: pd.DataFrame) -> bytes:
    """mAP against throughput per (scenario, batch), with the Pareto front drawn through its points.

    The front is the set of configurations worth deploying: anything off it is
    both slower and less accurate than some other cell. Front points get a
    large hollow ring and are joined by a dashed line; each point is labelled
    with its keep ratio.
    """
    title = "mAP vs throughput (Pareto front per scenario and batch)"
    data = _with_map(df)
    if data is None or data.empty:
        return _message_png(NO_DATA if data is None else NO_DATA + " with mAP", title)
    fig, axes, panels = _panels(data, height=4.2)
    for ax, in_panel, series in panels:
        for label, color, marker, group in series:
            ax.scatter(group["throughput_ips"], group["map"], color=color, marker=marker, s=45, label=label, zorder=3)
            for x, y, keep in zip(group["throughput_ips"], group["map"], group["keep"]):
                ax.annotate(f"k{keep:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color="0.3")
        _draw_front(ax, in_panel)
    fig.suptitle(title)
    _legend(fig, axes)
    return _png(fig)


def reducer_tradeoff(df: pd.DataFrame) -> bytes:
    """mAP against throughput with one colour per token reducer (marker per target), per
    (scenario, batch), and the Pareto front across every reducer, target and precision: where
    a training-free reducer sits on the front, BAViT's training bought nothing there."""
    title = "mAP vs throughput per reducer (Pareto front across reducers)"
    data = _with_map(df)
    if data is None or data.empty:
        return _message_png(NO_DATA if data is None else NO_DATA + " with mAP", title)
    reducer = text_column(data, "reducer").replace("", "–")
    cmap = matplotlib.colormaps["tab10"]
    colours = {r: cmap(i % cmap.N) for i, r in enumerate(sorted(reducer.unique()))}
    targets = sorted(data["target"].astype(str).unique())
    detector = _series_detectors(data)   # named in each point's tag when the run swept several
    fig, axes, panels = _panels(data, height=4.2)
    for ax, in_panel, _series in panels:
        for (red, target), group in in_panel.groupby([reducer[in_panel.index], in_panel["target"].astype(str)]):
            ax.scatter(group["throughput_ips"], group["map"], color=colours[red], s=45, zorder=3, label=red,
                       marker=_MARKERS[targets.index(target) % len(_MARKERS)])
            for x, y, keep, precision, det in zip(group["throughput_ips"], group["map"], group["keep"],
                                                  group["precision"], detector[group.index]):
                ax.annotate(f"{target[:2]} {precision} {det + ' ' if det else ''}k{keep:g}", (x, y),
                            textcoords="offset points", xytext=(5, 4), fontsize=6, color="0.35")
        _draw_front(ax, in_panel)
    fig.suptitle(title + "; marker = target: " + ", ".join(
        f"{t} {_MARKERS[i % len(_MARKERS)]}" for i, t in enumerate(targets)))
    _legend(fig, axes)
    return _png(fig)


def roofline(df: pd.DataFrame) -> bytes:
    """Achieved GOP/s per cell against its work per image, under each precision's peak.

    Without a measured byte count there is no arithmetic-intensity axis: work per image stands
    in for it (pruning moves a cell left), and the distance to the dashed peak line is how far
    the runtime is from what the vector units could do at that precision."""
    title = "Achieved GOP/s vs work per image"
    ok = ok_mask(df) if not df.empty else None
    data = df[ok & column(df, "achieved_gops").notna()] if ok is not None else df
    if data.empty:
        return _message_png(NO_DATA, title)
    fig, axes, panels = _panels(data)
    for ax, in_panel, series in panels:
        for label, color, marker, group in series:
            ax.scatter(group["gflop_per_image"], group["achieved_gops"], color=color, marker=marker,
                       label=label, s=28)
        for precision, group in in_panel.groupby("precision", sort=True):
            peaks = column(group, "peak_gops").dropna()
            if not peaks.empty:
                top = float(peaks.iloc[0])
                ax.axhline(top, ls="--", lw=0.8, color="0.4")
                ax.annotate(f"{precision} peak {top:.0f}", (0.01, top), xycoords=("axes fraction", "data"),
                            xytext=(0, 2), textcoords="offset points", fontsize=7, color="0.3")
        ax.set_yscale("log")
        ax.set_xlabel("GFLOP per image")
        ax.set_ylabel("achieved GOP/s")
    _legend(fig, axes)
    fig.suptitle(title)
    return _png(fig)


def stage_times(stages: pd.DataFrame) -> bytes:
    """Per-stage time of each profiled cell as stacked horizontal bars (ms per call), with
    the cell's unprofiled p50 marked where it is a single-stream cell: BAViT's overhead is
    the `reducer` segment, what pruning saves shows in `encoder` between dense and pruned."""
    from bavit.stages import STAGE_TITLES, STAGES

    title = "Per-stage time of profiled cells"
    if stages.empty:
        return _message_png("no profiled cell (run with --profile)", title)
    y = np.arange(len(stages))[::-1]
    fig = Figure(figsize=(9, 1.6 + 0.36 * len(stages)), layout="constrained")
    ax = fig.add_subplot()
    left = np.zeros(len(stages))
    colors = dict(zip(STAGES, ("#d62728", "#9467bd", "#1f77b4", "#17becf", "#2ca02c", "0.7")))
    for stage in (s for s in STAGES if s in stages):
        values = stages[stage].to_numpy(dtype=float)
        if values.any():
            ax.barh(y, values, left=left, color=colors[stage], label=f"{stage}: {STAGE_TITLES[stage]}")
            left += values
    p50 = column(stages, "latency_p50_ms").to_numpy(dtype=float)
    ax.scatter(p50, y, marker="|", s=200, color="k", label="unprofiled p50 (single-stream)", zorder=3)
    ax.set_yticks(y, stages["cell_id"].astype(str), fontsize=8)
    ax.set_xlabel("ms per call (profiled)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", fontsize="small", frameon=False, ncols=2)
    ax.set_title(title)
    return _png(fig)


def peak_memory(df: pd.DataFrame) -> bytes:
    """Peak RSS per successful cell as horizontal bars, split into baseline and increase.

    Splitting off the process baseline (interpreter + libraries before the
    model loads) shows what the model itself costs, which is what differs
    between backends. Horizontal bars keep long cell ids readable.
    """
    title = "Peak memory per cell"
    data = df[ok_mask(df) & column(df, "peak_rss_mib").notna()] if not df.empty else df
    if data.empty:
        return _message_png(NO_DATA, title)
    data = sort_cells(data)
    styles = _styles(data)
    peak = data["peak_rss_mib"].to_numpy(dtype=float)
    baseline = np.clip(np.nan_to_num(column(data, "baseline_rss_mib").to_numpy(dtype=float)), 0, peak)
    colors = [styles[_series_label(t, p, d)][0]
              for t, p, d in zip(data["target"], data["precision"], _series_detectors(data))]
    y = np.arange(len(data))[::-1]

    fig = Figure(figsize=(9, 1.2 + 0.32 * len(data)), layout="constrained")
    ax = fig.add_subplot()
    if baseline.any():
        ax.barh(y, baseline, color="0.85", label="baseline RSS (runtime and plugins loaded, no model)")
    ax.barh(y, peak - baseline, left=baseline, color=colors)
    for yi, value in zip(y, peak):
        ax.annotate(f"{value:.0f}", (value, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(y, data["cell_id"].astype(str), fontsize=8)
    ax.set_xlabel("peak RSS (MiB)")
    ax.set_xlim(right=peak.max() * 1.12)
    ax.grid(axis="x", alpha=0.3)
    if baseline.any():
        fig.legend(loc="outside lower center", fontsize="small", frameon=False)
    ax.set_title(title)
    return _png(fig)
