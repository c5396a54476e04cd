"""python -m bench.run: benchmark token-reduced detectors (BAViT and its baselines) across targets,
precisions, reducers, keep ratios, batch sizes and scenarios; write results.jsonl, report.csv and
report.html into --out.

Scenarios (MLPerf LoadGen's names): single-stream times batch-1 queries one after another
(latency percentiles); offline times the highest throughput each runtime's own practice
gives at each --batch (OpenVINO: THROUGHPUT hint, AsyncInferQueue with the optimal number
of requests in flight; torch and TFLite: back-to-back calls on the batch).

Phases, each in fresh subprocesses, so a crash or hang costs one cell and peak memory is
the cell's own:
  1. build: one torch process converts (or finds in the cache) every artifact;
  2. cold: each cell's own process, importing only its runtime, records load/compile time,
     first-inference latency and peak RSS, then scores mAP when the cell scores its model
     (once per distinct model, never inside a timed window; reused from the cache when the
     artifact and the data are unchanged);
  3. rounds: one serving process per target loads all its cells and times --rounds rounds;
     within a round every cell runs twice, in a palindrome order (A B C C B A), so a drift
     of the machine's speed hits the cells that are compared alike. Figures are medians over
     rounds, with their min-max; a cell is noisy when its rounds disagree by > 10 % or more
     tasks than its threads were runnable while it ran."""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from bavit.reducers import NAMES as REDUCER_NAMES
from bench.cells import Cell, Model, append_row, enumerate_cells, finished_cells, has_rows, models_of
from bench.contracts import (
    PROFILE_PARTS,
    SCENARIOS,
    AccuracySpec,
    BuildSpec,
    Built,
    ColdResult,
    ColdSpec,
    Command,
    ProfileResult,
    ProfileSpec,
    ReductionSpec,
    Reply,
    Row,
    RunSettings,
    ServeCell,
    ServeSpec,
    Slice,
    digest,
    from_json,
    to_json,
)
from bench.system import fingerprint

PRECISIONS = ("fp32", "bf16", "int8")
PRUNE_AWARE = "detector-prune"   # the pruning-aware detector --detector auto adds beside `detector`
OV_INT8_FLOATS = ("f32", "bf16")
ROOT = Path(__file__).resolve().parents[1]


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def _floats(option: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option}: not a comma-separated list of numbers: '{text}'") from None
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if not values or bad:
        raise UsageError(f"{option}: keep ratios must be in (0, 1], got '{text}'")
    return values


def _ints(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option}: not a comma-separated list of integers: '{text}'") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option}: values must be >= 1, got '{text}'")
    return values


def _names(option: str, text: str, known: tuple[str, ...]) -> list[str]:
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for n in names:
        if n not in known:
            raise UsageError(f"{option}: unknown value '{n}' (choose from {', '.join(known)})")
    if not names:
        raise UsageError(f"{option}: empty list")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="all", help="torch | openvino | tflite | inductor | all (torch, openvino, tflite), or a "
                                                  "comma-separated list")
    p.add_argument("--precision", default="fp32,int8,bf16",
                   help="comma-separated: fp32, int8, bf16 (default all three: bf16 runs on CPUs with bf16 units, "
                        "AVX512-BF16 or AMX-BF16; elsewhere its cells are recorded unavailable, saying why)")
    p.add_argument("--keep", default="1.0,0.5,0.25", help="keep ratios of patch tokens, each in (0, 1]")
    p.add_argument("--reducer", default="bavit",
                   help="token reducers, comma-separated, each with its options after a colon: "
                        f"{', '.join(n for n in REDUCER_NAMES if n != 'none')} "
                        "(e.g. 'bavit:dilate=3,bg_share=0.25,tome'; "
                        "default bavit). Keep 1.0 is the dense detector, measured once as 'none'")
    p.add_argument("--scenario", default="single-stream,offline",
                   help="single-stream (batch-1 queries one after another: latency) and/or offline "
                        "(throughput at each --batch); default both")
    p.add_argument("--batch", default="8", help="batch sizes of the offline scenario (each its own static-shape "
                                                "model; single-stream is always batch 1). Default 8")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument("--profile", action="store_true",
                   help="after each target's rounds, profile every cell in its own process: per-node times from "
                        "the runtime's profiler (OpenVINO PERF_COUNT; torch: the exported graph's nodes timed; "
                        "tflite, inductor: each stage built as its own artifact and timed) summed into stages "
                        "(reducer, embed, encoder, decoder, heads); profiles/*.csv and the "
                        "report's Profiles section. Speed figures stay those of the unprofiled rounds")
    p.add_argument("--profile-seconds", type=float, default=3.0, help="seconds of profiled calls per cell (default 3)")
    p.add_argument("--round-seconds", type=float, default=2.0,
                   help="timed seconds per cell per round, in two halves (default 2)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of untimed calls per cell after loading")
    p.add_argument("--no-interleave", action="store_true",
                   help="time each cell's rounds back to back instead of interleaved (to see what drift does)")
    p.add_argument("--data", default="synthetic",
                   help="synthetic | coco:ROOT | coco:ANNOTATIONS.json,IMAGE_DIR | voc:ROOT | yolo:PATH/data.yaml "
                        "(the --split is scored and timed)")
    p.add_argument("--split", default="val", help="split scored and timed (default val)")
    p.add_argument("--weights", default=None,
                   help="folder with detector/ and bavit2/ (default: the project's demo weights; "
                        "random:tiny, random:ti (YOLOS), random:detr-tiny or random:detr (DETR) for "
                        "untrained models, speed only). The detector family comes from its config")
    p.add_argument("--image-size", default=None,
                   help="run the detector (and BAViT, on every target) at N x N, or HxW (e.g. 512x864, "
                        "YOLOS-S's shape); images are letterboxed into it. Default: the detector config's "
                        "shape. Position embeddings are interpolated as YOLOS does at other sizes")
    p.add_argument("--detector", default="auto",
                   help="detector folders inside --weights, comma-separated, e.g. detector,detector-sparse-keep0.5. "
                        f"The first is the reference: every row's mAP drop and speed-up are against its dense fp32 "
                        f"cell, the model a user starts from. Default auto: detector, and {PRUNE_AWARE} (the "
                        "pruning-aware detector, trained with BAViT in the loop) where --weights holds one. "
                        "A detector may name its own precisions after a colon, '+'-separated, out of --precision "
                        "(e.g. detector:fp32,detector-prune: the plain detector only as the fp32 baseline)")
    p.add_argument("--time-every-detector", action="store_true",
                   help="time every detector's cells. By default a detector whose network is the reference "
                        "detector's (same config, other weights) takes the speed figures of the reference's cell "
                        "of the same target, precision, reducer, keep, batch and scenario (row field timing_from): "
                        "the same "
                        "graph and shapes run the same work; its own cold start, memory and accuracy are "
                        "still measured")
    p.add_argument("--images", type=int, default=500, help="images in the accuracy pass (0: speed only)")
    p.add_argument("--labels", choices=["masks", "boxes"], default=None,
                   help="token labels for token accuracy (default: masks when the data set has them)")
    p.add_argument("--calib-images", type=int, default=128, help="calibration images for int8 (default 128)")
    p.add_argument("--ov-int8-float", choices=("auto", *OV_INT8_FLOATS), default="auto",
                   help="precision of the layers OpenVINO int8 cells leave in float. Default auto: bf16 on CPUs "
                        "with bf16 units (OpenVINO's own default there, and faster), else f32")
    p.add_argument("--max-map-drop", type=float, default=1.0,
                   help="the decision: fastest cell whose mAP drop stays within this many points (default 1)")
    p.add_argument("--max-latency-ms", type=float, default=None, help="the decision: latency bound")
    p.add_argument("--max-rss-mb", type=float, default=None, help="the decision: peak memory bound (MiB)")
    p.add_argument("--build-jobs", type=int, default=2,
                   help="build processes side by side (default 2; conversion is mostly one core's work, and "
                        "nothing is timed meanwhile; convert_s is measured under that sharing)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a cell's process is killed")
    p.add_argument("--cache", default=None, help="artifact cache (default: $BAVIT_CACHE/artifacts)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<UTC time>)")
    p.add_argument("--resume", action="store_true", help="finish the run in --out: skip cells recorded ok/unavailable")
    p.add_argument("--force", action="store_true",
                   help="start over in a used --out: its results are removed (wins over --resume, so "
                        "`tox -e bench-cpu -- --force` measures again)")
    p.add_argument("--no-report", action="store_true", help="do not build report.csv/report.html")
    return p.parse_args(argv)


