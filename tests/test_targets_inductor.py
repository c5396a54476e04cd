"""The `inductor` target (AOTInductor .pt2 packages) on the tiny random pipeline: fp32 parity
with eager, int8 that really runs oneDNN int8 kernels (read from the package) within the
int8 tolerance, the bf16 recipe and its gate, the cache and the compiler requirement. Two
compiles (fp32 and int8, keep 0.5), shared by every test."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKEND_BATCH as BATCH

from quant import pt2e_x86_recipe
from targets import get_target
from targets.base import ConversionError, RuntimeOptions

TARGET = get_target("inductor")
NAMES = ("logits", "boxes", "token_logits")
FP32_TOL = {"logits": 1e-3, "boxes": 1e-4, "token_logits": 1e-3}
REL_TOL = 0.05          # mean |x - fp32| / std(fp32), as the other int8 recipes' tests

pytestmark = pytest.mark.skipif(TARGET.build_unavailable() is not None, reason=str(TARGET.build_unavailable()))


@pytest.fixture(scope="module")
def built(pipes, calib, tmp_path_factory):
    cache = tmp_path_factory.mktemp("inductor")
    memo: dict = {}

    def get(precision: str):
        if precision not in memo:
            memo[precision] = TARGET.prepare(pipes[0.5], precision, BATCH, calib, cache, "tiny-seed0")
        return memo[precision]

    get.cache = cache
    return get


@pytest.fixture(scope="module")
def reference(pipes, pixels):
    import torch

    with torch.no_grad():
        return [t.numpy() for t in pipes[0.5](torch.from_numpy(pixels))]


def _rel(ref, out) -> dict:
    return {n: float(np.abs(r - o).mean() / (r.std() + 1e-12)) for n, r, o in zip(NAMES, ref, out)}


@pytest.mark.slow
def test_fp32_package_matches_eager(built, reference, pixels):
    art = built("fp32")
    assert art.files == ["pipeline.pt2"] and art.convert_s > 0
    runner = TARGET.load(art, RuntimeOptions(1, batch=BATCH))
    assert runner.executed_precision == "f32"
    assert runner.details["kernels"].get("_scaled_dot_product_flash_attention_for_cpu", 0) > 0
    out = runner(pixels)
    diff = {n: float(np.abs(r - o).max()) for n, r, o in zip(NAMES, reference, out)}
    assert all(diff[n] <= FP32_TOL[n] for n in NAMES), diff


@pytest.mark.slow
def test_int8_package_runs_onednn_int8_kernels_within_tolerance(built, reference, pixels):
    art = built("int8")
    assert art.recipe == "pt2e-x86-inductor-static-int8" and art.recipe_settings["calibration_images"] == 8
    runner = TARGET.load(art, RuntimeOptions(1, batch=BATCH))
    kernels = runner.details["kernels"]
    # read from the compiled package, not a constant: the encoder's Linears are int8 GEMMs
    assert sum(n for k, n in kernels.items() if k.startswith("_qlinear_pointwise")) >= 8, kernels
    if pt2e_x86_recipe.reduce_range():      # no int8 dot-product unit: attention stays fp32 flash attention
        assert kernels.get("_scaled_dot_product_flash_attention_for_cpu", 0) > 0 and "_int_mm_out" not in kernels
    else:   # attention too: its matmuls are int8 GEMMs, two per image and head; no fp32 flash attention left
        assert kernels.get("_int_mm_out", 0) >= 2 * BATCH, kernels
        assert "_scaled_dot_product_flash_attention_for_cpu" not in kernels, kernels
    assert runner.executed_precision == "i8+f32"
    rel = _rel(reference, runner(pixels))
    assert all(v <= REL_TOL for v in rel.values()), rel


def test_bf16_is_the_autocast_recipe_gated_on_bf16_units():
    """bf16 is quant/autocast_recipe.py, compiled like fp32; its numbers are tested on the
    `torch` target (the same recipe), so the suite compiles no third package."""
    from quant import autocast_recipe

    assert TARGET.recipes["bf16"].name == autocast_recipe.NAME
    assert TARGET.supports("bf16") == autocast_recipe.unavailable()


@pytest.mark.slow
def test_second_prepare_is_cached_and_the_key_holds_the_isa(built, pipes, calib, monkeypatch):
    import torch

    first = built("fp32")
    monkeypatch.setattr(type(TARGET), "build", lambda *a, **k: pytest.fail("rebuilt a cached artifact"))
    again = TARGET.prepare(pipes[0.5], "fp32", BATCH, calib, built.cache, "tiny-seed0")
    assert again.path == first.path and again.cached
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "OTHER_ISA")
    assert TARGET.versions()["cpu_capability"] == "OTHER_ISA"

    def refuse(*args, **kwargs):
        raise RuntimeError("not in the cache")

    monkeypatch.setattr(type(TARGET), "build", refuse)     # another ISA: another key, so a build
    with pytest.raises(ConversionError, match="not in the cache"):
        TARGET.prepare(pipes[0.5], "fp32", BATCH, calib, built.cache, "tiny-seed0")


def test_no_compiler_is_a_reason_not_a_crash(monkeypatch):
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "no C++ compiler" in TARGET.build_unavailable()


@pytest.mark.slow
def test_stage_packages_chain_to_the_one_package_model(built, pipes, calib, reference, pixels):
    """--profile: the stages compiled apart, run one after another, compute the pipeline and
    time each stage (fp32 here; int8 cuts the same q/dq graph, checked by hand: the suite
    compiles no more packages than it must)."""
    from targets.base import ProfileUnavailable

    art = built("fp32")
    with pytest.raises(ProfileUnavailable, match="built without --profile"):
        TARGET.load(art, RuntimeOptions(1, batch=BATCH, profile=True))
    TARGET.build_profile_parts(pipes[0.5], art, calib)
    staged = TARGET.load(art, RuntimeOptions(1, batch=BATCH, profile=True))
    out = staged(pixels)
    diff = {n: float(np.abs(r - o).max()) for n, r, o in zip(NAMES, reference, out)}
    assert all(diff[n] <= FP32_TOL[n] for n in NAMES), diff
    times = staged.node_times()
    assert [t.stage for t in times] == ["reducer", "embed", "encoder", "heads"] and all(t.ms > 0 for t in times)
    assert staged.executed_precision == "f32" and staged.profiler.startswith("AOTInductor: each stage")
