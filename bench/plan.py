"""A command line made into the typed plans the build and the measuring side take: weights,
detectors and data resolved, every bad input a one-line UsageError before any work, the
timed batches and the scored images written once (bench.run and bench.export both start here)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.build import BuildPlan
from bench.cells import Cell, enumerate_cells, finished_cells, start_over
from bench.contracts import MeasurePlan, RunSettings, digest
from bench.options import PRUNE_AWARE, UsageError, check


def settings_of(args, label: str) -> RunSettings:
    return RunSettings(model=label, reference_detector=args.detector[0], image_size=args.image_size,
                       threads=args.threads,
                       data=args.data,
                       split=args.split, labels=args.labels, images=args.images, calib_images=args.calib_images,
                       rounds=args.rounds, round_seconds=args.round_seconds, warmup=args.warmup,
                       interleave=not args.no_interleave, ov_int8_float=args.ov_int8_float,
                       processes=args.processes,
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
        from bavit.detectors import resolve_weights
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
        from bavit.detectors import check_weights, random_scales
        for d, (_, folder) in zip(plan["detectors"], resolved):
            if folder is not None:
                check_weights(folder)   # a tensor its config does not make: one line naming file and tensor
            config = random_scales()[label.split(":", 1)[1]]() if folder is None else _config(folder)
            for spec in plan["reducers"]:
                why = reducer_class(spec.name).unfit(config) if min(plan["keeps"]) < 1.0 else None
                if why:
                    raise UsageError(f"--reducer {spec.label} with --detector {d} "
                                     f"({getattr(config, 'model_type', 'yolos')}): {why}")
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
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
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


def _config(det_dir: Path):
    from bavit.checkpoint import load_config
    return load_config(det_dir)


def _model_info(label: str, det_dir: Path | None, image_size: tuple[int, int] | None) -> dict:
    from bavit.detectors import patch_of, random_scales
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


