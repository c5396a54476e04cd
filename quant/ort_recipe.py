"""ONNX Runtime int8 recipe: static QDQ quantization of the exported ONNX graph with
`onnxruntime.quantization.quantize_static`, calibrated on the shared calibration set.

Settings and why:
- QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized op): the form ORT's
  CPU provider fuses into its int8 kernels (QLinearMatMul, MatMulIntegerToFloat, QLinearConv)
  at session creation on any CPU, and the form other providers read too; the QOperator
  format bakes in one provider's fused ops.
- Only MatMul / Gemm / Conv with a weight operand are quantized (the encoder's linears and the
  patch-embedding convolutions): LayerNorm, softmax, GELU and the token gather stay float, as
  the other targets' int8 recipes leave them. The attention matmuls (two activations) stay
  float too: quantized, ORT also fuses the softmax between them into an 8-bit QLinearSoftmax,
  and together with the weights' range (below) that cost most of the accuracy on the trained
  detector (the measured variants are in docs/targets.md, ONNX Runtime).
- The detection heads (class and box MLPs) and the BAViT head stay float (`FLOAT_MODULES`),
  as in the OpenVINO recipe: they are a few small MLPs over the detection tokens, and the
  BAViT head's logits are the ranking key of the top-k. Nodes are found by the module path
  the exporter recorded on each node (targets.onnxruntime_backend names nodes after it).
- Weights int8 symmetric per-channel in a 7-bit range (`reduce_range`); activations uint8
  asymmetric per-tensor (U8S8, the pair ORT's x86 int8 kernels take), MinMax calibration. On
  x86 CPUs without VNNI, MLAS computes U8S8 with VPMADDUBSW, whose int16 pair sums saturate
  with full-range weights (ORT's quantization guide names `reduce_range` as the remedy); the
  artifact is built once for every CPU it may run on, so the range is always reduced.
- `quant_pre_process` (shape inference and ORT's basic graph optimisation) first, as the ORT
  documentation asks, so each MatMul sees its folded weight and known shapes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quant.calibration import calibration_batches

NAME = "ort-static-qdq-int8"
CALIB_BATCH = 8
OP_TYPES = ("MatMul", "Gemm", "Conv")
FLOAT_MODULES = ("classifier.head", "detector.det.class_labels_classifier", "detector.det.bbox_predictor")
SETTINGS = {
    "api": "onnxruntime.quantization.quantize_static",
    "quant_format": "QDQ",
    "op_types": list(OP_TYPES),
    "per_channel": True,
    "reduce_range": True,
    "weights": "int8 symmetric per-channel, 7-bit range (reduce_range)",
    "activations": "uint8 asymmetric per-tensor",
    "calibrate_method": "MinMax",
    "calibration_batching": "batches of 8 images, remainder dropped",
    "pre_process": "quant_pre_process (shape inference, basic optimisation)",
    "float_modules": list(FLOAT_MODULES),
    "float_ops": "MatMuls of two activations (attention scores and weighted values)",
}
FP32_KEPT = ("detection heads (class and box MLPs), BAViT head; LayerNorm, softmax, GELU and the "
             "token selection run in float")


def node_module(name: str) -> str:
    """The pipeline module path a node was traced from: the export names every node
    `<module path>/<exporter's name>` (targets.onnxruntime_backend.name_by_module)."""
    return name.split("/", 1)[0] if "/" in name else ""


def excluded_nodes(model: Any) -> list[str]:
    """Names of the nodes computed inside a float-kept module. The detection heads must be
    found (a renamed graph would otherwise quantize them silently); the BAViT head exists
    only with a classifier."""
    out = []
    for module in FLOAT_MODULES:
        hits = [n.name for n in model.graph.node
                if node_module(n.name) == module or node_module(n.name).startswith(module + ".")]
        if not hits and module.startswith("detector."):
            raise ValueError(f"no ONNX node traced to detection head {module!r}: cannot keep it float")
        out.extend(hits)
    return out


def activation_matmuls(model: Any) -> list[str]:
    """MatMuls of two activations (attention's QK^T and AV): no operand is a weight."""
    weights = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul"
            and not any(i in weights or i in consts for i in n.input)]


def quantize(float_model: Path, out: Path, calibration: np.ndarray, input_name: str, work: Path) -> dict[str, Any]:
    """Writes the int8 QDQ model to `out`; returns the Artifact fields of the recipe."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = calibration_batches(calibration, CALIB_BATCH)
    pre = work / "preprocessed.onnx"
    quant_pre_process(str(float_model), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    exclude = excluded_nodes(model)
    attention = activation_matmuls(model)

    class Reader(CalibrationDataReader):
        """The calibration batches, one feed each."""

        def __init__(self) -> None:
            self._items = iter([{input_name: b} for b in batches])

        def get_next(self) -> dict | None:
            return next(self._items, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(OP_TYPES), per_channel=True, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude + attention, calibrate_method=CalibrationMethod.MinMax,)
    pre.unlink(missing_ok=True)
    settings = dict(SETTINGS, calibration_images=int(len(batches) * CALIB_BATCH), excluded_nodes=len(exclude),
                    float_attention_matmuls=len(attention))
    return {"recipe": NAME, "recipe_settings": settings, "fp32_kept": FP32_KEPT}
