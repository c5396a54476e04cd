"""Load benchmark results and derive the comparison columns the report shows.

The harness (``bench/``) appends one flat JSON object per benchmark cell to
``RUN_DIR/results.jsonl`` (schema: ``bench.contracts.Row``). This module is the only
place that reads that file, so the rest of ``reports`` can rely on one cleaned-up
``DataFrame``:

* re-runs of a cell are appended rather than rewritten, so the LAST row of a
  ``cell_id`` is the one that counts;
* numeric fields may be ``null`` (not measured) and become ``NaN``;
* the per-round lists (``round_throughput_ips``, ``round_p50_ms``) stay Python lists
  of floats (empty when not recorded), since paired speed-ups need them round by round;
* unknown extra keys are kept untouched so they reach ``report.csv``.

It imports nothing of ``targets/`` and, of ``bench/``, only ``bench.stats`` (numpy alone):
the one definition of an interval over rounds, shared with the harness's noisy flag. The
report must be buildable on a machine that has none of the backends installed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.stats import interval

RESULTS_FILE = "results.jsonl"

#: Columns without which no row can be placed in the report.
REQUIRED_COLUMNS: tuple[str, ...] = ("cell_id", "target", "precision", "keep", "batch", "status")

#: Fields the schema defines as numbers. They are coerced so that a stray
#: string or ``null`` becomes NaN instead of turning the column into objects
#: (which would break arithmetic and plotting for every other row).
NUMERIC_COLUMNS: tuple[str, ...] = (
    "keep", "batch", "threads", "ideal_speedup",
    "convert_s", "artifact_bytes", "tokens_kept", "tokens_total",
    "load_s", "first_inference_ms", "peak_rss_mib", "baseline_rss_mib", "rss_increase_mib",
    "streams", "requests",
    "rounds", "throughput_ips", "throughput_min", "throughput_max",
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_samples",
    "spread_pct", "load_max",
    "gflop_per_image", "achieved_gops", "peak_gops", "peak_pct",
    "profile_calls", "profile_wall_ms", "profile_nodes_ms", "profile_vs_p50", "profile_plain_ms", "profile_vs_plain",
    "map", "ap50", "ap75", "token_acc", "fg_recall", "fg_precision", "images", "token_images",
    "sys_cores", "sys_ram_gb",
)

#: Per-round figures, one value per interleaved round, in the same round order for every
#: cell of a run: kept as lists so round i of a cell can be paired with round i of its reference.
LIST_COLUMNS: tuple[str, ...] = ("round_throughput_ips", "round_p50_ms")

#: Columns added by :func:`add_derived`, in the order they are appended.
DERIVED_COLUMNS: tuple[str, ...] = (
    "speedup_vs_target_dense_fp32", "speedup_lo", "speedup_hi",
    "speedup_vs_torch_dense_fp32", "speedup_torch_lo", "speedup_torch_hi",
    "map_drop_pts",
    "pareto",
)

REFERENCE_TARGET = "torch"
REFERENCE_PRECISION = "fp32"
DENSE_KEEP = 1.0
PRECISION_ORDER: tuple[str, ...] = ("fp32", "bf16", "int8")
SINGLE_STREAM = "single-stream"
OFFLINE = "offline"
#: Reading order of scenarios (as bench.contracts.SCENARIOS); unknown ones sort after.
SCENARIO_ORDER: tuple[str, ...] = (SINGLE_STREAM, OFFLINE)
#: Pooled samples a latency percentile needs before the harness reports it
#: (mirrors bench.contracts.PERCENTILE_FLOOR, which reports/ must not import).
PERCENTILE_FLOOR: dict[int, int] = {50: 1, 90: 20, 99: 100}


def _as_rounds(value: object) -> list[float]:
    """A per-round list as floats; anything that is not a list (null, NaN, a stray
    string) is "not recorded" = ``[]``, which sends speed-ups to the ratio-of-medians path."""
    if isinstance(value, str):
        try:
            value = json.loads(value)  # a frame read back from report.csv
        except json.JSONDecodeError:
            return []
    if not isinstance(value, (list, tuple, np.ndarray)):
        return []
    out: list[float] = []
    for item in value:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


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
        if not isinstance(record, dict):  # bad input, which the CLI reports (one line) as ValueError
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")  # noqa: TRY004
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no result rows (file is empty)")

    df = pd.DataFrame.from_records(records)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s): {', '.join(missing)}")
    return normalize(df).drop_duplicates("cell_id", keep="last").reset_index(drop=True)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce numeric columns and per-round lists in place of a loaded frame (also used on
    hand-built frames), so every consumer sees NaN for "not measured" and lists for rounds."""
    for col in NUMERIC_COLUMNS:  # a speed-only run (--images 0) has no mAP: the column is NaN
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else float("nan")
    for col in LIST_COLUMNS:
        values = df[col] if col in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)
        df[col] = pd.Series([_as_rounds(v) for v in values], index=df.index, dtype=object)
    return df


