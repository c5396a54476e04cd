"""python -m bench.ov_check RUN: the harness's OpenVINO figures against OpenVINO's own
`benchmark_app` on the very IRs of a run.

For each OpenVINO cell of RUN (or those named with --cell), on the cell's cached IR, with the
run's threads and the cell's precision hint, it alternates --pairs times: the harness's own
timed slice (bench.loop, the code the rounds run) and `benchmark_app` for --seconds:
- single-stream: `benchmark_app -hint latency -api sync`; compared: median latency;
- offline: `benchmark_app -hint throughput` (its default async mode, the optimal number of
  requests); compared: throughput (FPS = images/s).
Threads and the precision hint reach benchmark_app through -load_config (it refuses -nthreads
beside a hint), and the run's own input tensor through -i; the printed command is the one
that ran.
Alternating the two tools makes the machine's drift hit both alike; the ratio printed is the
median over pairs of harness/benchmark_app. It imports openvino only (never torch)."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from targets.base import SINGLE_STREAM

_MEDIAN = re.compile(r"Median:\s*([\d.]+)\s*ms")
_FPS = re.compile(r"Throughput:\s*([\d.]+)\s*FPS")


def benchmark_app() -> str:
    found = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(found).is_file():
        raise FileNotFoundError("benchmark_app not found (it ships with the openvino wheel)")
    return found


def app_command(xml: str, scenario: str, threads: int, precision_hint: str, seconds: float, batch: int,
                config_dir: Path, inputs: Path) -> list[str]:
    """benchmark_app refuses -nthreads beside a -hint (a UI rule of its own): threads and the
    precision hint go in through -load_config, as the harness sets them on compile. The IR
    has a dynamic batch: -shape fixes it to the cell's. It is fed the run's own input tensor
    (`-i inputs-bN.npy`, `-ip f32`: without it a 4-D input is taken for a uint8 image)."""
    from openvino import Core

    shape = list(Core().read_model(xml).inputs[0].get_partial_shape().get_min_shape())
    config = config_dir / f"ov_check-{threads}-{precision_hint}.json"
    config.write_text(json.dumps({"CPU": {"INFERENCE_NUM_THREADS": str(threads),
                                          "INFERENCE_PRECISION_HINT": precision_hint}}))
    cmd = [benchmark_app(), "-m", xml, "-d", "CPU", "-shape", str([batch, *shape[1:]]).replace(" ", ""),
           "-load_config", str(config), "-ip", "f32", "-i", str(inputs), "-t", f"{seconds:g}"]
    if scenario == SINGLE_STREAM:
        return cmd + ["-hint", "latency", "-api", "sync"]
    return cmd + ["-hint", "throughput"]


def run_app(cmd: list[str], scenario: str) -> float:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    match = (_MEDIAN if scenario == SINGLE_STREAM else _FPS).search(text)
    if out.returncode != 0 or match is None:
        tail = " ".join(text.strip().splitlines()[-3:])
        raise RuntimeError(f"benchmark_app failed (exit {out.returncode}): {tail}")
    return float(match.group(1))


def harness_figure(runner, pixels: np.ndarray, scenario: str, seconds: float) -> float:
    from bench.loop import run_slice

    s = run_slice("check", scenario, runner, pixels, seconds)
    return float(np.median(s.latencies_ms)) if scenario == SINGLE_STREAM else s.images / s.elapsed_s


def check_cell(row: dict, pixels_dir: Path, pairs: int, seconds: float) -> dict:
    from targets.base import Artifact, RuntimeOptions
    from targets.openvino_backend import TARGET

    artifact = Artifact.load(row["artifact"])
    settings = json.loads((pixels_dir.parent / "run.json").read_text())["settings"]
    options = RuntimeOptions(int(row["threads"]), row["scenario"], settings["ov_int8_float"], int(row["batch"]))
    runner = TARGET.load(artifact, options)
    hint = json.loads(row["runtime_details"])["config"]["INFERENCE_PRECISION_HINT"]
    inputs = pixels_dir / f"inputs-b{int(row['batch'])}.npy"
    pixels = np.load(inputs)
    from bench.loop import warm_up
    warm_up(row["scenario"], runner, pixels, 1.0)
    cmd = app_command(str(artifact.path / artifact.files[0]), row["scenario"], int(row["threads"]), hint, seconds,
                      int(row["batch"]), pixels_dir, inputs)
    ours, theirs = [], []
    for i in range(pairs):  # ABBA: harness, app, app, harness, ...
        order = ("h", "a") if i % 2 == 0 else ("a", "h")
        for who in order:
            if who == "h":
                ours.append(harness_figure(runner, pixels, row["scenario"], seconds))
            else:
                theirs.append(run_app(cmd, row["scenario"]))
    ratios = np.asarray(ours) / np.asarray(theirs)
    unit = "p50 ms" if row["scenario"] == SINGLE_STREAM else "img/s"
    return {"cell_id": row["cell_id"], "unit": unit, "harness": ours, "benchmark_app": theirs,
            "ratio_median": float(np.median(ratios)), "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()), "command": " ".join(cmd)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ov_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a bench.run folder")
    p.add_argument("--cell", action="append", default=None, help="cell_id to check (default: every OpenVINO cell)")
    p.add_argument("--pairs", type=int, default=2, help="harness / benchmark_app pairs per cell (default 2)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default 5)")
    args = p.parse_args(argv)
    path = args.run / "results.jsonl"
    if not path.is_file():
        print(f"bench.ov_check: error: no results.jsonl in {args.run}", file=sys.stderr)
        return 2
    rows = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        rows[r["cell_id"]] = r
    chosen = [r for r in rows.values() if r["target"] == "openvino" and r["status"] == "ok"
              and (args.cell is None or r["cell_id"] in args.cell)]
    if not chosen:
        print(f"bench.ov_check: error: no ok OpenVINO cell in {path}", file=sys.stderr)
        return 2
    results = []
    print("| cell | figure | harness | benchmark_app | harness / app [min-max] |\n|---|---|---:|---:|---:|")
    for row in chosen:
        res = check_cell(row, args.run / "work", args.pairs, args.seconds)
        results.append(res)
        print(f"| {res['cell_id']} | {res['unit']} | {np.median(res['harness']):.2f} | "
              f"{np.median(res['benchmark_app']):.2f} | {res['ratio_median']:.3f} "
              f"[{res['ratio_min']:.3f}-{res['ratio_max']:.3f}] |", flush=True)
    (args.run / "ov_check.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
