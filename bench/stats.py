"""Statistics of a cell's timed slices: per-round figures, their median and spread, pooled
percentiles with a sample floor, and the noisy flag. Pure functions over `Slice`s, so the
arithmetic is tested without timing anything."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.contracts import PERCENTILE_FLOOR, Slice

NOISY_SPREAD_PCT = 10.0


@dataclass(frozen=True)
class Summary:
    rounds: int
    throughput_ips: float
    throughput_min: float
    throughput_max: float
    round_throughput_ips: list[float]
    round_p50_ms: list[float]
    latency_p50_ms: float
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    latency_samples: int
    spread_pct: float
    load_max: float
    noisy: bool
    noisy_reason: str | None


def percentile(samples: Sequence[float], q: int) -> float | None:
    """The q-th percentile of the pooled samples, or None when there are fewer than
    PERCENTILE_FLOOR[q]: the 99th of 20 samples is their maximum, not a p99."""
    if len(samples) < PERCENTILE_FLOOR[q]:
        return None
    return float(np.percentile(np.asarray(samples, dtype=float), q))


def summarise(rounds: Sequence[Sequence[Slice]], loads: Sequence[float], threads: int) -> Summary:
    """`rounds[r]` holds the cell's slices of round r (interleaving measures a cell in two
    half-slices per round). A round's throughput is its images over its time; its p50 is
    over its own samples. The figure is the median over rounds; percentiles pool every
    sample. Noisy: rounds that disagree by more than NOISY_SPREAD_PCT of the median, or more
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
    load_max = max(loads) if loads else float("nan")
    reasons = []
    if len(tps) > 1 and spread > NOISY_SPREAD_PCT:
        reasons.append(f"rounds disagree by {spread:.0f}% (> {NOISY_SPREAD_PCT:g}%)")
    if load_max > threads + LOAD_MARGIN:
        reasons.append(f"{load_max:.2f} runnable tasks > {threads} threads")
    return Summary(len(tps), median, min(tps), max(tps), tps, p50s, percentile(pooled, 50),
                   percentile(pooled, 90), percentile(pooled, 99), len(pooled), spread, load_max,
                   bool(reasons), "; ".join(reasons) or None)


# The load figure is the mean count of runnable tasks sampled while the cell ran, the
# sampler itself excluded (bench.run), so a cell alone on its cores reads <= its threads;
# the margin absorbs the instants a runtime's extra thread (a callback, a waker) is runnable.
LOAD_MARGIN = 0.5