def _image_size(text: str) -> tuple[int, int]:
    """`N` or `HxW` -> (H, W)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]),) * 2 if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        if len(parts) > 2 or h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"--image-size: expected N or HxW (e.g. 512x864), got '{text}'") from None
    return h, w


def check(args: argparse.Namespace) -> dict:
    """Everything that can be wrong with the command line, found before any work starts."""
    from targets import DEFAULT_TARGETS, known_targets

    names = known_targets()
    targets = list(DEFAULT_TARGETS) if args.target == "all" else _names("--target", args.target, names + ("all",))
    if "all" in targets:
        raise UsageError("--target: 'all' cannot be combined with other targets")
    precisions = _names("--precision", args.precision, PRECISIONS)
    scenarios = _names("--scenario", args.scenario, SCENARIOS)
    keeps = _floats("--keep", args.keep)
    batches = _ints("--batch", args.batch)
    detectors, detector_precisions = _detectors(args.detector, precisions)
    auto = detectors == ["auto"]   # which of these exist is known once --weights is resolved (run)
    if auto:
        detectors = ["detector", PRUNE_AWARE]
    args.detector = detectors
    if args.ov_int8_float == "auto":
        from bench.system import bf16_units
        args.ov_int8_float = "bf16" if bf16_units() else "f32"
    if args.image_size is not None and not isinstance(args.image_size, tuple):
        args.image_size = _image_size(args.image_size)
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    from bavit.reducers import parse_list
    try:
        reducers = parse_list(args.reducer)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if all(r.name == "none" for r in reducers) and min(keeps) < 1.0:
        raise UsageError(f"--reducer none is the dense detector: it has no keep below 1.0 (--keep {args.keep})")
    for option, value, low in (("--images", args.images, 0), ("--calib-images", args.calib_images, 1),
                               ("--rounds", args.rounds, 1),
                               ("--build-jobs", args.build_jobs, 1)):
        if value < low:
            raise UsageError(f"{option} must be >= {low}, got {value}")
    for option, value in (("--round-seconds", args.round_seconds), ("--timeout", args.timeout),
                          ("--profile-seconds", args.profile_seconds)):
        if value <= 0:
            raise UsageError(f"{option} must be > 0, got {value:g}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0 seconds, got {args.warmup:g}")
    if args.max_map_drop < 0 or (args.max_latency_ms or 1) <= 0 or (args.max_rss_mb or 1) <= 0:
        raise UsageError("--max-map-drop must be >= 0, --max-latency-ms and --max-rss-mb > 0")
    from bavit.data import DataError, parse_data
    try:
        parse_data(args.data)
    except DataError as err:
        raise UsageError(f"--data: {err}") from None
    out = Path(args.out) if args.out else Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--out {out}: not writable ({err.strerror or err})") from None
    if has_rows(out) and not (args.resume or args.force):
        raise UsageError(f"--out {out}: holds results.jsonl of an earlier run; pass --resume to finish it, "
                         "--force to start over, or choose another --out")
    return {"targets": targets, "precisions": precisions, "keeps": keeps, "batches": batches,
            "scenarios": scenarios, "reducers": reducers, "detectors": detectors, "detector_auto": auto,
            "detector_precisions": detector_precisions, "out": out}


def _detectors(text: str | list[str], precisions: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """--detector NAME[:PREC+PREC],... -> (names, name -> its precisions where it names them)."""
    if isinstance(text, list):
        text = ",".join(text)
    names: list[str] = []
    own: dict[str, list[str]] = {}
    for item in (d.strip() for d in text.split(",")):
        if not item:
            continue
        name, _, precs = item.partition(":")
        name = name.strip()
        if not name or "/" in name or name.startswith(".") or name in names:
            raise UsageError(f"--detector: expected folder names inside --weights, comma-separated, each once, "
                             f"got '{text}'")
        names.append(name)
        if ":" in item:
            chosen = list(dict.fromkeys(p.strip() for p in precs.split("+") if p.strip()))
            outside = [p for p in chosen if p not in precisions]
            if not chosen or outside:
                raise UsageError(f"--detector {item}: precisions after the colon must be '+'-separated, out of "
                                 f"--precision ({','.join(precisions)}); got '{precs}'")
            own[name] = chosen
    if not names:
        raise UsageError(f"--detector: expected folder names inside --weights, comma-separated, got '{text}'")
    if names == ["auto"] and own:
        raise UsageError("--detector auto takes no precisions: name the detectors (e.g. detector:fp32,detector-prune)")
    reference = own.get(names[0])
    if reference is not None and "fp32" in precisions and "fp32" not in reference:
        raise UsageError(f"--detector {names[0]}:{'+'.join(reference)}: the reference detector needs fp32, its dense "
                         "fp32 cells are every row's reference")
    return names, own


# -- subprocesses ---------------------------------------------------------------------------------
def _env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                OPENBLAS_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads),
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _spawn(args: list[str], log: Path, threads: int, **kw) -> subprocess.Popen:
    """A worker in a new session, so a timeout or Ctrl-C kills it with its children."""
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "-m", "bench.worker", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=_env(threads), start_new_session=True, **kw)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class _Children:
    """Every live worker, so Ctrl-C / SIGTERM takes them all down with the harness."""
    live: set[subprocess.Popen] = set()

    @classmethod
    def kill_all(cls) -> None:
        for proc in list(cls.live):
            _kill(proc)
        cls.live.clear()


# rough seconds per artifact on a 2-core machine, only to share the builds out evenly
_BUILD_COST = {("tflite", "int8"): 85, ("tflite", "fp32"): 40, ("openvino", "int8"): 30}


def _share_out(specs: list[BuildSpec], jobs: int, artifact_of, group_of) -> list[list[BuildSpec]]:
    """Specs split into `jobs` lists of about equal estimated cost (longest first). The specs of
    one group always go to the same list: every batch of a dynamic-batch IR (two processes never
    build the same artifact) and the per-batch artifacts of one calibrated model (the process
    calibrates once for all of them). A group costs one estimate per distinct artifact."""
    groups: dict = {}
    for s in specs:
        groups.setdefault(group_of(s), []).append(s)

    def cost(group: list[BuildSpec]) -> float:
        return _BUILD_COST.get((group[0].target, group[0].precision), 8) * len({artifact_of(s) for s in group})

    loads = [[0.0, []] for _ in range(max(1, jobs))]
    for group in sorted(groups.values(), key=lambda g: -cost(g)):
        lightest = min(loads, key=lambda x: x[0])
        lightest[0] += cost(group)
        lightest[1].extend(group)
    order = {s.model_id: i for i, s in enumerate(specs)}
    return [sorted(lst, key=lambda s: order[s.model_id]) for _, lst in loads if lst]


class _BuildProcess:
    """One build process over a list of specs, restarted for the rest when it dies or hangs."""

    def __init__(self, specs: list[BuildSpec], name: str, work: Path, logs: Path, threads: int) -> None:
        self.remaining, self.name, self.work, self.logs, self.threads = list(specs), name, work, logs, threads
        self.attempt = 0
        self.proc: subprocess.Popen | None = None
        self._start()

    def _start(self) -> None:
        self.attempt += 1
        stem = f"build-{self.name}-{self.attempt}"
        self.spec_file, self.out_file = self.work / f"{stem}.specs.json", self.work / f"{stem}.out.jsonl"
        self.current = self.out_file.with_name(self.out_file.name + ".current")
        self.spec_file.write_text(json.dumps([asdict(s) for s in self.remaining]))
        self.out_file.unlink(missing_ok=True)
        self.proc = _spawn(["build", str(self.spec_file), str(self.out_file)], self.logs / f"build-{self.name}.log",
                           self.threads)
        _Children.live.add(self.proc)
        self.seen, self.building, self.since = 0, None, time.monotonic()

    def poll(self, results: dict[str, Built], timeout: float, bar) -> bool:
        """Collects finished artifacts; False once every spec has a result."""
        finished = self.proc.poll() is not None
        if self.out_file.is_file():
            for line in self.out_file.read_text().splitlines()[self.seen:]:
                try:
                    built = from_json(Built, line)
                except ValueError:
                    break  # a line being written: read it next time
                results[built.model_id] = built
                self.seen += 1
                bar.update(1)
        building = self.current.read_text().strip() if self.current.is_file() else None
        if building != self.building:
            self.building, self.since = building, time.monotonic()
            if building:
                bar.set_description(f"build {building}")
        verdict = None
        if not finished and self.building and time.monotonic() - self.since > timeout:
            _kill(self.proc)
            finished, verdict = True, f"timeout: build did not finish in {timeout:g} s"
        if not finished:
            return True
        _Children.live.discard(self.proc)
        self.remaining = [s for s in self.remaining if s.model_id not in results]
        if not self.remaining:
            return False
        if self.building and self.building.startswith(PROFILE_PARTS):
            # it died building a profile's stage artifacts: that artifact is recorded, the
            # profile will say what is missing; the rest start again
            self._start()
            return True
        ids = {s.model_id for s in self.remaining}
        stuck = self.building if self.building in ids else self.remaining[0].model_id
        results[stuck] = Built(stuck, False, error=verdict or f"build process died (exit code "
                                                              f"{self.proc.returncode}); see logs/build-{self.name}.log")
        bar.update(1)
        self.remaining = [s for s in self.remaining if s.model_id not in results]
        if not self.remaining:
            return False
        self._start()
        return True


def _run_build(specs: list[BuildSpec], jobs: int, artifact_of, group_of, work: Path, logs: Path, timeout: float,
               threads: int, bar) -> dict[str, Built]:
    """`jobs` build processes side by side (conversion is mostly one core's work; nothing is
    timed while they run), each importing torch once."""
    results: dict[str, Built] = {}
    workers = [_BuildProcess(lst, str(i), work, logs, threads)
               for i, lst in enumerate(_share_out(specs, jobs, artifact_of, group_of))]
    while workers:
        workers = [w for w in workers if w.poll(results, timeout, bar)]
        time.sleep(0.2)
    return results


def _run_one(mode: str, spec, result_cls: type, work: Path, logs: Path, slug: str, timeout: float, threads: int):
    """A cell's own `bench.worker MODE` process; its result, or one saying why there is none."""
    spec_file, out_file = work / f"{slug}.{mode}.json", work / f"{slug}.{mode}.out.json"
    spec_file.write_text(to_json(spec))
    out_file.unlink(missing_ok=True)
    proc = _spawn([mode, str(spec_file), str(out_file)], logs / f"{slug}.{mode}.log", threads)
    _Children.live.add(proc)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return result_cls(spec.cell_id, False, error=f"timeout: the cell's process did not finish in {timeout:g} s")
    finally:
        _Children.live.discard(proc)
    if out_file.is_file():
        try:
            return from_json(result_cls, out_file.read_text())
        except (ValueError, TypeError) as err:   # a result cut short (disk full, killed mid-write)
            return result_cls(spec.cell_id, False, error=f"unreadable result of the cell's process: {err}")
    return result_cls(spec.cell_id, False, error=f"the cell's process died (exit code {proc.returncode}); "
                                                 f"see logs/{slug}.{mode}.log")


