"""The harness's arithmetic: percentiles with sample floors, round medians and spreads, the
noisy flag, and the interleaved schedule."""
from __future__ import annotations

import dataclasses

import pytest

from bench.contracts import Slice
from bench.procs import schedule
from bench.stats import percentile, summarise


def _slice(images: int, seconds: float, lat: list[float]) -> Slice:
    return Slice("c", images, len(lat), seconds, lat, seconds)


def test_percentiles_need_their_sample_floor():
    assert percentile(list(range(99)), 99) is None          # 99 samples: the p99 would be the max
    assert percentile(list(range(100)), 99) == pytest.approx(98.01)
    assert percentile(list(range(19)), 90) is None
    assert percentile(list(range(20)), 90) == pytest.approx(17.1)
    assert percentile([3.0], 50) == 3.0


def test_summary_is_the_median_of_rounds_with_spread_and_pooled_percentiles():
    rounds = [[_slice(10, 1.0, [100.0] * 5), _slice(10, 1.0, [100.0] * 5)],   # 10 img/s
              [_slice(24, 2.0, [80.0] * 10)],                                 # 12 img/s
              [_slice(11, 1.0, [90.0] * 5)]]                                  # 11 img/s
    s = summarise(rounds, loads=[1.0, 1.2], threads=2)
    assert s.rounds == 3 and s.round_throughput_ips == [10.0, 12.0, 11.0]
    assert (s.throughput_ips, s.throughput_min, s.throughput_max) == (11.0, 10.0, 12.0)
    assert s.round_p50_ms == [100.0, 80.0, 90.0]
    assert s.latency_samples == 25 and s.latency_p99_ms is None and s.latency_p90_ms == 100.0
    assert s.spread_pct == pytest.approx(2 / 11 * 100)
    assert s.noisy and "rounds disagree by 18%" in s.noisy_reason


def test_quiet_rounds_are_not_noisy_but_a_loaded_machine_is():
    rounds = [[_slice(100, 1.0, [10.0] * 100)], [_slice(104, 1.0, [10.0] * 104)]]
    assert not summarise(rounds, loads=[2.0, 2.3], threads=2).noisy
    loaded = summarise(rounds, loads=[2.0, 3.1], threads=2)
    assert loaded.noisy and loaded.noisy_reason == "3.10 runnable tasks > 2 threads"
    assert loaded.latency_p99_ms == 10.0


def test_interleaved_schedule_is_a_palindrome_per_round():
    plan = schedule(["a", "b", "c"], rounds=2, seconds=2.0, interleave=True)
    assert [c for _, c, _ in plan] == list("abccba") * 2
    assert [r for r, _, _ in plan] == [0] * 6 + [1] * 6
    assert {s for _, _, s in plan} == {1.0}
    # each cell's timed windows centre on the round's centre: a linear drift cancels
    positions = {c: [i + 0.5 for i, (_, x, _) in enumerate(plan[:6]) if x == c] for c in "abc"}
    assert {sum(p) / 2 for p in positions.values()} == {3.0}
    back_to_back = schedule(["a", "b"], rounds=2, seconds=2.0, interleave=False)
    assert [c for _, c, _ in back_to_back] == list("aaaabbbb")


def test_builds_are_shared_out_evenly_and_an_artifact_never_twice():
    from bench.build import share_out as _share_out
    from bench.contracts import BuildSpec, ReductionSpec

    def spec(target: str, precision: str, keep: float, batch: int) -> BuildSpec:
        return BuildSpec(f"{target}/{precision}/bavit/keep{keep:g}/b{batch}", target, precision, batch, "w", "detector",
                         None, ReductionSpec("bavit", keep), "synthetic", "train", 0, 8, "/cache")

    specs = [spec(t, p, k, b) for t in ("torch", "openvino", "tflite") for k in (1.0, 0.5) for p in ("fp32", "int8")
             for b in (1, 8)]
    # openvino's IR serves every batch: both batches are one artifact
    artifact = lambda s: (s.target, s.precision, s.reduction, None if s.target == "openvino" else s.batch)  # noqa: E731
    # a calibrated model's artifacts of every batch build in one process (calibrated once)
    group = lambda s: artifact(s) if s.precision == "fp32" else (s.target, s.precision, s.reduction, None)  # noqa: E731
    lists = _share_out(specs, 2, artifact, group)
    assert sorted(s.model_id for lst in lists for s in lst) == sorted(s.model_id for s in specs)
    for lst in lists:
        others = [s for other in lists if other is not lst for s in other]
        assert not {group(s) for s in lst} & {group(s) for s in others}
    heavy = [sorted(s.reduction.keep for s in lst if s.target == "tflite" and s.precision == "int8") for lst in lists]
    assert sorted(heavy) == [[0.5, 0.5], [1.0, 1.0]]   # the four slow LiteRT int8 builds, one model per process
    assert _share_out(specs, 1, artifact, group) == [specs]


def test_contracts_round_trip_through_json_with_their_types():
    """What the parent writes, the worker reads back equal: (H, W) tuples stay tuples
    (a list would not hash as a cache key), optional ones too, nested specs rebuilt."""
    from bench.contracts import BuildSpec, ReductionSpec, from_json, to_json

    spec = BuildSpec("torch/fp32/none/keep1/b1", "torch", "fp32", 1, "weights/ti", "detector", (48, 96),
                     ReductionSpec("none", 1.0), "synthetic", "train", 0, 8, "/tmp/cache")
    back = from_json(BuildSpec, to_json(spec))
    assert back == spec and isinstance(back.image_size, tuple) and isinstance(back.reduction, ReductionSpec)
    hash(back.image_size)
    square = from_json(BuildSpec, to_json(dataclasses.replace(spec, image_size=None)))
    assert square.image_size is None
