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
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from bavit.reducers import NAMES as REDUCER_NAMES
from bench.build import BuildPlan, build_phase
from bench.cells import Cell, enumerate_cells, finished_cells, has_rows, start_over
from bench.contracts import SCENARIOS, RunSettings, digest
from bench.measure import Measure, MeasureOptions, MeasurePlan
from bench.procs import Children
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


def parse_args(argv: list[str] | None, prog: str = "python -m bench.run", description: str | None = None
               ) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__,
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


@dataclass
class Prepared:
    """A command line resolved and checked, with what every phase reads written to disk."""
    args: argparse.Namespace
    out: Path
    work: Path
    logs: Path
    cache: Path
    cells: list[Cell]
    todo: list[Cell]                     # cells not yet recorded (--resume)
    build: BuildPlan
    measure: MeasurePlan
    run_id: str
    timing: dict[str, float]


def prepare(args: argparse.Namespace, argv: list[str] | None, inputs: Path | None = None,
            record: bool = True) -> Prepared:
    """Everything up to the build: the options checked, weights and data resolved, the timed
    batches (into `inputs`, default the run's work folder) and the scored images encoded. Any
    bad input raises UsageError (one line) before work starts."""
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
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    out: Path = plan["out"]
    if args.force:
        start_over(out)
    work, logs = out / "work", out / "logs"
    work.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    from bavit.data.synthetic import cache_root
    cache = Path(args.cache) if args.cache else cache_root() / "artifacts"
    try:
        dataset = load_dataset(args.data, args.split, size=size)
        if len(dataset) == 0:
            raise DataError(f"the {args.split} split has no images")
        _write_inputs(dataset, size, sorted({1} | set(plan["batches"])), inputs or work)
    except DataError as err:
        raise UsageError(f"--data {args.data}: {err}") from None
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
    if record:
        (out / "run.json").write_text(json.dumps({"argv": sys.argv if argv is None else argv, "model": label,
                                                  "settings": asdict(settings), "settings_key": settings.key,
                                                  "cells": [c.cell_id for c in cells]}, indent=1))
    todo = [c for c in cells if c.cell_id not in done]
    if len(todo) < len(cells):
        print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already recorded", file=sys.stderr)
    timing: dict[str, float] = {}
    build_plan, measure_plan = plans(args, settings, label, size, model_info, dataset, cat_ids, accuracy_note, calib,
                                     plan["reducers"], cache, inputs or work, unfit, same_network, timing)
    return Prepared(args, out, work, logs, cache, cells, todo, build_plan, measure_plan, run_id, timing)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    _quiet_import_noise()
    try:
        p = prepare(args, argv)
    except UsageError as err:
        print(f"bench.run: error: {err}", file=sys.stderr)
        return 2
    measure = Measure(p.measure, MeasureOptions(args.profile, args.profile_seconds, args.timeout,
                                                str(p.cache / "accuracy")), p.out, p.run_id, fingerprint())
    measure.timing.update(p.timing)
    built, ok_cells, not_built = build_phase(p.todo, p.build, p.work, p.logs, measure.timing)
    for nb in not_built:
        measure.write(measure.row(nb.cell, nb.status, error=nb.error))
    failed = measure.run(ok_cells, built)
    (p.out / "timing.json").write_text(json.dumps(measure.timing, indent=1))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in measure.timing.items()), file=sys.stderr)
    if not args.no_report:
        _report(p.out, args)
    return 1 if failed else 0


def plans(args, settings: RunSettings, label: str, size: tuple[int, int], model_info: dict, dataset, cat_ids,
          accuracy_note: str | None, calib: dict, reducers: list, cache: Path, work: Path,
          unfit: dict[tuple[str, str, float], str], same_network: set[str], timing: dict[str, float] | None = None
          ) -> tuple[BuildPlan, MeasurePlan]:
    """The command line, resolved, as the two typed plans the build and the measuring side
    take (the measuring one is what a bundle's manifest carries)."""
    from bavit.reducers import dense

    specs = [dense(), *reducers]
    build = BuildPlan(label, args.image_size, size, {r.label: r.text for r in specs}, args.data, calib["split"],
                      calib["skip"], args.calib_images, str(cache), args.profile, args.build_jobs, args.timeout,
                      args.threads, {BuildPlan.unfit_key(*k): v for k, v in unfit.items()})
    scoring = None
    if args.images > 0:
        scoring = encode_scoring_set(dataset, args, size, model_info["patch"], cache, timing)
    measure = MeasurePlan(settings, size, list(dataset.categories), model_info["box_frame"], cat_ids, accuracy_note,
                          calib["note"], {r.label: json.dumps(r.as_dict(), sort_keys=True) for r in specs},
                          sorted(same_network), str(work), scoring)
    return build, measure


def encode_scoring_set(dataset, args, size: tuple[int, int], patch: int, cache: Path,
                       timing: dict[str, float] | None = None) -> str:
    """The accuracy pass's images, token targets and ground truth, encoded once per data,
    split, image count, labels, input size and patch into the cache; every scoring process
    (here, or on a device from a bundle) reads them from there with numpy alone (bavit.scoring)."""
    from bavit.scoring import META, SCORING_FORMAT
    from bavit.validate import encode_split
    from bench.system import data_fingerprint

    key = digest({"format": SCORING_FORMAT, "data": data_fingerprint(args.data, args.split), "images": args.images,
                  "labels": args.labels, "size": size, "patch": patch})[:24]
    folder = cache / "scoring" / key
    if not (folder / META).is_file():
        t0 = time.monotonic()
        indices = list(range(min(args.images, len(dataset))))
        tmp = folder.with_name(f"{key}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        encode_split(dataset, indices, size, patch, args.labels).save(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        if timing is not None:
            timing["encoding the scored images"] = time.monotonic() - t0
    return str(folder)


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
    return {"size": (h, w), "patch": patch, "num_labels": cfg.num_labels, "id2label": cfg.id2label,
            "box_frame": box_frame(cfg)}


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
        Children.kill_all()
        print("bench.run: interrupted; finished cells are in results.jsonl (rerun with --resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
