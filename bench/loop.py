"""The load generator's two scenarios (MLPerf LoadGen's names), run inside a serving process
on one loaded model. Each call is one timed slice; the parent decides which cell runs when
(bench.run: interleaved rounds)."""
from __future__ import annotations

import time

import numpy as np

from bench.contracts import Slice
from targets.base import OFFLINE, SINGLE_STREAM, Runner


def single_stream(runner: Runner, pixels: np.ndarray, seconds: float) -> tuple[int, int, float, list[float]]:
    """Batch-1 queries one after another, each issued when the previous one returned."""
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
    if scenario == SINGLE_STREAM:
        images, queries, elapsed, lat = single_stream(runner, pixels, seconds)
    elif scenario == OFFLINE:
        res = runner.offline(pixels, seconds)
        images, queries, elapsed, lat = res.images, res.queries, res.elapsed_s, res.latencies_ms
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    return Slice(cell_id, images, queries, elapsed, [float(v) for v in lat], time.process_time() - cpu)


def warm_up(scenario: str, runner: Runner, pixels: np.ndarray, seconds: float) -> None:
    """Until `seconds` have passed (at least one query): lazy kernel selection, allocator
    growth and the CPU's clock ramp are out of the figures."""
    if scenario == OFFLINE:
        runner.offline(pixels, seconds)
    else:
        single_stream(runner, pixels, seconds)
