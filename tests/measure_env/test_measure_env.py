"""The measuring side in an environment of its own (tox -e measure): numpy, psutil, tqdm,
openvino, ai-edge-litert, onnxruntime, onnx and faster-coco-eval, installed as
`bavit-bench[measure-openvino,measure-litert,measure-onnxruntime]`. It measures a bundle the
main env exported and must reproduce the main env's accuracy on the same artifacts, with its
own fingerprint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MADE = Path(os.environ.get("BAVIT_MEASURE_MADE", ""))
SCORES = ("map", "ap50", "ap75", "token_acc", "fg_recall", "fg_precision", "images")

pytestmark = pytest.mark.skipif(not (MADE / "bundle" / "manifest.json").is_file(),
                                reason="run through tox -e measure: it exports the bundle first")


def _rows(out: Path) -> dict[str, dict]:
    return {r["cell_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_this_environment_has_no_torch_nor_converters():
    installed = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in metadata.distributions()}
    assert not installed & {"torch", "transformers", "litert-torch", "nncf", "torchao", "onnxscript", "pillow",
                            "pandas"}
    assert {"openvino", "ai-edge-litert", "onnxruntime", "onnx", "faster-coco-eval"} <= installed


def test_the_bundle_measured_here_scores_as_the_main_env(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "bench.measure", str(MADE / "bundle"), "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = _rows(out), _rows(MADE / "ref")
    assert set(got) == set(want) and len(got) == 24      # 3 targets x 2 precisions x 2 keeps x 2 scenarios
    for cell_id, row in got.items():
        assert row["status"] == "ok", (cell_id, row.get("error"))
        assert row["torch_imported"] is False
        assert "torch" not in json.loads(row["sys_versions"]) and "torch" in json.loads(want[cell_id]["sys_versions"])
        for key in SCORES:
            assert row[key] == want[cell_id][key], (cell_id, key)
        assert row["executed_precision"] == want[cell_id]["executed_precision"]
        assert row["throughput_ips"] > 0
