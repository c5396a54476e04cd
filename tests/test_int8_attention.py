"""quant/int8_attention.py against exact attention: self- and cross-attention (DETR's
decoder has fewer queries than keys), an additive mask, and the switch of a real
`transformers` model to it by name."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quant import int8_attention

REL_TOL = 0.05      # mean |x - exact| / std(exact): the int8 recipes' bound


def _rel(exact: torch.Tensor, got: torch.Tensor) -> float:
    return float((exact - got).abs().mean() / exact.std())


@pytest.mark.parametrize("n,m", [(37, 37), (10, 37)])
def test_matches_exact_attention_self_and_cross(n, m):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, 16, generator=g) * 2 for length in (n, m, m))
    exact = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    got, weights = int8_attention.int8_attention(None, q, k, v, None, scaling=16 ** -0.5)
    assert got.shape == (2, n, 3, 16) and weights is None
    assert _rel(exact, got) <= REL_TOL
    # int8 is not exact: a silent fall-back to float would also pass the bound, this would not
    assert _rel(exact, got) > 1e-4


def test_mask_is_honoured():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 20, 8, generator=g) for _ in range(3))
    mask = torch.zeros(1, 1, 20, 20)
    mask[..., 10:] = torch.finfo(torch.float32).min       # the second half of the keys is padding
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    got, _ = int8_attention.int8_attention(None, q, k, v, mask)
    assert _rel(exact, got) <= REL_TOL
    unmasked = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    assert _rel(unmasked, got) > 2 * _rel(exact, got)


def test_apply_switches_a_yolos_model_and_it_still_computes_the_same_function():
    from transformers import YolosConfig, YolosModel

    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[32, 32], patch_size=8, num_detection_tokens=4)
    model = YolosModel(config, add_pooling_layer=False).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact = model(x).last_hidden_state
        assert int8_attention.apply(model) >= 1
        assert model.config._attn_implementation == int8_attention.NAME
        got = model(x).last_hidden_state
    assert 1e-5 < _rel(exact, got) <= REL_TOL
