"""The build phase: artifacts built (or found in the cache) by `python -m bench.worker build`
processes side by side, each importing torch once; a process that dies or hangs costs the
artifact it was on, and a new one builds the rest."""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.cells import Cell, Model, models_of
from bench.contracts import PROFILE_PARTS, BuildSpec, Built, ReductionSpec, from_json
from bench.procs import Children, kill, spawn

# rough seconds per artifact on a 2-core machine, only to share the builds out evenly
BUILD_COST = {("tflite", "int8"): 85, ("tflite", "fp32"): 40, ("openvino", "int8"): 30, ("onnxruntime", "int8"): 30,
              ("onnxruntime", "fp32"): 20, ("executorch", "fp32"): 60, ("executorch", "int8"): 90}


def share_out(specs: list[BuildSpec], jobs: int, artifact_of, group_of) -> list[list[BuildSpec]]:
    """Specs split into `jobs` lists of about equal estimated cost (longest first). The specs of
    one group always go to the same list: every batch of a dynamic-batch IR (two processes never
    build the same artifact) and the per-batch artifacts of one calibrated model (the process
    calibrates once for all of them). A group costs one estimate per distinct artifact."""
    groups: dict = {}
    for s in specs:
        groups.setdefault(group_of(s), []).append(s)

    def cost(group: list[BuildSpec]) -> float:
        return BUILD_COST.get((group[0].target, group[0].precision), 8) * len({artifact_of(s) for s in group})

    loads = [[0.0, []] for _ in range(max(1, jobs))]
    for group in sorted(groups.values(), key=lambda g: -cost(g)):
        lightest = min(loads, key=lambda x: x[0])
        lightest[0] += cost(group)
        lightest[1].extend(group)
    order = {s.model_id: i for i, s in enumerate(specs)}
    return [sorted(lst, key=lambda s: order[s.model_id]) for _, lst in loads if lst]


class BuildProcess:
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
        self.proc = spawn(["build", str(self.spec_file), str(self.out_file)], self.logs / f"build-{self.name}.log",
                           self.threads)
        Children.live.add(self.proc)
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
            kill(self.proc)
            finished, verdict = True, f"timeout: build did not finish in {timeout:g} s"
        if not finished:
            return True
        Children.live.discard(self.proc)
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


def run_build(specs: list[BuildSpec], jobs: int, artifact_of, group_of, work: Path, logs: Path, timeout: float,
               threads: int, bar) -> dict[str, Built]:
    """`jobs` build processes side by side (conversion is mostly one core's work; nothing is
    timed while they run), each importing torch once."""
    results: dict[str, Built] = {}
    workers = [BuildProcess(lst, str(i), work, logs, threads)
               for i, lst in enumerate(share_out(specs, jobs, artifact_of, group_of))]
    while workers:
        workers = [w for w in workers if w.poll(results, timeout, bar)]
        time.sleep(0.2)
    return results


@dataclass(frozen=True)
class BuildPlan:
    """What building a run's artifacts needs, parsed once from the command line."""
    weights: str                         # the resolved --weights label (a folder, or random:NAME)
    image_size: tuple[int, int] | None   # --image-size; None: the detector config's
    size: tuple[int, int]                # the model input either way
    reducers: dict[str, str]             # reducer label -> its full spec text (bavit.reducers.ReducerSpec.text)
    calib_data: str
    calib_split: str
    calib_skip: int
    calib_images: int
    cache: str
    profile: bool
    jobs: int
    timeout: float
    threads: int
    unfit: dict[str, str] = field(default_factory=dict)   # "detector|reducer|keep" -> why its weights do not fit

    @staticmethod
    def unfit_key(detector: str, reducer: str, keep: float) -> str:
        return f"{detector}|{reducer}|{keep:g}"

    def spec(self, m: Model) -> BuildSpec:
        return BuildSpec(m.model_id, m.target, m.precision, m.batch, self.weights, m.detector, self.image_size,
                         ReductionSpec(self.reducers[m.reducer], m.keep), self.calib_data, self.calib_split,
                         self.calib_skip, self.calib_images, self.cache, self.profile)


@dataclass(frozen=True)
class NotBuilt:
    """A cell without an artifact, and why: its runtime or precision is unavailable here, its
    weights do not fit its reducer, or its build failed."""
    cell: Cell
    status: str                          # unavailable | failed
    error: str


def build_phase(cells: list[Cell], plan: BuildPlan, work: Path, logs: Path, timing: dict[str, float]
                ) -> tuple[dict[str, Built], list[Cell], list[NotBuilt]]:
    """Every cell's artifact built or found in the cache: (built per model_id, the cells built
    ok, the others with why). `timing` gets the phase's seconds."""
    from tqdm import tqdm

    from targets import get_target

    runnable: list[Cell] = []
    not_built: list[NotBuilt] = []
    for cell in cells:
        target = get_target(cell.model.target)
        m = cell.model
        reason = (plan.unfit.get(plan.unfit_key(m.detector, m.reducer, m.keep)) or target.available()
                  or target.supports(m.precision))
        if reason:
            not_built.append(NotBuilt(cell, "unavailable", reason))
        else:
            runnable.append(cell)
    specs = [plan.spec(m) for m in models_of(runnable)]
    t0 = time.monotonic()
    _calibration_data(specs, plan)
    with tqdm(total=len(specs), desc="build", unit="artifact", dynamic_ncols=True) as bar:
        built = run_build(specs, plan.jobs, _artifact_of, _build_group, work, logs, plan.timeout, plan.threads, bar)
    timing["build"] = timing.get("build", 0.0) + time.monotonic() - t0
    ok_cells = []
    for cell in runnable:
        b = built[cell.model.model_id]
        if b.ok:
            ok_cells.append(cell)
            continue
        missing = get_target(cell.model.target).build_unavailable()  # a cached artifact needs no converter
        not_built.append(NotBuilt(cell, "unavailable", f"cannot build: {missing}") if missing
                         else NotBuilt(cell, "failed", f"build: {b.error}"))
    from targets.base import Artifact
    timing["build: of it, converting uncached artifacts"] = sum(
        Artifact.load(b.artifact).convert_s for b in built.values() if b.ok and not b.cached)
    return built, ok_cells, not_built


def _artifact_of(spec: BuildSpec) -> tuple:
    from targets import get_target
    batch = None if get_target(spec.target).batch_at_load else spec.batch
    return (spec.target, spec.precision, spec.detector, spec.reduction, batch)


def _build_group(spec: BuildSpec) -> tuple:
    """Specs one build process takes together: one artifact's, and a calibrated model's
    at every batch (its recipe calibrates once and reuses the ranges)."""
    from targets import get_target
    target = get_target(spec.target)
    together = target.batch_at_load or target.needs_calibration(spec.precision)
    return (spec.target, spec.precision, spec.detector, spec.reduction, None if together else spec.batch)


def _calibration_data(specs: list[BuildSpec], plan: BuildPlan) -> None:
    """The synthetic calibration split is generated on first use: here, once, rather than
    by each build process at the same time."""
    from targets import get_target

    if plan.calib_data == "synthetic" and any(get_target(s.target).needs_calibration(s.precision) for s in specs):
        from bavit.data import load_dataset
        # as bench.worker.build_all draws from it
        load_dataset("synthetic", plan.calib_split, size=plan.size, n_images=max(512, plan.calib_images))