def column(df: pd.DataFrame, name: str) -> pd.Series:
    """Return ``df[name]``, or an all-NaN float column if the harness never wrote it.

    Lets derived metrics and plots treat "never measured" and "null" alike
    without adding empty columns to the CSV.
    """
    if name in df.columns:
        return df[name]
    return pd.Series(np.nan, index=df.index, dtype=float)


def text_column(df: pd.DataFrame, name: str) -> pd.Series:
    """A string column with missing values as ``""``: scenario and settings_key are join
    keys, and NaN never equals NaN, so two rows that both lack them must still match."""
    values = column(df, name)
    return pd.Series(["" if _missing(v) else str(v) for v in values], index=df.index, dtype=object)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def reference_rows(df: pd.DataFrame) -> pd.Series:
    """Rows of the run's reference detector (``reference_detector``: the first ``--detector``),
    the only rows another cell is compared against. A row without ``reference_detector`` (runs
    before detectors were a sweep axis held one detector) counts as the reference's, so an
    old run compares exactly as it always did."""
    reference = text_column(df, "reference_detector")
    return (reference.eq("") | reference.eq(text_column(df, "detector"))).astype(bool)


def detector_names(df: pd.DataFrame) -> list[str]:
    """The detectors of a frame, the reference one first, then the others by name, so every
    table lists them in the same order whatever order the cells were measured in."""
    rank: dict[str, int] = {}
    for name, is_reference in zip(text_column(df, "detector"), reference_rows(df)):
        if name:
            rank[name] = min(rank.get(name, 1), 0 if is_reference else 1)
    return sorted(rank, key=lambda d: (rank[d], d))


def several_detectors(df: pd.DataFrame) -> bool:
    """Whether a run swept more than one detector: only then do tables and decisions name the
    detector (a one-detector run reads exactly as before; its detector is in the fingerprint)."""
    return len(detector_names(df)) > 1


def reference_name(df: pd.DataFrame) -> str:
    """The reference detector's name, for sentences that say what drops are against:
    ``reference_detector`` when the rows carry it, else the detector of the rows (old runs)."""
    named = [v for v in dict.fromkeys(text_column(df, "reference_detector")) if v]
    if named:
        return ", ".join(named)
    names = detector_names(df)
    return names[0] if names else ""


def is_single_stream(scenario: object) -> bool:
    """Single-stream cells are judged on latency; everything else (offline, unknown) on throughput."""
    return str(scenario) == SINGLE_STREAM


def ok_mask(df: pd.DataFrame) -> pd.Series:
    """Rows whose measurement succeeded; only these feed comparisons."""
    return df["status"].eq("ok").fillna(False).astype(bool)


