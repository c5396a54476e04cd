"""What runs in the harness's subprocesses: `python -m bench.worker MODE ...`.

- `build SPECS OUT`: imports torch once and builds (or finds in the cache) every artifact in
  SPECS, appending one `Built` line to OUT per artifact; OUT.current names the one in
  progress, so a crash or a hang costs that artifact alone (the parent restarts the rest).
- `cold SPEC OUT`: one cell's own process, importing only its runtime: memory baseline
  after the runtime and its plugins, model load/compile time, first inference, peak RSS;
  then, apart from every timed window, the accuracy pass when this cell scores its model.
- `profile SPEC OUT`: one cell's profiling process, after the timed rounds: per-node times
  of one sync request at the cell's batch, summed into stages (bavit.stages); the full
  per-node table goes to a CSV.
- `serve SPEC CMD_FD REPLY_FD`: a target's speed process: loads all its cells, warms them
  up, then times the slices the parent sends (`Command` -> `Reply` JSON lines on two pipes:
  the runtimes' own chatter on stdout cannot garble them).
Nothing but these typed contracts (bench.contracts) crosses a process boundary."""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from bench.contracts import (
    PROFILE_PARTS,
    Accuracy,
    AccuracySpec,
    BuildSpec,
    Built,
    ColdResult,
    ColdSpec,
    Command,
    ProfileResult,
    ProfileSpec,
    Reply,
    ServeSpec,
    from_dict,
    from_json,
    to_json,
)

