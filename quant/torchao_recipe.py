"""PyTorch int8 recipe: torchao dynamic int8 activations x int8 weights on the encoder Linears.

`Int8DynamicActivationInt8WeightConfig`: weights int8 symmetric per output channel, computed
once; activations int8 symmetric per token (per row), scaled at run time, so no calibration
set is used (the shared calibration images are accepted and ignored). The matmul runs as
`torch._int_mm` with float rescaling around it.

Kept in fp32 (filter_fn):
- the detection heads (`class_labels_classifier`, `bbox_predictor` MLPs): they act on 16-100
  detection tokens only, so quantizing them saves nothing, and box coordinates are the
  outputs mAP is most sensitive to;
- the BAViT head (`classifier.head`, one output per token): its logits are ranked by top-k,
  so small errors change which tokens the detector sees;
- patch-embedding convolutions, layer norms, softmax and GELU: the config only targets
  `nn.Linear`.

In eager mode this is usually slower than fp32 on CPU (no fused int8 kernels without
torch.compile); the measured figures are in docs/targets.md, "Recipes: the figures behind
their docstrings".

Tolerance (tests/test_targets_torch_openvino.py, INT8_REL_TOL = 0.05 of the output's std,
boxes also mean abs <= 2e-3): per-token dynamic activation scales leave little error on
random weights (measured margins in docs/targets.md); trained weights with outlier channels
would do worse, which is what the benchmark's mAP shows. The bound flags a broken recipe
(wrong layers, lost scales), not noise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bavit.pipeline import Pipeline

NAME = "torchao-int8-dynamic"

# Module prefixes (fully qualified names inside Pipeline) whose Linear layers stay fp32.
KEEP_FP32 = ("detector.det.class_labels_classifier", "detector.det.bbox_predictor", "classifier.head")

FP32_KEPT = "detection heads, BAViT head, patch embedding convs, layernorms"

SETTINGS = {
    "config": "Int8DynamicActivationInt8WeightConfig",
    "weights": "int8 symmetric per-channel",
    "activations": "int8 symmetric per-token, dynamic (computed at run time)",
    "layers": "nn.Linear of both encoders (detector and BAViT)",
    "kept_fp32_modules": list(KEEP_FP32),
    "calibration": "none (dynamic quantization)",
    "execution": "eager",
}


def _quantize_this(module, fqn: str) -> bool:
    from torch import nn

    if not isinstance(module, nn.Linear):
        return False
    return not any(fqn == p or fqn.startswith(p + ".") for p in KEEP_FP32)


def quantize(pipeline: "Pipeline") -> "Pipeline":
    """Quantizes `pipeline` IN PLACE (pass a copy to keep the fp32 one) and returns it."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(pipeline, Int8DynamicActivationInt8WeightConfig(), filter_fn=_quantize_this)
    # torchao binds a functools.partial as each quantized Linear's `extra_repr`: cosmetic, and
    # it makes the module unpicklable (torch.save fails). Drop it; the class method remains.
    for module in pipeline.modules():
        module.__dict__.pop("extra_repr", None)
    return pipeline


def quantized_layers(pipeline: "Pipeline") -> int:
    """How many Linear layers hold torchao int8 weights."""
    from torch import nn

    return sum(1 for m in pipeline.modules()
               if isinstance(m, nn.Linear) and type(m.weight).__name__ != "Parameter"
               and type(m.weight).__module__.startswith("torchao"))
