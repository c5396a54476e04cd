"""The typed contracts between the harness's processes, and the result row it writes.

The parent (bench.run) and its workers (bench.worker) exchange these frozen dataclasses as
JSON files or JSON lines; `to_json` / `from_json` are the only (de)serialisers, so a field
renamed on one side fails loudly on the other instead of being read as a missing key.

`Row` is the schema of one line of results.jsonl: the scorer (reports/) reads those lines
by these field names and nothing else.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCENARIOS = ("single-stream", "offline")
# a percentile is reported only when the pooled sample count supports it
PERCENTILE_FLOOR = {50: 1, 90: 20, 99: 100}


def to_json(obj: Any) -> str:
    return json.dumps(dataclasses.asdict(obj), sort_keys=True, default=str)


def from_dict(cls: type[T], data: dict) -> T:
    """Build `cls` from a dict; nested dataclass fields (and lists of them) are rebuilt too.
    Unknown keys are an error: both sides run the same code."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _rebuild(hints[name], value)
    return cls(**kwargs)


def _rebuild(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    if origin in (list, tuple) and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        items = [_rebuild(inner, v) for v in value]
        return tuple(items) if origin is tuple else items
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value)
            if typing.get_origin(arg) in (list, tuple) and isinstance(value, list):
                return _rebuild(arg, value)
    return value


def from_json(cls: type[T], text: str) -> T:
    return from_dict(cls, json.loads(text))


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class RunSettings:
    """Everything besides the cell itself that changes a figure. --resume refuses a run folder
    whose settings differ, and reports compare only rows whose `settings_key` match."""
    model: str
    reference_detector: str              # the first --detector: every figure is against its dense fp32 cells
                                         # (the others are cells of the run, as keep ratios are)
    image_size: tuple[int, int] | None   # --image-size as (H, W); None: the detector config's
    threads: int
    data: str
    split: str
    labels: str | None
    images: int
    calib_images: int
    rounds: int                          # in all, spread over `processes` serving processes per target
    round_seconds: float
    warmup: int
    interleave: bool
    ov_int8_float: str
    processes: int = 2
    shared_timing: bool = True           # same-network detectors take the reference's rounds (timing_from)

    @property
    def key(self) -> str:
        return digest(dataclasses.asdict(self))[:16]


@dataclass(frozen=True)
class ReductionSpec:
    """Which token reducer, with every option (`bavit.reducers.ReducerSpec.text`), at which keep."""
    reducer: str
    keep: float


@dataclass(frozen=True)
class BuildSpec:
    """One artifact to build (or find in the cache)."""
    model_id: str                 # target/precision/reducer/keepK/bB
    target: str
    precision: str
    batch: int
    weights: str
    detector: str
    image_size: tuple[int, int] | None
    reduction: ReductionSpec
    calib_data: str
    calib_split: str
    calib_skip: int
    calib_images: int
    cache_dir: str
    profile: bool = False         # --profile: also what the target's profiler needs (LiteRT: stage artifacts)


# a build process's `.current` file while it builds what an artifact's profile needs (stage
# artifacts), after the artifact's `Built` line: a crash then blames no artifact
PROFILE_PARTS = "profile parts of "


@dataclass(frozen=True)
class Built:
    """What a build left: the artifact folder and the pipeline facts a row records."""
    model_id: str
    ok: bool
    error: str | None = None
    artifact: str | None = None
    cached: bool = False
    prunes: bool = False
    scores_tokens: bool = False   # token_logits are foreground logits (token accuracy applies)
    mapping: str = ""             # how keep became the reducer's token budget
    ideal_speedup: float = 1.0    # dense token-layers over the reduced model's
    tokens_kept: int = 0
    tokens_total: int = 0
    input_size: tuple[int, int] = (0, 0)   # (H, W)
    patch: int = 0
    flops: int = 0                # per image, the fp32 pipeline (bavit.flops: matmuls, convs, attention)


