"""LiteRT int8 recipe: PT2E static post-training quantization with litert-torch's quantizer.

    torch.export -> sort rewrite (targets.tflite_backend) -> prepare_pt2e(PT2EQuantizer with
    get_symmetric_quantization_config(is_per_channel=True)) -> calibrate -> convert_pt2e(
    fold_quantize=False) -> litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=q))

- Weights: int8, symmetric, per output channel (min/max). Activations: int8 per tensor,
  HistogramObserver ranges. litert-torch annotates linear, conv(+relu), add, mul, cat and
  pooling; LayerNorm, softmax, GELU, the attention matmuls and the token gather stay float
  (the interpreter dequantizes around them), so the model is mixed "i8+f32".
- Calibration: every image of the shared calibration set (quant/calibration.py), in batches
  of CALIB_BATCH through a graph exported at that batch (a remainder smaller than a batch is
  dropped; a set smaller than one batch is repeated to fill one). The observed ranges are
  then loaded into the observers of the graph exported at the artifact's own static batch:
  the int8 artifacts of one model at different batch sizes carry the same scales and zero
  points, so they are one quantized model (scored once, like fp32) and are calibrated once
  per build process (HistogramObserver calibration costs about as much as a conversion).
- Kept in float (FLOAT_MODULES): the token selector (ranking logits, +1e4 foreground
  offsets and indices; int8 would tie and reorder tokens), the whole BAViT classifier (its
  logits are the ranking key: int8 steps tie tokens near the top-k cut-off; and its two narrow
  layers gain nothing from int8 in the interpreter: a quantize/dequantize pair around every
  float op they hold costs more than their matmuls save, so the int8 classifier ran slower
  than the float one) and both detection heads (small MLPs; their last layers produce the
  logits and box offsets directly, which int8 steps would coarsen for little speed). The
  detector's transformer blocks - almost all the compute - are int8.

litert-torch's own `set_module_name`/`set_module_type` filters do not match torch 2.13's
`nn_module_stack` format (keys "L__self__x.y", types as strings) and `set_module_name(...,
None)` is refused, so `_FloatRegionQuantizer` filters nodes by module path itself.

Tolerance: TOLERANCE bounds max |int8 - fp32| / max |fp32| per output (int8 .tflite against
the fp32 .tflite of the same pipeline: what quantization alone changes). Measured on the tiny
random test pipeline (keep 0.5, batch 2, 8 N(0,1) calibration images, N(0,1) inputs):
logits 0.7%, boxes 0.05%, token logits 0.6%; with wider heads (all head layers std 0.2)
0.8% / 1.6% / 0.5%, and 2.4% / 4.9% / 1.5% when the heads are quantized too (selector alone
in float) - why they stay float. 5% leaves ~3-7x margin. No kept token changed at the top-k
cut-off in these runs; one that did would move the detector's input, so on trained weights
judge int8 by the benchmark's mAP, not by this bound. Random weights have no learned outlier
channels, so this checks "quantized and still the same model", not accuracy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quant import in_modules
from quant.calibration import calibration_batches

NAME = "litert-pt2e-static-int8"
CALIB_BATCH = 8
FLOAT_MODULES = ("selector", "classifier", "detector.det.class_labels_classifier",
                 "detector.det.bbox_predictor")
SETTINGS = {
    "per_channel": True,
    "symmetric": True,               # weights; activations are per-tensor affine int8
    "calibration_images": 128,       # quant.calibration.DEFAULT_IMAGES; the artifact records the count used
    "calibration_batch": CALIB_BATCH,
    "activation_observer": "histogram",
    "weight_observer": "per-channel min/max",
    "quantizer": "litert_torch PT2EQuantizer, get_symmetric_quantization_config(is_per_channel=True)",
    "convert_pt2e": {"fold_quantize": False},
    "float_modules": list(FLOAT_MODULES),
}
FP32_KEPT = ("token selector (top-k ranking and index logic), the BAViT classifier, detection heads "
             "(class and box MLPs); LayerNorm, softmax, GELU, attention matmuls and token gather "
             "run in float as litert-torch does not quantize them")
# max |int8 - fp32| / max |fp32| per output (tests/test_targets_tflite.py; see the docstring)
TOLERANCE = {"logits": 0.05, "boxes": 0.05, "token_logits": 0.05}


def make_quantizer(float_modules: tuple[str, ...] = FLOAT_MODULES):
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.pt2e_quantizer_utils import propagate_annotation

    class _FloatRegionQuantizer(PT2EQuantizer):
        """The global config everywhere except nodes under `float_modules` (module paths)."""

        def __init__(self, float_modules: tuple[str, ...]) -> None:
            super().__init__()
            self.float_modules = tuple(float_modules)

        def _quantized(self, node: Any) -> bool:
            return not in_modules(node, self.float_modules)

        def annotate(self, model):
            self._annotate_all_static_patterns(model, self.global_config, self._quantized)
            propagate_annotation(model)
            return model

    return _FloatRegionQuantizer(float_modules).set_global(get_symmetric_quantization_config(is_per_channel=True))


# (pipeline id, calibration digest, float modules) -> (pipeline, calibrated observer states, batches):
# the pipeline is held so that its id cannot be reused by another object while the entry lives
_CALIBRATED: dict[tuple, tuple[Any, dict[str, dict], int]] = {}


def _is_observer(module: Any) -> bool:
    from torchao.quantization.pt2e.observer import ObserverBase

    return isinstance(module, ObserverBase)


def calibrated_states(pipeline: Any, calibration: np.ndarray,
                      float_modules: tuple[str, ...]) -> tuple[dict[str, dict], int]:
    """Observer name -> state after calibrating at CALIB_BATCH; (states, batches run). Memoised
    per pipeline and calibration set, so the artifacts of other batch sizes reuse it."""
    import hashlib

    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from targets.litert_export import export_for_litert

    key = (id(pipeline), hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest(), float_modules)
    if key not in _CALIBRATED:
        module, _ = export_for_litert(pipeline, (torch.zeros(CALIB_BATCH, 3, *pipeline.input_size),))
        module = prepare_pt2e(module, make_quantizer(float_modules))
        batches = calibration_batches(calibration, CALIB_BATCH)
        with torch.no_grad():
            for images in batches:
                module(torch.from_numpy(images))
        states = {name: {k: v.clone() for k, v in m.state_dict().items()}
                  for name, m in module.named_modules() if _is_observer(m)}
        _CALIBRATED[key] = (pipeline, states, len(batches))
    _, states, n = _CALIBRATED[key]
    return states, n


def load_observer_states(module: Any, states: dict[str, dict]) -> None:
    """Loads calibrated states into a prepared graph of the same pipeline at another batch; the
    graphs must have the same observers (the same model), else this refuses."""
    observers = {name: m for name, m in module.named_modules() if _is_observer(m)}
    if set(observers) != set(states):
        raise ValueError(f"calibrated graph has {len(states)} observers, the artifact's graph {len(observers)}: "
                         "not the same model")
    for name, m in observers.items():
        m.load_state_dict(states[name])


def quantized_module(pipeline: Any, calibration: np.ndarray, batch: int,
                     float_modules: tuple[str, ...] = FLOAT_MODULES) -> tuple[Any, Any, int, int]:
    """The calibrated q/dq graph at `batch`, before conversion: (module, quantizer, calibration
    batches, sorts rewritten). The LiteRT profile's stage artifacts are cut from this graph."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from targets.litert_export import export_for_litert

    float_modules = tuple(float_modules)
    states, n_batches = calibrated_states(pipeline, calibration, float_modules)
    module, rewrites = export_for_litert(pipeline, (torch.zeros(batch, 3, *pipeline.input_size),))
    quantizer = make_quantizer(float_modules)
    module = prepare_pt2e(module, quantizer)
    load_observer_states(module, states)
    return convert_pt2e(module, fold_quantize=False), quantizer, n_batches, rewrites


def quantize_and_convert(pipeline: Any, calibration: np.ndarray, batch: int, path: str | Path,
                         float_modules: tuple[str, ...] = FLOAT_MODULES) -> dict[str, Any]:
    """Writes the int8 .tflite to `path`; returns Artifact fields (recipe, settings, fp32_kept, extra)."""
    import litert_torch
    import torch
    from litert_torch.quantize.quant_config import QuantConfig

    from targets.litert_export import mark_eval

    float_modules = tuple(float_modules)
    module, quantizer, n_batches, rewrites = quantized_module(pipeline, calibration, batch, float_modules)
    example = (torch.zeros(batch, 3, *pipeline.input_size),)
    converted = litert_torch.convert(mark_eval(module), example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    converted.export(str(path))
    settings = {**SETTINGS, "calibration_images": n_batches * CALIB_BATCH, "calibration_batches": n_batches,
                "float_modules": list(float_modules)}
    kept = FP32_KEPT if float_modules == FLOAT_MODULES else (
        f"modules {', '.join(float_modules) or 'none'}; LayerNorm, softmax, GELU, attention matmuls, gather")
    return {"recipe": NAME, "recipe_settings": settings, "fp32_kept": kept,
            "extra": {"sort_rewrites": rewrites}}