def _run_cold(spec: ColdSpec, work: Path, logs: Path, slug: str, timeout: float, threads: int) -> ColdResult:
    return _run_one("cold", spec, ColdResult, work, logs, slug, timeout, threads)


def _runnable_others() -> float:
    """Runnable tasks on the machine now, this sampling process excluded (/proc/loadavg's
    4th field counts the reader)."""
    try:
        with open("/proc/loadavg") as f:
            return max(0, int(f.read().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        return 0


class Server:
    """The parent's end of one serving process."""

    def __init__(self, spec: ServeSpec, work: Path, logs: Path, timeout: float) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._reply_r, reply_w = os.pipe()
        spec_file = work / f"serve-{spec.target}.json"
        spec_file.write_text(to_json(spec))
        self.proc = _spawn(["serve", str(spec_file), str(cmd_r), str(reply_w)], logs / f"serve-{spec.target}.log",
                           spec.threads, pass_fds=(cmd_r, reply_w))
        _Children.live.add(self.proc)
        os.close(cmd_r)
        os.close(reply_w)
        self._buf = b""
        self.timeout = timeout
        self.log = f"logs/serve-{spec.target}.log"

    def _reply(self, timeout: float, loads: list[int] | None = None) -> Reply:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timeout: the serving process did not answer in {timeout:g} s")
            ready, _, _ = select.select([self._reply_r], [], [], min(left, 0.05))
            if not ready:
                if loads is not None:
                    loads.append(_runnable_others())
                continue
            chunk = os.read(self._reply_r, 1 << 20)
            if not chunk:
                code = self.proc.wait()
                raise RuntimeError(f"the serving process died (exit code {code}); see {self.log}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return from_json(Reply, line.decode())

    def ready(self) -> dict[str, str]:
        return self._reply(self.timeout).failed_cells

    def measure(self, cell_id: str, seconds: float) -> tuple[Reply, float]:
        os.write(self._cmd_w, (to_json(Command(cell_id, seconds)) + "\n").encode())
        loads: list[int] = []
        reply = self._reply(seconds * 4 + 60, loads)
        return reply, (sum(loads) / len(loads) if loads else 0.0)

    def close(self) -> None:
        try:
            os.write(self._cmd_w, (to_json(Command(None)) + "\n").encode())
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _kill(self.proc)
        _Children.live.discard(self.proc)
        for fd in (self._cmd_w, self._reply_r):
            try:
                os.close(fd)
            except OSError:
                pass


def schedule(cell_ids: list[str], rounds: int, seconds: float, interleave: bool) -> list[tuple[int, str, float]]:
    """(round, cell, seconds) in timing order. Interleaved: each round runs every cell twice,
    forwards then backwards, half the time each: all cells' timed windows share one centre
    per round, so a linear drift of the machine's speed cancels out of every ratio. Not
    interleaved: each cell's rounds back to back (what a one-pass sweep does)."""
    half = seconds / 2
    if interleave:
        return [(r, c, half) for r in range(rounds) for c in cell_ids + cell_ids[::-1]]
    return [(r, c, half) for c in cell_ids for r in range(rounds) for _ in range(2)]


def _time_target(spec: ServeSpec, args, work: Path, logs: Path, bar
                 ) -> tuple[dict[str, list[list[Slice]]], dict[str, list[float]], dict[str, str], float]:
    """All timed rounds of one target's cells: slices per cell per round, the load figure of
    each slice, the cells that failed (why), and the seconds loading + warm-up took."""
    ids = [c.cell_id for c in spec.cells]
    slices: dict[str, list[list[Slice]]] = {c: [[] for _ in range(args.rounds)] for c in ids}
    loads: dict[str, list[float]] = {c: [] for c in ids}
    failed: dict[str, str] = {}
    plan = schedule(ids, args.rounds, args.round_seconds, not args.no_interleave)
    start = time.monotonic()
    bar.set_description(f"rounds {spec.target} [load + warm-up]")
    server = Server(spec, work, logs, args.timeout)
    load_s = 0.0
    try:
        failed.update(server.ready())
        load_s = time.monotonic() - start
        for rnd, cell_id, seconds in plan:
            bar.update(1)
            if cell_id in failed:
                continue
            bar.set_description(f"rounds {spec.target} r{rnd + 1}/{args.rounds} {cell_id}")
            reply, load = server.measure(cell_id, seconds)
            if not reply.ok:
                failed[cell_id] = f"timing: {reply.error}"
                continue
            slices[cell_id][rnd].append(reply.slice)
            loads[cell_id].append(load)
    except RuntimeError as err:  # the process died or hung: its unfinished cells fail
        for c in ids:
            if c not in failed and any(len(r) < 2 for r in slices[c]):
                failed[c] = f"timing: {err}"
    finally:
        server.close()
    return slices, loads, failed, load_s


# -- the run --------------------------------------------------------------------------------------
def _quiet_import_noise() -> None:
    """Importing transformers imports torchao, which logs that its CUDA-only kernels do not
    load and that it registers enums torch now handles: noise on a CPU machine that would
    come before every line of ours, errors included. Real errors still show."""
    import logging
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def settings_of(args, label: str) -> RunSettings:
    return RunSettings(model=label, reference_detector=args.detector[0], image_size=args.image_size,
                       threads=args.threads,
                       data=args.data,
                       split=args.split, labels=args.labels, images=args.images, calib_images=args.calib_images,
                       rounds=args.rounds, round_seconds=args.round_seconds, warmup=args.warmup,
                       interleave=not args.no_interleave, ov_int8_float=args.ov_int8_float,
                       shared_timing=not args.time_every_detector)


def _check_resumable(out: Path, settings: RunSettings) -> None:
    path = out / "run.json"
    try:
        before = json.loads(path.read_text()).get("settings") if path.is_file() else None
    except ValueError:
        raise UsageError(f"--resume: {path} is not valid JSON") from None
    now = json.loads(json.dumps(asdict(settings)))   # as run.json holds it: tuples are lists there
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items() if before and before.get(k) != v]
    if changed:
        raise UsageError(f"--resume: {path} was measured with other settings ({'; '.join(changed)}); "
                         "choose another --out, or pass --force to start over")


def _start_over(out: Path) -> None:
    for name in ("results.jsonl", "run.json", "report.csv", "report.html", "decision.csv", "reducers.csv",
                 "detectors.csv", "comparison.csv"):
        (out / name).unlink(missing_ok=True)
    for name in ("work", "logs", "detections"):
        shutil.rmtree(out / name, ignore_errors=True)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    _quiet_import_noise()
    from bavit.data import DataError, load_dataset
    try:
        plan = check(args)
        from bavit.pipeline import resolve_weights
        from bavit.reducers import reducer_class
        label, det_dir = resolve_weights(args.weights, plan["detectors"][0])
        if plan["detector_auto"] and (det_dir is None or not (Path(label) / PRUNE_AWARE / "config.json").is_file()):
            plan["detectors"] = args.detector = plan["detectors"][:1]   # no pruning-aware detector there
        # the others from the folder the first was found in (the demo weights are looked up)
        resolved = [(label, det_dir)] + [resolve_weights(label if det_dir else args.weights, d)
                                         for d in plan["detectors"][1:]]
        if det_dir is None and len(resolved) > 1:
            raise UsageError(f"--weights {label}: an untrained model has one detector; --detector names "
                             f"{len(resolved)}")
        unfit: dict[tuple[str, str, float], str] = {}   # (detector, reducer, keep) -> why its weights do not fit
        for d in plan["detectors"] if det_dir is not None else ():
            for spec in plan["reducers"]:
                for keep in plan["keeps"]:
                    why = reducer_class(spec.name).missing_weights(Path(label), keep, spec.typed_options(), d)
                    if why and d == plan["detectors"][0]:
                        raise UsageError(f"--weights {label}: --reducer {spec.label} at --keep {keep:g}: {why}")
                    if why:   # another detector's cells of this reducer are unavailable, the rest run
                        unfit[(d, spec.label, keep)] = why
        settings = settings_of(args, label)
        if args.resume and not args.force:
            _check_resumable(plan["out"], settings)
        model_info = _model_info(label, det_dir, args.image_size)
        for d, (_, other) in zip(plan["detectors"][1:], resolved[1:]):
            differs = [f"{k} {v!r} vs {model_info[k]!r}" for k, v in _model_info(label, other, args.image_size).items()
                       if v != model_info[k]]
            if differs:   # one data set, one input: the detectors of a run must agree on both
                raise UsageError(f"--detector {d}: its config differs from {plan['detectors'][0]}'s "
                                 f"({'; '.join(differs)})")
        size = model_info["size"]
        same_network = set() if args.time_every_detector or det_dir is None else {
            d for d, (_, other) in zip(plan["detectors"][1:], resolved[1:]) if _network(other) == _network(det_dir)}
    except UsageError as err:
        print(f"bench.run: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"bench.run: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    out: Path = plan["out"]
    if args.force:
        _start_over(out)
    work, logs = out / "work", out / "logs"
    work.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    from bavit.data.synthetic import cache_root
    cache = Path(args.cache) if args.cache else cache_root() / "artifacts"
    try:
        dataset = load_dataset(args.data, args.split, size=size)
        if len(dataset) == 0:
            raise DataError(f"the {args.split} split has no images")
        batches = sorted({1} | set(plan["batches"]))
        _write_inputs(dataset, size, batches, work)
    except DataError as err:
        print(f"bench.run: error: --data {args.data}: {err}", file=sys.stderr)
        return 2
    from bavit.evaluate import category_map
    cat_ids = category_map(model_info["id2label"], model_info["num_labels"], dataset.categories, dataset.cat_ids)
    accuracy_note = None
    if cat_ids is None:
        accuracy_note = (f"model has {model_info['num_labels']} classes, data set {len(dataset.categories)}, "
                         "and its class names do not cover the data set's: mAP not measured (token figures are: "
                         "foreground vs background needs no classes)")
    calib = _calibration(args, len(dataset))
    cells = enumerate_cells(plan["targets"], plan["precisions"], [r.label for r in plan["reducers"]], plan["keeps"],
                            plan["batches"], plan["scenarios"], plan["detectors"], plan["detector_precisions"])
    done = finished_cells(out) if args.resume and not args.force else set()
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    (out / "run.json").write_text(json.dumps({"argv": sys.argv if argv is None else argv, "model": label,
                                              "settings": asdict(settings), "settings_key": settings.key,
                                              "cells": [c.cell_id for c in cells]}, indent=1))
    todo = [c for c in cells if c.cell_id not in done]
    if len(todo) < len(cells):
        print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already recorded", file=sys.stderr)
    job = Job(args, settings, run_id, label, size, cache, out, calib, cat_ids, accuracy_note, fingerprint(),
              plan["reducers"], dataset.categories, model_info["box_frame"], dataset, unfit, same_network)
    failed = job.run(todo)
    (out / "timing.json").write_text(json.dumps(job.timing, indent=1))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in job.timing.items()), file=sys.stderr)
    if not args.no_report:
        _report(out, args)
    return 1 if failed else 0


class Job:
    """One run's cells through build, cold start + accuracy, and timed rounds; rows are
    appended as each target finishes (unavailable and failed cells at once)."""

    def __init__(self, args, settings: RunSettings, run_id: str, label: str, size: tuple[int, int], cache: Path,
                 out: Path,
                 calib: dict, cat_ids, accuracy_note: str | None, system: dict, reducers: list,
                 classes: list[str], box_frame: str, dataset, unfit: dict[tuple[str, str, float], str] | None = None,
                 same_network: set[str] | None = None) -> None:
        from bavit.reducers import dense

        self.args, self.settings, self.run_id, self.label, self.size = args, settings, run_id, label, size
        self.reducers = {r.label: r for r in [dense(), *reducers]}   # label -> ReducerSpec
        self.cache, self.out, self.calib, self.cat_ids, self.accuracy_note = cache, out, calib, cat_ids, accuracy_note
        self.system, self.classes, self.box_frame = system, ",".join(classes), box_frame
        self.dataset = dataset        # the split scored (bavit.data), encoded once into a scoring set
        self.work, self.logs = out / "work", out / "logs"
        self.timing: dict[str, float] = {}
        self.failed = 0
        self.unfit = unfit or {}
        self.same_network = same_network or set()   # detectors timed by the reference's cells (timing_from)

    def _row(self, cell: Cell, status: str, **fields) -> dict:
        m = cell.model
        a = self.args
        row = Row(cell_id=cell.cell_id, model_id=m.model_id, target=m.target, precision=m.precision,
                  reducer=m.reducer, keep=m.keep, batch=m.batch, scenario=cell.scenario, status=status,
                  settings_key=self.settings.key, run_id=self.run_id, model=self.label, detector=m.detector,
                  reference_detector=self.settings.reference_detector,
                  data=f"{a.data}:{a.split}", data_classes=self.classes, box_frame=self.box_frame, threads=a.threads,
                  reducer_options=json.dumps(self.reducers[m.reducer].as_dict(), sort_keys=True),
                  image_size=f"{self.size[0]}x{self.size[1]}", started_at=datetime.now(timezone.utc).isoformat(),
                  **self.system)
        row = Row(**{**asdict(row), **fields})
        return asdict(row)

    def _write(self, row: dict) -> None:
        self.failed += row["status"] == "failed"
        append_row(self.out, row)

    def _add(self, name: str, seconds: float) -> None:
        self.timing[name] = self.timing.get(name, 0.0) + seconds

    def _tick(self, name: str, since: float) -> None:
        self._add(name, time.monotonic() - since)

    def run(self, todo: list[Cell]) -> int:
        from tqdm import tqdm

        from targets import get_target

        a = self.args
        runnable: list[Cell] = []
        for cell in todo:
            target = get_target(cell.model.target)
            m = cell.model
            reason = (self.unfit.get((m.detector, m.reducer, m.keep)) or target.available()
                      or target.supports(m.precision))
            if reason:
                self._write(self._row(cell, "unavailable", error=reason))
            else:
                runnable.append(cell)
        # 1. build every artifact (torch imported once per build process)
        specs = [self._build_spec(m) for m in models_of(runnable)]
        t0 = time.monotonic()
        self._calibration_data(specs)
        with tqdm(total=len(specs), desc="build", unit="artifact", dynamic_ncols=True) as bar:
            built = _run_build(specs, a.build_jobs, self._artifact_of, self._build_group, self.work, self.logs,
                               a.timeout, a.threads, bar)
        self._tick("build", t0)
        ok_cells = []
        for cell in runnable:
            b = built[cell.model.model_id]
            if b.ok:
                ok_cells.append(cell)
                continue
            missing = get_target(cell.model.target).build_unavailable()  # a cached artifact needs no converter
            self._write(self._row(cell, "unavailable", error=f"cannot build: {missing}") if missing
                        else self._row(cell, "failed", error=f"build: {b.error}"))
        self.timing["build: of it, converting uncached artifacts"] = sum(
            _artifact(b.artifact).convert_s for b in built.values() if b.ok and not b.cached)
        scorers = self._scorers(ok_cells)
        # 2 + 3, target by target: cold start (+ accuracy), then the timed rounds
        for target in dict.fromkeys(c.model.target for c in ok_cells):
            cells = [c for c in ok_cells if c.model.target == target]
            colds = self._cold_phase(cells, built, scorers)
            live = [c for c in cells if colds[c.cell_id].ok]
            for c in cells:
                if not colds[c.cell_id].ok:
                    self._write(self._row(c, "failed", **self._build_fields(c, built),
                                          error=f"cold start: {colds[c.cell_id].error}"))
            if not live:
                continue
            twins = self._timing_twins(live, built)
            timed = [c for c in live if c.cell_id not in twins]
            spec = ServeSpec(target, a.threads, a.warmup, a.ov_int8_float,
                             [ServeCell(c.cell_id, built[c.model.model_id].artifact, c.scenario, c.model.batch,
                                        str(self.work / f"inputs-b{c.model.batch}.npy")) for c in timed])
            t0 = time.monotonic()
            with tqdm(total=len(schedule([c.cell_id for c in timed], a.rounds, a.round_seconds, True)),
                      desc=f"rounds {target}", unit="slice", dynamic_ncols=True) as bar:
                slices, loads, failed, load_s = _time_target(spec, a, self.work, self.logs, bar)
            total = time.monotonic() - t0
            self._add("serving processes: start, load + warm-up", load_s)
            self._add("timed rounds", total - load_s)
            self._add("accuracy (of cold start)", sum(r.accuracy_s or 0.0 for r in colds.values()))
            orphans = [c for c in live if twins.get(c.cell_id) in failed]
            if orphans:   # their reference's timing failed: they are timed themselves
                for c in orphans:
                    del twins[c.cell_id]
                spec = ServeSpec(target, a.threads, a.warmup, a.ov_int8_float,
                                 [ServeCell(c.cell_id, built[c.model.model_id].artifact, c.scenario, c.model.batch,
                                            str(self.work / f"inputs-b{c.model.batch}.npy")) for c in orphans])
                t0 = time.monotonic()
                with tqdm(total=len(schedule([c.cell_id for c in orphans], a.rounds, a.round_seconds, True)),
                          desc=f"rounds {target} (cells whose reference failed)", unit="slice",
                          dynamic_ncols=True) as bar:
                    more = _time_target(spec, a, self.work, self.logs, bar)
                self._add("serving processes: start, load + warm-up", more[3])
                self._add("timed rounds", time.monotonic() - t0 - more[3])
                slices, loads, failed = {**slices, **more[0]}, {**loads, **more[1]}, {**failed, **more[2]}
                timed += orphans
            profiles = self._profile_phase(timed, built) if a.profile else {}
            for c in live:
                source = twins.get(c.cell_id, c.cell_id)
                row = self._final_row(c, built, colds, scorers, slices[source], loads[source], failed.get(source))
                if source != c.cell_id:
                    row["timing_from"] = source
                    if a.profile:
                        row["profile_note"] = f"not profiled: its speed figures are {source}'s (the same network)"
                if c.cell_id in profiles:
                    row.update(self._profile_fields(profiles[c.cell_id], row))
                self._write(row)
        return self.failed

    def _timing_twins(self, live: list[Cell], built: dict[str, Built]) -> dict[str, str]:
        """cell_id -> the reference detector's cell whose rounds it takes: a detector with the
        reference's network (`same_network`), in the same target, precision, reducer, keep,
        batch and scenario, whose artifact does the same work on as many tokens. Timing it again
        would measure the same graph twice and add only noise (and minutes) to the comparison."""
        reference = self.settings.reference_detector
        by_key = {(c.model.precision, c.model.reducer, c.model.keep, c.model.batch, c.scenario): c
                  for c in live if c.model.detector == reference}
        twins = {}
        for c in live:
            if c.model.detector not in self.same_network:
                continue
            twin = by_key.get((c.model.precision, c.model.reducer, c.model.keep, c.model.batch, c.scenario))
            if twin is None:
                continue
            mine, theirs = built[c.model.model_id], built[twin.model.model_id]
            if (mine.flops, mine.tokens_kept, mine.tokens_total) == (theirs.flops, theirs.tokens_kept,
                                                                     theirs.tokens_total):
                twins[c.cell_id] = twin.cell_id
        return twins

    def _profile_phase(self, cells: list[Cell], built: dict[str, Built]) -> dict[str, ProfileResult]:
        """Each cell profiled in its own process once its target's rounds are over, so no
        profiler runs beside a timed window."""
        from tqdm import tqdm

        a = self.args
        t0 = time.monotonic()
        out = {}
        for c in tqdm(cells, desc="profile", unit="cell", dynamic_ncols=True):
            slug = c.cell_id.replace("/", "_")
            spec = ProfileSpec(c.cell_id, c.model.target, built[c.model.model_id].artifact, c.model.batch, a.threads,
                               str(self.work / f"inputs-b{c.model.batch}.npy"), a.ov_int8_float, a.profile_seconds,
                               str(self.out / "profiles" / f"{slug}.csv"))
            try:   # a profile that cannot run costs its own fields, never the measured row
                out[c.cell_id] = _run_one("profile", spec, ProfileResult, self.work, self.logs, slug, a.timeout,
                                          a.threads)
            except Exception as err:  # noqa: BLE001
                out[c.cell_id] = ProfileResult(c.cell_id, False, error=f"{type(err).__name__}: {err}")
        self._tick("profiles (after the rounds)", t0)
        return out

    @staticmethod
    def _profile_fields(p: ProfileResult, row: dict) -> dict:
        if not p.ok:
            return {"profile_note": ("unavailable: " if p.unavailable else "profile failed: ") + (p.error or "")}
        p50 = row.get("latency_p50_ms")
        single = row.get("scenario") == "single-stream"
        return dict(profile_method=p.method, profile_calls=p.calls, profile_wall_ms=p.wall_ms,
                    profile_nodes_ms=p.nodes_ms, profile_stages=json.dumps(p.stages),
                    profile_vs_p50=round(p.nodes_ms / p50, 4) if single and p50 and p.nodes_ms else None,
                    profile_plain_ms=p.plain_ms,
                    profile_vs_plain=round(p.nodes_ms / p.plain_ms, 4) if p.plain_ms and p.nodes_ms else None,
                    profile_file=str(Path("profiles") / Path(p.cell_id.replace("/", "_") + ".csv")))

    # -- pieces ------------------------------------------------------------------------------------
    @staticmethod
    def _artifact_of(spec: BuildSpec) -> tuple:
        from targets import get_target
        batch = None if get_target(spec.target).batch_at_load else spec.batch
        return (spec.target, spec.precision, spec.detector, spec.reduction, batch)

    @staticmethod
    def _build_group(spec: BuildSpec) -> tuple:
        """Specs one build process takes together: one artifact's, and a calibrated model's
        at every batch (its recipe calibrates once and reuses the ranges)."""
        from targets import get_target
        target = get_target(spec.target)
        together = target.batch_at_load or target.needs_calibration(spec.precision)
        return (spec.target, spec.precision, spec.detector, spec.reduction, None if together else spec.batch)

    def _calibration_data(self, specs: list[BuildSpec]) -> None:
        """The synthetic calibration split is generated on first use: here, once, rather than
        by each build process at the same time."""
        from targets import get_target

        if self.args.data == "synthetic" and any(get_target(s.target).needs_calibration(s.precision) for s in specs):
            from bavit.data import load_dataset
            # as bench.worker.build_all draws from it
            load_dataset("synthetic", self.calib["split"], size=self.size, n_images=max(512, self.args.calib_images))
    def _build_spec(self, m: Model) -> BuildSpec:
        a = self.args
        return BuildSpec(m.model_id, m.target, m.precision, m.batch, self.label, m.detector, a.image_size,
                         ReductionSpec(self.reducers[m.reducer].text, m.keep), a.data, self.calib["split"],
                         self.calib["skip"], a.calib_images, str(self.cache), a.profile)

    def _scorers(self, cells: list[Cell]) -> dict[str, str]:
        """model_id -> the model_id whose outputs are scored for it. Artifacts that differ only
        in batch size compute the same outputs: float ones, dynamic int8, one artifact reshaped
        at load (OpenVINO's), and calibrated ones, whose recipes calibrate at a fixed batch of
        their own (targets.openvino_backend and quant.litert_recipe CALIB_BATCH: the same scales at every artifact
        batch). The largest batch (fastest to score) scores for all."""
        groups: dict[tuple, list[Model]] = {}
        for m in models_of(cells):
            groups.setdefault((m.target, m.precision, m.detector, m.reducer, m.keep), []).append(m)
        return {m.model_id: max(ms, key=lambda x: x.batch).model_id for ms in groups.values() for m in ms}

    def _cold_phase(self, cells: list[Cell], built: dict[str, Built], scorers: dict[str, str]) -> dict[str, ColdResult]:
        from tqdm import tqdm

        a = self.args
        scoring: dict[str, str] = {}  # model_id -> the cell that scores it
        for c in cells:
            if scorers[c.model.model_id] == c.model.model_id:
                scoring.setdefault(c.model.model_id, c.cell_id)
        results = {}
        t0 = time.monotonic()
        with tqdm(cells, desc=f"cold start {cells[0].model.target}", unit="cell", dynamic_ncols=True) as bar:
            for c in bar:
                b = built[c.model.model_id]
                acc = None
                # a model whose classes are not the data set's still has BAViT's token figures
                # (foreground vs background): scored without mAP
                wanted = self.cat_ids is not None or b.scores_tokens
                if a.images > 0 and wanted and scoring.get(c.model.model_id) == c.cell_id:
                    acc = AccuracySpec(self._scoring_set(b.patch), self.cat_ids, b.scores_tokens, self.box_frame,
                                       str(self.out / "detections" / f"{c.model.slug}.json"),
                                       self._accuracy_cache(c, b))
                    bar.set_description(f"cold start + accuracy {c.cell_id}")
                else:
                    bar.set_description(f"cold start {c.cell_id}")
                spec = ColdSpec(c.cell_id, c.model.target, b.artifact, c.scenario, c.model.batch, a.threads,
                                str(self.work / f"inputs-b{c.model.batch}.npy"), a.ov_int8_float, acc)
                results[c.cell_id] = _run_cold(spec, self.work, self.logs, c.slug, a.timeout, a.threads)
        self._tick("cold start + accuracy", t0)
        return results

    def _scoring_set(self, patch: int) -> str:
        """The accuracy pass's images, token targets and ground truth, encoded once per data,
        split, image count, labels, input size and patch into the cache; every scoring process
        reads them from there with numpy alone (bavit.scoring)."""
        from bavit.scoring import META, SCORING_FORMAT
        from bavit.validate import encode_split
        from bench.system import data_fingerprint

        a = self.args
        key = digest({"format": SCORING_FORMAT, "data": data_fingerprint(a.data, a.split), "images": a.images,
                      "labels": a.labels, "size": self.size, "patch": patch})[:24]
        folder = self.cache / "scoring" / key
        if not (folder / META).is_file():
            t0 = time.monotonic()
            indices = list(range(min(a.images, len(self.dataset))))
            tmp = folder.with_name(f"{key}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            encode_split(self.dataset, indices, self.size, patch, a.labels).save(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
            self._tick("cold start + accuracy: of it, encoding the scored images", t0)
        return str(folder)

    def _accuracy_cache(self, cell: Cell, built: Built) -> str:
        """Keyed on everything the scored outputs depend on: the artifact (its folder name is
        its content key), how it runs (float precision of OpenVINO int8), the data and the
        scoring options."""
        from bench.system import data_fingerprint
        from bench.worker import ACCURACY_FORMAT

        a = self.args
        key = digest({"format": ACCURACY_FORMAT, "artifact": Path(built.artifact).name, "ov_int8_float": a.ov_int8_float,
                      "data": data_fingerprint(a.data, a.split), "images": a.images, "labels": a.labels,
                      "cat_ids": self.cat_ids, "box_frame": self.box_frame, "batch": cell.model.batch})
        return str(self.cache / "accuracy" / f"{key[:24]}.json")

    def _build_fields(self, cell: Cell, built: dict[str, Built]) -> dict:
        from targets import get_target

        b = built[cell.model.model_id]
        art = _artifact(b.artifact)
        needs = get_target(cell.model.target).needs_calibration(cell.model.precision)
        return dict(recipe=art.recipe, recipe_settings=json.dumps(art.recipe_settings, sort_keys=True),
                    fp32_kept=art.fp32_kept, calibration=self.calib["note"] if needs else None,
                    ov_int8_float=self.args.ov_int8_float if (cell.model.target, cell.model.precision) == (
                        "openvino", "int8") else None,
                    convert_s=art.convert_s, artifact_bytes=art.size_bytes, artifact_cached=b.cached,
                    artifact=b.artifact, tokens_kept=b.tokens_kept, tokens_total=b.tokens_total,
                    reducer_mapping=b.mapping, ideal_speedup=b.ideal_speedup)

    def _final_row(self, cell: Cell, built: dict[str, Built], colds: dict[str, ColdResult], scorers: dict[str, str],
                   slices: list[list[Slice]], loads: list[float], error: str | None) -> dict:
        from bench.stats import summarise

        cold = colds[cell.cell_id]
        fields = self._build_fields(cell, built)
        fields.update(load_s=cold.load_s, first_inference_ms=cold.first_inference_ms, peak_rss_mib=cold.peak_rss_mib,
                      baseline_rss_mib=cold.baseline_rss_mib,
                      rss_increase_mib=cold.peak_rss_mib - cold.baseline_rss_mib, torch_imported=cold.torch_imported,
                      executed_precision=cold.executed_precision, runtime_details=cold.runtime_details, mode=cold.mode,
                      streams=cold.streams, requests=cold.requests, accuracy_note=self.accuracy_note)
        fields.update(self._accuracy_fields(cell, built, colds, scorers))
        if error is None and all(slices):
            s = summarise(slices, loads, self.args.threads)
            fields.update({k: v for k, v in asdict(s).items()})
            fields.update(self._work_fields(cell, built, s.throughput_ips))
            return self._row(cell, "ok", **fields)
        return self._row(cell, "failed", error=error or "timing: no slices recorded", **fields)

    def _work_fields(self, cell: Cell, built: dict[str, Built], throughput_ips: float | None) -> dict:
        """Achieved ops/s from the model's analytic work and the measured throughput (not
        FLOPs / p50 latency: with requests in flight a request's latency spans others' work),
        against this precision's peak on this machine."""
        from bench.system import peak

        flops = built[cell.model.model_id].flops
        if not flops:
            return {}
        p = peak(cell.model.precision, self.args.threads)
        out = dict(gflop_per_image=round(flops / 1e9, 4), peak_gops=p.gops, peak_basis=p.basis)
        if throughput_ips:
            achieved = flops / 1e9 * throughput_ips
            out.update(achieved_gops=round(achieved, 2),
                       peak_pct=round(100 * achieved / p.gops, 2) if p.gops else None)
        return out

    def _accuracy_fields(self, cell: Cell, built: dict[str, Built], colds: dict[str, ColdResult],
                         scorers: dict[str, str]) -> dict:
        if self.args.images == 0:
            return {}
        scorer = scorers[cell.model.model_id]
        result = next((r for cid, r in colds.items() if cid.startswith(scorer + "/") and
                       (r.accuracy is not None or r.accuracy_note)), None)
        if result is None and self.accuracy_note and not built[scorer].scores_tokens:
            return {}   # no mAP, and no token figures to score: the row's note says why
        if result is None:
            return {"accuracy_note": f"not scored: the cell scoring {scorer} did not run"}
        if result.accuracy is None:
            return {"accuracy_note": result.accuracy_note, "accuracy_from": scorer}
        acc = asdict(result.accuracy)
        reused = acc.pop("reused")
        slug = scorer.replace("/", "_")
        return {**acc, "accuracy_from": scorer, "accuracy_reused": reused,   # detections only where mAP was scored
                "detections_file": str(self.out / "detections" / f"{slug}.json") if self.cat_ids is not None else None}


def _artifact(path: str):
    from targets.base import Artifact
    return Artifact.load(path)


def _write_inputs(dataset, size: tuple[int, int], batches: list[int], work: Path) -> None:
    """The timed batch of each size, preprocessed once here, so measured processes time the
    same real images without loading the data set before their speed pass."""
    import numpy as np

    from bavit.data.preprocess import batch as preprocess_batch

    work.mkdir(exist_ok=True)
    for b in batches:
        pixels, _ = preprocess_batch(dataset, [i % len(dataset) for i in range(b)], size)
        np.save(work / f"inputs-b{b}.npy", pixels)


def _network(det_dir: Path) -> dict:
    """A detector's architecture: its full config (defaults filled in) less what names its
    classes or records the library version. Two detectors that agree here run the same graph
    on the same shapes, whatever their weights."""
    from bavit.checkpoint import load_config
    cfg = load_config(det_dir).to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "id2label", "label2id"):
        cfg.pop(key, None)
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


def _model_info(label: str, det_dir: Path | None, image_size: tuple[int, int] | None) -> dict:
    from bavit.pipeline import patch_of, random_scales
    if det_dir is None:
        cfg = random_scales()[label.split(":", 1)[1]]()
    else:
        from bavit.checkpoint import load_config
        cfg = load_config(det_dir)
    patch = patch_of(cfg)
    shape = getattr(cfg, "image_size", None)
    if image_size is not None:
        if det_dir is None or any(side < patch or side % patch for side in image_size):
            raise UsageError(f"--image-size {image_size[0]}x{image_size[1]}: needs --weights with a detector "
                             f"folder and multiples of its patch size ({patch})")
        h, w = image_size
    elif not shape:   # stock DETR configs: the processor resizes, the model takes any shape
        raise UsageError(f"--weights {label}: the detector config has no image_size: pass --image-size N or HxW")
    else:
        h, w = shape
        if h % patch or w % patch:   # stock YOLOS configs: e.g. 800x1333
            raise UsageError(f"--weights {label}: detector image_size {h}x{w} is not a multiple of its patch size "
                             f"({patch}): pass --image-size N or HxW")
    from bavit.yolos import box_frame
    return {"size": (h, w), "num_labels": cfg.num_labels, "id2label": cfg.id2label, "box_frame": box_frame(cfg)}


def _calibration(args, scored_images: int) -> dict:
    """Calibrate int8 on another split than the scored one (train, else val); a data set
    with only the scored split calibrates on its images past the scored ones."""
    from bavit.data import has_split
    for split in ("train", "val"):
        if split != args.split and has_split(args.data, split):
            return {"split": split, "skip": 0, "note": split}
    if scored_images > args.images:
        skip, note = args.images, f"{args.split} images {args.images}+ (not scored)"
    else:
        skip, note = 0, f"{args.split}, overlapping the scored images"
    print(f"warning: {args.data} has only the {args.split} split; int8 calibrates on {note}", file=sys.stderr)
    return {"split": args.split, "skip": skip, "note": note}


def _report(out: Path, args) -> None:
    try:
        from reports.build import build, summary_text
        build(out, max_map_drop=args.max_map_drop, max_latency_ms=args.max_latency_ms, max_rss_mb=args.max_rss_mb)
        print(summary_text(out, max_map_drop=args.max_map_drop, max_latency_ms=args.max_latency_ms,
                           max_rss_mb=args.max_rss_mb))
        print(f"\nreport: {out / 'report.html'}")
    except Exception as err:  # the results are safe in results.jsonl whatever happens here
        print(f"bench.run: report failed: {type(err).__name__}: {err}", file=sys.stderr)


def main() -> None:
    try:
        sys.exit(run())
    except KeyboardInterrupt:
        _Children.kill_all()
        print("bench.run: interrupted; finished cells are in results.jsonl (rerun with --resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
