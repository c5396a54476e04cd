"""OpenVINO CPU backend: fp32, bf16 and NNCF int8.

Build (imports torch): `openvino.convert_model` converts the `torch.export` ExportedProgram of
the pipeline (batch a dynamic dimension; TorchScript tracing is deprecated), input shape
(-1, 3, H, W); each IR node is renamed after the module it came from (`name_by_module`).
One IR, converted and quantized once, serves every batch size; `load` reshapes it to the
cell's static batch before compiling. Outputs are named logits / boxes / token_logits and
the IR is saved with `compress_to_fp16=False` (otherwise weights are stored as fp16).
fp32 and bf16 cells hold the same IR: the precision is a runtime hint. int8 runs
quant/nncf_recipe.py on the IR.

Load (measured process) imports only `openvino` - never torch - and compiles with
INFERENCE_NUM_THREADS, PERFORMANCE_HINT and INFERENCE_PRECISION_HINT. The hint follows the
scenario, as `benchmark_app` does: single-stream compiles with LATENCY and runs one sync
request (`benchmark_app -hint latency -api sync`); offline compiles with THROUGHPUT and keeps
OPTIMAL_NUMBER_OF_INFER_REQUESTS requests in flight through an `AsyncInferQueue`
(`benchmark_app -hint throughput`, its default). Precision hints:
- fp32: "f32". This CPU supports bf16, where OpenVINO's default is bf16: without the hint
  an "fp32" cell would run bf16.
- bf16: "bf16".
- int8: "f32" for the layers left in floating point (heads, norms, softmax), so the int8
  cell differs from the fp32 cell by quantization alone, like the torch and LiteRT int8
  cells. OpenVINO's own default here would run them in bf16 ("i8+bf16"), with a larger
  output error than "i8+f32" (docs/targets.md, recipes). `bench.run --ov-int8-float bf16` selects
  that instead.
The runner's `executed_precision` is read back from the compiled model's runtime graph, not
taken from the request: "i8" when any FullyConnected/Convolution/MatMul runs in i8/u8, plus the
float precisions those and the normalisation layers (MVN) execute in (e.g. "i8+f32",
"i8+bf16", "bf16", "f32"). `runner.details` holds the per-layer-type counts.
"""
from __future__ import annotations

import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quant import nncf_recipe
from targets.base import (
    OFFLINE,
    Artifact,
    NodeTime,
    OfflineResult,
    Recipe,
    Runner,
    RuntimeOptions,
    Target,
    package_version,
)

if TYPE_CHECKING:
    import openvino as ov

    from bavit.pipeline import Pipeline

XML, BIN = "model.xml", "model.bin"
OUTPUT_NAMES = ("logits", "boxes", "token_logits")
FLOAT_HINT = {"fp32": "f32", "bf16": "bf16"}
CALIB_BATCH = 8  # batch of the calibration passes (and the export) of a dynamic-batch IR
MAX_BATCH = 4096  # the dynamic batch dimension's bound in torch.export
DEFAULT_INT8_FLOAT = "f32"
MATRIX_LAYERS = {"FullyConnected", "Convolution", "GroupConvolution", "Deconvolution", "MatMul"}
# the layers whose float precision names the cell (fused "Subgraph"/"Eltwise" nodes keep a few
# f32 steps even under bf16; they are in `details` but do not name it)
FLOAT_LAYERS = MATRIX_LAYERS | {"MVN", "Softmax", "ScaledDotProductAttention"}
DETAIL_LAYERS = FLOAT_LAYERS | {"Subgraph", "Eltwise"}
INT8_TYPES = {"i8", "u8"}
FLOAT_TYPES = ("f32", "bf16", "f16")


