"""TFLite / LiteRT target on the tiny random pipeline (64x64, batch 2): fp32 parity with eager,
int8 (PT2E static) within tolerance of fp32, the artifact cache, a runner process without
torch, output mapping, the sort rewrite, and the committed tflite-runtime fixtures.
Three conversions per run (fp32 keep 1.0 / 0.5, int8 keep 0.5), shared by every test."""
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
from conftest import BACKEND_KEEPS as KEEPS
from conftest import eager_outputs

from quant import litert_recipe
from targets import ConversionError, get_target, litert_export, tflite_backend
from targets.base import MANIFEST, Artifact, ProfileUnavailable, RuntimeOptions
from targets.stages import STAGES_DIR, StagePlan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "tflite_runtime" / "fixtures"
NAMES = ("logits", "boxes", "token_logits")
FP32_TOL = {"logits": 1e-3, "boxes": 1e-4, "token_logits": 1e-4}   # max abs diff vs eager
TARGET = get_target("tflite")

_WHY_NOT = TARGET.build_unavailable() or TARGET.available()
# tox's py311 env installs every backend and sets BAVIT_REQUIRE_BACKENDS=1: there a broken
# LiteRT install must fail the suite, not turn these tests into skips
if os.environ.get("BAVIT_REQUIRE_BACKENDS") == "1":
    assert not _WHY_NOT, f"tflite target cannot build here: {_WHY_NOT}"