# bump when what the accuracy pass computes changes: cached accuracy of older passes is not reused
ACCURACY_FORMAT = 1


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    """VmHWM: the peak RSS of this process image. Not ru_maxrss (nor the parent's wait4):
    Linux carries maxrss across fork + execve, so there it would be at least the RSS of
    the parent at fork time, e.g. a harness that has imported torch."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def one_line(err: BaseException) -> str:
    line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {line}".rstrip(": ")


# -- build ------------------------------------------------------------------------------------
def build_all(specs: list[BuildSpec], out: Path) -> None:
    from bavit.data import load_dataset
    from bavit.flops import image_flops
    from bavit.pipeline import weights_key
    from bavit.reducers import build_pipeline, parse
    from quant.calibration import calibration_images
    from targets import get_target

    pipelines: dict = {}
    calibrations: dict = {}
    current = out.with_name(out.name + ".current")
    for spec in specs:
        current.write_text(spec.model_id)
        try:
            key = (spec.weights, spec.reduction, spec.detector, spec.image_size)
            if key not in pipelines:
                pipe = build_pipeline(spec.weights, parse(spec.reduction.reducer), spec.reduction.keep,
                                      detector=spec.detector, image_size=spec.image_size)
                try:   # the work figure is extra: a model the counter cannot run still builds
                    flops = image_flops(pipe, tuple(pipe.input_size))
                except Exception:  # noqa: BLE001
                    traceback.print_exc()
                    flops = 0
                pipelines[key] = (pipe, weights_key(pipe), flops)
            pipeline, wkey, flops = pipelines[key]
            target = get_target(spec.target)
            calib = None
            if target.needs_calibration(spec.precision):
                size = tuple(pipeline.input_size)
                ckey = (spec.calib_data, spec.calib_split, spec.calib_skip, spec.calib_images, size)
                if ckey not in calibrations:
                    # the synthetic train split is generated on demand: a small one is enough to draw from
                    n = max(512, spec.calib_images) if spec.calib_data == "synthetic" else None
                    ds = load_dataset(spec.calib_data, spec.calib_split, size=size, n_images=n)
                    calibrations[ckey] = calibration_images(ds, size, spec.calib_images, seed=0, skip=spec.calib_skip)
                calib = calibrations[ckey]
            art = target.prepare(pipeline, spec.precision, spec.batch, calib, Path(spec.cache_dir), wkey)
            built = Built(spec.model_id, True, artifact=str(art.path), cached=art.cached, prunes=pipeline.prunes,
                          scores_tokens=pipeline.prunes and pipeline.scores_tokens, mapping=pipeline.mapping,
                          ideal_speedup=round(pipeline.ideal_speedup, 4),
                          tokens_kept=pipeline.tokens_kept, tokens_total=pipeline.num_tokens,
                          input_size=tuple(pipeline.input_size), patch=pipeline.detector.patch_size,
                          flops=flops)
        except Exception as err:  # this artifact fails; the others are still built
            traceback.print_exc()
            built = Built(spec.model_id, False, error=one_line(err))
        with open(out, "a") as f:
            f.write(to_json(built) + "\n")
        if spec.profile and built.ok:
            # what the profiler needs is extra: the artifact is recorded first, so a crash or a
            # hang here costs the profile (the target leaves why in the artifact folder), never the cell
            current.write_text(PROFILE_PARTS + spec.model_id)
            try:
                target.build_profile_parts(pipeline, art, calib)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
    current.unlink(missing_ok=True)


# -- cold start, memory, accuracy -----------------------------------------------------------------
def cold(spec: ColdSpec) -> ColdResult:
    from targets import get_target
    from targets.base import Artifact, RuntimeOptions

    target = get_target(spec.target)
    artifact = Artifact.load(spec.artifact)
    target.import_runtime()
    baseline = _rss_mib()
    # the batch comes prepared from the parent: no data set is loaded before the peak below
    pixels = np.load(spec.pixels)
    start = time.perf_counter()
    runner = target.load(artifact, RuntimeOptions(spec.threads, spec.scenario, spec.ov_int8_float, spec.batch))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    runner(pixels)
    first_ms = (time.perf_counter() - start) * 1000
    from bench.loop import warm_up
    warm_up(spec.scenario, runner, pixels, 0.5)  # requests in flight hold their buffers: count them
    result = ColdResult(spec.cell_id, True, load_s=round(load_s, 4), first_inference_ms=round(first_ms, 3),
                        peak_rss_mib=_peak_mib(), baseline_rss_mib=baseline,
                        torch_imported="torch" in sys.modules, executed_precision=runner.executed_precision,
                        runtime_details=json.dumps(runner.details, sort_keys=True, default=str),
                        mode=runner.mode, streams=runner.streams, requests=runner.requests)
    if spec.accuracy is None:
        return result
    start = time.perf_counter()
    fields = {k: getattr(result, k) for k in asdict(result)}
    try:  # the figures above stay recorded whatever the accuracy pass meets
        fields["accuracy"] = accuracy(runner, spec.accuracy, spec.batch)
    except Exception as err:
        traceback.print_exc()
        fields["accuracy_note"] = f"accuracy pass failed: {one_line(err)}"
    return ColdResult(**{**fields, "accuracy_s": round(time.perf_counter() - start, 3)})


def accuracy(runner, spec: AccuracySpec, batch: int) -> Accuracy:
    """mAP and token figures of this runner's outputs; an unchanged artifact on unchanged
    data reads them (and its detections) back from the cache instead of scoring again."""
    det_path = Path(spec.detections)
    det_path.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(spec.cache_file) if spec.cache_file else None
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        if spec.cat_ids is not None:
            det_path.write_text(json.dumps(saved["detections"]))
        return from_dict(Accuracy, {**saved["accuracy"], "reused": True})
    from bavit.scoring import ScoringSet, score

    acc = score(runner, ScoringSet.load(spec.scoring_set), batch=batch, with_map=spec.cat_ids is not None,
                cat_ids=spec.cat_ids, box_frame=spec.box_frame)
    detections = acc.pop("detections")
    if spec.cat_ids is not None:   # token figures only: no detections were scored
        det_path.write_text(json.dumps(detections))
    # token figures exist only where a foreground classifier ran (BAViT below keep 1.0)
    token = {k: acc[k] if spec.scores_tokens else None for k in ("token_acc", "fg_recall", "fg_precision")}
    result = Accuracy(map=acc.get("map"), ap50=acc.get("ap50"), ap75=acc.get("ap75"), images=acc["images"],
                      token_images=acc["token_images"] if spec.scores_tokens else 0, **token)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps({"accuracy": asdict(result), "detections": detections}))
        tmp.rename(cache)
    return result


# -- profile ----------------------------------------------------------------------------------------
PROFILE_WARMUP_CALLS = 3


def profile(spec: ProfileSpec) -> ProfileResult:
    """Per-node times over as many calls as fit in `seconds` (at least 3), grouped into
    stages by the module path each node was traced from. Each profiled call alternates with
    an unprofiled call of the same artifact, so the node sum can be held against a latency of
    the same minutes (`plain_ms`) as well as against the rounds' p50. A node's time is its
    median over the calls: on a shared machine a mean carries every other process's bursts."""
    import csv

    from bavit.stages import STAGES, stage_of
    from targets import get_target
    from targets.base import SINGLE_STREAM, Artifact, ProfileUnavailable, RuntimeOptions

    target = get_target(spec.target)
    why = target.profiler_unavailable()
    if why:
        return ProfileResult(spec.cell_id, False, error=why, unavailable=True)
    target.import_runtime()
    pixels = np.load(spec.pixels)
    artifact = Artifact.load(spec.artifact)
    options = RuntimeOptions(spec.threads, SINGLE_STREAM, spec.ov_int8_float, spec.batch)
    try:
        runner = target.load(artifact, replace(options, profile=True))
    except ProfileUnavailable as err:
        return ProfileResult(spec.cell_id, False, error=str(err), unavailable=True)
    if runner.node_times is None:
        return ProfileResult(spec.cell_id, False, error=runner.profiler or "no per-node times", unavailable=True)
    plain = target.load(artifact, options)
    for _ in range(PROFILE_WARMUP_CALLS):
        runner(pixels)
        plain(pixels)
    times: dict[str, list] = {}        # node name -> [kind, exec_type, module, stage, [ms per call]]
    walls: list[float] = []
    plains: list[float] = []
    start = time.perf_counter()
    while len(walls) < 3 or time.perf_counter() - start < spec.seconds:
        t = time.perf_counter()
        plain(pixels)
        plains.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        runner(pixels)
        walls.append((time.perf_counter() - t) * 1000)
        for node in runner.node_times():
            entry = times.setdefault(node.name, [node.kind, node.exec_type, node.module,
                                                 node.stage or stage_of(node.module), []])
            entry[4].append(node.ms)
    calls = len(walls)
    # a node missing from some calls (not executed there) counts 0 ms in those
    rows = sorted(((name, kind, ex, module, stage, float(np.median(ms + [0.0] * (calls - len(ms)))))
                   for name, (kind, ex, module, stage, ms) in times.items()), key=lambda r: -r[5])
    stages = {stage: 0.0 for stage in STAGES}
    for row in rows:
        stages[row[4]] += row[5]
    nodes_ms = sum(stages.values())
    if not rows or nodes_ms <= 0:
        return ProfileResult(spec.cell_id, False, error=f"{runner.profiler}: no node took measurable time")
    out = Path(spec.nodes_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["node", "kind", "exec_type", "module", "stage", "ms_per_call", "share"])
        for name, kind, ex, module, stage, ms in rows:
            w.writerow([name, kind, ex, module, stage, f"{ms:.5f}", f"{ms / nodes_ms:.5f}" if nodes_ms else ""])
    return ProfileResult(spec.cell_id, True, method=runner.profiler, calls=calls,
                         wall_ms=round(float(np.median(walls)), 4), nodes_ms=round(nodes_ms, 4),
                         plain_ms=round(float(np.median(plains)), 4),
                         stages={k: round(v, 4) for k, v in stages.items() if any(r[4] == k for r in rows)})


