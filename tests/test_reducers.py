"""Token reducers (bavit.reducers): specs and options, keep 1.0 = the dense detector, the
hand-run YOLOS layer, random's seed, ToMe's merge, [CLS] and detection tokens never reduced,
the ToMe keep -> r mapping, and every reducer's artifact against eager on every target."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKEND_BATCH as BATCH

from bavit import reducers
from bavit.pipeline import WeightsSource
from bavit.reducers import _blocks, attention, parse, parse_list, reducer_class, tome
from bavit.reducers import random as random_reducer
from bavit.yolos import PrunedYolos, init_embeddings, tiny_config

TRAINING_FREE = ("random", "attention", "attention:fuse=true", "tome")
TRAINED = ("bavit", "bavit-shared")      # here with random heads (WeightsSource(None))


def _detector(seed: int = 0, **config) -> PrunedYolos:
    torch.manual_seed(seed)
    det = PrunedYolos(tiny_config(**config)).eval()
    init_embeddings(det, seed=seed)
    with torch.no_grad():  # heads that are not near-constant, so outputs differ when inputs do
        for head in (det.det.class_labels_classifier, det.det.bbox_predictor):
            head.layers[-1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 3))
    return det


def _pipeline(text: str, keep: float, det: PrunedYolos | None = None):
    spec = parse(text)
    return reducer_class(spec.name).create(det or _detector(), keep, spec.typed_options(),
                                           WeightsSource(None, 0, "tiny")).eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.from_numpy(np.random.default_rng(1).normal(size=(BATCH, 3, 64, 64)).astype(np.float32))


# -- specs ------------------------------------------------------------------------------------------
def test_specs_label_text_and_options():
    spec = parse("bavit:dilate=3,bg_share=0.25")
    assert spec.label == "bavit:bg_share=0.25,dilate=3"            # canonical: sorted, defaults left out
    assert parse(spec.text) == spec and dict(spec.options)["layers"] == 2
    assert parse("bavit").label == "bavit" and parse("attention:fuse=yes").typed_options().fuse is True
    specs = parse_list("bavit:dilate=3,bg_share=0.25,random,tome:r=4")
    assert [s.label for s in specs] == ["bavit:bg_share=0.25,dilate=3", "random", "tome:r=4"]
    with pytest.raises(ValueError, match="unknown reducer 'magic'"):
        parse("magic")
    with pytest.raises(ValueError, match="unknown option 'k=1' for tome"):
        parse("tome:k=1")
    with pytest.raises(ValueError, match="bg_share must be in"):
        parse("bavit:bg_share=1.5")
    with pytest.raises(ValueError, match="listed twice"):
        parse_list("random,random:seed=0")


# -- keep 1.0 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ("none",) + TRAINED + TRAINING_FREE)
def test_every_reducer_at_keep_1_is_the_dense_detector(text, pixels):
    det = _detector()
    pipe = _pipeline(text, 1.0, det)
    assert not pipe.prunes and pipe.ideal_speedup == 1.0
    with torch.no_grad():
        logits, boxes, scores = pipe(pixels)
        ref_logits, ref_boxes = det(pixels)
    assert torch.equal(logits, ref_logits) and torch.equal(boxes, ref_boxes)
    assert not scores.any()


def test_the_layer_run_in_two_halves_equals_the_hf_layer(pixels):
    det = _detector()
    x = det.embed(pixels)
    layer = det.det.vit.encoder.layer[0]
    with torch.no_grad():
        half, probs, keys = _blocks.attend(layer, x)
        mine = _blocks.feed_forward(layer, half)
        theirs = layer(x)
    assert torch.allclose(mine, theirs, atol=1e-5), float((mine - theirs).abs().max())
    assert probs.shape == (BATCH, 4, x.shape[1], x.shape[1]) and torch.allclose(probs.sum(-1), torch.ones(1))
    assert keys.shape == (BATCH, 4, x.shape[1], 32)


# -- random ------------------------------------------------------------------------------------------
def test_random_is_reproducible_by_seed():
    a, b = random_reducer.draw(64, 32, 0), random_reducer.draw(64, 32, 0)
    c = random_reducer.draw(64, 32, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 32 and 0 <= int(a.min()) and int(a.max()) < 64
    pipe = _pipeline("random:seed=1", 0.5)
    assert torch.equal(pipe.keep_idx, c)


# -- ToMe ----------------------------------------------------------------------------------------------
def test_tome_merge_conserves_mass_and_size():
    gen = torch.Generator().manual_seed(0)
    x, metric = torch.randn(2, 10, 8, generator=gen), torch.randn(2, 10, 4, generator=gen)
    size = torch.rand(2, 10, generator=gen) + 0.5
    merged, new_size = tome.merge(x, size, metric, 3)
    assert merged.shape == (2, 7, 8) and new_size.shape == (2, 7)
    assert torch.allclose(new_size.sum(1), size.sum(1))                                     # no patch lost
    assert torch.allclose((merged * new_size[..., None]).sum(1), (x * size[..., None]).sum(1), atol=1e-5)
    # a token identical to a partner merges into it first
    metric[:, 4] = metric[:, 5]
    _, sizes = tome.merge(x, torch.ones(2, 10), metric, 1)
    assert sorted(sizes[0].tolist()) == [1.0] * 8 + [2.0]


def test_tome_keep_maps_to_the_token_layers_of_pruning():
    n, layers = 256, 12
    for keep in (0.75, 0.5):
        k = round(keep * n)
        r = tome.r_for_keep(n, k, layers, 1)
        cost = tome.patch_token_layers(n, tome.schedule(n, layers, 1, r))
        assert cost <= layers * k < tome.patch_token_layers(n, tome.schedule(n, layers, 1, r - 1))
    pipe = _pipeline("tome", 0.5)
    assert pipe.r > 0 and "matches pruning to 32 tokens" in pipe.mapping
    assert pipe.tokens_kept == 64 - sum(pipe.merges) and pipe.ideal_speedup >= _pipeline("random", 0.5).ideal_speedup


def test_cls_and_detection_tokens_are_never_merged_or_dropped(pixels, monkeypatch):
    """ToMe's merge and EViT's top-k see the patch tokens only: [CLS] leaves every reduction
    first and the detection tokens last, unchanged by it."""
    d = tiny_config().num_detection_tokens
    seen = []
    real_merge, real_ff = tome.merge, attention.feed_forward

    def merge(x, size, metric, r):
        seen.append(x.shape[1])
        return real_merge(x, size, metric, r)

    monkeypatch.setattr(tome, "merge", merge)
    pipe = _pipeline("tome", 0.5)
    edges = []
    real_attend = tome.attend

    def attend(layer, x, bias=None):
        out = real_attend(layer, x, bias)
        edges.append((out[0][:, :1].clone(), out[0][:, -d:].clone()))
        return out

    def feed_forward(layer, x):
        first, last = edges[-1]
        assert torch.equal(x[:, :1], first) and torch.equal(x[:, -d:], last)
        return real_ff(layer, x)

    monkeypatch.setattr(tome, "attend", attend)
    monkeypatch.setattr(tome, "feed_forward", feed_forward)
    with torch.no_grad():
        pipe(pixels)
    patches = [64 - sum(pipe.merges[:i]) for i in range(len(pipe.merges)) if pipe.merges[i]]
    assert seen == patches                     # only patch tokens reach merge, every layer
    edges.clear()
    monkeypatch.setattr(attention, "attend", attend)
    monkeypatch.setattr(attention, "feed_forward", feed_forward)
    with torch.no_grad():
        for text in ("attention", "attention:fuse=true"):
            pipe = _pipeline(text, 0.5)
            pipe(pixels)
    assert len(edges) == 2


@pytest.mark.parametrize("text", TRAINING_FREE + TRAINED)
def test_reduced_pipelines_run_and_differ_from_dense(text, pixels):
    det = _detector()
    pipe = _pipeline(text, 0.5, det)
    assert pipe.prunes and pipe.mapping
    # a BAViT-2 as wide as the 4-layer tiny detector costs the token-layers it saves at keep 0.5
    assert pipe.ideal_speedup > 1.0 or (text == "bavit" and pipe.ideal_speedup == pytest.approx(1.0))
    with torch.no_grad():
        logits, boxes, scores = pipe(pixels)
        dense = det(pixels)
    assert logits.shape == dense[0].shape and boxes.shape == dense[1].shape and scores.shape == (BATCH, 64)
    assert not torch.allclose(logits, dense[0])
    assert bool(scores.any()) == pipe.scores_tokens


def test_in_encoder_reducers_refuse_mid_position_embeddings():
    torch.manual_seed(0)
    det = PrunedYolos(tiny_config(use_mid_position_embeddings=True)).eval()
    for text in ("attention", "tome"):
        with pytest.raises(ValueError, match="mid-position embeddings"):
            _pipeline(text, 0.5, det)
    assert _pipeline("random", 0.5, det).prunes      # before the encoder: the mid embeddings are gathered


def test_shared_head_is_trained_on_the_frozen_trunk_and_loads_only_onto_it(tmp_path, capsys):
    from bavit.reducers.shared import SharedHead
    from bavit.train import main

    det = _detector()
    det.save_pretrained(tmp_path / "detector")
    out = tmp_path / "bavit-shared2"
    argv = ["classifier", "--shared", str(tmp_path / "detector"), "--layers", "2", "--out", str(out),
            "--train-images", "16", "--batch", "8", "--steps", "3", "--val-images", "8", "--val-data-images", "8",
            "--eval-every", "0", "--threads", "1", "--warmup", "1"]
    assert main(argv) == 0
    head = SharedHead.from_pretrained(out, PrunedYolos.from_pretrained(tmp_path / "detector"))
    assert set(head.state_dict()) == {"layernorm.weight", "layernorm.bias", "head.weight", "head.bias"}
    assert "frozen first 2 layers" in (out / "CARD.md").read_text()
    with pytest.raises(ValueError, match="trained on another detector"):
        SharedHead.from_pretrained(out, _detector(seed=1))
    from bavit.reducers import build_pipeline
    pipe = build_pipeline(str(tmp_path), parse("bavit-shared"), 0.5)
    assert pipe.prunes and pipe.classifier.trunk == head.trunk
    with torch.no_grad():
        _, _, scores = pipe(torch.zeros(1, 3, 64, 64))
    assert scores.shape == (1, 64)


def test_registry_names_every_module():
    assert set(reducers.registry()) == set(reducers.NAMES)
