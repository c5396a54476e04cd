"""ONNX Runtime CPU backend: fp32 and static QDQ int8 (quant/ort_recipe.py).

Build (imports torch): `torch.onnx.export(..., dynamo=True)` exports the pipeline's
`torch.export` graph (top-k, gather and the reducers' static token counts included) with the
batch a dynamic dimension, so one model serves every batch size and is quantized once. Every
node is renamed `<module path>/<exporter's name>` from the module scopes the exporter records
on it (`pkg.torch.onnx.name_scopes`); a node without them (one the ONNX optimiser fused)
takes its nearest producer's module. The int8 recipe's float-kept heads and the profile's
stages read module paths from those names. Only the dynamo exporter is used: its name is in
the cache key (`versions`).

Load (measured process) imports `onnxruntime` and `onnx`, never torch: one
`InferenceSession` on the CPU provider with `intra_op_num_threads` = the cell's threads, one
inter-op thread, sequential execution and every graph optimisation. Both scenarios run it
back to back, one call in flight, as torch and LiteRT (ORT's CPU provider runs a call on all
its intra-op threads; a second call in flight would split them).

Executed precision is read back from the graph ORT optimised for this CPU (the measured
session saves it when it is created, `optimized_model_filepath`): "i8+f32" when int8 kernels (QLinearMatMul,
MatMulIntegerToFloat, QLinearConv, ...) are in it, "f32" when none are, even for an int8
artifact whose QuantizeLinear/DequantizeLinear pairs ORT left unfused. `runner.details` holds
the compute-op counts.

Profile (`--profile`): ORT's own profiler (`enable_profiling`), per node of the last call;
node names carry the module path, so nodes map to stages. The profiler writes its file only
when it is ended, so each profiled call runs on a fresh profiling session (created, and
warmed up once, between calls, outside the timed call).
"""
from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quant import ort_recipe
from targets.base import Artifact, NodeTime, Recipe, Runner, RuntimeOptions, Target, package_version

if TYPE_CHECKING:
    from bavit.pipeline import Pipeline