def truthy(value: object) -> bool:
    """A JSON boolean that may have become NaN, 0/1 or a string in a frame: only real truth counts."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    if _missing(value):
        return False
    try:
        return bool(value)
    except (TypeError, ValueError):
        return False


def _positive(x: object) -> float:
    """``x`` as a float when it is a usable divisor/figure (finite, > 0), else NaN."""
    try:
        number = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) and number > 0 else math.nan


def round_bounds(row: Mapping, single: bool) -> tuple[float, float]:
    """The 95 % interval over rounds of a row's headline figure (:func:`bench.stats.interval`
    of its per-round list, around the figure): throughput offline, p50 latency single-stream.
    Rows without a round list (runs before lists were recorded) fall back to the recorded
    throughput min/max."""
    key, figure_col = ("round_p50_ms", "latency_p50_ms") if single else ("round_throughput_ips", "throughput_ips")
    values = [v for v in _as_rounds(row.get(key)) if math.isfinite(v) and v > 0]
    figure = _positive(row.get(figure_col))
    if values:   # one round has no interval (NaN), whatever its min and max columns say
        return interval(values, centre=None if math.isnan(figure) else figure)
    if not single:
        lo, hi = _positive(row.get("throughput_min")), _positive(row.get("throughput_max"))
        if not (math.isnan(lo) or math.isnan(hi)):
            return lo, hi
    return math.nan, math.nan


def paired_speedup(row: Mapping, ref: Mapping) -> tuple[float, float, float]:
    """Speed-up of ``row`` over ``ref`` as (median, lo, hi).

    Rounds are interleaved, and a cell and its reference are timed in the same serving
    processes, so round i of both saw the same machine and process state: pairing round i
    with round i cancels drift that would widen an interval of unpaired figures. The figure
    is the median of the paired ratios, [lo, hi] their 95 % interval
    (:func:`bench.stats.interval`: a t interval on the log scale, over every round of every
    serving process). Offline compares throughput (row / ref); single-stream compares p50
    latency (ref / row), so > 1 always means faster. When the two round lists differ in
    length or one is empty, the ratio of the figures is returned, with lo and hi the
    pessimistic and optimistic ratios of their bounds, NaN when the bounds are unknown.
    """
    single = is_single_stream(row.get("scenario"))
    key = "round_p50_ms" if single else "round_throughput_ips"
    mine, theirs = np.array(_as_rounds(row.get(key))), np.array(_as_rounds(ref.get(key)))
    if len(mine) == len(theirs) > 0 and np.all(np.isfinite(mine) & (mine > 0) & np.isfinite(theirs) & (theirs > 0)):
        ratios = theirs / mine if single else mine / theirs
        lo, hi = interval(list(ratios))
        return float(np.median(ratios)), lo, hi

    figure_col = "latency_p50_ms" if single else "throughput_ips"
    mine_fig, their_fig = _positive(row.get(figure_col)), _positive(ref.get(figure_col))
    figure = their_fig / mine_fig if single else mine_fig / their_fig
    (my_lo, my_hi), (their_lo, their_hi) = round_bounds(row, single), round_bounds(ref, single)
    if single:  # lower latency is faster: worst case = their fastest round over my slowest
        lo, hi = their_lo / my_hi, their_hi / my_lo
    else:
        lo, hi = my_lo / their_hi, my_hi / their_lo
    return float(figure), float(lo), float(hi)


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


def _scenario_rank(scenario: str) -> int:
    return SCENARIO_ORDER.index(scenario) if scenario in SCENARIO_ORDER else len(SCENARIO_ORDER)


def add_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` with speed-up (and interval), mAP-drop and Pareto columns appended.

    * ``speedup_vs_target_dense_fp32`` [``speedup_lo``, ``speedup_hi``]: gain from
      pruning/quantising *within* a backend, against the same target's fp32 keep-1.0 cell
      of the same batch, scenario and ``settings_key`` (see :func:`paired_speedup`).
    * ``speedup_vs_torch_dense_fp32`` [``speedup_torch_lo``, ``speedup_torch_hi``]: the same
      against plain PyTorch, the number a user choosing a deployment path cares about.
    * ``map_drop_pts``: accuracy cost in mAP points (positive = worse) versus the same
      target's dense fp32 model with a mAP and the same settings. mAP is a property of the
      model, not of batch or scenario, so the same batch+scenario reference is preferred
      and any other is used when it has none (first in reading order).
    * ``pareto``: on the throughput/mAP front among successful rows of the same
      (scenario, batch): comparing across them would mix latency regimes.

    Every reference is a cell of the run's *reference detector* (``reference_detector``, the
    plain model the user starts from; see :func:`reference_rows`), never another detector's
    dense cell: a pruning-aware detector's own dense fp32 cell is then compared with the plain
    detector's and shows what its training cost (speed-up about 1, a mAP drop), and its pruned
    cells show the whole gain over what the user has today. Rows without ``reference_detector``
    (older runs) are all the reference's, as before.

    Derived values are NaN for rows that did not succeed, or whose reference cell is
    missing, failed or measured under other settings, rather than computed from junk.
    """
    # Work on a fresh RangeIndex: the per-group Pareto assignment aligns on the
    # index, which must be unique (a concatenated frame may repeat labels).
    out = normalize(df.reset_index(drop=True).copy())
    ok = ok_mask(out)
    scenario = text_column(out, "scenario")
    settings = text_column(out, "settings_key")
    # the reference detector a row is compared against: "" for rows of runs before detectors
    # were swept, which then match the (equally unnamed) references of their own run
    reference = text_column(out, "reference_detector")
    keep = pd.to_numeric(out["keep"], errors="coerce").to_numpy(dtype=float)
    dense_fp32 = ok & reference_rows(out) & out["precision"].eq(REFERENCE_PRECISION).fillna(False) & pd.Series(
        np.isclose(keep, DENSE_KEEP), index=out.index)

    records = out.to_dict("records")
    for rec, scen in zip(records, scenario):
        rec["scenario"] = scen
    speed_refs: dict[tuple, int] = {}
    for i in out.index[dense_fp32]:
        speed_refs[(str(out.at[i, "target"]), out.at[i, "batch"], scenario[i], settings[i], reference[i])] = i
    # map references per (target, settings): same (scenario, batch) first, else reading order
    map_refs: dict[tuple, list[int]] = {}
    has_map = dense_fp32 & column(out, "map").notna()
    for i in sorted(out.index[has_map], key=lambda j: (_scenario_rank(scenario[j]), scenario[j], out.at[j, "batch"])):
        map_refs.setdefault((str(out.at[i, "target"]), settings[i], reference[i]), []).append(i)

    derived = {c: np.full(len(out), np.nan) for c in DERIVED_COLUMNS if c != "pareto"}
    for i in out.index[ok]:
        target, batch = str(out.at[i, "target"]), out.at[i, "batch"]
        for ref_target, names in ((target, ("speedup_vs_target_dense_fp32", "speedup_lo", "speedup_hi")),
                                  (REFERENCE_TARGET, ("speedup_vs_torch_dense_fp32", "speedup_torch_lo",
                                                      "speedup_torch_hi"))):
            ref = speed_refs.get((ref_target, batch, scenario[i], settings[i], reference[i]))
            if ref is not None:
                for name, value in zip(names, paired_speedup(records[i], records[ref])):
                    derived[name][i] = value
        candidates = map_refs.get((target, settings[i], reference[i]), [])
        same = [j for j in candidates if scenario[j] == scenario[i] and out.at[j, "batch"] == batch]
        ref_map = (same or candidates or [None])[0]
        if ref_map is not None:
            derived["map_drop_pts"][i] = (float(out.at[ref_map, "map"]) - float(out.at[i, "map"])) * 100.0
    for name, values in derived.items():
        out[name] = pd.Series(values, index=out.index).replace([np.inf, -np.inf], np.nan)

    throughput = column(out, "throughput_ips").where(ok)
    mean_ap = column(out, "map").where(ok)
    pareto = pd.Series(False, index=out.index, dtype=bool)
    candidates = out[throughput.notna() & mean_ap.notna()]
    groups = pd.DataFrame({"scenario": scenario, "batch": out["batch"]}).loc[candidates.index]
    for _key, group in groups.groupby(["scenario", "batch"], sort=True, dropna=False):
        points = list(zip(throughput[group.index].astype(float), mean_ap[group.index].astype(float)))
        pareto[group.index] = pareto_front(points)
    out["pareto"] = pareto
    out.index = df.index
    return out


