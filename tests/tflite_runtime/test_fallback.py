"""The edge-board path: LiteRT's predecessor `tflite_runtime` (2.14, numpy < 2, no torch) runs
.tflite artifacts built elsewhere through the same `targets.tflite_backend` loader.

Runs in its own environment (tox -e tflite-runtime: numpy<2, tflite-runtime, pytest only);
in the main environment, where ai_edge_litert is importable, it skips. Artifacts come from
$BAVIT_TFLITE_ARTIFACTS (tox converts them with the main env's python first), by default the
committed fixtures (see make_artifacts.py), so on a board `pip install "numpy<2"
tflite-runtime pytest && PYTHONPATH=. pytest tests/tflite_runtime` needs no torch anywhere."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ARTIFACTS = Path(os.environ.get("BAVIT_TFLITE_ARTIFACTS") or FIXTURES)
NAMES = ("logits", "boxes", "token_logits")
# fp32: same file, another interpreter build: float rounding only. int8: tflite-runtime 2.14's
# reference int8 kernels vs ai-edge-litert's XNNPACK ones may round a requantization step
# differently; 1% of each output's range bounds it (measured 0.1% on the fixtures).
FP32_ATOL = 1e-4
INT8_RTOL_OF_RANGE = 0.01


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _why_not() -> str | None:
    if _importable("ai_edge_litert"):
        return ("ai_edge_litert is installed: the tflite_runtime fallback is only exercised where it is "
                "not (tox -e tflite-runtime)")
    if not _importable("tflite_runtime"):
        return "tflite_runtime is not installed"
    return None


# tox -e tflite-runtime sets BAVIT_REQUIRE_TFLITE_RUNTIME=1: there a skip would hide a broken env
if os.environ.get("BAVIT_REQUIRE_TFLITE_RUNTIME") == "1":
    assert _why_not() is None, _why_not()
pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


@pytest.fixture(scope="module")
def reference():
    assert (ARTIFACTS / "reference.npz").is_file(), \
        f"no reference.npz in {ARTIFACTS} ($BAVIT_TFLITE_ARTIFACTS): write it with make_artifacts.py"
    with np.load(ARTIFACTS / "reference.npz") as ref:
        return {k: ref[k] for k in ref.files}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tflite_runtime_reproduces_litert(precision, reference):
    from targets.base import Artifact, RuntimeOptions
    from targets.tflite_backend import TARGET

    assert TARGET.available() is None
    artifact = Artifact.load(ARTIFACTS / precision)
    assert artifact.precision == precision
    runner = TARGET.load(artifact, RuntimeOptions(1))
    assert runner.details["interpreter"] == "tflite_runtime"
    assert ("i8" in runner.executed_precision) == (precision == "int8")
    outputs = runner(reference["pixels"])
    for name, got in zip(NAMES, outputs):
        want = reference[f"{precision}_{name}"]
        assert got.shape == want.shape and got.dtype == np.float32
        diff = float(np.abs(got - want).max())
        if precision == "fp32":
            assert diff <= FP32_ATOL, f"{name}: max abs diff {diff:.3g}"
        else:
            bound = INT8_RTOL_OF_RANGE * float(np.abs(want).max())
            assert diff <= bound, f"{name}: max abs diff {diff:.3g} > {bound:.3g}"
    assert "torch" not in sys.modules
