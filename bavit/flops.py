"""Analytic work of a pipeline: FLOPs of one image as torch's `FlopCounterMode` counts them.

Counted: matmuls (mm, addmm, bmm, baddbmm), convolutions and attention, 2 per multiply-add
(so int8 cells count the same work as ops). Not counted: elementwise ops, norms, softmax,
gathers and sorts; they cost time but no matrix-unit work, and their share of the latency is
what a profile shows. On CPU, `scaled_dot_product_attention` dispatches to
`_scaled_dot_product_flash_attention_for_cpu`, which torch's counter has no formula for (it
would count attention as zero): it is counted with torch's own sdpa formula."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


_CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}


def counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_CPU_SDPA)


@torch.no_grad()
def image_flops(model: torch.nn.Module, input_size: tuple[int, int]) -> int:
    """FLOPs of `model` on one (1, 3, H, W) image; static shapes make it input-independent."""
    with counter() as fc:
        model(torch.zeros(1, 3, *input_size))
    return int(fc.get_total_flops())