def ensure_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add the derived columns unless present, so renderers accept raw or derived frames."""
    return df if all(c in df.columns for c in DERIVED_COLUMNS) else add_derived(df)


def _sort_key(df: pd.DataFrame) -> pd.DataFrame:
    """The columns rows are ordered by, one per reading criterion (see :func:`sort_cells`)."""
    rank = {p: i for i, p in enumerate(PRECISION_ORDER)}
    scenario = text_column(df, "scenario")
    return pd.DataFrame({
        "scenario": scenario.map(_scenario_rank),
        "scenario_name": scenario,
        "batch": column(df, "batch"),
        "target": df["target"].astype(str),
        "detector": (~reference_rows(df)).astype(int),
        "detector_name": text_column(df, "detector"),
        "precision": df["precision"].map(lambda p: rank.get(p, len(rank))),
        "precision_name": df["precision"].astype(str),
        "keep": -pd.to_numeric(column(df, "keep"), errors="coerce"),
        "reducer": text_column(df, "reducer"),
    }, index=df.index)


def sort_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Order rows for reading: scenario, batch, target, detector (the reference detector first,
    then the others by name), precision (fp32→bf16→int8), keep descending.

    The reference detector's dense fp32 lands first within each target so each reference row
    sits above the cells that are compared to it. Unknown precisions and scenarios sort after
    the known ones.
    """
    key = _sort_key(df)
    order = key.sort_values(list(key.columns), kind="stable").index
    return df.loc[order].reset_index(drop=True)


