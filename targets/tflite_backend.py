"""TFLite / LiteRT backend: litert-torch converts the pipeline to one static-shape .tflite file;
the LiteRT interpreter runs it.

Build side (imports torch, litert_torch; only inside `build`):
- fp32: `torch.export` -> sort rewrite (below) -> `litert_torch.convert(...).export(model.tflite)`.
- int8: PT2E static quantization, see quant/litert_recipe.py.
- Sort rewrite: the token selector sorts its kept indices (`aten.sort`). litert-torch lowers
  that to STABLEHLO_SORT, which the LiteRT interpreter does not run ("Didn't find op for
  builtin opcode 'STABLEHLO_SORT'"), and a top-k of a top-k is fused back into the same sort.
  `export_for_litert` therefore replaces every `aten.sort` in the exported graph with an exact,
  stable, sort-free rank computation (pairwise comparisons + one-hot sums: LESS/EQUAL/SUM/MUL
  builtins every interpreter has, tflite-runtime 2.14 included). Outputs are bit-identical.

Run side (`load`): imports only an interpreter - `ai_edge_litert.interpreter.Interpreter`, or
`tflite_runtime.interpreter.Interpreter` (same API) where only that is installed (edge boards,
numpy < 2). Never torch. Outputs are mapped to (logits, boxes, token_logits) by the signature's
output names (output_0..2 in the torch return order), checked against the expected shapes;
int8 model I/O is quantized / dequantized with each tensor's (scale, zero_point).
`executed_precision` is "i8+f32" when matmul/conv ops take int8 activations (read from the
loaded model), else "f32"; `runner.details` holds the interpreter used (ai_edge_litert or
tflite_runtime, with version), op and tensor dtype counts and the I/O dtypes.

Profile (`--profile`): the Python interpreter has no per-op profiler, so the build process also
cuts the artifact's graph (fp32, or int8's calibrated q/dq graph) into its stages
(targets.stages) and converts each to its own .tflite in `stages/` beside the model;
`load(..., profile=True)` runs them one after another, timing each invoke.

`available()` means "can run artifacts" (an interpreter imports). Building also needs
litert-torch; without it `build` raises an ImportError that `prepare` turns into a
ConversionError naming backend, keep and precision. `build_unavailable()` tells beforehand.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quant import litert_recipe
from targets.base import Artifact, Recipe, Runner, RuntimeOptions, Target, package_version
from targets.litert_export import export_for_litert, mark_eval
from targets.stages import StagePlan, build_stage_folder, load_stage_plan, split_pipeline, stage_runner

if TYPE_CHECKING:
    from bavit.pipeline import Pipeline

MODEL_FILE = "model.tflite"
INTERPRETERS = ("ai_edge_litert", "tflite_runtime")   # preference order
_PACKAGES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
_COMPUTE_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL")
STAGE_PROFILER = ("LiteRT: each stage its own .tflite cut from the same graph (same weights and shapes), "
                  "run one after another, each invoke timed")


def interpreter_class() -> tuple[type, str]:
    """(Interpreter class, module name): ai_edge_litert first, tflite_runtime as fallback."""
    errors = []
    for name in INTERPRETERS:
        if name == "tflite_runtime" and int(np.__version__.split(".")[0]) >= 2 and package_version("tflite-runtime"):
            # its last wheels (2.14) import under numpy 2 but fail to create an Interpreter
            errors.append(f"tflite_runtime: tflite-runtime {package_version('tflite-runtime')} needs numpy < 2 "
                          f"(numpy {np.__version__} is installed)")
            continue
        try:
            module = importlib.import_module(f"{name}.interpreter")
        except Exception as err:  # noqa: BLE001 - ImportError, or a broken binary wheel
            errors.append(f"{name}: {type(err).__name__}: {err}")
            continue
        return module.Interpreter, name
    raise ImportError("no TFLite interpreter: install ai-edge-litert (or tflite-runtime with numpy < 2); "
                      + "; ".join(errors))


class TfliteTarget(Target):
    name = "tflite"
    recipes = {"fp32": Recipe(),
               "int8": Recipe(litert_recipe.NAME, calibrated=True,
                              settings=tuple(sorted((k, str(v)) for k, v in litert_recipe.SETTINGS.items())))}
    runtime_modules = tuple(f"{m}.interpreter" for m in INTERPRETERS)

    def profiler_unavailable(self) -> str | None:
        return self.available()      # stage artifacts stand in for the per-op profiler it lacks

    def available(self) -> str | None:
        try:
            interpreter_class()
        except ImportError as err:
            return str(err)
        return None

    def build_unavailable(self) -> str | None:
        """None when this environment can build artifacts (litert-torch and torch import)."""
        for dist in ("torch", "litert-torch"):
            if package_version(dist) is None:
                return f"{dist} is not installed (pip install 'bavit-bench[tflite]')"
        return None

    def versions(self) -> dict[str, str]:
        # read from package metadata: nothing is imported. torch/transformers shape the exported
        # graph, litert-torch the flatbuffer; the interpreter is recorded with the artifact.
        return {d: package_version(d) or "not installed"
                for d in ("litert-torch", "ai-edge-litert", "tflite-runtime", "torch", "transformers")}

    def import_runtime(self) -> None:
        """Imports the interpreter only (the measured process's memory baseline)."""
        interpreter_class()

    # -- build (torch side) ---------------------------------------------------------------------
    def build(self, pipeline: Pipeline, precision: str, batch: int, calibration: np.ndarray | None,
              out: Path) -> dict[str, Any]:
        reason = self.build_unavailable()
        if reason:
            raise ImportError(reason)
        path = Path(out) / MODEL_FILE
        if precision == "fp32":
            import litert_torch
            import torch

            example = (torch.zeros(batch, 3, *pipeline.input_size),)
            module, rewrites = export_for_litert(pipeline, example)
            litert_torch.convert(mark_eval(module), example).export(str(path))
            fields: dict[str, Any] = {"extra": {"sort_rewrites": rewrites}}
        elif precision == "int8":
            if calibration is None or len(calibration) == 0:
                raise ValueError("int8 needs calibration images")
            fields = litert_recipe.quantize_and_convert(pipeline, calibration, batch, path)
        else:
            raise ValueError(f"tflite has no {precision} precision")
        fields["extra"] = {"converter": "litert_torch.convert", "file": MODEL_FILE, **fields.get("extra", {})}
        return {"files": [MODEL_FILE], **fields}

    def build_profile_parts(self, pipeline: Pipeline, artifact: Artifact, calibration: np.ndarray | None) -> None:
        """The artifact's stages as separate .tflite files (targets.stages), once per artifact."""
        build_stage_folder(artifact, lambda folder: build_stages(pipeline, artifact, calibration, folder))

    # -- load (runtime side: no torch) ----------------------------------------------------------
    def load(self, artifact: Artifact, options: RuntimeOptions) -> Runner:
        if options.profile:
            return self._load_stages(artifact, options.threads)
        threads = options.threads
        cls, module = interpreter_class()
        model_path = Path(artifact.path) / (artifact.files[0] if artifact.files else MODEL_FILE)
        interp = cls(model_path=str(model_path), num_threads=threads)
        interp.allocate_tensors()
        (inp,) = interp.get_input_details()
        outputs = _map_outputs(interp, artifact.batch)
        details = _model_info(interp)
        details.update(interpreter=module, interpreter_version=package_version(_PACKAGES[module]), threads=threads,
                       input_dtype=np.dtype(inp["dtype"]).name,
                       output_dtypes=[np.dtype(d["dtype"]).name for d in outputs])
        precision = details["executed_precision"]
        in_index, in_shape, in_dtype = inp["index"], tuple(int(s) for s in inp["shape"]), inp["dtype"]
        in_q = inp["quantization"]
        out_plan = [(d["index"], d["dtype"], d["quantization"]) for d in outputs]

        def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            pixels = np.asarray(pixels, dtype=np.float32)
            if pixels.shape != in_shape:
                raise ValueError(f"tflite artifact takes {in_shape} (static shape), got {pixels.shape}")
            interp.set_tensor(in_index, _quantize(pixels, in_dtype, in_q))
            interp.invoke()
            logits, boxes, tokens = (_dequantize(interp.get_tensor(i), dt, q) for i, dt, q in out_plan)
            return logits, boxes, tokens

        runner = Runner(run, precision)
        runner.details = details  # type: ignore[attr-defined]  (as the OpenVINO runner)
        return runner


    def _load_stages(self, artifact: Artifact, threads: int) -> Runner:
        plan, folder = load_stage_plan(artifact)
        cls, _ = interpreter_class()
        calls, precisions = [], []
        for part in plan.parts:
            interp = cls(model_path=str(folder / part.file), num_threads=threads)
            interp.allocate_tensors()
            sig = interp.get_signature_runner()
            ins, outs = sig.get_input_details(), sig.get_output_details()
            feed = [(f"args_{i}", ins[f"args_{i}"]) for i in range(len(part.inputs))]
            fetch = [(f"output_{i}", outs[f"output_{i}"]) for i in range(len(part.outputs))]

            def call(values: list[np.ndarray], sig=sig, feed=feed, fetch=fetch) -> list[np.ndarray]:
                got = sig(**{arg: _as_input(v, d) for (arg, d), v in zip(feed, values)})
                return [_as_output(got[key], d) for key, d in fetch]

            calls.append(call)
            precisions.append(_model_info(interp)["executed_precision"])
        return stage_runner(plan, calls, precisions, STAGE_PROFILER)


def _as_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """A value in the type a stage file takes it: float, quantized int8, or an integer index
    (or mask) the stage was exported with."""
    dtype, quant = np.dtype(detail["dtype"]), detail["quantization"]
    if dtype == np.float32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if not quant[0]:
        return np.ascontiguousarray(x.astype(dtype))
    return _quantize(np.asarray(x, dtype=np.float32), dtype, quant)


def _as_output(x: np.ndarray, detail: dict) -> np.ndarray:
    """Quantized outputs come back as float; indices and masks stay what they are."""
    dtype, quant = np.dtype(detail["dtype"]), detail["quantization"]
    return _dequantize(x, dtype, quant) if dtype != np.float32 and quant[0] else x


def build_stages(pipeline: Any, artifact: Artifact, calibration: np.ndarray | None, out: Path) -> StagePlan:
    """Converts each stage of the artifact's own graph (fp32 export, or int8's calibrated q/dq
    graph with the same quantizer) into `out`; build side, imports torch."""
    import litert_torch
    import torch

    example = (torch.zeros(artifact.batch, 3, *pipeline.input_size),)
    options: dict[str, Any] = {}
    if artifact.precision == "fp32":
        module, _ = export_for_litert(pipeline, example)
    elif artifact.precision == "int8":
        from litert_torch.quantize.quant_config import QuantConfig

        if calibration is None or len(calibration) == 0:
            raise ValueError("int8 stage artifacts need the calibration images")
        float_modules = tuple(artifact.recipe_settings.get("float_modules", litert_recipe.FLOAT_MODULES))
        module, quantizer, _, _ = litert_recipe.quantized_module(pipeline, calibration, artifact.batch, float_modules)
        options["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    else:
        raise ValueError(f"no stage artifacts for precision {artifact.precision}")
    return split_pipeline(module, example, lambda part, examples, path: litert_torch.convert(
        mark_eval(part), examples, **options).export(str(path)), out, ".tflite")


def _quantize(x: np.ndarray, dtype: Any, quant: tuple[float, int]) -> np.ndarray:
    if np.dtype(dtype) == np.float32:
        return np.ascontiguousarray(x)
    scale, zero = quant
    if not scale:
        raise ValueError(f"{np.dtype(dtype)} model input without quantization parameters")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(x: np.ndarray, dtype: Any, quant: tuple[float, int]) -> np.ndarray:
    if np.dtype(dtype) == np.float32:
        return x                      # get_tensor returns a copy, never the interpreter's buffer
    scale, zero = quant
    if not scale:  # an integer output that is not quantized (none in this pipeline)
        return x.astype(np.float32)
    return ((x.astype(np.float32) - zero) * scale).astype(np.float32)


def _map_outputs(interp: Any, batch: int) -> list[dict]:
    """Output details in (logits, boxes, token_logits) order.

    litert-torch names a signature's outputs output_0, output_1, ... in the order the torch
    module returns them; the flatbuffer's output list may be in another order. Names first,
    then shapes ((B,D,C+1), (B,D,4), (B,N)) as a check and as the fallback."""
    details = {d["index"]: d for d in interp.get_output_details()}
    if len(details) != 3:
        raise ValueError(f"expected 3 model outputs (logits, boxes, token_logits), found {len(details)}")
    ordered = None
    try:
        sigs = interp._get_full_signature_list()
    except Exception:
        sigs = {}
    if len(sigs) == 1:
        names = next(iter(sigs.values())).get("outputs", {})
        if sorted(names) == ["output_0", "output_1", "output_2"]:
            ordered = [details[names[f"output_{i}"]] for i in range(3)]

    def shapes_ok(o: list[dict]) -> bool:
        logits, boxes, tokens = (tuple(int(s) for s in d["shape"]) for d in o)
        return (len(logits) == 3 and len(boxes) == 3 and boxes[-1] == 4 and len(tokens) == 2
                and logits[:2] == boxes[:2] and all(s[0] == batch for s in (logits, boxes, tokens)))

    if ordered is not None and shapes_ok(ordered):
        return ordered
    rest = list(details.values())
    tokens = [d for d in rest if len(d["shape"]) == 2]
    three = [d for d in rest if len(d["shape"]) == 3]
    boxes = [d for d in three if d["shape"][-1] == 4]
    logits = [d for d in three if d["shape"][-1] != 4]
    if len(tokens) == 1 and len(boxes) == 1 and len(logits) == 1:
        return [logits[0], boxes[0], tokens[0]]
    raise ValueError("cannot tell logits from boxes among the model outputs "
                     f"{[(d['name'], tuple(d['shape'])) for d in rest]}")


def _model_info(interp: Any) -> dict:
    """What the model computes in: int8 when its matmul/conv activations are int8."""
    tensors = interp.get_tensor_details()
    dtypes = {d["index"]: np.dtype(d["dtype"]) for d in tensors}
    counts: dict[str, int] = {}
    for dt in dtypes.values():
        counts[dt.name] = counts.get(dt.name, 0) + 1
    i8_ops = f32_ops = 0
    try:
        ops = interp._get_ops_details()   # the plan before delegation
    except Exception:
        ops = []
    for op in ops:
        if op.get("op_name") in _COMPUTE_OPS and len(op.get("inputs", [])):
            dt = dtypes.get(int(op["inputs"][0]))
            if dt == np.int8:
                i8_ops += 1
            elif dt == np.float32:
                f32_ops += 1
    if ops:
        int8 = i8_ops > 0
    else:  # no op list: fall back to the tensor dtypes
        int8 = counts.get("int8", 0) > 0
    precision = ("i8+f32" if f32_ops or counts.get("float32", 0) else "i8") if int8 else "f32"
    return {"executed_precision": precision, "tensor_dtypes": counts, "int8_matmul_ops": i8_ops,
            "f32_matmul_ops": f32_ops}


TARGET = TfliteTarget()
