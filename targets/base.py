"""The system-under-test interface every backend implements.

Two halves, run in different processes:
- `prepare` (build process: imports torch, converts, quantizes) writes an artifact folder
  with an `artifact.json` manifest into a content-addressed cache;
- `load` (measured process) imports only the backend's runtime and returns a `Runner`.
This module, and every backend module at import time, must not import torch: an OpenVINO or
LiteRT cell that imported it would report torch's ~220 MB as its own memory.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from bavit.pipeline import Pipeline

MANIFEST = "artifact.json"
# Part of every cache key: bump when what a Pipeline computes changes without its weights or
# config changing (2: keep 1.0 runs the dense detector alone, without BAViT; 3: --bg-share
# picks background slots in a 2-D order; 4: the reducer and all its options key the artifact).
ARTIFACT_FORMAT = 4


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, from its metadata (nothing is imported)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class ConversionError(RuntimeError):
    """A backend failed to build an artifact; the message names backend, keep and precision."""


class ProfileUnavailable(RuntimeError):
    """`load(..., profile=True)` cannot profile this artifact (the message says why): the
    profile's fields say so, the cell's measured figures stand."""


@dataclass
class Artifact:
    target: str
    precision: str
    keep: float
    batch: int | None              # None: the batch is set when the model is loaded
    path: Path                     # the artifact folder in the cache
    files: list[str]               # model files inside it, relative
    convert_s: float               # conversion + quantization time when it was built
    size_bytes: int                # model files on disk
    recipe: str = "none"           # quantization recipe name ("none" for fp32)
    recipe_settings: dict = field(default_factory=dict)
    fp32_kept: str = ""            # what a quantized model keeps in floating point
    extra: dict = field(default_factory=dict)
    cached: bool = False           # True when this call found it in the cache

    def save(self) -> None:
        data = asdict(self)
        data["path"] = str(self.path)
        data.pop("cached")
        (self.path / MANIFEST).write_text(json.dumps(data, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> "Artifact":
        path = Path(path)
        data = json.loads((path / MANIFEST).read_text())
        data["path"] = path
        return cls(**data, cached=True)


SINGLE_STREAM, OFFLINE = "single-stream", "offline"


@dataclass(frozen=True)
class Recipe:
    """How a target produces one precision. The capability table every target declares:
    `supports`, `needs_calibration` and the artifact cache key all derive from it."""
    name: str = "none"               # quantization recipe ("none": the float model as converted)
    calibrated: bool = False         # builds from the shared calibration images
    settings: tuple = ()             # (key, value) pairs that shape the artifact
    requires: tuple[str, ...] = ()   # importable modules the recipe needs


@dataclass(frozen=True)
class RuntimeOptions:
    """What the measured process is told: the same for every cell of a run (part of the
    run settings --resume checks), except the scenario, which picks how the runtime runs."""
    threads: int
    scenario: str = SINGLE_STREAM
    ov_int8_float: str = "f32"
    batch: int = 1                   # for artifacts whose batch is set at load
    profile: bool = False            # the runner also records per-node times (`Runner.node_times`)


@dataclass(frozen=True)
class NodeTime:
    """One node of the runtime's own graph as its profiler saw it, for one call."""
    name: str
    kind: str                        # op / layer type
    exec_type: str                   # the kernel or precision the runtime says it ran ("" if not said)
    module: str                      # the pipeline module path the node was traced from ("" if none)
    ms: float
    stage: str = ""                  # bavit.stages stage, when the runtime times stages, not modules' nodes


@dataclass(frozen=True)
class OfflineResult:
    images: int
    queries: int
    elapsed_s: float
    latencies_ms: list


class Runner:
    """Static-shape inference: (B, 3, S, S) float32 -> (logits, boxes, token_logits) numpy.

    `offline_fn(pixels, seconds)`, when a runtime has its own throughput practice (OpenVINO's
    AsyncInferQueue under the THROUGHPUT hint), is how the offline scenario runs it; without
    one the load generator (bench.loop) calls the runner back to back, one call in flight,
    which is what torch and a TFLite interpreter do at their best on a CPU. `mode`,
    `streams` and `requests` say which ran."""

    executed_precision: str = "unknown"

    def __init__(self, fn: Callable[[np.ndarray], tuple[np.ndarray, ...]], executed_precision: str,
                 details: dict | None = None, offline_fn: Callable[[np.ndarray, float], OfflineResult] | None = None,
                 mode: str = "sync, 1 request", streams: int = 1, requests: int = 1,
                 node_times: Callable[[], list[NodeTime]] | None = None, profiler: str = "") -> None:
        self._fn = fn
        # with RuntimeOptions.profile: the last call's per-node times, and how they are taken
        self.node_times, self.profiler = node_times, profiler
        self.offline_fn = offline_fn
        self.executed_precision = executed_precision
        # what the runtime really did (interpreter and version, per-layer precisions, config):
        # recorded on the result row as runtime_details
        self.details: dict = details or {}
        self.mode, self.streams, self.requests = mode, streams, requests

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._fn(pixels)


