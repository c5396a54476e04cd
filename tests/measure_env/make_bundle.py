"""Run by the main env (torch, converters) for the `measure` tox env: exports a small sweep's
bundle into OUT/bundle, and measures the same sweep with bench.run into OUT/ref, whose rows
the torch-free env's measurement must reproduce."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ["--weights", "weights/tiny", "--detector", "detector", "--target", "openvino,tflite,onnxruntime",
         "--precision", "fp32,int8", "--keep", "1.0,0.5", "--scenario", "single-stream,offline", "--batch", "2",
         "--images", "24", "--calib-images", "16", "--warmup", "0", "--rounds", "1", "--round-seconds", "0.1"]


def main(out: Path) -> None:
    for module, folder, extra in (("bench.export", "bundle", ["--force"]), ("bench.run", "ref", ["--force",
                                                                                               "--no-report"])):
        subprocess.run([sys.executable, "-m", module, *SWEEP, "--out", str(out / folder), *extra], cwd=ROOT,
                       check=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