@dataclass(frozen=True)
class AccuracySpec:
    scoring_set: str              # folder of the encoded images, token targets and ground truth (bavit.scoring)
    cat_ids: list[int | None] | None   # None: the model's classes are not the data set's (token figures only)
    scores_tokens: bool           # token figures are measured (a reducer with a foreground classifier)
    box_frame: str                # what predicted boxes are fractions of (bavit.yolos.box_frame)
    detections: str               # where the detections JSON goes
    cache_file: str | None        # accuracy of an unchanged artifact on unchanged data


@dataclass(frozen=True)
class ColdSpec:
    """One cell's own process: memory, load/compile time, first inference; then (apart from
    every timed window) the accuracy pass when this cell is the one scoring its model."""
    cell_id: str
    target: str
    artifact: str
    scenario: str
    batch: int
    threads: int
    pixels: str
    ov_int8_float: str
    accuracy: AccuracySpec | None = None


@dataclass(frozen=True)
class ProfileSpec:
    """One cell's profiling process, after every timed round (its figures never mix with
    theirs): the cell's artifact at its batch, one sync request, per-node times."""
    cell_id: str
    target: str
    artifact: str
    batch: int
    threads: int
    pixels: str
    ov_int8_float: str
    seconds: float
    nodes_csv: str                # where the full per-node table goes


@dataclass(frozen=True)
class ProfileResult:
    cell_id: str
    ok: bool
    error: str | None = None
    unavailable: bool = False     # the runtime has no per-node profiler (error says why)
    method: str | None = None
    calls: int = 0
    wall_ms: float | None = None  # median wall time of a profiled call
    nodes_ms: float | None = None # per-node median times, summed
    plain_ms: float | None = None # median of unprofiled calls of the same artifact, alternating with them
    stages: dict[str, float] = field(default_factory=dict)   # bavit.stages stage -> ms per call


@dataclass(frozen=True)
class ServeCell:
    cell_id: str
    artifact: str
    scenario: str
    batch: int
    pixels: str


@dataclass(frozen=True)
class ServeSpec:
    """A target's speed process: loads all its cells, then measures the slices it is sent."""
    target: str
    threads: int
    warmup: int
    ov_int8_float: str
    cells: list[ServeCell]


@dataclass(frozen=True)
class Slice:
    """One timed window of one cell, as the serving process measured it."""
    cell_id: str
    images: int
    queries: int
    elapsed_s: float
    latencies_ms: list[float]
    cpu_s: float                  # CPU time the serving process used in the window


@dataclass(frozen=True)
class MeasurePlan:
    """What measuring a run's cells needs besides the cells and their artifacts, parsed once:
    by bench.run from its command line, by bench.measure from a bundle's manifest."""
    settings: RunSettings
    size: tuple[int, int]                # the model input (H, W)
    data_classes: list[str]              # the data set's class names, in label order
    box_frame: str                       # what predicted boxes are fractions of (bavit.yolos.box_frame)
    cat_ids: list[int | None] | None     # data-set category of each model class; None: mAP not measurable
    accuracy_note: str | None            # why mAP is not measured, where it is not
    calibration_note: str                # what int8 calibrated on
    reducer_options: dict[str, str]      # reducer label -> every option, as JSON (row field)
    same_network: list[str]              # detectors with the reference's network: timed by its cells
    inputs: str                          # folder of inputs-b{B}.npy: the timed batch of each size
    scoring_set: str | None              # folder of the encoded scored images (bavit.scoring); None: speed only
    built_on: str = ""                   # the building machine, where it is not this one (bundles)
    bundle: str = ""                     # the bundle measured, if any

    def pixels(self, batch: int) -> str:
        return str(Path(self.inputs) / f"inputs-b{batch}.npy")


@dataclass(frozen=True)
class MeasureOptions:
    """How this machine measures, not what: none of it changes a figure's meaning."""
    profile: bool = False
    profile_seconds: float = 3.0
    timeout: float = 1800.0
    accuracy_cache: str | None = None    # folder of scored results of unchanged artifacts on unchanged data


