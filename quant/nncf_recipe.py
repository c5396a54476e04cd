"""OpenVINO int8 recipe: NNCF post-training quantization of the converted IR.

Settings and why:
- `model_type=TRANSFORMER`: adds the transformer patterns (no quantizers inside layer
  norm / softmax / GELU paths, SmoothQuant on the Linears); without it top-1 agreement
  fell sharply on the DeiT-Ti-sized detector (docs/targets.md, recipes).
- `preset=MIXED` (NNCF's default for transformers): weights int8 symmetric per-channel,
  activations asymmetric (u8) per-tensor, which suits post-GELU/post-softmax ranges.
  PERFORMANCE (symmetric activations) gave the same accuracy on the tiny model.
- `target_device=CPU`: the device the cells run on.
- `subset_size`: every calibration batch. Calibration images are grouped into batches of
  the IR's batch (8 for the dynamic-batch IR the harness builds), the remainder dropped
  (repeated to fill one batch when there are fewer images than the batch).
- `ignored_scope`: the detection heads (class and box MLPs) and the BAViT head stay fp32:
  quantized, they multiply the token-logit and box errors, and they are a few small MLPs over
  the detection tokens (no measurable latency). Figures in docs/targets.md, recipes.
Tolerance (tests/test_targets_torch_openvino.py, INT8_REL_TOL = 0.05 of the output's std,
boxes also mean abs <= 2e-3): random weights and random calibration images make this a
"still the same model" check, not an accuracy claim (its measured margin: docs/targets.md).

Everything else that NNCF quantizes (encoder Linears, attention matmuls where its patterns
allow, patch-embedding convolutions) runs in int8; layer norms, softmax, GELU and the kept
heads run in the float precision the runtime is told to use (see targets/openvino_backend.py:
f32 for int8 cells).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from quant.calibration import calibration_batches

if TYPE_CHECKING:
    import openvino as ov

NAME = "nncf-ptq-transformer"

# Regular expressions over OpenVINO node names, which carry the module path each node came from
# (targets.openvino_backend.name_by_module, in the TorchScript trace's `__module.<path>/` form).
HEAD_PATTERNS = (r"__module\.detector\.det\.bbox_predictor[./].*",
                 r"__module\.detector\.det\.class_labels_classifier[./].*")
BAVIT_HEAD_PATTERNS = (r"__module\.classifier\.head/.*",)

FP32_KEPT = ("detection heads (class and box MLPs), BAViT head; layernorms, softmax and GELU "
             "run in the runtime's float precision")

SETTINGS = {
    "algorithm": "nncf.quantize (PTQ, min-max statistics, SmoothQuant, fast bias correction)",
    "model_type": "transformer",
    "preset": "mixed",
    "target_device": "CPU",
    "fast_bias_correction": True,
    "subset_size": "all calibration batches",
    "calibration_batching": "batches of the IR's batch (8 when dynamic), remainder dropped",
    "weights": "int8 symmetric per-channel",
    "activations": "int8 asymmetric per-tensor",
    "ignored_scope": list(HEAD_PATTERNS + BAVIT_HEAD_PATTERNS),
}


def ignored_patterns(ov_model: "ov.Model") -> list[str]:
    """The head patterns that match this model. The detection heads must match (a renamed
    graph would otherwise silently quantize them); the BAViT head exists only with a classifier."""
    names = [op.get_friendly_name() for op in ov_model.get_ops()]
    patterns = []
    for pattern in HEAD_PATTERNS + BAVIT_HEAD_PATTERNS:
        regex = re.compile(pattern)
        if any(regex.fullmatch(n) for n in names):
            patterns.append(pattern)
        elif pattern in HEAD_PATTERNS:
            raise ValueError(f"no OpenVINO node matches detection-head pattern {pattern!r}")
    return patterns


def quantize(ov_model: "ov.Model", calibration: np.ndarray, batch: int,
             settings_out: dict | None = None) -> "ov.Model":
    """Returns the int8 model; `settings_out`, when given, receives the settings actually used
    (SETTINGS with the real subset size, image count and matched ignored scope)."""
    import nncf
    from nncf.common.logging import nncf_logger

    batches = calibration_batches(calibration, batch)
    patterns = ignored_patterns(ov_model)
    level = nncf_logger.level
    nncf_logger.setLevel("WARNING")  # its INFO lines list every ignored node
    try:
        quantized = nncf.quantize(
            ov_model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            target_device=nncf.TargetDevice.CPU,
            subset_size=len(batches),
            fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(patterns=patterns),
        )
    finally:
        nncf_logger.setLevel(level)
    if settings_out is not None:
        settings_out.update(SETTINGS, subset_size=len(batches), calibration_images=len(batches) * batch,
                            ignored_scope=patterns)
    return quantized