# -- serving: the timed slices --------------------------------------------------------------------
def serve(spec: ServeSpec, cmd_fd: int, reply_fd: int) -> None:
    from bench.loop import run_slice, warm_up
    from targets import get_target
    from targets.base import Artifact, RuntimeOptions

    commands = os.fdopen(cmd_fd, "r")
    replies = os.fdopen(reply_fd, "w", buffering=1)

    def send(reply: Reply) -> None:
        replies.write(to_json(reply) + "\n")
        replies.flush()

    target = get_target(spec.target)
    target.import_runtime()
    cells, failed = {}, {}
    for cell in spec.cells:
        try:
            options = RuntimeOptions(spec.threads, cell.scenario, spec.ov_int8_float, cell.batch)
            runner = target.load(Artifact.load(cell.artifact), options)
            cells[cell.cell_id] = (cell.scenario, runner, np.load(cell.pixels))
        except Exception as err:
            traceback.print_exc()
            failed[cell.cell_id] = one_line(err)
    # warmed up once all are loaded, in timing order, so the last loads and compiles are not
    # between a cell's warm-up and its first timed slice
    for cell_id, (scenario, runner, pixels) in list(cells.items()):
        try:
            warm_up(scenario, runner, pixels, spec.warmup)
        except Exception as err:
            traceback.print_exc()
            failed[cell_id] = one_line(err)
            del cells[cell_id]
    send(Reply(True, failed_cells=failed))
    for line in commands:
        cmd = from_json(Command, line)
        if cmd.cell_id is None:
            break
        try:
            scenario, runner, pixels = cells[cmd.cell_id]
            send(Reply(True, slice=run_slice(cmd.cell_id, scenario, runner, pixels, cmd.seconds)))
        except Exception as err:
            traceback.print_exc()
            send(Reply(False, error=one_line(err)))


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "build":
        specs = [from_dict(BuildSpec, d) for d in json.loads(Path(argv[1]).read_text())]
        build_all(specs, Path(argv[2]))
        return 0
    if mode == "serve":
        serve(from_json(ServeSpec, Path(argv[1]).read_text()), int(argv[2]), int(argv[3]))
        return 0
    if mode == "profile":
        spec = from_json(ProfileSpec, Path(argv[1]).read_text())
        try:
            result = profile(spec)
        except Exception as err:  # the parent records it; the cell's figures stand
            traceback.print_exc()
            result = ProfileResult(spec.cell_id, False, error=one_line(err))
        Path(argv[2]).write_text(to_json(result))
        return 0
    if mode == "cold":
        spec = from_json(ColdSpec, Path(argv[1]).read_text())
        try:
            result = cold(spec)
        except Exception as err:  # the parent records it; the sweep goes on
            traceback.print_exc()
            result = ColdResult(spec.cell_id, False, error=one_line(err))
        Path(argv[2]).write_text(to_json(result))
        return 0 if result.ok else 1
    raise SystemExit(f"bench.worker: unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