class Target(ABC):
    name: str
    recipes: dict[str, Recipe]
    runtime_modules: tuple[str, ...] = ()  # alternatives: the first importable one is the runtime
    # one artifact serves every batch size (the runtime reshapes it at load): converted and
    # quantized once, scored once
    batch_at_load: bool = False

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.recipes)

    def import_runtime(self) -> None:
        """Imports the runtime alone, so a cell's memory baseline holds it but no model."""
        for name in self.runtime_modules:
            try:
                importlib.import_module(name)
                return
            except ImportError:
                continue

    @abstractmethod
    def available(self) -> str | None:
        """None when usable, else the reason (e.g. 'openvino is not installed')."""

    def buildable(self, precision: str) -> str | None:
        """None when this backend has a recipe for `precision` and its packages are installed."""
        recipe = self.recipes.get(precision)
        if recipe is None:
            return f"{self.name} has no {precision} precision"
        for module in recipe.requires:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (needed for {self.name} {precision})"
        return None

    def runnable(self, precision: str) -> str | None:
        """None when this machine can run `precision` artifacts of this backend, else why not
        (subclasses add what the runtime and the CPU must have): the gate of a cell measured
        from a bundle, where nothing is built."""
        if precision not in self.recipes:
            return f"{self.name} has no {precision} precision"
        return None

    def supports(self, precision: str) -> str | None:
        """None when this machine can build and run `precision` on this backend, else why
        not; the gate of a cell bench.run builds and measures."""
        return self.buildable(precision) or self.runnable(precision)

    def needs_calibration(self, precision: str) -> bool:
        """Whether `build` uses calibration images: the harness loads none otherwise (on
        COCO that is parsing the train annotations) and they stay out of the cache key."""
        return self.recipes[precision].calibrated

    def profiler_unavailable(self) -> str | None:
        """None when `load(..., RuntimeOptions(profile=True))` gives per-node times, else why not."""
        return f"{self.name}: no per-node profiler"

    def build_profile_parts(self, pipeline: "Pipeline", artifact: Artifact, calibration: np.ndarray | None) -> None:
        """With --profile, in the build process: whatever `load(..., profile=True)` needs
        beyond the artifact itself, written into its folder (runtimes with their own per-node
        profiler need nothing)."""

    def build_unavailable(self) -> str | None:
        """None when this environment can build artifacts, else why not: a runtime-only
        install can run cached artifacts but not convert new ones."""
        return None

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Package versions that shape the artifact (part of the cache key)."""

    @abstractmethod
    def build(self, pipeline: "Pipeline", precision: str, batch: int | None, calibration: np.ndarray | None,
              out: Path) -> dict[str, Any]:
        """Write the model files into `out` (batch None: any batch, set at load); return
        Artifact fields (files, recipe, ...)."""

    @abstractmethod
    def load(self, artifact: Artifact, options: RuntimeOptions) -> Runner:
        """Import only the runtime, compile/load the artifact for `options.scenario` with
        `options.threads` threads."""

    # -- shared ---------------------------------------------------------------------------------
    def prepare(self, pipeline: "Pipeline", precision: str, batch: int, calibration: np.ndarray | None,
                cache_dir: Path, weights_key: str) -> Artifact:
        """Cached build: the key covers weights, pruning config, shape, precision, calibration
        and package versions, so a second run with the same inputs does not convert again."""
        reason = self.available() or self.buildable(precision)  # an artifact does not need the CPU's units
        if reason:
            raise ConversionError(f"{self.name} {precision} unavailable: {reason}")
        keep = pipeline.keep
        recipe = self.recipes[precision]
        batch = None if self.batch_at_load else batch
        key = _hash({"format": ARTIFACT_FORMAT, "target": self.name, "precision": precision, "batch": batch,
                     "weights": weights_key, "reduction": pipeline.reduction, "versions": self.versions(),
                     "recipe": asdict(recipe),
                     "calibration": _array_hash(calibration) if recipe.calibrated else None})
        folder = Path(cache_dir) / f"{self.name}-{precision}-{pipeline.name}-keep{keep:g}-b{batch or 'any'}-{key[:16]}"
        if (folder / MANIFEST).is_file():
            return Artifact.load(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        try:
            fields = self.build(pipeline, precision, batch, calibration, tmp)
        except Exception as err:  # one clear line naming backend, keep and precision
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConversionError(f"{self.name} conversion failed (keep {keep:g}, {precision}, batch {batch}): "
                                  f"{type(err).__name__}: {msg}") from err
        convert_s = time.perf_counter() - start
        files = fields.pop("files")
        size = sum((tmp / f).stat().st_size for f in files)
        art = Artifact(self.name, precision, keep, batch, tmp, files, round(convert_s, 3), size, **fields)
        art.save()  # the manifest goes in before the rename: a folder in place is always complete
        if folder.exists():  # a manifest-less folder from an older, interrupted build
            import shutil
            shutil.rmtree(folder)
        tmp.rename(folder)
        art.path = folder
        return art


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _array_hash(a: np.ndarray | None) -> str | None:
    return None if a is None else hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
