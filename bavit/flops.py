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
    """FLOPs of `model` on one (1, 3, H, W) image; static shapes make it input-independent.
    Parameters stop requiring grad while it counts: the counter's module tracker hooks every
    module input that requires grad, and refuses a parameter handed to a submodule as an
    argument (DETR's query embeddings), which under no_grad has no grad function."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with counter() as fc:
            model(torch.zeros(1, 3, *input_size))
    finally:
        for p in params:
            p.requires_grad_(True)
    return int(fc.get_total_flops())