class OpenVinoTarget(Target):
    name = "openvino"
    recipes = {"fp32": Recipe(), "bf16": Recipe(),  # one IR: the precision is a runtime hint
               "int8": Recipe(nncf_recipe.NAME, calibrated=True,
                              settings=tuple(sorted((k, str(v)) for k, v in nncf_recipe.SETTINGS.items())),
                              requires=("nncf",))}
    runtime_modules = ("openvino",)
    batch_at_load = True

    def import_runtime(self) -> None:
        """openvino and its CPU plugin (loaded by the first compile, ~tens of MiB), so the
        cell's memory baseline holds the runtime and the model's increase is the model's."""
        import openvino as ov
        import openvino.opset13 as ops

        x = ops.parameter([1], ov.Type.f32)
        ov.Core().compile_model(ov.Model([ops.relu(x)], [x]), "CPU")

    def available(self) -> str | None:
        try:
            import openvino  # noqa: F401 - light (~54 MB), imports no torch
        except Exception as err:  # noqa: BLE001
            return f"openvino is not importable ({type(err).__name__}: {err})"
        return None

    def runnable(self, precision: str) -> str | None:
        reason = super().runnable(precision)
        if reason is not None:
            return reason
        if precision == "bf16":
            caps = cpu_capabilities()
            if "BF16" not in caps:
                return f"this CPU reports no BF16 support to OpenVINO (capabilities: {', '.join(caps) or 'none'})"
        return None

    def profiler_unavailable(self) -> str | None:
        return None

    def versions(self) -> dict[str, str]:
        # torch and transformers shape the traced graph the converter sees
        out = {p: package_version(p) or "not installed" for p in ("openvino", "nncf", "torch", "transformers")}
        out["converter"] = "torch.export"   # IRs converted from a TorchScript trace are other artifacts
        return out

    # -- build process ----------------------------------------------------------------------
    def build(self, pipeline: "Pipeline", precision: str, batch: int, calibration: np.ndarray | None,
              out: Path) -> dict[str, Any]:
        import openvino as ov
        import torch

        if precision not in self.recipes:
            raise ValueError(f"openvino has no {precision} precision")
        if precision == "int8" and calibration is None:
            raise ValueError("int8 needs calibration images")
        h, w = pipeline.input_size
        shape = [-1 if batch is None else batch, 3, h, w]
        example = [CALIB_BATCH if batch is None else batch, 3, h, w]
        was_training = pipeline.training
        pipeline.eval()
        try:
            with torch.no_grad():
                dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if batch is None else None
                program = torch.export.export(pipeline, (torch.zeros(*example),), dynamic_shapes=dynamic)
            # what convert_model does with an ExportedProgram, kept in hand: the IR's node
            # names come from this decoder's (decomposed) graph, which name_by_module reads
            from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

            decoder = TorchFXPythonDecoder.from_exported_program(program)
            model = ov.convert_model(decoder, input=[tuple(shape)])
        finally:
            pipeline.train(was_training)
        named = name_by_module(model, decoder.pt_module.graph)
        if len(model.outputs) != len(OUTPUT_NAMES):
            raise RuntimeError(f"converted model has {len(model.outputs)} outputs, expected {len(OUTPUT_NAMES)}")
        for output in model.outputs:      # traced names are arbitrary ("logits" can land on any)
            output.get_tensor().set_names(set())
        for output, name in zip(model.outputs, OUTPUT_NAMES):
            output.get_tensor().set_names({name})
        fields: dict[str, Any] = {}
        if precision == "int8":
            settings: dict = {}
            model = nncf_recipe.quantize(model, calibration, batch or CALIB_BATCH, settings_out=settings)
            fields.update(recipe=nncf_recipe.NAME, recipe_settings=settings, fp32_kept=nncf_recipe.FP32_KEPT)
            float_hint = f"{DEFAULT_INT8_FLOAT} (default; bench.run --ov-int8-float overrides at load)"
        else:
            float_hint = FLOAT_HINT[precision]
        ov.save_model(model, out / XML, compress_to_fp16=False)
        fields.update(files=[XML, BIN], extra={
            "converter": "openvino.convert_model of the torch.export ExportedProgram, "
                         + ("dynamic batch, reshaped at load" if batch is None else "static input shape"),
            "input_shape": shape, "outputs": list(OUTPUT_NAMES), "weights_stored": "f32",
            "inference_precision_hint": float_hint, "nodes_named_by_module": named})
        return fields

    # -- measured process -------------------------------------------------------------------
    def load(self, artifact: Artifact, options: RuntimeOptions) -> Runner:
        import openvino as ov

        if artifact.precision == "int8":
            precision_hint = options.ov_int8_float
        else:
            precision_hint = FLOAT_HINT[artifact.precision]
        offline = options.scenario == OFFLINE
        config = {"INFERENCE_NUM_THREADS": int(options.threads),
                  "PERFORMANCE_HINT": "THROUGHPUT" if offline else "LATENCY",
                  "INFERENCE_PRECISION_HINT": precision_hint}
        if options.profile:
            config["PERF_COUNT"] = True
        core = ov.Core()
        model = core.read_model(Path(artifact.path) / artifact.files[0])
        if model.inputs[0].get_partial_shape().is_dynamic:
            shape = model.inputs[0].get_partial_shape().get_min_shape()
            model.reshape({0: [options.batch, *list(shape)[1:]]})
        compiled = core.compile_model(model, "CPU", config)
        executed, details = executed_precision(compiled)
        request = compiled.create_infer_request()
        n_out = len(compiled.outputs)

        def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            x = np.ascontiguousarray(pixels, dtype=np.float32)
            request.infer({0: x}, share_inputs=True)  # outputs copied below: the request reuses them
            logits, boxes, tokens = (request.get_output_tensor(i).data.copy() for i in range(n_out))
            return logits, boxes, tokens

        streams = int(compiled.get_property("NUM_STREAMS"))
        nireq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if offline else 1
        queue = ov.AsyncInferQueue(compiled, nireq) if offline else None

        def throughput(pixels: np.ndarray, seconds: float) -> OfflineResult:
            """benchmark_app's loop: every request refilled as soon as it is done; outputs
            stay in the requests (no copies), as benchmark_app leaves them. Counted at steady
            state: the window opens at the nireq-th completion (every request slot has been
            busy and turning over) and closes at a completion seen while the queue was still
            being refilled, so neither the fill nor the drain is in the figure; the completions
            between the two are the images counted. Callbacks run on the runtime's threads
            and may append out of time order: each appends one (time, latency) pair, and the
            window is cut from them sorted."""
            x = np.ascontiguousarray(pixels, dtype=np.float32)
            starts: dict[int, float] = {}
            finished: list[tuple[float, float]] = []    # (completion time, latency ms)
            clock = time.perf_counter

            def done(_request, job: int) -> None:
                now = clock()
                finished.append((now, (now - starts.pop(job)) * 1000))   # one append: atomic

            queue.set_callback(done)
            for i in range(nireq):  # every request reads the same batch, set once as benchmark_app does
                queue[i].set_input_tensor(0, ov.Tensor(x, shared_memory=True))
            jobs, seen, last, opened = 0, 0, -math.inf, None
            deadline = clock() + seconds * 4 + 30
            while True:
                queue.get_idle_request_id()   # blocks until a request is free: not part of its latency
                n = len(finished)
                last = max([last] + [t for t, _ in finished[seen:n]])
                seen = n
                if opened is None and n >= nireq:
                    opened = sorted(t for t, _ in finished[:n])[nireq - 1]
                if opened is not None and last - opened >= seconds:
                    break   # every request was busy until `last`: the window closes on it
                if clock() > deadline:   # a failed request frees its slot without a callback
                    queue.wait_all()
                    raise RuntimeError(f"OpenVINO requests stopped completing: {n} of {jobs} done in "
                                       f"{seconds * 4 + 30:g} s")
                starts[jobs] = clock()
                queue.start_async(userdata=jobs)
                jobs += 1
            queue.wait_all()
            window = [lat for t, lat in sorted(finished) if opened < t <= last]
            return OfflineResult(len(x) * len(window), len(window), last - opened, window)

        mode = (f"async AsyncInferQueue, THROUGHPUT hint, {nireq} requests, {streams} streams" if offline
                else f"sync, LATENCY hint, 1 request, {streams} stream{'s' if streams > 1 else ''}")
        modules = runtime_modules(compiled) if options.profile else {}

        def node_times() -> list[NodeTime]:
            """The sync request's PERF_COUNT of its last call (benchmark_app -pc's table)."""
            return [NodeTime(p.node_name, p.node_type, p.exec_type, modules.get(p.node_name, module_of(p.node_name)),
                             p.real_time.total_seconds() * 1000)
                    for p in request.get_profiling_info() if p.status == p.Status.EXECUTED]

        runner = Runner(run, executed, offline_fn=throughput if offline else None, mode=mode,
                        streams=streams, requests=nireq, node_times=node_times if options.profile else None,
                        profiler="OpenVINO PERF_COUNT (per-node real time of the sync request)")
        runner.details = dict(details, config={k: str(v) for k, v in config.items()},
                              compiled={"NUM_STREAMS": streams, "OPTIMAL_NUMBER_OF_INFER_REQUESTS": nireq,
                                        "INFERENCE_NUM_THREADS": str(compiled.get_property("INFERENCE_NUM_THREADS"))})
        return runner


