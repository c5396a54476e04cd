"""Builds the .tflite fixtures the tflite-runtime fallback test loads (main env: torch,
litert-torch, ai-edge-litert).

    PYTHONPATH=. python tests/tflite_runtime/make_artifacts.py [OUT]   # default: tests/tflite_runtime/fixtures

Writes OUT/fp32/ and OUT/int8/ (model.tflite + artifact.json, as targets.base.prepare writes
them) for a very small pruned pipeline (hidden 16, 2 layers, 32x32 input, keep 0.5, batch 2: ~150-170 KB
per model, small enough to commit), and OUT/reference.npz: the input and each artifact's outputs
as ai_edge_litert computes them (plus torch eager's, for information). Rebuild and commit
them after changing the backend's conversion or output layout; tests/test_targets_tflite.py
checks in the main env that the committed files still reproduce their reference outputs.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path(__file__).resolve().parent / "fixtures"
CONFIG = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=[32, 32])
KEEP, BATCH, SEED = 0.5, 2, 0


def build_pipeline():
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_pipeline

    pipeline = make_tiny_pipeline(keep=KEEP, seed=SEED, **CONFIG)
    with torch.no_grad():  # HF's 0.02-std head init gives near-constant outputs: widen it
        gen = torch.Generator().manual_seed(SEED)
        for head in (pipeline.detector.det.class_labels_classifier, pipeline.detector.det.bbox_predictor):
            for layer in head.layers:
                layer.weight.normal_(0, 0.2, generator=gen)
    return pipeline


def main(out: Path) -> None:
    if str(ROOT) not in sys.path:   # runnable as a plain script from any directory
        sys.path.insert(0, str(ROOT))
    import torch

    from bavit.pipeline import weights_key
    from targets.base import MANIFEST, Artifact, RuntimeOptions
    from targets.tflite_backend import TARGET

    pipeline = build_pipeline()
    rng = np.random.default_rng(SEED)
    size = pipeline.input_size
    calibration = rng.standard_normal((8, 3, *size)).astype(np.float32)
    pixels = rng.standard_normal((BATCH, 3, *size)).astype(np.float32)
    with torch.no_grad():
        eager = [t.numpy() for t in pipeline(torch.from_numpy(pixels))]
    ref = {"pixels": pixels, **{f"eager_{n}": a for n, a in zip(("logits", "boxes", "token_logits"), eager)}}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        for precision in ("fp32", "int8"):
            art = TARGET.prepare(pipeline, precision, BATCH, calibration if precision == "int8" else None,
                                 Path(cache), weights_key(pipeline))
            dest = out / precision
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(art.path, dest)
            manifest = dest / MANIFEST   # its absolute cache path -> relative (Artifact.load ignores it)
            manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "path": precision},
                                           indent=1, sort_keys=True))
            art = Artifact.load(dest)
            runner = TARGET.load(art, RuntimeOptions(1))
            for name, value in zip(("logits", "boxes", "token_logits"), runner(pixels)):
                ref[f"{precision}_{name}"] = value
            print(f"{precision}: {art.size_bytes} bytes, executed {runner.executed_precision}, "
                  f"built in {art.convert_s:.1f} s -> {dest}")
    np.savez(out / "reference.npz", **ref)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
