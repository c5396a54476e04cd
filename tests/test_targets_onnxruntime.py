"""ONNX Runtime target on the tiny random pipeline (64x64, batch 2): fp32 parity with eager,
static QDQ int8 within tolerance of fp32 with the heads kept float, executed precision read
from ORT's optimised graph, the cache key, a runner process without torch, and the profile.
Four conversions (fp32 and int8 at keep 1.0 / 0.5), shared by every test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKEND_BATCH as BATCH

from quant import ort_recipe
from targets import ConversionError, get_target, onnxruntime_backend
from targets.base import MANIFEST, Artifact, RuntimeOptions

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("logits", "boxes", "token_logits")
FP32_TOL = {"logits": 1e-4, "boxes": 1e-4, "token_logits": 1e-4}   # issue bar: max abs diff vs eager
# int8 vs fp32 on random weights and random calibration images: max abs diff over the output's
# range. A "still the same model" check, not an accuracy claim (mAP comes from bench.run).
INT8_REL_TOL = {"logits": 0.1, "boxes": 0.1}
TARGET = get_target("onnxruntime")

_WHY_NOT = TARGET.build_unavailable() or TARGET.available()
if os.environ.get("BAVIT_REQUIRE_BACKENDS") == "1":
    assert not _WHY_NOT, f"onnxruntime target cannot build here: {_WHY_NOT}"
if _WHY_NOT:
    pytest.skip(f"onnxruntime target cannot build here: {_WHY_NOT}", allow_module_level=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ort-artifacts")


@pytest.fixture(scope="module")
def build(pipes, calib, cache):
    built: dict = {}

    def get(precision: str, keep: float) -> Artifact:
        if (precision, keep) not in built:
            built[precision, keep] = TARGET.prepare(pipes[keep], precision, BATCH, calib, cache, "tiny-seed0")
        return built[precision, keep]

    return get


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_fp32_matches_eager(keep, build, reference, pixels):
    art = build("fp32", keep)
    assert art.batch is None and art.files == ["model.onnx"]      # one dynamic-batch model
    runner = TARGET.load(art, RuntimeOptions(1, batch=BATCH))
    assert runner.executed_precision == "f32" and runner.details["int8_ops"] == 0
    for name, r, o in zip(NAMES, reference[keep], runner(pixels)):
        assert r.shape == o.shape, name
        diff = float(np.abs(r - o).max())
        assert diff <= FP32_TOL[name], (name, diff)
    # the same file serves another batch
    one = TARGET.load(art, RuntimeOptions(1, batch=1))(pixels[:1])
    np.testing.assert_allclose(one[1], reference[keep][1][:1], atol=1e-4)


def test_nodes_carry_their_module(build):
    import onnx

    model = onnx.load(str(build("fp32", 0.5).path / "model.onnx"))
    modules = [ort_recipe.node_module(n.name) for n in model.graph.node]
    assert sum(bool(m) for m in modules) >= 0.95 * len(modules)
    assert any(m.startswith("detector.det.vit.encoder.layer.0") for m in modules)
    assert any(m == "selector" for m in modules) and any(m.startswith("classifier.layers.") for m in modules)


def test_int8_close_to_fp32_with_float_heads(build, pixels):
    import onnx

    art, fp32 = build("int8", 0.5), build("fp32", 0.5)
    assert art.recipe == ort_recipe.NAME and art.fp32_kept == ort_recipe.FP32_KEPT
    assert art.recipe_settings["calibration_images"] == 8 and art.recipe_settings["excluded_nodes"] > 0
    runner = TARGET.load(art, RuntimeOptions(1, batch=BATCH))
    # read back from ORT's optimised graph: its QDQ pairs became int8 kernels
    assert runner.executed_precision == "i8+f32"
    assert runner.details["optimized_ops"].get("QLinearMatMul", 0) > 10
    ref = TARGET.load(fp32, RuntimeOptions(1, batch=BATCH))(pixels)
    out = runner(pixels)
    for name, r, o in zip(NAMES, ref, out):
        if name in INT8_REL_TOL:
            rel = float(np.abs(r - o).max() / (r.max() - r.min()))
            assert rel <= INT8_REL_TOL[name], (name, rel)
    # every MatMul of the float-kept heads reads float operands: no DequantizeLinear feeds it
    model = onnx.load(str(art.path / "model.onnx"))
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    heads = [n for n in model.graph.node if n.op_type == "MatMul"
             and any(ort_recipe.node_module(n.name).startswith(m) for m in ort_recipe.FLOAT_MODULES)]
    assert heads and not any(i in dq_out for n in heads for i in n.input)
    weights = {i.name for i in model.graph.initializer} | dq_out
    encoder = [n for n in model.graph.node if n.op_type == "MatMul"
               and ort_recipe.node_module(n.name).startswith("detector.det.vit.encoder.")]
    linears = [n for n in encoder if ".attention.attention" not in n.name or n.name.split("/")[0].endswith(
        ("query", "key", "value"))]
    attention = [n for n in encoder if n not in linears]
    # the encoder's linears read dequantized int8; its attention matmuls (two activations) stay float
    assert linears and all(any(i in dq_out for i in n.input) for n in linears)
    assert len(attention) == 2 * 4 and not any(i in dq_out for n in attention for i in n.input)
    assert art.recipe_settings["float_attention_matmuls"] == 2 * (4 + 2)   # detector's 4 layers, BAViT's 2
    assert weights


def test_executed_precision_unfused_qdq_is_float(build, monkeypatch):
    """With ORT's graph optimisations off the QDQ pairs stay unfused: the MatMuls run float on
    dequantized values, and the cell says f32, whatever the artifact is labelled."""
    real = onnxruntime_backend._options

    def no_fusion(ort, threads):
        so = real(ort, threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return so

    monkeypatch.setattr(onnxruntime_backend, "_options", no_fusion)
    executed, details = onnxruntime_backend.executed_precision(build("int8", 1.0).path / "model.onnx", 1)
    assert executed == "f32" and details["optimized_ops"]["DequantizeLinear"] > 0


def test_cache_key_holds_exporter_and_quantizer(build, pipes, calib, cache, monkeypatch):
    first = build("int8", 0.5)
    assert "exporter" in TARGET.versions() and "dynamo=True" in TARGET.versions()["exporter"]

    def no_build(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(TARGET, "build", no_build)
    again = TARGET.prepare(pipes[0.5], "int8", BATCH, calib, cache, "tiny-seed0")
    assert again.cached and again.path == first.path
    (again.path / MANIFEST).stat()
    # another quantizer setting, another exporter: other artifacts
    recipe = TARGET.recipes["int8"]
    monkeypatch.setitem(TARGET.recipes, "int8", type(recipe)(recipe.name, True, recipe.settings + (("x", "1"),),
                                                             recipe.requires))
    with pytest.raises(ConversionError, match="converted again"):
        TARGET.prepare(pipes[0.5], "int8", BATCH, calib, cache, "tiny-seed0")
    monkeypatch.setitem(TARGET.recipes, "int8", recipe)
    monkeypatch.setattr(onnxruntime_backend, "EXPORTER", "another exporter")
    with pytest.raises(ConversionError, match="converted again"):
        TARGET.prepare(pipes[0.5], "int8", BATCH, calib, cache, "tiny-seed0")


def test_int8_without_calibration_fails_clearly(pipes, tmp_path):
    with pytest.raises(ConversionError, match=r"onnxruntime conversion failed \(keep 0.5, int8.*calibration"):
        TARGET.prepare(pipes[0.5], "int8", BATCH, None, tmp_path, "w")


def test_runner_process_never_imports_torch(build, pixels, tmp_path):
    arts = [build("fp32", 0.5), build("int8", 0.5)]
    np.save(tmp_path / "x.npy", pixels)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from targets import get_target
        from targets.base import Artifact, RuntimeOptions
        target = get_target('onnxruntime')
        target.import_runtime()
        runners = [target.load(Artifact.load(p), RuntimeOptions(1, batch={BATCH})) for p in {[str(a.path) for a in arts]!r}]
        for r, name in zip(runners, ('fp32', 'int8')):
            for i, o in enumerate(r(np.load({str(tmp_path / 'x.npy')!r}))):
                np.save({str(tmp_path)!r} + f'/{{name}}{{i}}.npy', o)
        print(json.dumps({{'imported': sorted(m for m in ('torch', 'onnxscript', 'transformers') if m in sys.modules),
                          'precisions': [r.executed_precision for r in runners]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"imported": [], "precisions": ["f32", "i8+f32"]}
    for art, name in zip(arts, ("fp32", "int8")):
        here = TARGET.load(art, RuntimeOptions(1, batch=BATCH))(pixels)
        for i, o in enumerate(here):
            np.testing.assert_allclose(np.load(tmp_path / f"{name}{i}.npy"), o, rtol=0, atol=1e-6)


def test_profile_nodes_trace_to_stages(build, pixels):
    from bavit.stages import stage_of

    runner = TARGET.load(build("int8", 0.5), RuntimeOptions(1, batch=BATCH, profile=True))
    out = runner(pixels)
    nodes = runner.node_times()
    assert runner.profiler == onnxruntime_backend.PROFILER and nodes
    assert all(n.ms >= 0 for n in nodes) and sum(n.ms for n in nodes) > 0
    assert {"QLinearMatMul", "QLinearConv"} <= {n.kind for n in nodes}
    stages = {stage_of(n.module) for n in nodes if n.module}
    assert len(stages) >= 3, stages
    # a second profiled call on the fresh session: as many nodes, the same outputs
    again = runner(pixels)
    assert len(runner.node_times()) == len(nodes)
    np.testing.assert_allclose(again[1], out[1], atol=1e-6)


def test_last_call_nodes_reads_only_the_last_run():
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              {"cat": "Node", "name": "a/n1_kernel_time", "ts": 10, "dur": 50, "args": {"op_name": "MatMul"}},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              {"cat": "Node", "name": "a.b/n1_kernel_time", "ts": 210, "dur": 40,
               "args": {"op_name": "QLinearMatMul", "provider": "CPUExecutionProvider"}},
              {"cat": "Node", "name": "n2_fence_before", "ts": 220, "dur": 0}]
    (node,) = onnxruntime_backend.last_call_nodes(events)
    assert (node.name, node.kind, node.module, node.ms) == ("a.b/n1", "QLinearMatMul", "a.b", 0.04)
