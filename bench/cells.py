"""Benchmark cells and the results file.

A model is one artifact: (target, precision, detector, reducer, keep, batch). A cell is a
model run in one scenario: single-stream cells run the batch-1 model, offline cells the
model of each --batch. Keep 1.0 is the dense detector whatever the reducer: it is one
model per detector, reducer `none`, the baseline of every reducer. Every finished cell is appended to results.jsonl and fsynced, so a crash or
Ctrl-C loses nothing, and --resume skips what is already there."""
from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from targets.base import OFFLINE, SINGLE_STREAM

RESULTS = "results.jsonl"


@dataclass(frozen=True)
class Model:
    target: str
    precision: str
    detector: str                 # detector folder inside --weights (e.g. detector, detector-prune)
    reducer: str                  # bavit.reducers.ReducerSpec.label
    keep: float
    batch: int

    @property
    def model_id(self) -> str:
        return f"{self.target}/{self.precision}/{self.detector}/{self.reducer}/keep{self.keep:g}/b{self.batch}"

    @property
    def slug(self) -> str:
        return self.model_id.replace("/", "_")


@dataclass(frozen=True)
class Cell:
    model: Model
    scenario: str

    @property
    def cell_id(self) -> str:
        return f"{self.model.model_id}/{self.scenario}"

    @property
    def slug(self) -> str:
        return self.cell_id.replace("/", "_")

    @property
    def group(self) -> tuple[str, int, str]:
        """Cells that are compared with each other: same target, batch and scenario."""
        return (self.model.target, self.model.batch, self.scenario)


def reductions(reducers: list[str], keeps: list[float]) -> list[tuple[str, float]]:
    """(reducer label, keep) pairs: keep 1.0 once, as `none`; every other keep per reducer."""
    pairs = [("none", 1.0)] if any(k >= 1.0 for k in keeps) else []
    pairs += [(r, k) for k in keeps if k < 1.0 for r in reducers if r != "none"]
    return pairs


def enumerate_cells(targets, precisions, reducers, keeps, batches, scenarios, detectors=("detector",),
                    detector_precisions: dict[str, list[str]] | None = None) -> list[Cell]:
    """Detectors, then keep ratios outermost within a target, so artifacts of one pipeline are
    built together. `detector_precisions` narrows a detector to some of `precisions`."""
    cells = []
    own = detector_precisions or {}
    for t, d, (r, k), p in itertools.product(targets, detectors, reductions(reducers, keeps), precisions):
        if p not in own.get(d, precisions):
            continue
        if SINGLE_STREAM in scenarios:
            cells.append(Cell(Model(t, p, d, r, k, 1), SINGLE_STREAM))
        if OFFLINE in scenarios:
            cells += [Cell(Model(t, p, d, r, k, b), OFFLINE) for b in batches]
    return cells


def models_of(cells: list[Cell]) -> list[Model]:
    return list(dict.fromkeys(c.model for c in cells))


def append_row(run_dir: Path, row: dict) -> None:
    path = run_dir / RESULTS
    data = path.read_bytes() if path.is_file() else b""
    if data and not data.endswith(b"\n"):  # a line cut by a crash: drop it, not glue a row to it
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def finished_cells(run_dir: Path) -> set[str]:
    """cell_ids recorded as ok or unavailable: --resume skips those and retries failed cells
    (reports keep the last row of a cell)."""
    path = run_dir / RESULTS
    if not path.is_file():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            if row.get("status") in ("ok", "unavailable"):
                done.add(row["cell_id"])
        except (ValueError, KeyError):
            continue  # a line cut by a crash: that cell runs again
    return done


def has_rows(run_dir: Path) -> bool:
    path = run_dir / RESULTS
    return path.is_file() and path.stat().st_size > 0


def start_over(out: Path) -> None:
    """--force: a used run folder emptied of what a run writes."""
    for name in ("results.jsonl", "run.json", "report.csv", "report.html", "decision.csv", "reducers.csv",
                 "detectors.csv", "comparison.csv", "timing.json"):
        (out / name).unlink(missing_ok=True)
    for name in ("work", "logs", "detections", "profiles"):
        shutil.rmtree(out / name, ignore_errors=True)
