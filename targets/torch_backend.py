"""PyTorch eager backend: fp32 and torchao dynamic int8.

Artifact: the pipeline exported with `torch.export` at the static batch size and saved as a
`.pt2` (`torch.export.save`); the runner loads it with `torch.export.load(...).module()`,
an `nn.Module` that executes the graph's aten ops eagerly (no torch.compile, same kernels
as the Python model: latency within noise of the original module, int8 included, which
`python -m bench.torch_int8_check` shows on CPUs with int8 matmul kernels). The loaded module
needs neither `bavit` nor `transformers`, only torch (and torchao's ops for int8). Should
export fail, the full module is pickled with `torch.save` instead (`pipeline.pt`); the
manifest's `extra["format"]` says which.

This module imports no torch at import time: torch comes in `build` and `load` only.
"""
from __future__ import annotations

import copy
import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quant import autocast_recipe, torchao_recipe
from targets.base import Artifact, NodeTime, Recipe, Runner, RuntimeOptions, Target, package_version

if TYPE_CHECKING:
    from bavit.pipeline import Pipeline

EXPORTED = "pipeline.pt2"
PICKLED = "pipeline.pt"
FORMATS = {EXPORTED: "torch.export .pt2, run eagerly via ExportedProgram.module()",
           PICKLED: "torch.save full nn.Module (torch.export failed), run eagerly"}


class TorchTarget(Target):
    name = "torch"
    recipes = {"fp32": Recipe(),
               "bf16": Recipe(autocast_recipe.NAME, settings=tuple(sorted(autocast_recipe.SETTINGS.items()))),
               # dynamic activation scales: no calibration set
               "int8": Recipe(torchao_recipe.NAME, calibrated=False,
                              settings=tuple(sorted((k, str(v)) for k, v in torchao_recipe.SETTINGS.items())),
                              requires=("torchao",))}
    runtime_modules = ("torch",)

    def runnable(self, precision: str) -> str | None:
        reason = super().runnable(precision)
        if reason is None and precision == "int8":
            reason = int8_matmul_unavailable()
        if reason is None and precision == "bf16":
            reason = autocast_recipe.unavailable()
        return reason

    def available(self) -> str | None:
        if importlib.util.find_spec("torch") is None:  # no import: torch is ~220 MB
            return "torch is not installed"
        return None

    def versions(self) -> dict[str, str]:
        """Package versions, and torch's CPU capability: torchao picks its int8 kernels for the
        CPU the artifact is built on."""
        import torch

        out = {p: package_version(p) or "not installed" for p in ("torch", "torchao", "transformers")}
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        return out

    # -- build process ----------------------------------------------------------------------
    def build(self, pipeline: "Pipeline", precision: str, batch: int, calibration: np.ndarray | None,
              out: Path) -> dict[str, Any]:
        import torch

        model = copy.deepcopy(pipeline).eval()  # quantize_ works in place; the caller keeps fp32
        fields: dict[str, Any] = {}
        if precision == "int8":
            torchao_recipe.quantize(model)
            n = torchao_recipe.quantized_layers(model)
            if n == 0:
                raise RuntimeError("torchao quantized no Linear layer")
            fields.update(recipe=torchao_recipe.NAME,
                          recipe_settings=dict(torchao_recipe.SETTINGS, quantized_linears=n),
                          fp32_kept=torchao_recipe.FP32_KEPT)
        elif precision == "bf16":
            model = autocast_recipe.wrap(model)
            fields.update(autocast_recipe.ARTIFACT_FIELDS)
        elif precision != "fp32":
            raise ValueError(f"torch has no {precision} precision")
        h, w = pipeline.input_size
        example = torch.zeros(batch, 3, h, w)
        try:
            with torch.no_grad():
                program = torch.export.export(model, (example,))
            torch.export.save(program, out / EXPORTED)
            file, export_error = EXPORTED, None
        except Exception as err:  # noqa: BLE001 - fall back to the pickled module, say why
            (out / EXPORTED).unlink(missing_ok=True)
            torch.save(model, out / PICKLED)
            file, export_error = PICKLED, f"{type(err).__name__}: {str(err).strip()[:300]}"
        # the file also holds the serialized graph and the example input: weights_bytes is the
        # model's own size (int8 weights + scales, fp32 rest)
        extra = {"format": FORMATS[file], "execution": "eager", "input_shape": [batch, 3, h, w],
                 "weights_bytes": _weights_bytes(model)}
        if export_error:
            extra["export_error"] = export_error
        fields.update(files=[file], extra=extra)
        return fields

    # -- measured process -------------------------------------------------------------------
    def import_runtime(self) -> None:
        """torch, and torchao (its quantized tensor types and ops), before the memory baseline."""
        import torch  # noqa: F401
        if importlib.util.find_spec("torchao") is not None:
            import torchao  # noqa: F401

    def load(self, artifact: Artifact, options: RuntimeOptions) -> Runner:
        import torch

        torch.set_num_threads(options.threads)
        if artifact.precision == "int8":
            import torchao  # noqa: F401 - registers the torchao quantization ops / tensor types
        path = Path(artifact.path) / artifact.files[0]
        if path.name == EXPORTED:
            module = torch.export.load(path).module()
        else:
            module = torch.load(path, weights_only=False).eval()

        ops = graph_ops(module)
        precision = _precision(module, ops)
        # an autocast region is one node (wrap_with_autocast) and a pickled module has no graph:
        # neither has per-op times to give
        profilable = hasattr(module, "graph") and "bf16" not in precision
        timed = timed_nodes(module) if options.profile and profilable else None

        def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
            with torch.inference_mode():
                logits, boxes, tokens = module(x) if timed is None else timed.run(x)
            return logits.numpy(), boxes.numpy(), tokens.numpy()

        runner = Runner(run, precision, node_times=timed.node_times if timed else None,
                        profiler="torch.fx.Interpreter over the exported graph, each op node timed" if profilable
                        else "no per-op times: the graph runs as one autocast region (bf16) or is a pickled module")
        runner.details = {"int8_matmuls": ops.get("aten._int_mm.default", 0),
                          "dynamic_quantize_ops": ops.get("torchao.quantize_affine.default", 0),
                          "graph_ops": sum(ops.values())}
        return runner

    def profiler_unavailable(self) -> str | None:
        return None