MODEL_FILE = "model.onnx"
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "boxes", "token_logits")
EXPORTER = "torch.onnx.export(dynamo=True), dynamic batch, onnxscript optimiser"
OPSET = 18
CALIB_BATCH = ort_recipe.CALIB_BATCH
MAX_BATCH = 4096
INT8_OPS = {"QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearConv", "ConvInteger", "QGemm",
            "QAttention", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul"}
FLOAT_COMPUTE_OPS = {"MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv", "Attention",
                     "MultiHeadAttention"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
PROFILER = "ONNX Runtime profiler (enable_profiling), per-node kernel time of the last call"


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    recipes = {"fp32": Recipe(),
               "int8": Recipe(ort_recipe.NAME, calibrated=True,
                              settings=tuple(sorted((k, str(v)) for k, v in ort_recipe.SETTINGS.items())),
                              requires=("onnxruntime.quantization",))}
    runtime_modules = ("onnxruntime",)
    batch_at_load = True

    def available(self) -> str | None:
        for module in ("onnxruntime", "onnx"):
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - ImportError, or a broken binary wheel
                return f"{module} is not importable ({type(err).__name__}: {err}; pip install 'bavit-bench[onnxruntime]')"
        return None

    def build_unavailable(self) -> str | None:
        for dist in ("torch", "onnxscript"):
            if package_version(dist) is None:
                return f"{dist} is not installed (pip install 'bavit-bench[onnxruntime]')"
        return None

    def profiler_unavailable(self) -> str | None:
        return self.available()

    def versions(self) -> dict[str, str]:
        out = {d: package_version(d) or "not installed"
               for d in ("onnxruntime", "onnx", "onnxscript", "torch", "transformers")}
        out["exporter"] = f"{EXPORTER}, opset {OPSET}"
        return out

    # -- build process ----------------------------------------------------------------------
    def build(self, pipeline: "Pipeline", precision: str, batch: int | None, calibration: np.ndarray | None,
              out: Path) -> dict[str, Any]:
        reason = self.build_unavailable()
        if reason:
            raise ImportError(reason)
        if precision not in self.recipes:
            raise ValueError(f"onnxruntime has no {precision} precision")
        if precision == "int8" and (calibration is None or len(calibration) == 0):
            raise ValueError("int8 needs calibration images")
        out = Path(out)
        float_path = out / MODEL_FILE if precision == "fp32" else out / "float.onnx"
        renamed = export_onnx(pipeline, float_path, batch)
        fields: dict[str, Any] = {}
        if precision == "int8":
            fields = ort_recipe.quantize(float_path, out / MODEL_FILE, calibration, INPUT_NAME, out)
            float_path.unlink()
            name_inserted_nodes(out / MODEL_FILE)
        fields["extra"] = {"exporter": EXPORTER, "opset": OPSET, "file": MODEL_FILE, "input": INPUT_NAME,
                           "outputs": list(OUTPUT_NAMES), "nodes_named_by_module": renamed,
                           "batch": "dynamic, set by the input at load" if batch is None else batch}
        return {"files": [MODEL_FILE], **fields}

    # -- measured process -------------------------------------------------------------------
    def load(self, artifact: Artifact, options: RuntimeOptions) -> Runner:
        import onnxruntime as ort

        path = Path(artifact.path) / (artifact.files[0] if artifact.files else MODEL_FILE)
        if options.profile:
            return _profiling_runner(path, options.threads)
        session, executed, details = _read_back(ort, path, _options(ort, options.threads))
        run = _call(session)
        runner = Runner(run, executed, mode="sync run(), 1 call in flight")
        runner.details = dict(details, providers=session.get_providers(), threads=options.threads,
                              onnxruntime=ort.__version__)
        return runner


def _options(ort: Any, threads: int) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3       # the NCHWc "hardware specific" warning when the optimised graph is saved
    return so


def _session(ort: Any, path: Path, so: Any) -> Any:
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _call(session: Any):
    names = [o.name for o in session.get_outputs()]
    order = [names.index(n) for n in OUTPUT_NAMES] if set(OUTPUT_NAMES) <= set(names) else [0, 1, 2]
    input_name = session.get_inputs()[0].name

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        got = session.run(None, {input_name: np.ascontiguousarray(pixels, dtype=np.float32)})
        return got[order[0]], got[order[1]], got[order[2]]

    return run


def executed_precision(path: Path, threads: int) -> tuple[str, dict]:
    """What ORT runs on this CPU: the compute ops of the graph it optimised at session creation."""
    import onnxruntime as ort

    _, executed, details = _read_back(ort, path, _options(ort, threads))
    return executed, details


def _read_back(ort: Any, path: Path, so: Any) -> tuple[Any, str, dict]:
    """(session, executed precision, details): the session is created once, saving the graph
    it optimised (initializers to a side file, so reading the graph back holds no second copy
    of the weights); the measured calls run on this same session."""
    import onnx

    folder = Path(tempfile.mkdtemp(prefix="bavit-ort-"))
    try:
        so.optimized_model_filepath = str(folder / "optimized.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "0")
        session = _session(ort, path, so)
        graph = onnx.load(str(folder / "optimized.onnx"), load_external_data=False).graph
        ops = Counter(n.op_type for n in graph.node)
        del graph
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    int8 = sum(n for op, n in ops.items() if op in INT8_OPS)
    floats = sum(n for op, n in ops.items() if op in FLOAT_COMPUTE_OPS)
    details = {"optimized_ops": {op: n for op, n in sorted(ops.items())
                                 if op in INT8_OPS | FLOAT_COMPUTE_OPS | QDQ_OPS},
               "int8_ops": int8, "float_compute_ops": floats}
    return session, ("i8+f32" if int8 else "f32"), details


def _profiling_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    executed, details = executed_precision(path, threads)
    folder = Path(tempfile.mkdtemp(prefix="bavit-ort-profile-"))
    state: dict[str, Any] = {}

    def fresh() -> None:
        so = _options(ort, threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(folder / "ort")
        state["session"] = _session(ort, path, so)
        state["run"] = _call(state["session"])
        if "pixels" in state:          # its first call (arena allocation) is not the one profiled
            state["run"](state["pixels"])

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        state["pixels"] = pixels
        return state["run"](pixels)

    def node_times() -> list[NodeTime]:
        file = Path(state["session"].end_profiling())
        events = json.loads(file.read_text())
        file.unlink(missing_ok=True)
        fresh()
        return last_call_nodes(events)

    fresh()
    runner = Runner(run, executed, mode="sync run(), 1 call in flight", node_times=node_times, profiler=PROFILER)
    runner.details = dict(details, threads=threads, onnxruntime=ort.__version__)
    return runner


def last_call_nodes(events: list[dict]) -> list[NodeTime]:
    """The node kernel times inside the profile's last `model_run`."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if not runs:
        return []
    start = runs[-1]["ts"]
    end = start + runs[-1]["dur"]
    out = []
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if not start <= e["ts"] <= end:
            continue
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        out.append(NodeTime(name, args.get("op_name", ""), args.get("provider", ""),
                            ort_recipe.node_module(name), e["dur"] / 1000))
    return out


# -- export (build side, imports torch) ---------------------------------------------------------
def export_onnx(pipeline: "Pipeline", path: Path, batch: int | None) -> int:
    """The pipeline as one ONNX file at `path`, nodes named by module; returns how many nodes
    were named from their own scopes."""
    import onnx
    import torch

    h, w = pipeline.input_size
    example = torch.zeros(CALIB_BATCH if batch is None else batch, 3, h, w)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if batch is None else None
    was_training = pipeline.training
    pipeline.eval()
    try:
        with torch.no_grad():
            program = torch.onnx.export(pipeline, (example,), dynamo=True, opset_version=OPSET,
                                        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes=dynamic, optimize=True, verbose=False)
    finally:
        pipeline.train(was_training)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    if [o.name for o in model.graph.output] != list(OUTPUT_NAMES):
        raise RuntimeError(f"exported outputs {[o.name for o in model.graph.output]}, expected {list(OUTPUT_NAMES)}")
    renamed = name_by_module(model, {n for n, _ in pipeline.named_modules() if n})
    onnx.save_model(model, str(path))
    return renamed


def name_by_module(model: Any, modules: set[str]) -> int:
    """Renames each node `<module path>/<name>`: the deepest of the exporter's name scopes
    that is a module of the pipeline, else (a node the optimiser made) the module of the
    node producing its first input that has one. Graph nodes are in topological order."""
    by_tensor: dict[str, str] = {}
    own = 0
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = _scopes(meta.get("pkg.torch.onnx.name_scopes", ""))
        path = next((s for s in reversed(scopes) if s in modules), "")
        if path:
            own += 1
        else:
            path = next((by_tensor[i] for i in node.input if by_tensor.get(i)), "")
        for o in node.output:
            by_tensor[o] = path
        if path:
            node.name = f"{path}/{node.name}"
    return own


def name_inserted_nodes(path: Path) -> None:
    """Names the nodes the quantizer inserted (QuantizeLinear/DequantizeLinear, named after
    their tensors) after the module they quantize for: the producer's, else the first
    consumer's (the input's QuantizeLinear)."""
    import onnx

    model = onnx.load(str(path))
    module_of = ort_recipe.node_module
    produced = {o: module_of(n.name) for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    changed = False
    for _ in range(3):      # a Q feeding a DQ feeding a named node: names flow one step per pass
        for n in model.graph.node:
            if module_of(n.name):
                continue
            path_ = next((produced[i] for i in n.input if produced.get(i)), "") or next(
                (module_of(c.name) for o in n.output for c in consumers.get(o, []) if module_of(c.name)), "")
            if path_:
                n.name = f"{path_}/{n.name}"
                for o in n.output:
                    produced[o] = path_
                changed = True
    if changed:
        onnx.save_model(model, str(path))


def _scopes(text: str) -> list[str]:
    """The exporter's name-scope list, stored as a Python list literal."""
    import ast

    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


TARGET = OnnxRuntimeTarget()
