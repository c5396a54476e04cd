"""Several devices, one report: runs measured on different machines, read side by side.

A bundle built once and measured on several devices (``bench.measure`` on each) gives one run
folder per device. Their figures may be read together, but never paired across machines: a
speed-up is a ratio of two cells timed in interleaved rounds on one machine, and a 2-core
board's dense fp32 cell says nothing of a workstation's. So every figure derived here is
derived inside one *device group* (one run's rows of one machine fingerprint), exactly as a
one-run report derives it, and the groups are only laid side by side afterwards: a decision
per device, and one table of the same cell on every device (its absolute figures, and its
speed-up over each device's own dense fp32 cell).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reports.decide import decide
from reports.table import add_derived, load_results, sort_cells, text_column

#: The fingerprint fields that name a machine (the rest, such as versions, describe its software).
DEVICE_FIELDS: tuple[str, ...] = ("sys_cpu", "sys_cores", "sys_host")

#: What identifies one cell across devices: the same model, reduction, batch and scenario.
CELL_KEYS: list[str] = ["target", "precision", "detector", "reducer", "keep", "batch", "scenario"]


@dataclass(frozen=True)
class DeviceRun:
    """One device group: the rows of one run measured on one machine, derived among themselves."""

    device: str
    run_dir: Path
    cells: pd.DataFrame      # derived (speed-ups, drops) within this group only
    decisions: pd.DataFrame  # reports.decide.decide of ``cells``


def device_label(row: Mapping) -> str:
    """A machine as a reader names it: CPU, cores and host (e.g. "Intel(R) Xeon(R) ... (2 cores, host vm)")."""
    cpu = row.get("sys_cpu")
    cores = row.get("sys_cores")
    host = row.get("sys_host")
    cpu_text = cpu if isinstance(cpu, str) and cpu else "unknown CPU"
    cores_text = f"{int(cores)} cores" if isinstance(cores, (int, float)) and not math.isnan(cores) else "? cores"
    host_text = f", host {host}" if isinstance(host, str) and host else ""
    name = row.get("device_name")
    prefix = f"{name}: " if isinstance(name, str) and name else ""   # a cluster's device, by its declared name
    return f"{prefix}{cpu_text} ({cores_text}{host_text})"


def device_runs(run_dirs: Sequence[str | Path], max_map_drop: float = 1.0, max_latency_ms: float | None = None,
                max_rss_mb: float | None = None) -> list[DeviceRun]:
    """Read each run, split it by machine, derive and decide within each group.

    Two groups with the same machine (the same device measured twice) are told apart by their
    run folder's name, so neither hides the other. Raises what ``load_results`` raises (one-line
    ``FileNotFoundError``/``ValueError``) before anything is derived.
    """
    frames = [(Path(d), load_results(d)) for d in run_dirs]
    groups: list[tuple[str, Path, pd.DataFrame]] = []
    for run_dir, df in frames:
        labels = pd.Series([device_label(r) for r in df.to_dict("records")], index=df.index)
        for label in dict.fromkeys(labels):
            groups.append((label, run_dir, df[labels == label].reset_index(drop=True)))
    counts = pd.Series([g[0] for g in groups]).value_counts()
    out = []
    for label, run_dir, rows in groups:
        name = label if counts[label] == 1 else f"{label} [{run_dir.resolve().name}]"
        cells = sort_cells(add_derived(rows))
        cells.insert(0, "device", name)
        cells.insert(1, "run_dir", str(run_dir))
        decisions = decide(cells, max_map_drop, max_latency_ms, max_rss_mb)
        decisions.insert(0, "device", name)
        out.append(DeviceRun(name, run_dir, cells, decisions))
    return out


def _cell_key(df: pd.DataFrame) -> pd.DataFrame:
    """The cell's identity on any device; keep rounded so float keys meet exactly."""
    key = pd.DataFrame({k: text_column(df, k) for k in CELL_KEYS})
    key["keep"] = pd.to_numeric(df["keep"], errors="coerce").round(6)
    key["batch"] = pd.to_numeric(df["batch"], errors="coerce")
    return key


def across_devices(groups: Sequence[DeviceRun]) -> pd.DataFrame:
    """One row per cell (``CELL_KEYS``), per device its status, throughput, p50, mAP and speed-up
    over that device's own dense fp32 cell: which device runs a given cell best, read across.

    Columns are ``<figure> @ <device>``; a cell missing on a device is blank there.
    """
    parts = []
    for g in groups:
        key = _cell_key(g.cells)
        ok = g.cells["status"].astype(str).eq("ok")
        figures = pd.DataFrame({
            "status": g.cells["status"].astype(str),
            "img/s": pd.to_numeric(g.cells.get("throughput_ips"), errors="coerce").where(ok),
            "p50 ms": pd.to_numeric(g.cells.get("latency_p50_ms"), errors="coerce").where(ok),
            "mAP": pd.to_numeric(g.cells.get("map"), errors="coerce").where(ok),
            "speed-up": pd.to_numeric(g.cells.get("speedup_vs_target_dense_fp32"), errors="coerce").where(ok),
        })
        figures.columns = [f"{c} @ {g.device}" for c in figures.columns]
        parts.append(pd.concat([key, figures], axis=1).drop_duplicates(CELL_KEYS, keep="last").set_index(CELL_KEYS))
    if not parts:
        return pd.DataFrame(columns=CELL_KEYS)
    merged = pd.concat(parts, axis=1, join="outer")
    stems = ["status", "img/s", "p50 ms", "mAP", "speed-up"]
    ordered = [f"{s} @ {g.device}" for s in stems for g in groups]
    return sort_cells(merged.reset_index())[CELL_KEYS + ordered]
