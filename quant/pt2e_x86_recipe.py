"""int8 for the `inductor` target: PT2E static quantization with torchao's X86InductorQuantizer,
lowered by Inductor (with freezing) to oneDNN int8 kernels: PyTorch's documented x86 int8 path.

    int8 attention (quant/int8_attention.py) -> torch.export ->
    prepare_pt2e(X86InductorQuantizer, default config) -> calibrate ->
    convert_pt2e -> torch.export -> aoti_compile_and_package(freezing, under no_grad)

- Weights int8 symmetric per output channel; activations uint8 per tensor, static ranges
  from the shared calibration set (quant/calibration.py), run in batches of the artifact's
  own static batch.
- Attention's two matmuls int8 as well (quant/int8_attention.py): the quantizer's default
  recipe covers Linear and conv only, which leaves fp32 flash attention as the largest part
  of an int8 encoder's time. Only where the CPU has an int8 dot-product unit (VNNI, AMX: the
  CPUs that are not `reduce_range`): elsewhere `torch._int_mm` runs a reference loop, and
  attention stays fp32 flash attention. Layers that a reducer runs by hand (`attention`,
  `tome`) keep their own fp32 attention.
- Kept float (FLOAT_MODULES), as in the other int8 recipes: the token selector (ranking
  logits and indices), BAViT's 1-output head (its logits are the ranking key) and both
  detection heads (small MLPs whose last layers are the outputs).
- Freezing under no_grad is what makes Inductor fuse the quantize/dequantize pairs into
  `onednn::qlinear_pointwise` / `qconv_pointwise`: without it the graph compiles to fp32
  GEMMs around (de)quantize steps and "int8" times fp32 (pytorch/ao#4566). The target reads
  the kernels the package calls back from its generated code, so an artifact that fell back
  says so in its executed precision.

Tolerance: mean |int8 - fp32| / std(fp32) per output <= 0.05 on the random tiny pipeline
(the bound the OpenVINO and torch int8 tests use); trained weights are judged by mAP."""
from __future__ import annotations

from typing import Any

import numpy as np

from quant import int8_attention

NAME = "pt2e-x86-inductor-static-int8"
FLOAT_MODULES = ("selector", "classifier.head", "detector.det.class_labels_classifier",
                 "detector.det.bbox_predictor")
SETTINGS = {
    "quantizer": "torchao X86InductorQuantizer, get_default_x86_inductor_quantization_config()",
    "weights": "int8 symmetric per output channel",
    "activations": "uint8 per tensor, static (calibrated)",
    "float_modules": list(FLOAT_MODULES),
    "inductor": {"freezing": True},
    **int8_attention.SETTINGS,
}
FP32_KEPT = ("token selector, BAViT token head, detection heads (class and box MLPs); LayerNorm, "
             "softmax's exp, GELU; attention where the CPU has no VNNI/AMX and in layers a reducer runs by "
             "hand, run in float")


def reduce_range() -> bool:
    """7-bit activations where the CPU has no int8 dot-product unit: oneDNN's AVX2 int8 GEMM
    (vpmaddubsw) adds pairs of u8 x s8 products in 16 bits, which saturates with 8-bit
    activations; VNNI/AMX accumulate in 32 bits."""
    from bench.system import _cpuinfo

    _, flags = _cpuinfo()
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def quantize(model: Any, calibration: np.ndarray, batch: int, reduced: bool) -> tuple[Any, int]:
    """The converted (int8 q/dq) GraphModule of `model` at a static `batch`, and the
    calibration batches it saw; `reduced`: 7-bit activations (`reduce_range`)."""
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from quant.calibration import calibration_batches

    h, w = calibration.shape[-2:]
    if not reduced:      # an int8 dot-product unit: torch._int_mm has a real kernel (else a reference loop)
        int8_attention.apply(model)
    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config(reduce_range=reduced))
    for name in FLOAT_MODULES:
        quantizer.set_module_name_qconfig(name, None)
    graph = torch.export.export(model, (torch.zeros(batch, 3, h, w),)).module()
    graph = prepare_pt2e(graph, quantizer)
    batches = calibration_batches(calibration, batch)
    with torch.no_grad():
        for images in batches:
            graph(torch.from_numpy(images))
    return convert_pt2e(graph), len(batches)
