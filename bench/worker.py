"""What runs inside a cell's own subprocess: `python -m bench.worker build|measure SPEC OUT`.

`build` imports torch and writes the artifact. `measure` imports only the backend's runtime:
its process's peak RSS is the cell's memory figure. The parent passes a JSON spec and reads
a JSON result file, so nothing but files crosses the process boundary."""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """VmHWM: the peak RSS of this process image. Not ru_maxrss (nor the parent's wait4):
    Linux carries maxrss across fork + execve, so there it would be at least the RSS of
    the parent at fork time, e.g. a harness that has imported torch."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build(spec: dict) -> dict:
    from bavit.data import load_dataset
    from bavit.pipeline import PruneConfig, build_pipeline, weights_key
    from quant.calibration import calibration_images
    from targets import get_target

    target = get_target(spec["target"])
    pipeline = build_pipeline(spec["weights"], PruneConfig(**spec["prune"]), spec["bavit_layers"],
                              detector=spec["detector"], image_size=spec.get("image_size"))
    calib = None
    if target.needs_calibration(spec["precision"]):
        size = pipeline.input_size[0]
        # the synthetic train split is generated on demand: a small one is enough to draw from
        n = max(512, spec["calib_images"]) if spec["calib_data"] == "synthetic" else None
        calib_ds = load_dataset(spec["calib_data"], spec["calib_split"], size=size, n_images=n)
        calib = calibration_images(calib_ds, size, spec["calib_images"], seed=0, skip=spec["calib_skip"])
    art = target.prepare(pipeline, spec["precision"], spec["batch"], calib, Path(spec["cache_dir"]),
                         weights_key(pipeline))
    return {"artifact": str(art.path), "cached": art.cached, "prunes": pipeline.prunes,
            "tokens_kept": pipeline.tokens_kept,
            "tokens_total": pipeline.selector.num_tokens, "input_size": pipeline.input_size[0],
            "patch": pipeline.detector.config.patch_size, "num_labels": pipeline.detector.config.num_labels}


def speed(run, pixels: np.ndarray, warmup: int, min_iters: int, min_seconds: float) -> dict:
    """Warm-up, then timed calls until both a minimum count and a minimum duration are met."""
    for _ in range(warmup):
        run(pixels)
    lat = []
    start = time.perf_counter()
    while len(lat) < min_iters or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        run(pixels)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    ms = np.asarray(lat) * 1000
    return {"throughput_ips": len(pixels) * len(lat) / total, "latency_p50_ms": float(np.percentile(ms, 50)),
            "latency_p90_ms": float(np.percentile(ms, 90)), "latency_p99_ms": float(np.percentile(ms, 99)),
            "latency_min_ms": float(ms.min()), "iterations": len(lat)}


def measure(spec: dict) -> dict:
    from targets import get_target
    from targets.base import Artifact

    load_start = os.getloadavg()[0]
    target = get_target(spec["target"])
    artifact = Artifact.load(spec["artifact"])
    target.import_runtime()
    baseline = _rss_mb()
    runner = target.load(artifact, spec["threads"])
    # the timed batch comes prepared from the parent: no data set (annotation index, decoder)
    # is loaded before the speed pass, so the peak below is the runtime's and the model's
    pixels = np.load(spec["pixels"])
    result = speed(runner, pixels, spec["warmup"], spec["min_iters"], spec["min_seconds"])
    result.update(peak_rss_mb=_peak_mb(), baseline_rss_mb=baseline, executed_precision=runner.executed_precision,
                  runtime_details=json.dumps(runner.details, sort_keys=True, default=str))
    result["rss_increase_mb"] = result["peak_rss_mb"] - baseline
    result["torch_imported"] = "torch" in sys.modules  # by the runtime itself: no data set loaded yet
    if spec["images"] > 0 and spec.get("accuracy", True):
        try:  # the speed figures above stay recorded whatever the accuracy pass meets
            result.update(_accuracy(runner, spec))
        except Exception as err:
            result["accuracy_note"] = f"accuracy pass failed: {_one_line(err)}"
    result.update(load_start=load_start, load_end=os.getloadavg()[0], process_peak_rss_mb=_peak_mb())
    return result


def _accuracy(runner, spec: dict) -> dict:
    from bavit.data import load_dataset
    from bavit.validate import score

    size = spec["input_size"]
    dataset = load_dataset(spec["data"], spec["split"], size=size)
    indices = list(range(min(spec["images"], len(dataset))))
    acc = score(runner, dataset, size, spec["patch"], indices, batch=spec["batch"], label_mode=spec.get("labels"),
                cat_ids=spec.get("cat_ids"))
    det_path = Path(spec["detections"])
    det_path.parent.mkdir(parents=True, exist_ok=True)
    det_path.write_text(json.dumps(acc.pop("detections")))
    result = {k: acc[k] for k in ("map", "ap50", "ap75", "images")}
    # at keep 1.0 BAViT does not run: there are no token figures to report
    result.update({k: acc[k] if spec["prunes"] else None
                   for k in ("token_acc", "fg_recall", "fg_precision", "token_images")})
    result["detections_file"] = str(det_path)
    return result


def _one_line(err: Exception) -> str:
    line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {line}".rstrip(": ")


def main(argv: list[str]) -> int:
    mode, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = {"ok": True, **(build(spec) if mode == "build" else measure(spec))}
    except Exception as err:  # the parent records it; the sweep goes on
        result = {"ok": False, "error": _one_line(err),
                  "traceback": traceback.format_exc(limit=8)}
    Path(out_path).write_text(json.dumps(result, default=float))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