BEST_REDUCER_COLUMNS: tuple[str, ...] = (
    "scenario", "batch", "target", "precision", "detector", "keep", "best_reducer", "map", "map_drop_pts",
    "speedup_vs_target_dense_fp32", "speedup_lo", "speedup_hi", "ideal_speedup", "reducers_compared", "others",
)


def best_reducers(df: pd.DataFrame) -> pd.DataFrame:
    """Per scenario, batch, target, precision, detector and keep below 1.0: the reducer with the
    highest mAP (at one keep the reducers cost about the same token-layers; ties go to the faster),
    its figures, and every other reducer's mAP / speed-up beside it. Detectors stay apart: two
    detectors' reducers at one keep differ by the weights, not by the reducer."""
    derived = ensure_derived(df) if not df.empty else df
    if derived.empty:
        return pd.DataFrame(columns=list(BEST_REDUCER_COLUMNS))
    keep = pd.to_numeric(column(derived, "keep"), errors="coerce")
    data = derived[ok_mask(derived) & column(derived, "map").notna() & (keep < DENSE_KEEP - 1e-9)].copy()
    if data.empty:
        return pd.DataFrame(columns=list(BEST_REDUCER_COLUMNS))
    data["scenario"] = text_column(data, "scenario")
    data["reducer"] = text_column(data, "reducer")
    data["detector"] = text_column(data, "detector")
    rows = []
    for key, group in data.groupby(["scenario", "batch", "target", "precision", "detector", "keep"], sort=True):
        ranked = group.assign(_tp=column(group, "throughput_ips").fillna(0.0)).sort_values(
            ["map", "_tp"], ascending=False, kind="stable")
        best = ranked.iloc[0]
        others = "; ".join(f"{r['reducer']} {fmt(r['map'], '.3f')} "
                           f"({fmt(r['speedup_vs_target_dense_fp32'], '.2f', '×')})" for _, r in ranked.iloc[1:].iterrows())
        rows.append(dict(zip(("scenario", "batch", "target", "precision", "detector", "keep"), key),
                         best_reducer=best["reducer"], map=best["map"], map_drop_pts=best["map_drop_pts"],
                         speedup_vs_target_dense_fp32=best["speedup_vs_target_dense_fp32"],
                         speedup_lo=best["speedup_lo"], speedup_hi=best["speedup_hi"],
                         ideal_speedup=best.get("ideal_speedup"), reducers_compared=len(ranked), others=others))
    best = pd.DataFrame(rows, columns=list(BEST_REDUCER_COLUMNS))
    order = {d: i for i, d in enumerate(detector_names(derived))}  # the reference detector first
    best["_detector"] = best["detector"].map(lambda d: order.get(d, len(order)))
    keys = ["scenario", "batch", "target", "precision", "_detector", "keep"]
    return best.sort_values(keys, kind="stable").drop(columns="_detector").reset_index(drop=True)


#: The reducer the detector × keep table shows when a keep was measured with several:
#: BAViT's own (bench.run's default), so the table compares detectors, not reducers.
DEFAULT_REDUCER = "bavit"

DETECTOR_KEEP_COLUMNS: tuple[str, ...] = (
    "scenario", "batch", "target", "precision", "detector", "keep", "reducer", "reducers_measured",
    "map", "map_drop_pts", "speedup_vs_target_dense_fp32", "speedup_lo", "speedup_hi", "reference_detector",
)