@dataclass
class Row:
    """One line of results.jsonl: one cell = target x precision x detector x reducer x keep x batch x scenario.

    Speed figures are medians over `rounds` interleaved rounds, spread over `processes` serving
    processes; `round_*` lists hold each round's figure, from which reports derive paired
    speed-up intervals. MiB = 2**20 bytes."""
    cell_id: str
    model_id: str                 # the artifact's identity (cell minus scenario)
    target: str
    precision: str
    reducer: str                  # bavit.reducers.ReducerSpec.label ("none": the dense detector)
    keep: float
    batch: int
    scenario: str
    status: str                   # ok | failed | unavailable
    error: str | None = None
    settings_key: str = ""
    run_id: str = ""
    model: str = ""
    detector: str = ""            # detector folder inside `model` (--weights)
    reference_detector: str = ""  # the run's first --detector: its dense fp32 cells are every row's reference
    data: str = ""
    data_classes: str = ""        # the data set's class names, in label order (comma-joined)
    box_frame: str = ""           # how boxes were decoded: fractions of the "input" or of the "image"
    threads: int = 0
    reducer_options: str = ""     # JSON: every option of the reducer, defaults included
    image_size: str = ""          # the model input, "HxW"
    started_at: str = ""
    built_on: str = ""            # the machine that built the artifacts, where it is not this one (a bundle's)
    bundle: str = ""              # the bundle measured (bench.measure), if any
    # -- build -------------------------------------------------------------------------------
    recipe: str | None = None
    recipe_settings: str | None = None
    fp32_kept: str | None = None
    ov_int8_float: str | None = None          # OpenVINO int8: the precision its float layers run in (f32, bf16)
    calibration: str | None = None
    convert_s: float | None = None
    artifact_bytes: int | None = None
    artifact_cached: bool | None = None
    artifact: str | None = None
    tokens_kept: int | None = None
    tokens_total: int | None = None
    reducer_mapping: str | None = None        # how keep became the reducer's token budget
    ideal_speedup: float | None = None        # dense token-layers over this model's (classifier included)
    # -- cold start (the cell's own process) --------------------------------------------------
    load_s: float | None = None               # read + compile/load of the model
    first_inference_ms: float | None = None
    peak_rss_mib: float | None = None
    baseline_rss_mib: float | None = None     # after the runtime and its plugins loaded
    rss_increase_mib: float | None = None
    torch_imported: bool | None = None
    executed_precision: str | None = None
    runtime_details: str | None = None
    mode: str | None = None                   # how the scenario runs on this runtime
    streams: int | None = None
    requests: int | None = None
    # -- steady state (interleaved rounds) -----------------------------------------------------
    rounds: int | None = None                 # every serving process's rounds together
    processes: int | None = None              # fresh serving processes the rounds were spread over
    throughput_ips: float | None = None       # median over rounds of images / elapsed
    throughput_min: float | None = None       # slowest and fastest round
    throughput_max: float | None = None
    throughput_lo: float | None = None        # 95 % interval over rounds (bench.stats.interval)
    throughput_hi: float | None = None
    latency_p50_ms: float | None = None       # pooled over every round's samples
    latency_p50_lo: float | None = None       # 95 % interval of the rounds' p50s, around latency_p50_ms
    latency_p50_hi: float | None = None
    latency_p90_ms: float | None = None       # None below its sample floor
    latency_p99_ms: float | None = None
    latency_samples: int | None = None
    round_throughput_ips: list[float] = field(default_factory=list)
    round_p50_ms: list[float] = field(default_factory=list)
    spread_pct: float | None = None           # (max - min) / median of round throughputs
    interval_pct: float | None = None         # how far the headline figure's interval reaches, % of it
    load_max: float | None = None             # highest 1-min load average seen in its slices
    noisy: bool | None = None
    noisy_reason: str | None = None
    timing_from: str | None = None           # cell_id whose rounds these speed figures are: the same network
                                             # (the reference detector's, other weights), timed once
    # -- work and efficiency (bavit.flops; bench.system.peak) ------------------------------------
    gflop_per_image: float | None = None     # matmul/conv/attention work of one image, BAViT included
    achieved_gops: float | None = None       # gflop_per_image x throughput_ips (int8 work counted as ops)
    peak_gops: float | None = None           # this precision's peak at the cell's threads
    peak_pct: float | None = None            # achieved / peak, %
    peak_basis: str | None = None            # the peak's formula and sources, or why there is none
    # -- profile (--profile: a separate process after the rounds; not in the figures above) ----
    profile_method: str | None = None
    profile_calls: int | None = None
    profile_wall_ms: float | None = None      # median wall time of one profiled call (sync, the cell's batch)
    profile_nodes_ms: float | None = None     # per-node median times, summed
    profile_vs_p50: float | None = None       # profile_nodes_ms / latency_p50_ms (single-stream cells)
    profile_plain_ms: float | None = None     # median unprofiled call of the profiling process (alternating)
    profile_vs_plain: float | None = None     # profile_nodes_ms / profile_plain_ms: the same minutes
    profile_stages: str | None = None         # JSON: stage (bavit.stages) -> ms per call
    profile_file: str | None = None           # the full per-node table (CSV)
    profile_note: str | None = None           # why there is no profile (unavailable / failed)
    # -- accuracy (apart from performance) ------------------------------------------------------
    map: float | None = None
    ap50: float | None = None
    ap75: float | None = None
    token_acc: float | None = None
    fg_recall: float | None = None
    fg_precision: float | None = None
    images: int | None = None
    token_images: int | None = None
    accuracy_from: str | None = None          # model_id whose outputs were scored
    accuracy_reused: bool | None = None       # from the cache: unchanged artifact, unchanged data
    accuracy_note: str | None = None
    detections_file: str | None = None
    # -- machine ---------------------------------------------------------------------------------
    sys_cpu: str = ""
    sys_arch: str = ""                 # the Python process's machine (platform.machine): x86_64, aarch64
    sys_cores: int = 0
    sys_isa: str = ""
    sys_ram_gb: float = 0.0
    sys_os: str = ""
    sys_python: str = ""
    sys_versions: str = ""
    sys_host: str = ""
    sys_background_reclaim: str = ""   # kernel reclaim that drops idle pages mid-run (bench.system)
    device_name: str = ""              # with --cluster: the device (Ray resource bavit-device:NAME) that measured it
    node_id: str = ""                  # with --cluster: the Ray node the device's measuring agent ran on


