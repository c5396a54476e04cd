"""ExecuTorch backend: the pipeline lowered to the XNNPACK delegate, fp32 and PT2E int8
(quant/executorch_recipe.py), one static-shape `.pte` program per batch.

Build (imports torch and executorch): `torch.export` at the cell's batch, with the sort
rewrite LiteRT needs too (targets.litert_export: ExecuTorch's kernel library has no
`aten::sort`, and a program with an unregistered operator does not load) ->
`to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])` -> `.to_executorch()`.
What XNNPACK takes (linears, convolutions, matmuls, softmax, elementwise ops) runs in its
delegate; the rest (LayerNorm, top-k, sort, gather and the token bookkeeping) in ExecuTorch's
portable kernels.

Load: `executorch.runtime` (its Python bindings import torch: a measured ExecuTorch cell's
memory holds torch's, which a C++ runner on a device would not), XNNPACK's thread pool set to
the cell's threads. Both scenarios run it back to back, one call in flight.

Executed precision is read back from the program: every XNNPACK delegate payload in the
`.pte` is decoded (its flatbuffer, with the `flatc` and schema that ship in the executorch
wheel) and its compute nodes (fully connected, convolution, batch matmul) counted by the
datatype of their input: "i8+f32" when any takes int8 (qint8 / per-channel qcint8 / dynamic
qdint8), else "f32". `runner.details` holds the node counts and the portable operators.
"""
from __future__ import annotations

import importlib.util
import json
import re
import struct
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quant import executorch_recipe
from targets.base import Artifact, Recipe, Runner, RuntimeOptions, Target, package_version
from targets.litert_export import export_for_litert

if TYPE_CHECKING:
    from bavit.pipeline import Pipeline

MODEL_FILE = "model.pte"
LOWERING = "torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch"
COMPUTE_NODES = {"XNNFullyConnected", "XNNConv2d", "XNNDepthwiseConv2d", "XNNBatchMatrixMultiply"}
INT8_TYPES = {"xnn_datatype_qint8", "xnn_datatype_qcint8", "xnn_datatype_qdint8", "xnn_datatype_quint8",
              "xnn_datatype_qpint8"}


class ExecuTorchTarget(Target):
    name = "executorch"
    recipes = {"fp32": Recipe(),
               "int8": Recipe(executorch_recipe.NAME, calibrated=True,
                              settings=tuple(sorted((k, str(v)) for k, v in executorch_recipe.SETTINGS.items())),
                              requires=("torchao",))}
    runtime_modules = ("executorch.runtime",)

    def available(self) -> str | None:
        if importlib.util.find_spec("executorch") is None:
            return "executorch is not installed (pip install 'bavit-bench[executorch]')"
        try:
            from executorch.runtime import Runtime

            Runtime.get()
        except Exception as err:  # noqa: BLE001 - the loader's own words
            return f"executorch runtime does not load ({type(err).__name__}: {str(err).strip().splitlines()[0]})"
        return None

    def versions(self) -> dict[str, str]:
        out = {d: package_version(d) or "not installed" for d in ("executorch", "torch", "torchao", "transformers")}
        out["lowering"] = LOWERING
        return out

    # -- build process ----------------------------------------------------------------------
    def build(self, pipeline: "Pipeline", precision: str, batch: int | None, calibration: np.ndarray | None,
              out: Path) -> dict[str, Any]:
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        if precision not in self.recipes:
            raise ValueError(f"executorch has no {precision} precision")
        if batch is None:
            raise ValueError("executorch programs have a static batch")
        fields: dict[str, Any] = {}
        was_training = pipeline.training
        pipeline.eval()
        try:
            with torch.no_grad():
                if precision == "int8":
                    if calibration is None or len(calibration) == 0:
                        raise ValueError("int8 needs calibration images")
                    program, settings = executorch_recipe.quantized_program(pipeline, calibration, batch)
                    fields.update(recipe=executorch_recipe.NAME, recipe_settings=settings,
                                  fp32_kept=executorch_recipe.FP32_KEPT)
                else:
                    example = (torch.zeros(batch, 3, *pipeline.input_size),)
                    module, rewrites = export_for_litert(pipeline, example)
                    program = torch.export.export(module, example)
                    fields["extra"] = {"sort_rewrites": rewrites}
                lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        finally:
            pipeline.train(was_training)
        (Path(out) / MODEL_FILE).write_bytes(lowered.buffer)
        fields["extra"] = {"lowering": LOWERING, "file": MODEL_FILE, "delegate": "XnnpackBackend",
                           **fields.get("extra", {})}
        return {"files": [MODEL_FILE], **fields}

    # -- measured process -------------------------------------------------------------------
    def load(self, artifact: Artifact, options: RuntimeOptions) -> Runner:
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        path = Path(artifact.path) / (artifact.files[0] if artifact.files else MODEL_FILE)
        executed, details = executed_precision(path)
        portable_lib._unsafe_reset_threadpool(int(options.threads))
        method = Runtime.get().load_program(path).load_method("forward")
        shape = tuple(method.metadata.input_tensor_meta(0).sizes())

        def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            pixels = np.ascontiguousarray(pixels, dtype=np.float32)
            if pixels.shape != shape:
                raise ValueError(f"executorch program takes {shape} (static shape), got {pixels.shape}")
            logits, boxes, tokens = method.execute([torch.from_numpy(pixels)])
            return logits.numpy().copy(), boxes.numpy().copy(), tokens.numpy().copy()

        runner = Runner(run, executed, mode="sync execute(), 1 call in flight")
        runner.details = dict(details, threads=portable_lib._threadpool_get_thread_count(),
                              executorch=package_version("executorch"))
        return runner


