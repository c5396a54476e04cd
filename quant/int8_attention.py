"""int8 attention for the `inductor` int8 recipe: QK^T and PV as int8 GEMMs (`torch._int_mm`,
oneDNN's int8 GEMM on x86, VNNI or AMX), plugged in as a `transformers` attention
implementation, so every YOLOS, ViT (BAViT) and DETR attention module picks it up by name.

Why it exists: `X86InductorQuantizer` quantizes Linear and conv only, so the attention
matmuls stay fp32 flash attention, and on a VNNI CPU they become the largest part of an int8
encoder's time. Inductor's own int8 attention (torchao's `qscaled_dot_product` fusion) needs
a CPU kernel that torchao's PyPI wheel does not ship. This writes the same computation with
ops that the exported graph, Inductor and AOTInductor already have:

- Q, K, V quantized on the fly, symmetric int8 with one scale per (image, head) from its
  absolute maximum (dynamic: nothing to calibrate, and one image's outliers do not set
  another's scale).
- scores = Q K^T in int32; the row maximum is taken on the int32 scores (exact, and it
  spares a float pass), then exp((s - max) * scale) in float32.
- the softmax numerators, in (0, 1] with the row maximum at 1, are rounded to 7 bits
  (0..127, since `_int_mm` takes int8 on both sides) and normalised by the sum of the
  rounded values, so each row's weights still add up to one.
- P V in int32, scaled back to float32.

`torch._int_mm` is 2-D, so the graph holds one pair of GEMMs per (image, head): the batch
is static in every artifact, and the loop is unrolled at export."""
from __future__ import annotations

from typing import Any

NAME = "bavit-int8-attention"
SETTINGS = {
    "attention": "int8 QK^T and PV (torch._int_mm per image and head) where the CPU has VNNI/AMX, else fp32; "
                 "Q, K, V symmetric int8, dynamic per (image, head); softmax numerators 7-bit, renormalised; "
                 "exp in float32",
}


def int8_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any = None,
                   scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """The `transformers` attention-function contract: (B, H, N, D) query and (B, H, M, D)
    key and value in, (B, N, H, D) out; no attention weights (nothing here asks for them)."""
    import torch

    b, h, n, d = query.shape
    m = key.shape[2]
    scaling = d ** -0.5 if scaling is None else scaling
    qi, sq = _int8(query)
    ki, sk = _int8(key)
    vi, sv = _int8(value)
    qi, vi = qi.reshape(b * h, n, d), vi.reshape(b * h, m, d)
    kt = ki.reshape(b * h, m, d).transpose(1, 2)
    score_scale = (sq * sk * scaling).reshape(b * h)
    value_scale = sv.reshape(b * h)
    mask = None if attention_mask is None else attention_mask.expand(b, h, n, m).reshape(b * h, n, m)
    outs = []
    for i in range(b * h):
        s = torch._int_mm(qi[i], kt[i])
        if mask is None:
            e = torch.exp((s - s.amax(-1, keepdim=True)).float() * score_scale[i])
        else:                      # the row maximum must be that of the masked scores
            f = s.float() * score_scale[i] + mask[i]
            e = torch.exp(f - f.amax(-1, keepdim=True))
        e = torch.round(e * 127.0)
        total = e.sum(-1, keepdim=True)
        outs.append(torch._int_mm(e.to(torch.int8), vi[i]).float() * (value_scale[i] / total))
    out = torch.stack(outs).view(b, h, n, d)
    return out.transpose(1, 2).contiguous(), None


def _int8(x: Any) -> tuple[Any, Any]:
    """x (B, H, L, D) -> int8 values and their (B, H, 1, 1) scales."""
    import torch

    scale = x.abs().amax(dim=(-1, -2), keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale


def apply(model: Any) -> int:
    """Switch every `transformers` config in `model` to int8 attention; how many configs
    were switched."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, int8_attention)
    configs = {id(c): c for mod in model.modules()
               if (c := getattr(mod, "config", None)) is not None and hasattr(c, "_attn_implementation")}
    for config in configs.values():
        config._attn_implementation = NAME
    return len(configs)
