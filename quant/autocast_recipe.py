"""bf16 for the torch-based targets (`torch`, `inductor`): the pipeline exported under CPU
autocast, so matmuls and convolutions run in bf16 and what autocast keeps float (norms,
softmax, reductions, the selector's sort and top-k) stays float32; outputs are cast back to
float32. A cell needs bf16 units (AVX512-BF16 or AMX-BF16), where oneDNN runs bf16 natively;
elsewhere it would emulate bf16, so such cells are unavailable (they still build)."""
from __future__ import annotations

from typing import Any

NAME = "autocast-bf16"
SETTINGS = {"autocast": "cpu bfloat16", "outputs": "float32"}
FP32_KEPT = "what CPU autocast keeps in float32: norms, softmax, reductions, the selector's sort and top-k"
ARTIFACT_FIELDS = {"recipe": NAME, "recipe_settings": SETTINGS, "fp32_kept": FP32_KEPT}   # what a bf16 build records


def unavailable() -> str | None:
    """None where this CPU has bf16 units, else why a bf16 cell would not measure bf16."""
    from bench.system import bf16_units

    if bf16_units():
        return None
    return "no bf16 units on this CPU (AVX512-BF16 / AMX-BF16): oneDNN would emulate bf16"


def wrap(model: Any) -> Any:
    """`model` under CPU bf16 autocast with float32 outputs, as one exportable module."""
    import torch

    class Autocast(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs = self.inner(pixel_values)
            return tuple(o.float() for o in outs)

    return Autocast(model).eval()
