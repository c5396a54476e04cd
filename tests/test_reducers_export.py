"""Each training-free reducer's fp32 artifact against eager, on every target, at keep 0.5
(the BAViT pipeline has its own backend tests). Twenty conversions of the tiny model.
ToMe runs at keep 0.25 on a 6-layer detector, whose schedule merges down to one patch token
(sets of one, every A token merged): the shapes that once failed LiteRT's lowering."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import BACKEND_BATCH as BATCH
from test_reducers import _detector, _pipeline

from targets import get_target
from targets.base import RuntimeOptions

pytestmark = pytest.mark.slow
FP32_TOL = {"logits": 1e-3, "boxes": 1e-4}   # max abs diff vs eager, as the backend tests


@pytest.mark.parametrize("target", ["torch", "openvino", "tflite", "onnxruntime", "executorch"])
@pytest.mark.parametrize("text", ["random", "attention:fuse=true", "tome", "bavit-shared"])
def test_reducer_artifact_matches_eager(text, target, tmp_path):
    t = get_target(target)
    why = t.available() or t.build_unavailable()
    if why:
        if os.environ.get("BAVIT_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"{target}: {why}")
        pytest.skip(f"{target}: {why}")
    pipe = _pipeline(text, 0.25, _detector(num_hidden_layers=6)) if text == "tome" else _pipeline(text, 0.5)
    pixels = np.random.default_rng(1).normal(size=(BATCH, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = [o.numpy() for o in pipe(torch.from_numpy(pixels))]
    art = t.prepare(pipe, "fp32", BATCH, None, tmp_path, "tiny-seed0")
    assert pipe.name in art.path.name
    out = get_target(target).load(art, RuntimeOptions(1, batch=BATCH))(pixels)
    for name, r, o in zip(FP32_TOL, ref, out):
        diff = float(np.abs(r - o).max())
        assert diff <= FP32_TOL[name], (name, diff)


@pytest.mark.parametrize("target", ["torch", "openvino", "tflite", "onnxruntime"])
def test_non_square_bavit_pipeline_exports(target, tmp_path):
    """A detector and its BAViT both re-gridded for a 48x96 input (what `--image-size 48x96`
    does): BAViT's position embeddings follow the detector's grid, and each target's
    artifact matches eager at that static non-square shape."""
    from bavit.classifier import TokenClassifier
    from bavit.reducers.bavit import BavitPipeline

    t = get_target(target)
    why = t.available() or t.build_unavailable()
    if why:
        pytest.skip(f"{target}: {why}")
    det = _detector()
    classifier = TokenClassifier.for_detector(det, 2)          # at the detector's 64x64
    with torch.no_grad():
        classifier.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    det.resize_input((48, 96))
    classifier.resize_input((48, 96))
    assert classifier.grid == det.grid == (6, 12)
    pipe = BavitPipeline(det, classifier.eval(), 0.5, BavitPipeline.Options()).eval()
    pixels = np.random.default_rng(1).normal(size=(BATCH, 3, 48, 96)).astype(np.float32)
    with torch.no_grad():
        ref = [o.numpy() for o in pipe(torch.from_numpy(pixels))]
    assert ref[2].shape == (BATCH, 72)
    art = t.prepare(pipe, "fp32", BATCH, None, tmp_path, "tiny-seed0-48x96")
    out = get_target(target).load(art, RuntimeOptions(1, batch=BATCH))(pixels)
    for name, r, o in zip(FP32_TOL, ref, out):
        diff = float(np.abs(r - o).max())
        assert diff <= FP32_TOL[name], (name, diff)
