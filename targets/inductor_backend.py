"""AOTInductor backend: the `torch.export`ed pipeline compiled ahead of time into a `.pt2`
package (`torch._inductor.aoti_compile_and_package`, freezing on, under no_grad), loaded in the
measuring process with `aoti_load_package`: nothing compiles while a cell is timed, and the
compile time is the build's `convert_s`. This is PyTorch as it is deployed without Python
in the loop of each op (the `torch` target runs the same exported graph op by op).

Precisions:
- fp32: the exported pipeline as is.
- bf16: quant/autocast_recipe.py (exported under CPU bf16 autocast), as the `torch` target.
- int8: quant/pt2e_x86_recipe.py (PT2E static, X86InductorQuantizer), lowered to oneDNN
  int8 kernels, with int8 attention matmuls (quant/int8_attention.py).

The executed precision is read back from the package: the kernels its generated wrapper
calls (`_qlinear_pointwise*`, `_qconv_pointwise*`, attention's `_int_mm*` are int8; bf16 from the autocast recipe
when bf16 matmuls are present), counted into `runner.details`. Building needs a C++ compiler
(AOTInductor compiles its generated C++); loading does not. The artifact's cache key holds
torch's CPU capability (AOTInductor generates ISA-specific code).

Profile (`--profile`): a compiled package has no per-op times that trace back to modules, so
the build process also compiles each stage of the same graph (fp32, or int8's q/dq graph) into
its own package in `stages/` (targets.stages); bf16's graph is one autocast region and has no
stages to cut."""
from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import zipfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quant import autocast_recipe, pt2e_x86_recipe
from targets.base import Artifact, ProfileUnavailable, Recipe, Runner, RuntimeOptions, Target, package_version
from targets.stages import build_stage_folder, load_stage_plan, split_pipeline, stage_runner

if TYPE_CHECKING:
    from bavit.pipeline import Pipeline

PACKAGE = "pipeline.pt2"
INT8_KERNELS = ("_qlinear_pointwise", "_qconv_pointwise", "_int_mm")
BF16_MENTIONS = "(bfloat16 in the generated code)"
STAGE_PROFILER = ("AOTInductor: each stage its own package compiled from the same graph (same weights and "
                  "shapes), run one after another, each call timed")
NO_BF16_STAGES = "bf16 runs as one autocast region of the exported graph: there are no stages to cut"


def _settings(d: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in d.items()))


class InductorTarget(Target):
    name = "inductor"
    recipes = {"fp32": Recipe(settings=_settings({"freezing": True})),
               "bf16": Recipe(autocast_recipe.NAME, settings=_settings({**autocast_recipe.SETTINGS, "freezing": True})),
               "int8": Recipe(pt2e_x86_recipe.NAME, calibrated=True, settings=_settings(pt2e_x86_recipe.SETTINGS),
                              requires=("torchao",))}
    runtime_modules = ("torch",)

    def available(self) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        return None

    def build_unavailable(self) -> str | None:
        compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
        if compiler is None or shutil.which(compiler) is None:
            return "no C++ compiler (g++, c++, clang++ or $CXX) on PATH: AOTInductor compiles the model to C++"
        return None

    def runnable(self, precision: str) -> str | None:
        reason = super().runnable(precision)
        if reason is None and precision == "bf16":
            reason = autocast_recipe.unavailable()
        return reason

    def versions(self) -> dict[str, str]:
        import torch

        out = {p: package_version(p) or "not installed" for p in ("torch", "torchao", "transformers")}
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()   # the generated code's ISA
        out["int8_reduce_range"] = str(pt2e_x86_recipe.reduce_range())     # follows VNNI, not the capability
        return out

    # -- build process ----------------------------------------------------------------------
    def build(self, pipeline: "Pipeline", precision: str, batch: int, calibration: np.ndarray | None,
              out: Path) -> dict[str, Any]:
        import torch
        import torch._inductor

        why = self.build_unavailable()
        if why:
            raise RuntimeError(why)
        h, w = pipeline.input_size
        example = (torch.zeros(batch, 3, h, w),)
        model, fields = _model_for(pipeline, precision, batch, calibration, pt2e_x86_recipe.reduce_range())
        with torch.no_grad():
            program = torch.export.export(model, example)
            torch._inductor.aoti_compile_and_package(program, package_path=str(out / PACKAGE),
                                                     inductor_configs={"freezing": True})
        kernels = package_kernels(out / PACKAGE)
        fields.update(files=[PACKAGE], extra={"format": "AOTInductor .pt2 package", "input_shape": [batch, 3, h, w],
                                              "kernels": kernels,
                                              "cpu_capability": torch.backends.cpu.get_cpu_capability()})
        return fields

    def build_profile_parts(self, pipeline: "Pipeline", artifact: Artifact, calibration: np.ndarray | None) -> None:
        """Each stage of the artifact's graph compiled into its own package (targets.stages)."""
        if artifact.precision == "bf16":
            return
        build_stage_folder(artifact, lambda folder: self._build_stages(pipeline, artifact, calibration, folder))

    @staticmethod
    def _build_stages(pipeline: "Pipeline", artifact: Artifact, calibration: np.ndarray | None, out: Path):
        import torch
        import torch._inductor

        example = (torch.zeros(artifact.batch, 3, *pipeline.input_size),)
        # the model the package was compiled from (int8: re-calibrated on the same images, alike)
        model, _ = _model_for(pipeline, artifact.precision, artifact.batch, calibration,
                              bool(artifact.recipe_settings.get("reduce_range", False)))
        if not isinstance(model, torch.fx.GraphModule):
            with torch.no_grad():
                model = torch.export.export(model, example).module()

        def compile_part(part: Any, examples: tuple, path: Path) -> None:
            with torch.no_grad():
                torch._inductor.aoti_compile_and_package(torch.export.export(part, examples), package_path=str(path),
                                                         inductor_configs={"freezing": True})

        return split_pipeline(model, example, compile_part, out, ".pt2")

    def profiler_unavailable(self) -> str | None:
        return self.available()      # stage packages stand in for per-op times

    # -- measured process -------------------------------------------------------------------
    def load(self, artifact: Artifact, options: RuntimeOptions) -> Runner:
        import torch
        import torch._inductor

        torch.set_num_threads(options.threads)
        if options.profile:
            return _load_stages(artifact)
        path = Path(artifact.path) / artifact.files[0]
        module = torch._inductor.aoti_load_package(str(path))
        kernels = package_kernels(path)

        def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
            with torch.inference_mode():
                logits, boxes, tokens = module(x)
            return logits.numpy(), boxes.numpy(), tokens.numpy()

        runner = Runner(run, executed_precision(kernels))
        runner.details = {"kernels": kernels, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "built_for": (artifact.extra or {}).get("cpu_capability")}
        return runner