def detector_keeps(df: pd.DataFrame) -> pd.DataFrame:
    """Per scenario, batch, target and precision: one row per (detector, keep) with its mAP, mAP
    drop and speed-up [lo–hi], all against the reference detector's dense fp32 cell of that
    target (the ``reference_detector`` column names it).

    This is the table that says whether a pruning-aware detector pays: its keep-1.0 row shows
    what its training cost against the plain model (speed-up about 1, some mAP drop), its
    pruned rows what it gains over the plain model pruned the same way. To keep it about
    detectors, each (detector, keep) shows ONE reducer: :data:`DEFAULT_REDUCER` when it was
    measured there, else the one with the highest mAP (ties to the faster); keep 1.0 is the
    dense model ("none"). ``reducers_measured`` counts the reducers that keep had, and
    ``reducers.csv`` holds the others. Only successful cells are listed (failed ones are in
    the summary with their reason); without mAP (a speed-only run) the mAP columns are NaN.
    """
    derived = ensure_derived(df) if not df.empty else df
    empty = pd.DataFrame(columns=list(DETECTOR_KEEP_COLUMNS))
    if derived.empty:
        return empty
    data = derived[ok_mask(derived)].copy()
    if data.empty:
        return empty
    data["scenario"] = text_column(data, "scenario")
    data["reducer"] = text_column(data, "reducer")
    data["detector"] = text_column(data, "detector")
    data["keep"] = pd.to_numeric(data["keep"], errors="coerce")
    named = text_column(data, "reference_detector")
    data["reference_detector"] = named.where(named != "", reference_name(derived))
    cell = ["scenario", "batch", "target", "precision", "detector", "keep"]
    data["reducers_measured"] = data.groupby(cell, dropna=False)["reducer"].transform("nunique")
    data["_not_default"] = data["reducer"].ne(DEFAULT_REDUCER).astype(int)
    data["_map"] = -column(data, "map").fillna(-np.inf)
    data["_tp"] = -column(data, "throughput_ips").fillna(0.0)
    chosen = data.sort_values(["_not_default", "_map", "_tp"], kind="stable").drop_duplicates(cell, keep="first")

    key = _sort_key(chosen)   # the reference detector first (every row names it by now)
    key = key[["scenario", "scenario_name", "batch", "target", "precision", "precision_name", "detector",
               "detector_name", "keep"]]
    chosen = chosen.loc[key.sort_values(list(key.columns), kind="stable").index]
    return chosen[list(DETECTOR_KEEP_COLUMNS)].reset_index(drop=True)


def _text_or_dash(value: object) -> str:
    return "–" if _missing(value) else str(value)


def short_reason(reason: object, limit: int = 60) -> str:
    """First line of an error message, truncated, for table cells.

    Full tracebacks stay in the CSV; tables only need enough to recognise the cause.
    """
    if _missing(reason):
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


