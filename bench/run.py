"""python -m bench.run: benchmark BAViT-pruned YOLOS across targets, precisions, keep ratios
and batch sizes; write results.jsonl, report.csv and report.html into --out.

Every cell runs in fresh subprocesses: one builds the artifact (imports torch), one measures
it (imports only the runtime measured), so peak memory belongs to the cell alone and a crash
or hang of one cell is recorded as failed while the sweep goes on."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.cells import Cell, append_row, enumerate_cells, finished_cells
from bench.system import fingerprint

PRECISIONS = ("fp32", "bf16", "int8")


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="all", help="torch | openvino | tflite | all, or a comma-separated list")
    p.add_argument("--precision", default="fp32,int8",
                   help="comma-separated: fp32, bf16 (OpenVINO on CPUs with bf16), int8 (default: fp32,int8)")
    p.add_argument("--keep", default="1.0,0.75,0.5,0.25", help="keep ratios of patch tokens, each in (0, 1]")
    p.add_argument("--batch", default="1,8", help="batch sizes (each is its own static-shape model)")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    p.add_argument("--data", default="synthetic", help="synthetic | coco:PATH | voc:PATH (validation split)")
    p.add_argument("--split", default="val", help="split scored and timed (default val)")
    p.add_argument("--weights", default=None,
                   help="folder with detector/ and bavit2/ (default: the project's demo weights; "
                        "random:tiny or random:ti for untrained models, speed only)")
    p.add_argument("--image-size", type=int, default=None,
                   help="run the detector at N x N (stock HF YOLOS configs are not square; position "
                        "embeddings are interpolated as YOLOS does at other sizes)")
    p.add_argument("--bavit-layers", type=int, default=2, help="BAViT depth to load: bavit{N}/ (default 2)")
    p.add_argument("--detector", default="detector",
                   help="detector folder inside --weights, e.g. detector-sparse-keep0.5 (default detector)")
    p.add_argument("--bg-share", type=float, default=0.0, help="partial pruning: share of kept slots for background")
    p.add_argument("--dilate", type=int, default=0, help="post-processing convolution kernel over the token mask")
    p.add_argument("--images", type=int, default=500, help="images in the accuracy pass (0: speed only)")
    p.add_argument("--labels", choices=["masks", "boxes"], default=None,
                   help="token labels for token accuracy (default: masks when the data set has them)")
    p.add_argument("--calib-images", type=int, default=128, help="calibration images for int8 (default 128)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--min-iters", type=int, default=20, help="timed calls, at least")
    p.add_argument("--min-seconds", type=float, default=4.0, help="timed seconds, at least")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a cell's process is killed")
    p.add_argument("--cache", default=None, help="artifact cache (default: $BAVIT_CACHE/artifacts)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<UTC time>)")
    p.add_argument("--resume", action="store_true", help="skip cells already recorded ok/unavailable in --out")
    p.add_argument("--no-report", action="store_true", help="do not build report.csv/report.html")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> dict:
    """Everything that can be wrong with the command line, found before any work starts."""
    from targets import known_targets

    names = known_targets()
    targets = list(names[:3]) if args.target == "all" else [t.strip() for t in args.target.split(",") if t.strip()]
    for t in targets:
        if t not in names:
            raise UsageError(f"--target: unknown target '{t}' (choose from {', '.join(names)}, all)")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    for p in precisions:
        if p not in PRECISIONS:
            raise UsageError(f"--precision: unknown precision '{p}' (choose from {', '.join(PRECISIONS)})")
    keeps = _floats("--keep", args.keep)
    batches = _ints("--batch", args.batch)
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if not 0.0 <= args.bg_share < 1.0:
        raise UsageError(f"--bg-share must be in [0, 1), got {args.bg_share}")
    if args.dilate < 0 or (args.dilate > 1 and args.dilate % 2 == 0):
        raise UsageError(f"--dilate must be 0 (off), 1 or an odd kernel size, got {args.dilate}")
    for option, value, low in (("--images", args.images, 0), ("--calib-images", args.calib_images, 1),
                               ("--warmup", args.warmup, 0), ("--min-iters", args.min_iters, 1),
                               ("--bavit-layers", args.bavit_layers, 1)):
        if value < low:
            raise UsageError(f"{option} must be >= {low}, got {value}")
    if args.min_seconds < 0 or args.timeout <= 0:
        raise UsageError(f"--min-seconds must be >= 0 and --timeout > 0, got {args.min_seconds:g} and {args.timeout:g}")
    kind, _, path = args.data.partition(":")
    if kind not in ("synthetic", "coco", "voc") or (kind != "synthetic" and not path):
        raise UsageError(f"--data: expected synthetic, coco:PATH or voc:PATH, got '{args.data}'")
    if path and not Path(path).exists():
        raise UsageError(f"--data {args.data}: path not found: {path}")
    out = Path(args.out) if args.out else Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--out {out}: not writable ({err.strerror or err})") from None
    return {"targets": targets, "precisions": precisions, "keeps": keeps, "batches": batches, "out": out}


def _child(mode: str, spec: dict, run_dir: Path, slug: str, timeout: float, threads: int) -> dict:
    """Runs bench.worker in a new session (killed with its children on timeout or Ctrl-C)."""
    work = run_dir / "work"
    work.mkdir(exist_ok=True)
    spec_path, out_path = work / f"{slug}.{mode}.spec.json", work / f"{slug}.{mode}.out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH")])))
    log = open(run_dir / "logs" / f"{slug}.{mode}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bench.worker", mode, str(spec_path), str(out_path)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"ok": False, "error": f"timeout: {mode} did not finish in {timeout:g} s"}
    except BaseException:  # Ctrl-C / SIGTERM: take the cell's processes down with us
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        log.close()
    if out_path.is_file():
        return json.loads(out_path.read_text())
    return {"ok": False, "error": f"{mode} process died (exit code {proc.returncode}); see logs/{slug}.{mode}.log"}


def _quiet_import_noise() -> None:
    """Importing transformers imports torchao, which logs that its CUDA-only kernels do not
    load and that it registers enums torch now handles: noise on a CPU machine that would
    come before every line of ours, errors included. Real errors still show."""
    import logging
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    _quiet_import_noise()
    from bavit.data import DataError, load_dataset
    try:
        plan = check(args)
        from bavit.pipeline import resolve_weights
        label, det_dir, cls_dir = resolve_weights(args.weights, args.bavit_layers, args.detector)
        if det_dir is not None and cls_dir is None and min(plan["keeps"]) < 1.0:
            raise UsageError(f"--weights {label}: no bavit{args.bavit_layers}/ classifier to prune with "
                             f"(--keep {args.keep}; --bavit-layers picks bavitN/)")
        settings = _settings(args, label)
        if args.resume:
            _check_resumable(plan["out"], settings)
        model_info = _model_info(label, det_dir, args.image_size)
        size = model_info["size"]
    except UsageError as err:
        print(f"bench.run: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"bench.run: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from targets import get_target

    out: Path = plan["out"]
    (out / "logs").mkdir(exist_ok=True)
    from bavit.data.synthetic import cache_root
    cache = Path(args.cache) if args.cache else cache_root() / "artifacts"
    try:
        dataset = load_dataset(args.data, args.split, size=size)
        if len(dataset) == 0:
            raise DataError(f"the {args.split} split has no images")
        _write_inputs(dataset, size, plan["batches"], out / "work")
    except DataError as err:
        print(f"bench.run: error: --data {args.data}: {err}", file=sys.stderr)
        return 2
    from bavit.evaluate import category_map
    cat_ids = category_map(model_info["id2label"], model_info["num_labels"], dataset.categories, dataset.cat_ids)
    accuracy_note = None
    if cat_ids is None:
        accuracy_note = (f"model has {model_info['num_labels']} classes, data set {len(dataset.categories)}, "
                         "and its class names do not cover the data set's: mAP not measured")
    calib = _calibration(args, len(dataset))
    system = fingerprint()
    done = finished_cells(out) if args.resume else set()
    cells = enumerate_cells(plan["targets"], plan["precisions"], plan["keeps"], plan["batches"])
    (out / "run.json").write_text(json.dumps({"argv": sys.argv if argv is None else argv, "model": label,
                                              "settings": settings, "cells": [c.cell_id for c in cells]},
                                             indent=1))
    failed = 0
    todo = [c for c in cells if c.cell_id not in done]
    if len(todo) < len(cells):
        print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already recorded", file=sys.stderr)
    bar = tqdm(todo, desc="cells", unit="cell", dynamic_ncols=True)
    for cell in bar:
        started = time.time()
        row = {"cell_id": cell.cell_id, **cell.as_dict(), "threads": args.threads, "model": label,
               "data": f"{args.data}:{args.split}", "started_at": datetime.now(timezone.utc).isoformat(),
               "bavit_layers": args.bavit_layers, "detector": args.detector, "bg_share": args.bg_share,
               "dilate": args.dilate, "image_size": size, **system}
        target = get_target(cell.target)
        reason = target.available() or target.supports(cell.precision)
        if reason:
            row.update(status="unavailable", error=reason)
        else:
            row.update(_run_cell(cell, args, label, calib, size, out, cache, bar, accuracy_note, cat_ids))
        row["wall_s"] = round(time.time() - started, 2)
        failed += row["status"] == "failed"
        append_row(out, row)
    bar.close()
    if not args.no_report:
        _report(out)
    return 1 if failed else 0


def _run_cell(cell: Cell, args, label: str, calib: dict, size: int, out: Path, cache: Path, bar,
              accuracy_note: str | None, cat_ids: list[int | None] | None) -> dict:
    from targets import get_target
    from targets.base import Artifact

    target = get_target(cell.target)
    spec = {"target": cell.target, "precision": cell.precision, "batch": cell.batch, "weights": label,
            "bavit_layers": args.bavit_layers, "detector": args.detector, "image_size": args.image_size,
            "prune": {"keep": cell.keep, "bg_share": args.bg_share, "dilate": args.dilate},
            "calib_data": args.data, "calib_split": calib["split"], "calib_skip": calib["skip"],
            "calib_images": args.calib_images, "cache_dir": str(cache)}
    bar.set_description(f"{cell.cell_id} [build]")
    built = _child("build", spec, out, cell.slug, args.timeout, args.threads)
    if not built["ok"]:
        # a cached artifact needs no converter, so a missing one is known only now
        missing = target.build_unavailable()
        if missing:
            return {"status": "unavailable", "error": f"cannot build: {missing}"}
        return {"status": "failed", "error": f"build: {built['error']}"}
    art = Artifact.load(built["artifact"])
    row = {"recipe": art.recipe, "recipe_settings": json.dumps(art.recipe_settings, sort_keys=True),
           "calibration": calib["note"] if target.needs_calibration(cell.precision) else None,
           "fp32_kept": art.fp32_kept, "convert_s": art.convert_s, "artifact_bytes": art.size_bytes,
           "artifact_cached": built["cached"], "tokens_kept": built["tokens_kept"],
           "tokens_total": built["tokens_total"], "accuracy_note": accuracy_note}
    bar.set_description(f"{cell.cell_id} [measure]")
    mspec = {"target": cell.target, "artifact": built["artifact"], "prunes": built["prunes"],
             "threads": args.threads, "batch": cell.batch, "pixels": str(out / "work" / f"inputs-b{cell.batch}.npy"),
             "input_size": size, "patch": built["patch"], "data": args.data, "split": args.split,
             "labels": args.labels, "cat_ids": cat_ids, "images": 0 if accuracy_note else args.images,
             "warmup": args.warmup, "min_iters": args.min_iters, "min_seconds": args.min_seconds, "detections": str(out / "detections" / f"{cell.slug}.json")}
    measured = _child("measure", mspec, out, cell.slug, args.timeout, args.threads)
    if not measured["ok"]:
        return {**row, "status": "failed", "error": f"measure: {measured['error']}"}
    measured.pop("ok")
    return {**row, **measured, "status": "ok", "error": None}


def _settings(args, label: str) -> dict:
    """What a cell's figures depend on besides the cell itself: --resume may only add cells
    measured under the same settings to a run."""
    return {"model": label, "detector": args.detector, "image_size": args.image_size,
            "bavit_layers": args.bavit_layers, "bg_share": args.bg_share, "dilate": args.dilate,
            "threads": args.threads, "data": args.data, "split": args.split, "labels": args.labels,
            "images": args.images, "calib_images": args.calib_images}


def _check_resumable(out: Path, settings: dict) -> None:
    path = out / "run.json"
    try:
        before = json.loads(path.read_text()).get("settings") if path.is_file() else None
    except ValueError:
        raise UsageError(f"--resume: {path} is not valid JSON") from None
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before and before.get(k) != v]
    if changed:
        raise UsageError(f"--resume: {path} was measured with other settings ({'; '.join(changed)}); "
                         "choose another --out or remove the folder")


def _write_inputs(dataset, size: int, batches: list[int], work: Path) -> None:
    """The timed batch of each size, preprocessed once here, so measured processes time the
    same real images without loading the data set before their speed pass."""
    import numpy as np

    from bavit.data.preprocess import batch as preprocess_batch

    work.mkdir(exist_ok=True)
    for b in batches:
        pixels, _ = preprocess_batch(dataset, [i % len(dataset) for i in range(b)], size)
        np.save(work / f"inputs-b{b}.npy", pixels)


def _model_info(label: str, det_dir: Path | None, image_size: int | None) -> dict:
    if det_dir is None:
        from bavit.yolos import CONFIGS
        cfg = CONFIGS[label.split(":", 1)[1]]()
    else:
        from bavit.checkpoint import load_config
        cfg = load_config(det_dir)
    h, w = cfg.image_size
    if image_size is not None:
        if det_dir is None or image_size < cfg.patch_size or image_size % cfg.patch_size:
            raise UsageError(f"--image-size {image_size}: needs --weights with a detector folder and a "
                             f"multiple of its patch size ({cfg.patch_size})")
        h = w = image_size
    if h != w:  # stock HF YOLOS configs are e.g. 800x1333
        raise UsageError(f"--weights {label}: detector image_size {h}x{w} is not square; "
                         "the harness runs square letterboxed inputs: pass --image-size N")
    return {"size": h, "num_labels": cfg.num_labels, "id2label": cfg.id2label}


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


def _report(out: Path) -> None:
    try:
        from reports.build import build
        from reports.table import add_derived, load_results, summary_markdown
        build(out)
        print(summary_markdown(add_derived(load_results(out))))
        print(f"\nreport: {out / 'report.html'}")
    except Exception as err:  # the results are safe in results.jsonl whatever happens here
        print(f"bench.run: report failed: {type(err).__name__}: {err}", file=sys.stderr)


def main() -> None:
    try:
        sys.exit(run())
    except KeyboardInterrupt:
        print("bench.run: interrupted; finished cells are in results.jsonl (rerun with --resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
