"""ExecuTorch target (XNNPACK delegate) on the tiny random pipeline (64x64, batch 2): fp32
parity with eager, PT2E int8 within tolerance of fp32 with the heads kept float, and the
executed precision decoded from the program's delegate payloads. Two lowerings (fp32 and
int8 at keep 0.5)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import BACKEND_BATCH as BATCH

from quant import executorch_recipe
from targets import ConversionError, get_target, executorch_backend
from targets.base import Artifact, RuntimeOptions

pytestmark = pytest.mark.slow

NAMES = ("logits", "boxes", "token_logits")
FP32_TOL = {"logits": 1e-4, "boxes": 1e-4, "token_logits": 1e-4}
INT8_REL_TOL = {"logits": 0.1, "boxes": 0.1}     # max abs diff over the fp32 output's range
TARGET = get_target("executorch")

_WHY_NOT = TARGET.available()
if os.environ.get("BAVIT_REQUIRE_BACKENDS") == "1":
    assert not _WHY_NOT, f"executorch target cannot build here: {_WHY_NOT}"
if _WHY_NOT:
    pytest.skip(f"executorch target cannot build here: {_WHY_NOT}", allow_module_level=True)


@pytest.fixture(scope="module")
def build(pipes, calib, tmp_path_factory):
    cache = tmp_path_factory.mktemp("et-artifacts")
    built: dict = {}

    def get(precision: str) -> Artifact:
        if precision not in built:
            built[precision] = TARGET.prepare(pipes[0.5], precision, BATCH, calib, cache, "tiny-seed0")
        return built[precision]

    return get


def test_fp32_matches_eager(build, reference, pixels):
    ref = reference[0.5]
    runner = TARGET.load(build("fp32"), RuntimeOptions(2, batch=BATCH))
    assert runner.executed_precision == "f32"
    assert runner.details["xnnpack_delegates"] >= 1 and runner.details["threads"] == 2
    fc = {k: n for k, n in runner.details["delegated_compute_nodes"].items() if k.startswith("XNNFullyConnected")}
    assert fc and all(k.endswith(":f32") for k in fc)
    for name, r, o in zip(NAMES, ref, runner(pixels)):
        assert r.shape == o.shape, name
        assert float(np.abs(r - o).max()) <= FP32_TOL[name], (name, float(np.abs(r - o).max()))
    with pytest.raises(ValueError, match="static shape"):
        runner(pixels[:1])


def test_int8_close_to_fp32_and_read_from_the_program(build, pixels):
    art, fp32 = build("int8"), build("fp32")
    assert art.recipe == executorch_recipe.NAME and art.fp32_kept == executorch_recipe.FP32_KEPT
    assert art.recipe_settings["calibration_images"] == 8
    runner = TARGET.load(art, RuntimeOptions(1, batch=BATCH))
    assert runner.executed_precision == "i8+f32"
    nodes = runner.details["delegated_compute_nodes"]
    # the encoder's linears run int8; the float-kept heads' linears stay f32
    assert nodes.get("XNNFullyConnected:i8", 0) > 10 and nodes.get("XNNFullyConnected:f32", 0) > 0
    ref = TARGET.load(fp32, RuntimeOptions(1, batch=BATCH))(pixels)
    for name, r, o in zip(NAMES, ref, runner(pixels)):
        if name in INT8_REL_TOL:
            rel = float(np.abs(r - o).max() / (r.max() - r.min()))
            assert rel <= INT8_REL_TOL[name], (name, rel)
    # decoded from the file itself: the fp32 program's payloads hold no int8 node
    assert executorch_backend.executed_precision(fp32.path / "model.pte")[0] == "f32"


def test_int8_without_calibration_fails_clearly(pipes, tmp_path):
    with pytest.raises(ConversionError, match=r"executorch conversion failed \(keep 0.5, int8.*calibration"):
        TARGET.prepare(pipes[0.5], "int8", BATCH, None, tmp_path, "w")


def test_not_a_delegate_payload():
    with pytest.raises(ValueError, match="XH00"):
        executorch_backend.xnnpack_graph(b"\0" * 32)