def _precision(module, ops: dict[str, int]) -> str:
    """int8 where the graph calls torch._int_mm; bf16 where it holds an enabled bf16 autocast
    region (`wrap_with_autocast(device, dtype, enabled, ...)`)."""
    import torch

    if ops.get("aten._int_mm.default"):
        return "i8-dynamic+f32"
    graph = getattr(module, "graph", None)
    if graph is not None and any("autocast" in str(n.target) and len(n.args) > 2 and n.args[1] == torch.bfloat16
                                 and n.args[2] for n in graph.nodes if n.op == "call_function"):
        return "bf16+f32"
    return "f32"


def graph_ops(module) -> dict[str, int]:
    """Op counts of the loaded graph, which is what runs: the executed precision is read from
    them (int8 when it calls `torch._int_mm`), not from the artifact's label. A pickled
    module (export failed) has no graph: its Linear layers' weight types are counted."""
    from collections import Counter

    graph = getattr(module, "graph", None)
    if graph is not None:
        return dict(Counter(str(n.target) for n in graph.nodes if n.op == "call_function"))
    n = torchao_recipe.quantized_layers(module)        # each runs torch._int_mm
    return {"aten._int_mm.default": n} if n else {}


def _timed_nodes_class():
    import torch.fx

    class TimedNodes(torch.fx.Interpreter):
        """Runs the exported graph node by node, timing each op: torch.profiler's aten
        events cannot be traced back to modules in an exported graph, its nodes can (their
        `nn_module_stack`). The interpreter's own per-node overhead falls between the timed
        spans, so the node sum stays comparable with the unprofiled latency."""

        def __init__(self, module) -> None:
            super().__init__(module)
            self.last: list = []

        def run(self, *args):
            self.last = []
            return super().run(*args)

        def run_node(self, n):
            if n.op != "call_function":
                return super().run_node(n)
            start = time.perf_counter()
            out = super().run_node(n)
            self.last.append((n, (time.perf_counter() - start) * 1000))
            return out

        def node_times(self) -> list[NodeTime]:
            out = []
            for n, ms in self.last:
                stack = n.meta.get("nn_module_stack") or {}
                module = list(stack.values())[-1][0] if stack else ""
                out.append(NodeTime(n.name, str(n.target), "", module, ms))
            return out

    return TimedNodes


def timed_nodes(module):
    """`module` (an exported graph) wrapped to time its op nodes; torch is imported here, not
    at this module's import."""
    return _timed_nodes_class()(module)


# torchao's dynamic int8 runs its matmuls as torch._int_mm; on CPUs without an int8 dot-product
# unit (AVX-512 VNNI / AVX-VNNI / AMX) that is a reference loop, tens of times slower than the
# fp32 matmul it replaces: such cells would time the fallback, and one accuracy pass would take
# longer than the whole sweep. Measured once per process on an encoder-sized matmul.
INT8_SLOWDOWN_LIMIT = 3.0
_int8_probe: list[str | None] = []


def int8_matmul_unavailable() -> str | None:
    """None when torch._int_mm is not much slower than the fp32 matmul here, else why."""
    if not _int8_probe:
        import time

        import torch

        a = torch.randint(-128, 127, (1024, 192), dtype=torch.int8)
        b = torch.randint(-128, 127, (192, 768), dtype=torch.int8)
        af, bf = a.float(), b.float()

        def best(fn, x, y) -> float:
            fn(x, y)
            times = []
            for _ in range(5):
                t = time.perf_counter()
                fn(x, y)
                times.append(time.perf_counter() - t)
            return min(times)

        ratio = best(torch._int_mm, a, b) / best(torch.mm, af, bf)
        cap = torch.backends.cpu.get_cpu_capability()
        _int8_probe.append(None if ratio <= INT8_SLOWDOWN_LIMIT else
                           f"torch._int_mm runs {ratio:.0f}x slower than the fp32 matmul on this CPU ({cap}: no "
                           "int8 dot-product kernel); torchao int8 would time a reference loop")
    return _int8_probe[0]


def _weights_bytes(model) -> int:
    total = 0
    for tensor in model.state_dict().values():
        if hasattr(tensor, "__tensor_flatten__"):  # torchao subclass: int8 data, scales, zero points
            names, _ = tensor.__tensor_flatten__()
            total += sum(getattr(tensor, n).numel() * getattr(tensor, n).element_size() for n in names)
        else:
            total += tensor.numel() * tensor.element_size()
    return int(total)


TARGET = TorchTarget()