@dataclass(frozen=True)
class Accuracy:
    map: float | None
    ap50: float | None
    ap75: float | None
    token_acc: float | None
    fg_recall: float | None
    fg_precision: float | None
    images: int
    token_images: int
    reused: bool = False


@dataclass(frozen=True)
class ColdResult:
    cell_id: str
    ok: bool
    error: str | None = None
    load_s: float | None = None
    first_inference_ms: float | None = None
    peak_rss_mib: float | None = None
    baseline_rss_mib: float | None = None
    torch_imported: bool | None = None
    executed_precision: str | None = None
    runtime_details: str | None = None
    mode: str | None = None
    streams: int | None = None
    requests: int | None = None
    accuracy: Accuracy | None = None
    accuracy_note: str | None = None
    accuracy_s: float | None = None


@dataclass(frozen=True)
class Command:
    """Parent -> serving process: measure `cell_id` for `seconds`, or quit (cell_id None)."""
    cell_id: str | None
    seconds: float = 0.0


@dataclass(frozen=True)
class Reply:
    """Serving process -> parent: ready (slice None after loading), a slice, or one cell's error."""
    ok: bool
    slice: Slice | None = None
    error: str | None = None
    failed_cells: dict[str, str] = field(default_factory=dict)   # cell_id -> why it could not load
