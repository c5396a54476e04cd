"""The load generator's two scenarios (MLPerf LoadGen's names), run inside a serving process
on one loaded model. Each call is one timed slice; the parent decides which cell runs when
(bench.run: interleaved rounds)."""
from __future__ import annotations

import time

import numpy as np

from bench.contracts import Slice
from targets.base import OFFLINE, SINGLE_STREAM, Runner


def back_to_back(runner: Runner, pixels: np.ndarray, seconds: float) -> tuple[int, int, float, list[float]]:
    """Queries one after another, each issued when the previous one returned: single-stream
    (batch 1), and offline on runtimes without a throughput mode of their own."""
    lat: list[float] = []
    clock = time.perf_counter
    start = clock()
    while not lat or clock() - start < seconds:
        t = clock()
        runner(pixels)
        lat.append((clock() - t) * 1000)
    elapsed = clock() - start
    return len(pixels) * len(lat), len(lat), elapsed, lat


def run_slice(cell_id: str, scenario: str, runner: Runner, pixels: np.ndarray, seconds: float) -> Slice:
    """One untimed call first: switching between models leaves the caches to the previous
    one, and that refill is not this model's steady state."""
    runner(pixels)
    cpu = time.process_time()
    if scenario not in (SINGLE_STREAM, OFFLINE):
        raise ValueError(f"unknown scenario {scenario!r}")
    if scenario == OFFLINE and runner.offline_fn is not None:
        res = runner.offline_fn(pixels, seconds)
        images, queries, elapsed, lat = res.images, res.queries, res.elapsed_s, res.latencies_ms
    else:
        images, queries, elapsed, lat = back_to_back(runner, pixels, seconds)
    return Slice(cell_id, images, queries, elapsed, [float(v) for v in lat], time.process_time() - cpu)


def warm_up(scenario: str, runner: Runner, pixels: np.ndarray, seconds: float) -> None:
    """Until `seconds` have passed (at least one query): lazy kernel selection, allocator
    growth and the CPU's clock ramp are out of the figures."""
    if scenario == OFFLINE and runner.offline_fn is not None:
        runner.offline_fn(pixels, seconds)
    else:
        back_to_back(runner, pixels, seconds)