_MODULE = re.compile(r"__module\.([A-Za-z0-9_.]+)")


def module_of(node_name: str) -> str:
    """The pipeline module path in an IR node's name: the TorchScript trace names nodes
    `__module.<path>/aten::<op>/<Op>` (fused and reordered nodes carry it inside)."""
    m = _MODULE.search(node_name)
    return m.group(1).rstrip(".") if m else ""


def name_by_module(model: "ov.Model", graph: Any) -> int:
    """Prefixes each IR node with the module path of the FX node it was converted from (its
    `nn_module_stack`), in the form the TorchScript trace used (`__module.<path>/<fx node>/
    <aten op>/<Op>`): the NNCF recipe's ignored scope and the profile's stages read module
    paths from node names. `graph` must be the graph the converter named the IR after (the
    decoder's decomposed one: decomposition renames nodes). Returns the nodes renamed."""
    paths = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and stack:
            paths[node.name] = list(stack.values())[-1][0]
    renamed = 0
    for op in model.get_ops():
        name = op.get_friendly_name()
        path = paths.get(name.split("/", 1)[0])
        if path:
            op.set_friendly_name(f"__module.{path}/{name}")
            renamed += 1
    return renamed


def runtime_modules(compiled: "ov.CompiledModel") -> dict[str, str]:
    """Runtime-graph node name -> the pipeline module path it computes. A fused node (a
    convolution with its folded BatchNorm, an int8 MatMul with its dequantization) is renamed,
    but keeps the names of the IR layers it replaced (`originalLayersNames`); a node whose
    names carry no path (NNCF's quantized attention matmuls) takes its nearest producer's."""
    ops = compiled.get_runtime_model().get_ordered_ops()   # producers before consumers
    found: dict[str, str] = {}
    for op in ops:
        rt = op.get_rt_info()
        names = op.get_friendly_name() + "," + (rt["originalLayersNames"].astype(str)
                                                if "originalLayersNames" in rt else "")
        path = module_of(names)
        if not path:
            producers = [i.get_source_output().get_node().get_friendly_name() for i in op.inputs()]
            path = next((found[n] for n in producers if found.get(n)), "")
        found[op.get_friendly_name()] = path
    return found


def cpu_capabilities() -> list[str]:
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def executed_precision(compiled: "ov.CompiledModel") -> tuple[str, dict]:
    """What the CPU plugin really runs, from the runtime graph's per-layer `runtimePrecision`."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        if "runtimePrecision" not in rt:
            continue
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        counts[(layer, rt["runtimePrecision"].astype(str))] += 1
    int8 = any(layer in MATRIX_LAYERS and prec in INT8_TYPES for (layer, prec) in counts)
    floats = {prec for (layer, prec) in counts if layer in FLOAT_LAYERS and prec in FLOAT_TYPES}
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    if not floats:  # e.g. every matrix layer int8 and no normalisation layer listed
        floats = {hint}
    parts = (["i8"] if int8 else []) + [p for p in FLOAT_TYPES if p in floats]
    details = {"inference_precision_hint": hint,
               "layers": {f"{layer}:{prec}": n for (layer, prec), n in sorted(counts.items())
                          if layer in DETAIL_LAYERS}}
    return "+".join(parts), details


TARGET = OpenVinoTarget()
