"""bench.run's command line: its options, and every check of them that needs no file read
(bench.plan resolves weights and data). bench.export takes the same options."""
from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bavit.reducers import NAMES as REDUCER_NAMES
from bench.cells import has_rows
from bench.contracts import SCENARIOS

PRECISIONS = ("fp32", "bf16", "int8")
PRUNE_AWARE = "detector-prune"   # the pruning-aware detector --detector auto adds beside `detector`
OV_INT8_FLOATS = ("f32", "bf16")


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
    from targets import DEFAULT_TARGETS, NAMES

    p.add_argument("--target", default="all",
                   help=f"{' | '.join(NAMES)} | all ({', '.join(DEFAULT_TARGETS)}), or a comma-separated list")
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
    p.add_argument("--rounds", type=int, default=4,
                   help="interleaved timing rounds in all, shared out over --processes (default 4)")
    p.add_argument("--processes", type=int, default=None,
                   help="fresh serving processes per target that the rounds are spread over, each loading and "
                        "warming up every cell of the target: an interval over one process's rounds misses "
                        "what a new process (memory layout, thread placement) changes (default 2, or 1 with "
                        "--rounds 1)")
    p.add_argument("--profile", action="store_true",
                   help="after each target's rounds, profile every cell in its own process: per-node times from "
                        "the runtime's profiler (OpenVINO PERF_COUNT; torch: the exported graph's nodes timed; "
                        "tflite, inductor: each stage built as its own artifact and timed) summed into stages "
                        "(reducer, embed, encoder, decoder, heads); profiles/*.csv and the "
                        "report's Profiles section. Speed figures stay those of the unprofiled rounds")
    p.add_argument("--profile-seconds", type=float, default=3.0, help="seconds of profiled calls per cell (default 3)")
    p.add_argument("--round-seconds", type=float, default=1.5,
                   help="timed seconds per cell per round, in two halves (default 1.5)")
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
    p.add_argument("--cluster", default=None,
                   help="a Ray cluster (ray://HEAD:10001, or auto): build here, ship the bundle, measure it on "
                        "the devices in --devices, each on the node that declares it (bench.cluster)")
    p.add_argument("--devices", default=None,
                   help="with --cluster: device names, comma-separated (a node declares one with "
                        "ray start --resources='{\"bavit-device:NAME\": 1}'), or auto: every declared one")
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
    if args.processes is None:
        args.processes = min(2, args.rounds)
    if not 1 <= args.processes <= args.rounds:
        raise UsageError(f"--processes must be between 1 and --rounds ({args.rounds}), got {args.processes}")
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
    out = Path(args.out) if args.out else Path("runs") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
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


def quiet_import_noise() -> None:
    """Importing transformers imports torchao, which logs that its CUDA-only kernels do not
    load and that it registers enums torch now handles: noise on a CPU machine that would
    come before every line of ours, errors included. Real errors still show."""
    import logging
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def terminate(signum, frame) -> None:
    """SIGTERM as KeyboardInterrupt: the commands' interrupt paths kill their children and say where the results are."""
    raise KeyboardInterrupt(f"signal {signum}")
