"""A Hugging Face `YolosLayer` run by hand, in two halves, so that a reducer can act between
its attention and its MLP (where EViT and ToMe act) and see what the attention computed.
Same modules, same weights, same arithmetic as `YolosLayer.forward` with eager attention,
plus an optional additive bias on the attention logits per key (ToMe's proportional
attention: log of each token's size)."""
from __future__ import annotations

import torch
from transformers.models.yolos.modeling_yolos import YolosLayer

from bavit.yolos import _gather as gather  # noqa: F401 - the one token gather, re-exported for the reducers


def attend(layer: YolosLayer, x: torch.Tensor, key_bias: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x + attention(layernorm_before(x)) -> (that, probs (B, H, T, T), keys (B, H, T, d))."""
    sa = layer.attention.attention
    h = layer.layernorm_before(x)
    b, t, _ = h.shape
    shape = (b, t, sa.num_attention_heads, sa.attention_head_size)
    q = sa.query(h).view(shape).transpose(1, 2)
    k = sa.key(h).view(shape).transpose(1, 2)
    v = sa.value(h).view(shape).transpose(1, 2)
    logits = torch.matmul(q, k.transpose(2, 3)) * sa.scaling
    if key_bias is not None:
        logits = logits + key_bias[:, None, None, :]
    probs = logits.softmax(dim=-1)
    context = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, sa.all_head_size)
    return x + layer.attention.output(context, h), probs, k


def feed_forward(layer: YolosLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's second half: x + MLP(layernorm_after(x))."""
    return layer.output(layer.intermediate(layer.layernorm_after(x)), x)


def encoder_unfit(config) -> str | None:
    """Why a reducer acting inside the encoder cannot run on a detector of this config, or
    None. Such reducers change the token count between layers; mid-position embeddings (added
    after every layer, one per input token) would no longer line up. They run YOLOS layers by
    hand: another detector family is refused."""
    family = getattr(config, "model_type", "yolos")
    if family != "yolos":
        return (f"this reducer acts inside a YOLOS encoder; a {family} detector takes reducers that prune before "
                "the encoder (bavit, random)")
    if getattr(config, "use_mid_position_embeddings", False):
        return ("this reducer acts inside the encoder and needs a detector without mid-position embeddings "
                "(use_mid_position_embeddings=False)")
    return None


def check_in_encoder(detector) -> None:
    why = encoder_unfit(detector.config)
    if why:
        raise ValueError(why)