def _model_for(pipeline: "Pipeline", precision: str, batch: int, calibration: np.ndarray | None,
               reduced: bool) -> tuple[Any, dict[str, Any]]:
    """The module a package is compiled from, and the Artifact fields its recipe records;
    the artifact and its profile's stage packages both start here."""
    model = copy.deepcopy(pipeline).eval()
    fields: dict[str, Any] = {}
    if precision == "int8":
        if calibration is None:
            raise ValueError("int8 needs calibration images")
        model, n_batches = pt2e_x86_recipe.quantize(model, calibration, batch, reduced)
        fields.update(recipe=pt2e_x86_recipe.NAME, fp32_kept=pt2e_x86_recipe.FP32_KEPT,
                      recipe_settings=dict(pt2e_x86_recipe.SETTINGS, calibration_images=n_batches * batch,
                                           calibration_batches=n_batches, reduce_range=reduced))
    elif precision == "bf16":
        model = autocast_recipe.wrap(model)
        fields.update(autocast_recipe.ARTIFACT_FIELDS)
    elif precision != "fp32":
        raise ValueError(f"inductor has no {precision} precision")
    return model, fields


def _load_stages(artifact: Artifact) -> Runner:
    import torch
    import torch._inductor

    if artifact.precision == "bf16":
        raise ProfileUnavailable(NO_BF16_STAGES)
    plan, folder = load_stage_plan(artifact)
    calls, precisions = [], []
    for part in plan.parts:
        module = torch._inductor.aoti_load_package(str(folder / part.file))

        def call(values: list[np.ndarray], module=module) -> list[np.ndarray]:
            with torch.inference_mode():
                out = module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in values])
            return [t.numpy() for t in (out if isinstance(out, (list, tuple)) else (out,))]

        calls.append(call)
        precisions.append(executed_precision(package_kernels(folder / part.file)))
    return stage_runner(plan, calls, precisions, STAGE_PROFILER)


_CALL = re.compile(r"aoti_torch_cpu_([A-Za-z0-9_]+)\(")


def package_kernels(path: str | Path) -> dict[str, int]:
    """Library kernels the package's generated wrapper calls, counted (its own fused C++
    loops are not listed): what the compiled model runs, read from the model itself."""
    with zipfile.ZipFile(path) as z:
        sources = [n for n in z.namelist() if n.endswith("wrapper.cpp")]
        if not sources:
            raise ValueError(f"{path}: no generated wrapper in the package")
        text = z.read(sources[0]).decode(errors="replace")
    counts = Counter(_CALL.findall(text))
    counts[BF16_MENTIONS] = text.count("bfloat16")     # bf16 tensors and casts in the generated code
    return dict(sorted(counts.items()))


def executed_precision(kernels: dict[str, int]) -> str:
    """From the package's own code: int8 when it calls oneDNN's int8 GEMM/conv kernels, bf16
    when its code handles bf16 tensors; the requested precision is not taken on trust."""
    parts = []
    if sum(n for k, n in kernels.items() if k.startswith(INT8_KERNELS)):
        parts.append("i8")
    if kernels.get(BF16_MENTIONS, 0):
        parts.append("bf16")
    return "+".join(parts + ["f32"])


TARGET = InductorTarget()
