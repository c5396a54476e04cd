"""Shared fixtures: tiny random models (never the committed weights, which have their own test)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def make_tiny_pipeline(keep: float = 1.0, seed: int = 0, **config):
    """A ~1M-parameter pipeline with randomised embeddings (HF zero-inits them)."""
    import torch

    from bavit.classifier import TokenClassifier
    from bavit.pipeline import Pipeline, PruneConfig
    from bavit.yolos import PrunedYolos, init_embeddings, tiny_config

    torch.manual_seed(seed)
    det = PrunedYolos(tiny_config(**config)).eval()
    init_embeddings(det, seed=seed)
    cls = TokenClassifier.from_detector(det, 2)
    with torch.no_grad():  # a head that ranks tokens differently from zero
        cls.head.weight.normal_(0, 0.5)
    return Pipeline(det, cls, PruneConfig(keep=keep)).eval()


@pytest.fixture
def tiny_pipeline():
    return make_tiny_pipeline
