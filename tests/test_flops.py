"""Analytic work (bavit.flops) against a hand count, and the machine-peak formula
(bench.system.peak) on CPUs this test describes."""
from __future__ import annotations

import pytest
import torch

from bavit.detr import PrunedDetr, tiny_detr_config
from bavit.flops import image_flops
from bavit.pipeline import Pipeline, WeightsSource
from bavit.reducers import parse, reducer_class
from bavit.yolos import PrunedYolos, tiny_config


def _hand_count(h: int, layers: int, mlp: int, patch: int, patches: int, tokens: int, det: int, labels: int) -> int:
    """Patch embedding, then per layer q/k/v/out projections, QK^T and AV, the MLP; then the
    class and box MLPs (3 layers each) on the detection tokens. 2 FLOPs per multiply-add."""
    embed = 2 * patches * (3 * patch * patch) * h
    layer = 2 * tokens * h * (4 * h + 2 * mlp) + 2 * 2 * tokens * tokens * h
    heads = det * 2 * (h * h + h * h + h * (labels + 1)) + det * 2 * (h * h + h * h + h * 4)
    return embed + layers * layer + heads


@pytest.mark.parametrize("reducer,keep", [("none", 1.0), ("random", 0.5)])
def test_flops_match_a_hand_count(reducer, keep):
    torch.manual_seed(0)
    config = tiny_config(conv_stem=False, anchored_boxes=False, num_hidden_layers=3)
    det = PrunedYolos(config).eval()
    spec = parse(reducer)
    pipe = reducer_class(spec.name).create(det, keep, spec.typed_options(), WeightsSource(None, 0, "tiny"))
    kept = pipe.tokens_kept
    assert kept == (64 if keep == 1.0 else 32)
    # the random reducer prunes before the first layer: every layer sees [CLS] + kept + detection tokens
    expected = _hand_count(h=128, layers=3, mlp=512, patch=8, patches=64, tokens=1 + kept + 16, det=16, labels=4)
    assert image_flops(pipe, (64, 64)) == expected


def test_detr_is_counted_and_keeps_its_parameters_trainable():
    """DETR hands its query embeddings to the decoder layers as an argument, which the
    counter's module tracker refused (every DETR row had no work figure); pruning halves the
    encoder's tokens, so the pruned pipeline counts less."""
    torch.manual_seed(0)
    det = PrunedDetr(tiny_detr_config()).eval()
    trainable = [p.requires_grad for p in det.parameters()]
    assert any(trainable)
    work = {}
    for name, keep in (("none", 1.0), ("random", 0.5)):
        spec = parse(name)
        pipe = reducer_class(name).create(det, keep, spec.typed_options(), WeightsSource(None, 0, "detr-tiny"))
        work[name] = image_flops(pipe, (64, 64))
    dense, pruned = work["none"], work["random"]
    assert 0 < pruned < dense
    assert [p.requires_grad for p in det.parameters()] == trainable     # restored as they were


def test_attention_is_counted_on_cpu():
    """torch's counter has no formula for the CPU flash-attention kernel; without ours a
    transformer's attention would count zero."""
    torch.manual_seed(0)
    det = PrunedYolos(tiny_config(conv_stem=False, anchored_boxes=False, num_hidden_layers=1)).eval()
    pipe = Pipeline(det)
    with_attention = image_flops(pipe, (64, 64))
    tokens, h = 1 + 64 + 16, 128
    no_attention = _hand_count(128, 1, 512, 8, 64, tokens, 16, 4) - 4 * tokens * tokens * h
    assert with_attention - no_attention == 4 * tokens * tokens * h


AVX2 = {"avx2", "fma", "sse2"}
SPR = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}


@pytest.mark.parametrize("flags,precision,ops,note", [
    (AVX2, "fp32", 32, "AVX2 FMA"),
    (AVX2, "int8", 64, "AVX2 vpmaddubsw"),
    (AVX2, "bf16", 32, "no bf16 units: fp32's peak"),
    (SPR, "fp32", 64, "AVX-512 FMA"),
    (SPR, "bf16", 1024, "AMX-BF16"),
    (SPR, "int8", 2048, "AMX-INT8"),
    (SPR - {"amx_int8", "amx_bf16", "amx_tile"}, "int8", 256, "AVX512-VNNI"),
])
def test_peak_is_cores_x_clock_x_ops_per_cycle(monkeypatch, flags, precision, ops, note):
    from bench import system

    monkeypatch.setattr(system, "_cpuinfo", lambda: ("test cpu", set(flags)))
    monkeypatch.setattr(system, "clock_ghz", lambda: (2.5, "test clock"))
    monkeypatch.setattr(system.psutil, "cpu_count", lambda logical=True: 4 if logical else 2)
    p = system.peak(precision, threads=4)        # 4 threads on 2 physical cores: 2 count
    assert p.gops == pytest.approx(2 * 2.5 * ops)
    assert note in p.basis and "test clock" in p.basis and p.basis.startswith("2 cores x 2.50 GHz")


def test_peak_without_a_clock_says_why(monkeypatch):
    from bench import system

    monkeypatch.setattr(system, "_cpuinfo", lambda: ("test cpu", set(AVX2)))
    monkeypatch.setattr(system, "clock_ghz", lambda: (None, "no clock readable (cpufreq, /proc/cpuinfo)"))
    p = system.peak("fp32", threads=2)
    assert p.gops is None and "no clock readable" in p.basis
