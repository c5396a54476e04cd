"""ExecuTorch int8 recipe: PT2E static quantization with ExecuTorch's XNNPACKQuantizer, the
graph then lowered to the XNNPACK delegate (targets.executorch_backend).

Settings and why:
- `get_symmetric_quantization_config(is_per_channel=True)`: int8 symmetric weights per output
  channel, int8 activations per tensor, static (calibrated) scales: the configuration
  XNNPACK's QS8 kernels take, and what ExecuTorch's own XNNPACK examples use.
- The token selector, the whole BAViT classifier and the detection heads stay float, as in
  the LiteRT recipe: the classifier's logits are the top-k's ranking key, and int8 steps in
  its layers tie and reorder tokens near the cut-off (with only its head float, keep 0.5 lost
  most of its mAP: docs/targets.md, ExecuTorch). The quantizer's filter function skips nodes
  traced inside these modules (XNNPACKQuantizer's `set_module_name(..., None)` is not
  supported).
- Calibration: the shared calibration set at the artifact's own batch (MinMax observers over
  the same images give the same scales at every batch).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from quant import in_modules
from quant.calibration import calibration_batches

NAME = "executorch-pt2e-xnnpack-int8"
FLOAT_MODULES = ("selector", "classifier", "detector.det.class_labels_classifier", "detector.det.bbox_predictor")
SETTINGS = {
    "quantizer": "executorch XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True)",
    "flow": "torch.export -> prepare_pt2e -> calibrate -> convert_pt2e -> torch.export -> XNNPACK lowering",
    "weights": "int8 symmetric per-channel",
    "activations": "int8 per-tensor, static",
    "float_modules": list(FLOAT_MODULES),
}
FP32_KEPT = ("token selector, the BAViT classifier, detection heads (class and box MLPs); LayerNorm, softmax, "
             "GELU and the attention matmuls as XNNPACK or the portable kernels run them in float")


def quantized_program(pipeline: Any, calibration: np.ndarray, batch: int) -> tuple[Any, dict]:
    """The calibrated, converted pipeline re-exported at `batch`: (ExportedProgram, settings)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from targets.litert_export import export_for_litert

    example = (torch.zeros(batch, 3, *pipeline.input_size),)
    module, rewrites = export_for_litert(pipeline, example)     # no aten::sort in ExecuTorch's kernels
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(lambda node: not in_modules(node, FLOAT_MODULES))
    module = prepare_pt2e(module, quantizer)
    batches = calibration_batches(calibration, batch)
    with torch.no_grad():
        for images in batches:
            module(torch.from_numpy(images))
    module = convert_pt2e(module)
    settings = dict(SETTINGS, calibration_images=len(batches) * batch, calibration_batch=batch,
                    sort_rewrites=rewrites)
    return torch.export.export(module, example), settings