def executed_precision(path: Path) -> tuple[str, dict]:
    """What the program's XNNPACK delegates compute in, decoded from the `.pte` itself."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(Path(path).read_bytes()).program
    plan = program.execution_plan[0]
    nodes: Counter = Counter()
    delegates = 0
    for delegate in plan.delegates:
        if delegate.id != "XnnpackBackend":
            continue
        delegates += 1
        graph = xnnpack_graph(program.backend_delegate_data[delegate.processed.index].data)
        dtypes = {_value_id(v, i): _datatype(v) for i, v in enumerate(graph["xvalues"])}
        for node in graph["xnodes"]:
            kind = node["xnode_union_type"]
            if kind in COMPUTE_NODES:
                dt = dtypes.get(node["xnode_union"].get("input1_id"), "")
                nodes[(kind, "i8" if dt in INT8_TYPES else "f32")] += 1
    int8 = sum(n for (_, p), n in nodes.items() if p == "i8")
    details = {"xnnpack_delegates": delegates,
               "delegated_compute_nodes": {f"{k}:{p}": n for (k, p), n in sorted(nodes.items())},
               "portable_operators": sorted({op.name for op in plan.operators})}
    return ("i8+f32" if int8 else "f32"), details


def xnnpack_graph(payload: bytes) -> dict:
    """An XNNPACK delegate payload (XNNHeader + flatbuffer + constants) as the schema's JSON."""
    import executorch

    if payload[4:8] != b"XH00":
        raise ValueError("not an XNNPACK delegate payload (no XH00 header)")
    offset, size = struct.unpack("<II", payload[10:18])
    root = Path(list(executorch.__path__)[0])
    flatc, schema = root / "data" / "bin" / "flatc", root / "backends" / "xnnpack" / "serialization" / "schema.fbs"
    with tempfile.TemporaryDirectory(prefix="bavit-xnn-") as tmp:
        graph = Path(tmp) / "graph.bin"
        graph.write_bytes(payload[offset:offset + size])
        subprocess.run([str(flatc), "--json", "--strict-json", "--raw-binary", "-o", tmp, str(schema), "--",
                        str(graph)], check=True, capture_output=True)
        text = (Path(tmp) / "graph.json").read_bytes()
    # flatc writes non-finite floats (clamp bounds) bare
    text = re.sub(rb"(-?)\binf\b", lambda m: m.group(1) + b"Infinity", text)
    return json.loads(re.sub(rb"\bnan\b", b"NaN", text))


def _tensor(value: dict) -> dict:
    union = value.get("xvalue_union", {})
    return union.get("tensor_value", union)


def _datatype(value: dict) -> str:
    return str(_tensor(value).get("datatype", ""))


def _value_id(value: dict, index: int) -> int:
    return int(_tensor(value).get("id_out", index))


TARGET = ExecuTorchTarget()
