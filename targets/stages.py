"""Stage artifacts: how a target without a usable per-op profiler still gives `--profile` its
per-stage times. The build process cuts the artifact's own graph into one graph per stage
(bavit.stage_split) and builds each with the target's converter into `stages/` beside the
artifact, with a `StagePlan`; the profiling process runs the stage files one after another,
timing each call. What is timed is the chained stages (boundary tensors handed over through
the runtime's I/O), so the node sum is held against the one-file model's latency.

Torch-free: the plan is read in measuring processes that import only their runtime."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from targets.base import Artifact, NodeTime, ProfileUnavailable, Runner

STAGES_DIR, STAGE_PLAN, STAGE_ERROR = "stages", "plan.json", "stages.error"
STAGE_FORMAT = 1    # bump when bavit.stage_split cuts differently (the stage rules are keyed apart)


def stage_key() -> str:
    from bavit.stages import rules_key  # torch-free

    return f"{STAGE_FORMAT}-{rules_key()}"


@dataclass(frozen=True)
class StageFile:
    stage: str                    # bavit.stages stage
    file: str                     # inside stages/
    inputs: list[str]             # value names, in the stage's argument order
    outputs: list[str]            # value names, in the stage's return order


@dataclass(frozen=True)
class StagePlan:
    """What the build process leaves in `stages/` for the profiling process."""
    input: str                    # the pixels' value name
    input_shape: list[int]        # static, as the artifact's
    outputs: list[str]            # (logits, boxes, token_logits) by value name
    parts: list[StageFile]
    key: str                      # stage_key() of the code that cut them

    def save(self, folder: Path) -> None:
        (folder / STAGE_PLAN).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: Path) -> "StagePlan":
        data = json.loads((folder / STAGE_PLAN).read_text())
        data["parts"] = [StageFile(**p) for p in data["parts"]]
        return cls(**data)


def _current(folder: Path) -> StagePlan | None:
    """The plan in `folder` if it was cut by this code, else None."""
    try:
        plan = StagePlan.load(folder)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return plan if plan.key == stage_key() else None


def build_stage_folder(artifact: Artifact, build: Callable[[Path], StagePlan]) -> None:
    """`build(folder)` writes the stage files and returns their plan; done once per artifact
    (the folder appears complete or not at all). A failure leaves its one line in
    `stages.error` for the profile's row, and is raised."""
    folder = Path(artifact.path) / STAGES_DIR
    error = Path(artifact.path) / STAGE_ERROR
    if _current(folder) is not None:
        return
    tmp = folder.with_name(STAGES_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp).save(tmp)
        shutil.rmtree(folder, ignore_errors=True)     # stages cut by older code, or a torn folder
        tmp.rename(folder)
    except Exception as err:
        error.write_text(f"stage artifacts failed to build: {type(err).__name__}: "
                         f"{(str(err).strip().splitlines() or [''])[0]}\n")
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    error.unlink(missing_ok=True)


def load_stage_plan(artifact: Artifact) -> tuple[StagePlan, Path]:
    folder = Path(artifact.path) / STAGES_DIR
    plan = _current(folder)
    if plan is None:
        error = Path(artifact.path) / STAGE_ERROR
        raise ProfileUnavailable(error.read_text().strip() if error.is_file() else
                                 f"no stage artifacts of this code beside this {artifact.target} artifact "
                                 "(it was built without --profile, or its stages were cut by older code)")
    return plan, folder


StageCall = Callable[[list[np.ndarray]], list[np.ndarray]]


def stage_runner(plan: StagePlan, calls: list[StageCall], precisions: list[str], profiler: str) -> Runner:
    """A Runner over the chained stages: `calls[i]` runs `plan.parts[i]` (numpy in, numpy
    out), `precisions[i]` is what that stage file executes in."""
    last: list[float] = []

    shape = tuple(plan.input_shape)

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if tuple(pixels.shape) != shape:
            raise ValueError(f"the stage artifacts take {shape} (static shape), got {tuple(pixels.shape)}")
        values: dict[str, np.ndarray] = {plan.input: np.asarray(pixels, dtype=np.float32)}
        last.clear()
        for part, call in zip(plan.parts, calls):
            start = time.perf_counter()
            got = call([values[name] for name in part.inputs])
            last.append((time.perf_counter() - start) * 1000)
            values.update(zip(part.outputs, got))
        logits, boxes, tokens = (values[name] for name in plan.outputs)
        return logits, boxes, tokens

    def node_times() -> list[NodeTime]:
        return [NodeTime(f"{i}-{part.stage}", "stage artifact", precision, "", ms, stage=part.stage)
                for i, (part, precision, ms) in enumerate(zip(plan.parts, precisions, last))]

    parts = {p for precision in precisions for p in precision.split("+")}
    order = ["i8", "bf16", "f16", "f32"]
    merged = "+".join(sorted(parts, key=lambda p: order.index(p) if p in order else len(order)))
    return Runner(run, merged,
                  details={"stage_files": [p.file for p in plan.parts]}, node_times=node_times, profiler=profiler)


def split_pipeline(module, example: tuple, convert: Callable[[object, tuple, Path], None], out: Path,
                   suffix: str) -> StagePlan:
    """Build side: `module` (the artifact's exported graph) cut by stage, each part written by
    `convert(part_module, part_examples, path)` as `out/{i}-{stage}{suffix}`."""
    from bavit.stage_split import split_by_stage

    split = split_by_stage(module, example)
    files = []
    for i, part in enumerate(split.parts):
        name = f"{i}-{part.stage}{suffix}"
        convert(part.module, part.examples, out / name)
        files.append(StageFile(part.stage, name, list(part.inputs), list(part.outputs)))
    return StagePlan(split.input, list(example[0].shape), list(split.outputs), files, stage_key())
