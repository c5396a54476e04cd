"""Shared fixtures: tiny random models (never the committed weights, which have their own test)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def make_tiny_pipeline(keep: float = 1.0, seed: int = 0, widen_heads: bool = False, **config):
    """A ~1M-parameter pipeline with randomised embeddings (HF zero-inits them). With
    `widen_heads`, the heads' last layers are randomised too: HF's init leaves class logits
    near-constant and ours zeroes the box layer, so backend comparisons would prove little."""
    import torch

    from bavit.classifier import TokenClassifier
    from bavit.reducers.bavit import BavitPipeline
    from bavit.yolos import PrunedYolos, init_embeddings, tiny_config

    torch.manual_seed(seed)
    det = PrunedYolos(tiny_config(**config)).eval()
    init_embeddings(det, seed=seed)
    cls = TokenClassifier.from_detector(det, 2)
    with torch.no_grad():  # a head that ranks tokens differently from zero
        cls.head.weight.normal_(0, 0.5)
        if widen_heads:
            gen = torch.Generator().manual_seed(seed + 3)
            for head in (det.det.class_labels_classifier, det.det.bbox_predictor):
                head.layers[-1].weight.normal_(0, 0.5, generator=gen)
    return BavitPipeline(det, cls, keep).eval()


# -- backend tests share these: tiny pipelines at two keep ratios, batch 2 -------------------
BACKEND_BATCH = 2
BACKEND_KEEPS = (1.0, 0.5)


@pytest.fixture(scope="module")
def pipes():
    return {keep: make_tiny_pipeline(keep, widen_heads=True) for keep in BACKEND_KEEPS}


def eager_outputs(pipe, pixels):
    """The pipeline's own (logits, boxes, token_logits) on `pixels`: what every backend is held to."""
    import torch

    with torch.no_grad():
        return [t.numpy() for t in pipe(torch.from_numpy(pixels))]


@pytest.fixture(scope="module")
def reference(pipes, pixels):
    return {keep: eager_outputs(p, pixels) for keep, p in pipes.items()}


@pytest.fixture(scope="module")
def pixels():
    import numpy as np
    return np.random.default_rng(1).normal(size=(BACKEND_BATCH, 3, 64, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def calib():
    import numpy as np
    return np.random.default_rng(0).normal(size=(8, 3, 64, 64)).astype(np.float32)


@pytest.fixture
def tiny_pipeline():
    return make_tiny_pipeline
