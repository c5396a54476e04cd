"""Statistics of a cell's timed slices: per-round figures, their median, a 95 % interval over
rounds, pooled percentiles with a sample floor, and the noisy flag. Pure functions over
`Slice`s, so the arithmetic is tested without timing anything.

Rounds come from several serving processes (bench.procs.time_target): a process's memory
layout, thread placement and allocator state move a figure as much as the machine does, so an
interval over one process's rounds understates what the next run sees (pyperf's reason for
worker processes). The interval is a Student t interval of the mean log figure over every
round of every process, centred on the median: ratios and rates are compared on a log scale,
and the median keeps one disturbed round from moving the figure. It takes the rounds as
independent: where the process, not the round, moves a figure, rounds of one process are
not, and the interval is too narrow for it (two processes of two rounds see about two thirds
of that variance). Whether it holds is measured, not assumed: `reports.build --baseline`
counts the speed-ups of two runs that lie inside each other's interval. Imports numpy only (the
measuring side runs on a device without scipy): the t quantiles are a table, checked against
scipy.stats in the tests."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.contracts import PERCENTILE_FLOOR, Slice

# a cell is noisy when its figure's interval reaches further than this from its median
NOISY_HALF_WIDTH_PCT = 5.0

# Student t quantile t(0.975, df) for df = 1..30; above, the normal quantile (4 % narrower at df 31)
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.9600


def t_quantile(df: int) -> float:
    """t(0.975, df): the two-sided 95 % quantile."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else _Z975


def interval(values: Sequence[float], centre: float | None = None) -> tuple[float, float]:
    """95 % interval of positive figures (rates, latencies, ratios): the t interval's half-width
    of their mean log, around `centre` (default: their median). (nan, nan) with fewer than two
    usable values: one round has no spread to show."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x) and x > 0], dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    mid = float(np.median(v)) if centre is None else float(centre)
    half = t_quantile(len(v) - 1) * float(np.std(np.log(v), ddof=1)) / math.sqrt(len(v))
    return mid * math.exp(-half), mid * math.exp(half)


def half_width_pct(lo: float, hi: float, centre: float) -> float:
    """How far the interval reaches from its centre, in % of it (the larger side)."""
    if not (centre > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return math.nan
    return max(centre - lo, hi - centre) / centre * 100


@dataclass(frozen=True)
class Summary:
    rounds: int
    processes: int
    throughput_ips: float
    throughput_min: float
    throughput_max: float
    throughput_lo: float | None       # 95 % interval over rounds (None with one round)
    throughput_hi: float | None
    round_throughput_ips: list[float]
    round_p50_ms: list[float]
    latency_p50_ms: float
    latency_p50_lo: float | None      # the pooled p50 with the interval of the rounds' p50s
    latency_p50_hi: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    latency_samples: int
    spread_pct: float
    interval_pct: float | None        # how far the figure's interval reaches, % of the figure
    load_max: float
    noisy: bool
    noisy_reason: str | None


def percentile(samples: Sequence[float], q: int) -> float | None:
    """The q-th percentile of the pooled samples, or None when there are fewer than
    PERCENTILE_FLOOR[q]: the 99th of 20 samples is their maximum, not a p99."""
    if len(samples) < PERCENTILE_FLOOR[q]:
        return None
    return float(np.percentile(np.asarray(samples, dtype=float), q))


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def summarise(rounds: Sequence[Sequence[Slice]], loads: Sequence[float], threads: int,
              processes: int = 1, single_stream: bool = False) -> Summary:
    """`rounds[r]` holds the cell's slices of round r (interleaving measures a cell in two
    half-slices per round), the rounds of every serving process in order. A round's
    throughput is its images over its time; its p50 is over its own samples. The figure is
    the median over rounds, with the 95 % interval of `interval`; percentiles pool every
    sample. Noisy: the figure's interval reaches more than NOISY_HALF_WIDTH_PCT from its
    median (p50 latency in single-stream, else throughput: the figure a row shows), or more
    runnable tasks than the cell's threads while it ran (other work on the cores)."""
    tps, p50s, pooled = [], [], []
    for slices in rounds:
        images = sum(s.images for s in slices)
        elapsed = sum(s.elapsed_s for s in slices)
        lat = [v for s in slices for v in s.latencies_ms]
        tps.append(images / elapsed)
        p50s.append(float(np.median(lat)))
        pooled += lat
    median = float(np.median(tps))
    spread = (max(tps) - min(tps)) / median * 100 if median > 0 else float("nan")
    tp_lo, tp_hi = interval(tps)
    p50 = percentile(pooled, 50)
    lat_lo, lat_hi = interval(p50s, centre=p50)
    width = half_width_pct(lat_lo, lat_hi, p50) if single_stream else half_width_pct(tp_lo, tp_hi, median)
    load_max = max(loads) if loads else float("nan")
    reasons = []
    if width > NOISY_HALF_WIDTH_PCT:
        reasons.append(f"95% interval ±{width:.1f}% over {len(tps)} rounds in {processes} "
                       f"process{'es' if processes > 1 else ''} (> {NOISY_HALF_WIDTH_PCT:g}%)")
    if load_max > threads + LOAD_MARGIN:
        reasons.append(f"{load_max:.2f} runnable tasks > {threads} threads")
    n = _nan_to_none
    return Summary(len(tps), processes, median, min(tps), max(tps), n(tp_lo), n(tp_hi), tps, p50s, p50, n(lat_lo),
                   n(lat_hi), percentile(pooled, 90), percentile(pooled, 99), len(pooled), spread, n(width), load_max,
                   bool(reasons), "; ".join(reasons) or None)


# The load figure is the mean count of runnable tasks sampled while the cell ran, the
# sampler itself excluded (bench.run), so a cell alone on its cores reads <= its threads;
# the margin absorbs the instants a runtime's extra thread (a callback, a waker) is runnable.
LOAD_MARGIN = 0.5
