"""The harness's arithmetic: percentiles with sample floors, round medians and spreads, the
noisy flag, and the interleaved schedule."""
from __future__ import annotations

import dataclasses

import numpy as np
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
    # t(0.975, 2) = 4.303 times the standard error of the mean log throughput, around the median
    half = 4.3027 * np.std(np.log([10.0, 12.0, 11.0]), ddof=1) / np.sqrt(3)
    assert (s.throughput_lo, s.throughput_hi) == pytest.approx((11 * np.exp(-half), 11 * np.exp(half)))
    assert s.interval_pct == pytest.approx((np.exp(half) - 1) * 100)
    assert s.noisy and f"95% interval ±{(np.exp(half) - 1) * 100:.1f}% over 3 rounds in 1 process (> 5%)" \
        in s.noisy_reason


def test_quiet_rounds_are_not_noisy_but_a_loaded_machine_is():
    rounds = [[_slice(100, 1.0, [10.0] * 100)], [_slice(101, 1.0, [10.0] * 101)],
              [_slice(100, 1.0, [10.0] * 100)], [_slice(102, 1.0, [10.0] * 102)]]
    quiet = summarise(rounds, loads=[2.0, 2.3], threads=2, processes=2)
    assert not quiet.noisy and quiet.interval_pct < 5 and quiet.processes == 2
    loaded = summarise(rounds, loads=[2.0, 3.1], threads=2)
    assert loaded.noisy and loaded.noisy_reason == "3.10 runnable tasks > 2 threads"
    assert loaded.latency_p99_ms == 10.0


def test_single_stream_cells_are_judged_on_their_latency_interval():
    """A batch-1 cell's figure is its p50: steady p50s with a few slow outliers (which move
    throughput, not the median) are not noisy; p50s that differ by process are."""
    steady = [[_slice(50, 1.0, [10.0] * 45 + [60.0] * 5)], [_slice(90, 1.0, [10.0] * 90)],
              [_slice(52, 1.0, [10.0] * 47 + [60.0] * 5)], [_slice(88, 1.0, [10.2] * 88)]]
    s = summarise(steady, loads=[], threads=2, processes=2, single_stream=True)
    assert not s.noisy and s.latency_p50_lo < s.latency_p50_ms < s.latency_p50_hi
    assert summarise(steady, loads=[], threads=2, processes=2).noisy   # its throughput does swing
    moved = [[_slice(100, 1.0, [10.0] * 100)], [_slice(100, 1.0, [10.1] * 100)],
             [_slice(100, 1.0, [11.5] * 100)], [_slice(100, 1.0, [11.6] * 100)]]
    assert summarise(moved, loads=[], threads=2, processes=2, single_stream=True).noisy


def test_t_quantiles_are_scipys():
    from scipy import stats as scipy_stats

    from bench.stats import t_quantile

    for df in range(1, 31):
        assert t_quantile(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-4)
    assert t_quantile(200) == pytest.approx(scipy_stats.norm.ppf(0.975), abs=1e-4)
    with pytest.raises(ValueError):
        t_quantile(0)


def test_interval_is_a_t_interval_of_the_mean_log_around_the_median():
    from scipy import stats as scipy_stats

    from bench.stats import interval

    values = [1.52, 1.49, 1.60, 1.58, 1.55, 1.50]
    lo, hi = interval(values)
    logs = np.log(values)
    ref_lo, ref_hi = scipy_stats.t.interval(0.95, len(values) - 1, loc=logs.mean(), scale=scipy_stats.sem(logs))
    median = np.median(values)
    assert (lo, hi) == pytest.approx((median * np.exp(ref_lo - logs.mean()), median * np.exp(ref_hi - logs.mean())))
    assert interval(values, centre=2.0)[0] == pytest.approx(2.0 * lo / median)
    assert all(np.isnan(interval([1.5])))                   # one round: no spread to show
    assert all(np.isnan(interval([1.5, float("nan"), 0.0])))


def test_rounds_are_shared_out_over_processes_in_order():
    from bench.procs import process_rounds

    assert [list(r) for r in process_rounds(4, 2)] == [[0, 1], [2, 3]]
    assert [list(r) for r in process_rounds(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [list(r) for r in process_rounds(3, 3)] == [[0], [1], [2]]
    # a bundle of an older run (--rounds 1, processes by default 2): no process without a round
    assert [list(r) for r in process_rounds(1, 2)] == [[0]]


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


def test_background_reclaim_names_a_damon_pageout_scheme_that_is_on(tmp_path):
    """A VM that pages out idle memory on its own schedule disturbs every timed window after a
    wait: the fingerprint says so. Off, or with another action, it is not named."""
    from bench.system import background_reclaim

    def kdamond(n: int, state: str, action: str) -> None:
        scheme = tmp_path / str(n) / "contexts" / "0" / "schemes" / "0"
        scheme.mkdir(parents=True)
        (tmp_path / str(n) / "state").write_text(state + "\n")
        (scheme / "action").write_text(action + "\n")

    module = tmp_path / "enabled"
    assert background_reclaim(tmp_path, module) == ""
    kdamond(0, "off", "pageout")
    kdamond(1, "on", "stat")
    module.write_text("N\n")
    assert background_reclaim(tmp_path, module) == ""
    kdamond(2, "on", "pageout")
    assert background_reclaim(tmp_path, module) == "DAMON pageout (kdamond 2)"
    module.write_text("Y\n")
    assert background_reclaim(tmp_path, module) == "DAMON pageout (kdamond 2), DAMON_RECLAIM"
    assert background_reclaim(tmp_path / "absent", tmp_path / "absent") == ""


def test_an_emulated_process_does_not_take_the_hosts_cpu_for_its_own(tmp_path, monkeypatch):
    """qemu-user shows an aarch64 process the x86 host's /proc/cpuinfo: the fingerprint names the
    emulation and takes no x86 flags; on a real ARM board its Features are the ISA."""
    import platform

    from bench.system import _cpuinfo

    x86 = tmp_path / "x86"
    x86.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp asimdhp i8mm\nCPU part\t: 0xd0b\n")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert _cpuinfo(str(x86)) == ("AMD EPYC", {"fpu", "sse", "avx2", "fma"})
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert _cpuinfo(str(x86)) == ("aarch64 emulated on AMD EPYC", set())
    model, flags = _cpuinfo(str(arm))
    assert {"asimd", "asimddp", "i8mm"} <= flags and model == "unknown"
    arm.write_text(arm.read_text() + "Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n")
    assert _cpuinfo(str(arm))[0] == "Raspberry Pi 5 Model B Rev 1.0"
