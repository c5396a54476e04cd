"""Benchmark cells and the results file. A cell is one (target, precision, keep, batch);
every finished cell is appended to results.jsonl at once and fsynced, so a crash or Ctrl-C
loses nothing, and --resume skips what is already there."""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = "results.jsonl"


@dataclass(frozen=True)
class Cell:
    target: str
    precision: str
    keep: float
    batch: int

    @property
    def cell_id(self) -> str:
        return f"{self.target}/{self.precision}/keep{self.keep:g}/b{self.batch}"

    @property
    def slug(self) -> str:
        return self.cell_id.replace("/", "_")

    def as_dict(self) -> dict:
        return asdict(self)


def enumerate_cells(targets, precisions, keeps, batches) -> list[Cell]:
    """Keep ratios outermost within a target so artifacts of one model are built together."""
    return [Cell(t, p, k, b) for t, k, p, b in itertools.product(targets, keeps, precisions, batches)]


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