if _WHY_NOT:
    pytest.skip(f"tflite target cannot build here: {_WHY_NOT}", allow_module_level=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tflite-artifacts")


@pytest.fixture(scope="module")
def build(pipes, calib, cache):
    """Memoised prepare(precision, keep)."""
    built: dict = {}

    def get(precision: str, keep: float) -> Artifact:
        if (precision, keep) not in built:
            built[precision, keep] = TARGET.prepare(pipes[keep], precision, BATCH, calib, cache, "tiny-seed0")
        return built[precision, keep]

    return get


def _max_diff(ref, out):
    return {n: float(np.abs(r - o).max()) for n, r, o in zip(NAMES, ref, out)}


# -- fp32 parity ----------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", KEEPS)
def test_fp32_matches_eager(keep, build, reference, pixels):
    art = build("fp32", keep)
    runner = TARGET.load(art, RuntimeOptions(1))
    out = runner(pixels)
    assert [o.shape for o in out] == [r.shape for r in reference[keep]]
    assert all(o.dtype == np.float32 for o in out)
    diff = _max_diff(reference[keep], out)
    assert all(diff[n] <= FP32_TOL[n] for n in NAMES), diff
    assert runner.executed_precision == "f32"
    assert runner.details["interpreter"] == "ai_edge_litert" and runner.details["int8_matmul_ops"] == 0
    assert art.files == ["model.tflite"] and art.recipe == "none" and art.keep == keep and art.batch == BATCH
    assert art.extra["sort_rewrites"] == (0 if keep == 1.0 else 1)   # the selector's index sort
    again = runner(pixels)
    assert again[1] is not out[1] and np.array_equal(again[1], out[1])  # outputs are not reused buffers
    with pytest.raises(ValueError, match="static shape"):
        runner(pixels[:1])


def test_versions_need_no_import():
    versions = TARGET.versions()
    assert {"litert-torch", "ai-edge-litert", "torch"} <= set(versions)
    assert versions["litert-torch"] != "not installed"


# -- int8 -----------------------------------------------------------------------------------------
def test_int8_close_to_fp32(build, pipes, reference, pixels):
    art = build("int8", 0.5)
    fp32 = build("fp32", 0.5)
    assert art.recipe == litert_recipe.NAME and art.fp32_kept == litert_recipe.FP32_KEPT
    settings = art.recipe_settings
    assert settings["per_channel"] is True and settings["symmetric"] is True
    # calibrated at the recipe's own batch, not the artifact's: 8 images, one batch of 8
    assert litert_recipe.CALIB_BATCH == 8 and settings["calibration_batch"] == 8
    assert settings["calibration_images"] == 8 and settings["calibration_batches"] == 1
    assert settings["float_modules"] == list(litert_recipe.FLOAT_MODULES)
    # the detector is int8 (the dense file shrinks to under half); BAViT's classifier stays float:
    # what keep 0.5 adds to the int8 file is more than half what it adds to the fp32 one (int8: a quarter)
    dense_int8, dense_fp32 = build("int8", 1.0), build("fp32", 1.0)
    assert dense_int8.size_bytes < 0.5 * dense_fp32.size_bytes, (dense_int8.size_bytes, dense_fp32.size_bytes)
    added_int8, added_fp32 = art.size_bytes - dense_int8.size_bytes, fp32.size_bytes - dense_fp32.size_bytes
    assert added_fp32 > 0 and added_int8 > 0.5 * added_fp32, (added_int8, added_fp32)
    runner = TARGET.load(art, RuntimeOptions(1))
    assert runner.executed_precision == "i8+f32"
    # the pixels feed the float classifier too, so the pruned model takes them in float (quantized
    # inside for the detector); the dense model's first op is int8, and so is its input
    assert runner.details["int8_matmul_ops"] > 0 and runner.details["input_dtype"] == "float32"
    assert TARGET.load(dense_int8, RuntimeOptions(1)).details["input_dtype"] == "int8"
    out = runner(pixels)
    ref = TARGET.load(fp32, RuntimeOptions(1))(pixels)
    for name, r, o in zip(NAMES, ref, out):
        rel = float(np.abs(r - o).max() / np.abs(r).max())
        assert rel <= litert_recipe.TOLERANCE[name], (name, rel)
    # quantization worked on an exported copy: the caller's pipeline is untouched
    assert all(np.array_equal(a, b) for a, b in zip(eager_outputs(pipes[0.5], pixels), reference[0.5]))


def _int8_scales(art: Artifact) -> set[tuple]:
    """The distinct (scales, zero points) of the model's int8 tensors."""
    cls, _ = tflite_backend.interpreter_class()
    interp = cls(model_path=str(Path(art.path) / art.files[0]))
    params = [d["quantization_parameters"] for d in interp.get_tensor_details() if np.dtype(d["dtype"]) == np.int8]
    return {(tuple(np.round(q["scales"], 12)), tuple(q["zero_points"])) for q in params}


def test_int8_artifacts_of_two_batches_are_one_quantized_model(build, pipes, calib, cache, pixels):
    """The batch-1 artifact loads the ranges calibrated for the batch-2 one (the build
    calibrates once per model): the same scales, and the same outputs on the same image, so
    bench.run scores one of them for both."""
    b2 = build("int8", 0.5)
    b1 = TARGET.prepare(pipes[0.5], "int8", 1, calib, cache, "tiny-seed0")
    assert b1.batch == 1 and b1.path != b2.path
    # as sets: the batch-2 flatbuffer holds a few more int8 tensors (reshapes that a batch of
    # one folds away), each with scales the other has too
    scales = _int8_scales(b1)
    assert len(scales) > 50 and scales == _int8_scales(b2)
    one = TARGET.load(b1, RuntimeOptions(1))(pixels[:1])
    two = TARGET.load(b2, RuntimeOptions(1))(pixels)
    for name, a, b in zip(NAMES, one, two):
        rel = float(np.abs(a[0] - b[0]).max() / np.abs(b[0]).max())
        assert rel <= 0.01, (name, rel)


def test_int8_without_calibration_fails_clearly(pipes, tmp_path):
    with pytest.raises(ConversionError, match=r"tflite conversion failed \(keep 0.5, int8, batch 2\).*calibration"):
        TARGET.prepare(pipes[0.5], "int8", BATCH, None, tmp_path, "w")



# -- cache ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_second_prepare_is_cached(precision, build, pipes, calib, cache, monkeypatch):
    first = build(precision, 0.5)
    mtime = (first.path / MANIFEST).stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(TARGET, "build", no_build)
    again = TARGET.prepare(pipes[0.5], precision, BATCH, calib, cache, "tiny-seed0")
    assert again.cached and not first.cached
    assert again.path == first.path and again.files == first.files and again.recipe == first.recipe
    assert (again.path / MANIFEST).stat().st_mtime_ns == mtime
    if precision == "int8":  # other calibration images -> another artifact (build called, here refused)
        with pytest.raises(ConversionError, match="converted again"):
            TARGET.prepare(pipes[0.5], precision, BATCH, calib[:4], cache, "tiny-seed0")


# -- the measured process -------------------------------------------------------------------------
def test_runner_process_never_imports_torch(build, pixels, tmp_path):
    arts = [build("fp32", 0.5), build("int8", 0.5)]
    np.save(tmp_path / "x.npy", pixels)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import targets.tflite_backend, quant.litert_recipe
        from targets import get_target
        from targets.base import Artifact, RuntimeOptions
        imported = sorted(m for m in ('torch', 'litert_torch', 'transformers') if m in sys.modules)
        target = get_target('tflite')
        target.import_runtime()
        runners = [target.load(Artifact.load(p), RuntimeOptions(1)) for p in {[str(a.path) for a in arts]!r}]
        for r, name in zip(runners, ('fp32', 'int8')):
            for i, o in enumerate(r(np.load({str(tmp_path / 'x.npy')!r}))):
                np.save({str(tmp_path)!r} + f'/{{name}}{{i}}.npy', o)
        print(json.dumps({{'at_import': imported,
                          'after_run': sorted(m for m in ('torch', 'litert_torch', 'transformers') if m in sys.modules),
                          'precisions': [r.executed_precision for r in runners],
                          'interpreter': runners[0].details['interpreter']}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"at_import": [], "after_run": [], "precisions": ["f32", "i8+f32"],
                      "interpreter": "ai_edge_litert"}
    for art, name in zip(arts, ("fp32", "int8")):  # same file, same interpreter: same numbers
        here = TARGET.load(art, RuntimeOptions(1))(pixels)
        for i, o in enumerate(here):
            np.testing.assert_allclose(np.load(tmp_path / f"{name}{i}.npy"), o, rtol=0, atol=1e-6)


# -- failures -------------------------------------------------------------------------------------
def test_build_without_litert_torch_names_the_cell(monkeypatch, pipes, tmp_path):
    real = tflite_backend.package_version
    monkeypatch.setattr(tflite_backend, "package_version", lambda d: None if d == "litert-torch" else real(d))
    assert "litert-torch is not installed" in TARGET.build_unavailable()
    with pytest.raises(ConversionError,
                       match=r"tflite conversion failed \(keep 0.5, fp32, batch 2\): ImportError: litert-torch"):
        TARGET.prepare(pipes[0.5], "fp32", BATCH, None, tmp_path, "w")
    assert not any(p.suffix != ".tmp" for p in tmp_path.iterdir())  # nothing cached


def test_no_interpreter(monkeypatch):
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)   # `import name` now raises ImportError
    reason = TARGET.available()
    assert reason and "ai-edge-litert" in reason and "tflite" in reason


def test_numpy2_rules_out_tflite_runtime(monkeypatch):
    real = tflite_backend.package_version
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setattr(tflite_backend, "package_version", lambda d: "2.14.0" if d == "tflite-runtime" else real(d))
    monkeypatch.setattr(np, "__version__", "2.3.0")
    assert "needs numpy < 2" in TARGET.available()


# -- output mapping (no conversion) ---------------------------------------------------------------
class _FakeInterpreter:
    def __init__(self, shapes: dict[str, tuple], order: list[str], signature: bool = True) -> None:
        self._details = [{"index": 10 + i, "name": f"serving_default_{n}_output", "shape": np.array(shapes[n]),
                          "dtype": np.float32, "quantization": (0.0, 0)} for i, n in enumerate(order)]
        self._signature = signature

    def get_output_details(self):
        return self._details

    def _get_full_signature_list(self):
        if not self._signature:
            raise AttributeError("old interpreter")
        return {"serving_default": {"inputs": {"args_0": 0},
                                    "outputs": {d["name"].split("_", 2)[2].rsplit("_", 1)[0]: d["index"]
                                                for d in self._details}}}


@pytest.mark.parametrize("classes", [4, 3])   # 3 labels: logits (B, D, 4) look like boxes
@pytest.mark.parametrize("signature", [True, False])
def test_outputs_mapped_by_name_then_shape(classes, signature):
    shapes = {"output_0": (2, 16, classes + 1), "output_1": (2, 16, 4), "output_2": (2, 64)}
    interp = _FakeInterpreter(shapes, ["output_2", "output_1", "output_0"], signature)
    if not signature and classes + 1 == 4:
        with pytest.raises(ValueError, match="cannot tell logits from boxes"):
            tflite_backend._map_outputs(interp, 2)
        return
    mapped = tflite_backend._map_outputs(interp, 2)
    assert [d["name"] for d in mapped] == [f"serving_default_output_{i}_output" for i in range(3)]


def test_int8_io_roundtrip():
    x = np.linspace(-3, 3, 13, dtype=np.float32)
    q = tflite_backend._quantize(x, np.int8, (0.05, 3))
    assert q.dtype == np.int8 and q.max() == 63 and q.min() == -57
    np.testing.assert_allclose(tflite_backend._dequantize(q, np.int8, (0.05, 3)), x, atol=0.025 + 1e-6)
    assert tflite_backend._quantize(np.float32([100]), np.int8, (0.05, 3))[0] == 127   # saturates


# -- the sort rewrite -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int64", "float32"])
@pytest.mark.parametrize("descending", [False, True])
def test_rank_sort_equals_stable_sort(dtype, descending):
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (3, 2, 9), generator=gen).to(getattr(torch, dtype))  # many ties
    values, indices = litert_export._rank_sort(x, descending)
    want = torch.sort(x, dim=-1, descending=descending, stable=True)
    assert values.dtype == x.dtype and torch.equal(values, want.values) and torch.equal(indices, want.indices)


def test_replace_sorts_in_exported_graph():
    import torch

    class M(torch.nn.Module):
        def forward(self, x):
            idx = x.topk(5, dim=1).indices
            s = idx.sort(dim=1)
            return s.values, torch.sort(x, dim=-1, descending=True).values

    x = torch.randn(2, 12)
    gm, n = litert_export.export_for_litert(M(), (x,))
    assert n == 2 and not any("sort" in str(node.target) for node in gm.graph.nodes)
    assert all(torch.equal(a, b) for a, b in zip(gm(x), M()(x)))


# -- the committed tflite-runtime fixtures --------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_committed_fixtures_reproduce_their_reference(precision):
    """The fixtures tests/tflite_runtime/test_fallback.py runs on tflite-runtime: still loadable by
    this loader and still giving the outputs recorded with ai_edge_litert (rebuild them with
    tests/tflite_runtime/make_artifacts.py when this fails after a backend change)."""
    with np.load(FIXTURES / "reference.npz") as ref:
        ref = {k: ref[k] for k in ref.files}
    art = Artifact.load(FIXTURES / precision)
    runner = TARGET.load(art, RuntimeOptions(1))
    out = runner(ref["pixels"])
    for name, o in zip(NAMES, out):
        np.testing.assert_allclose(o, ref[f"{precision}_{name}"], rtol=0, atol=1e-5, err_msg=name)
        if precision == "fp32":
            assert np.abs(o - ref[f"eager_{name}"]).max() <= FP32_TOL[name]
    assert ("i8" in runner.executed_precision) == (precision == "int8")
    size = sum((FIXTURES / precision / f).stat().st_size for f in art.files)
    assert size == art.size_bytes and size < 400_000   # small enough to live in git


# -- profile: stage artifacts ---------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_stage_artifacts_chain_to_the_one_file_model(precision, build, pipes, calib, pixels):
    """The profile's stage files, run one after another, compute what the artifact computes
    (int8: the same quantized model, cut into pieces) and time every stage BAViT adds."""
    art = build(precision, 0.5)
    with pytest.raises(ProfileUnavailable, match="built without --profile"):
        TARGET.load(art, RuntimeOptions(1, profile=True))
    TARGET.build_profile_parts(pipes[0.5], art, calib)
    plan = StagePlan.load(Path(art.path) / STAGES_DIR)
    assert [p.stage for p in plan.parts] == ["reducer", "embed", "encoder", "heads"]
    staged = TARGET.load(art, RuntimeOptions(1, profile=True))
    whole = TARGET.load(art, RuntimeOptions(1))(pixels)
    out = staged(pixels)
    tol = 1e-5 if precision == "fp32" else 1e-3
    for name, w, o in zip(NAMES, whole, out):
        assert o.shape == w.shape and float(np.abs(w - o).max()) <= tol * max(1.0, float(np.abs(w).max())), name
    times = staged.node_times()
    assert [t.stage for t in times] == ["reducer", "embed", "encoder", "heads"] and all(t.ms > 0 for t in times)
    assert staged.profiler == tflite_backend.STAGE_PROFILER
    precisions = {t.stage: t.exec_type for t in times}
    assert precisions["encoder"] == ("i8+f32" if precision == "int8" else "f32"), precisions


def test_failed_stage_build_says_why(build, pipes, monkeypatch):
    art = build("fp32", 1.0)

    def broken(*a, **k):
        raise RuntimeError("converter said no")

    monkeypatch.setattr(tflite_backend, "build_stages", broken)
    with pytest.raises(RuntimeError):
        TARGET.build_profile_parts(pipes[1.0], art, None)
    with pytest.raises(ProfileUnavailable, match="stage artifacts failed to build: RuntimeError: converter said no"):
        TARGET.load(art, RuntimeOptions(1, profile=True))