def fmt(value: object, spec: str, suffix: str = "") -> str:
    """Format a number, rendering missing values as an en dash."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(number) else f"{number:{spec}}{suffix}"


_fmt = fmt  # the name older callers used


def format_interval(value: object, lo: object, hi: object, spec: str, suffix: str = "") -> str:
    """``1.52× [1.48–1.55]``; the bracket is left out when the interval is unknown, so a
    figure without rounds never pretends to have a spread."""
    figure = fmt(value, spec, suffix)
    if figure == "–":
        return figure
    low, high = fmt(lo, spec), fmt(hi, spec)
    return figure if "–" in (low, high) else f"{figure} [{low}–{high}]"


def figure_bounds(row: Mapping) -> tuple[float, float]:
    """The 95 % interval over rounds of a row's headline figure: throughput for offline
    cells, p50 latency for single-stream ones."""
    return round_bounds(row, is_single_stream(row.get("scenario")))


def detectors_markdown(df: pd.DataFrame) -> str:
    """The detector × keep table (:func:`detector_keeps`) as markdown, for a terminal or a
    docs/: tables of a run are pasted from here, not typed. Empty when one detector ran."""
    if df.empty or not several_detectors(df):
        return ""
    table = detector_keeps(df)
    reference = reference_name(df)
    lines = [f"Detectors × keep ratio (drop and speed-up against {reference}'s dense fp32 cell of the target):", "",
             "| scenario | batch | target | precision | detector | keep | reducer | mAP | drop pts | speed-up |",
             "|---|---:|---|---|---|---:|---|---:|---:|---:|"]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join([
            str(r["scenario"]), fmt(r["batch"], ".0f"), str(r["target"]), str(r["precision"]), str(r["detector"]),
            format_keep(r["keep"]), str(r["reducer"]), fmt(r["map"], ".3f"), fmt(r["map_drop_pts"], ".2f"),
            format_interval(r["speedup_vs_target_dense_fp32"], r["speedup_lo"], r["speedup_hi"], ".2f", "×"),
        ]) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(df: pd.DataFrame) -> str:
    """Short markdown table of every cell, in the spirit of ``yolo benchmark`` output.

    Meant for a terminal or a PR comment: failed/unavailable cells stay in the
    table (status plus a shortened reason) so a missing number is never
    mistaken for a cell that was not requested. ``speed-up`` is against the same
    target's dense fp32 cell at the same batch and scenario (the reference detector's, when
    the run swept several: then a ``detector`` column follows ``precision``), with its 95 %
    interval over paired rounds; ``!`` marks a cell the harness flagged noisy.
    """
    named = not df.empty and several_detectors(df)
    headers = ["scenario", "target", "precision", *(["detector"] if named else []), "reducer", "keep", "batch",
               "status", "rounds", "img/s", "p50 ms", "mAP", "drop pts", "speed-up", "ideal", "peak MiB", "noisy"]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] * (8 if named else 7) + ["---:"] * 8 + [":---:"]) + "|",
    ]
    if df.empty:
        return "\n".join(lines) + "\n\n(no cells)\n"
    table = sort_cells(ensure_derived(df))
    any_noisy = False
    for _, row in table.iterrows():
        status = str(row["status"])
        if status != "ok":
            reason = short_reason(row.get("error"))
            status = f"{status}: {reason}" if reason else status
        elif short_reason(row.get("accuracy_note")):
            status = f"ok, no mAP: {short_reason(row.get('accuracy_note'))}"
        noisy = truthy(row.get("noisy"))
        any_noisy |= noisy and str(row["status"]) == "ok"
        cells = [
            str(row.get("scenario")) if not _missing(row.get("scenario")) else "–",
            str(row["target"]), str(row["precision"]), _text_or_dash(row.get("reducer")), format_keep(row["keep"]),
            fmt(row["batch"], ".0f"), status, fmt(row.get("rounds"), ".0f"),
            fmt(row.get("throughput_ips"), ".1f"), fmt(row.get("latency_p50_ms"), ".2f"),
            fmt(row.get("map"), ".3f"), fmt(row["map_drop_pts"], ".2f"),
            format_interval(row["speedup_vs_target_dense_fp32"], row["speedup_lo"], row["speedup_hi"], ".2f", "×"),
            fmt(row.get("ideal_speedup"), ".2f", "×"), fmt(row.get("peak_rss_mib"), ".0f"), "!" if noisy else "",
        ]
        if str(row["status"]) != "ok":
            cells[7:] = ["–"] * 8 + [""]
        if named:
            cells.insert(3, _text_or_dash(row.get("detector")))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if any_noisy:
        lines += ["", "! = noisy: the harness saw too much spread or load in its rounds (reason in report.html)"]
    return "\n".join(lines) + "\n"


def profile_stages(df: pd.DataFrame) -> pd.DataFrame:
    """One row per profiled cell, one column per stage (ms per call, bavit.stages order)."""
    from bavit.stages import STAGES

    rows = []
    for _, r in df.iterrows():
        text = r.get("profile_stages")
        if isinstance(text, str) and text:
            stages = json.loads(text)
            rows.append({"cell_id": r["cell_id"], **{s: float(stages.get(s, 0.0)) for s in STAGES},
                         "latency_p50_ms": r.get("latency_p50_ms") if r.get("scenario") == SINGLE_STREAM else None,
                         "profile_vs_p50": r.get("profile_vs_p50"), "profile_vs_plain": r.get("profile_vs_plain")})
    out = pd.DataFrame(rows)
    empty = [s for s in STAGES if s in out and not out[s].any()]   # e.g. decoder of YOLOS-only runs
    return out.drop(columns=empty)


def load_profiles(run_dir: str | Path, df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """cell_id -> that cell's per-node table (profiles/*.csv beside results.jsonl); a file
    that is gone is left out, not an error: the stage sums are on the row."""
    out = {}
    for _, r in df.iterrows():
        name = r.get("profile_file")
        if isinstance(name, str) and name and (Path(run_dir) / name).is_file():
            out[str(r["cell_id"])] = pd.read_csv(Path(run_dir) / name)
    return out
