"""bench.export + bench.measure: a sweep built here, measured from its bundle by a process
tree that cannot import torch, transformers, PIL or pandas (tests/blocked), with the same
accuracy as bench.run on the same artifacts; a damaged bundle is refused before any cell."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = "torch,transformers,PIL,pandas,pycocotools,scipy,matplotlib,nncf,litert_torch,torchao,safetensors,yaml"
SWEEP = ["--weights", "weights/tiny", "--detector", "detector", "--target", "openvino,tflite",
         "--precision", "fp32,int8", "--keep", "1.0,0.5", "--scenario", "single-stream", "--images", "24",
         "--calib-images", "16", "--warmup", "0", "--rounds", "1", "--round-seconds", "0.1"]
SCORES = ("map", "ap50", "ap75", "token_acc", "fg_recall", "fg_precision", "images")


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, **(env_extra or {})})


def _rows(out: Path) -> dict[str, dict]:
    return {r["cell_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def _measure(bundle: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    blocked = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests" / "blocked"),
                                                           os.environ.get("PYTHONPATH")])),
               "BAVIT_BLOCK_IMPORTS": BLOCKED}
    return _run("bench.measure", str(bundle), "--out", str(out), *extra, env_extra=blocked)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bundle")
    bundle, ref = root / "bundle", root / "ref"
    r = _run("bench.export", *SWEEP, "--out", str(bundle))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run("bench.run", *SWEEP, "--out", str(ref), "--no-report")   # the same cache: the same artifacts
    assert r.returncode == 0, r.stderr[-3000:]
    return bundle, ref


def test_a_bundle_measured_without_torch_scores_as_bench_run(exported, tmp_path):
    bundle, ref = exported
    r = _measure(bundle, tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no report here" in r.stderr      # pandas is blocked too: rows only
    got, want = _rows(tmp_path / "run"), _rows(ref)
    assert set(got) == set(want) and len(got) == 8
    manifest = json.loads((bundle / "manifest.json").read_text())
    for cell_id, row in got.items():
        assert row["status"] == "ok", (cell_id, row.get("error"))
        assert row["torch_imported"] is False
        assert Path(row["artifact"]).is_relative_to(bundle.resolve())
        assert Path(row["artifact"]).name == Path(want[cell_id]["artifact"]).name
        assert row["bundle"].endswith("@" + manifest["bundle_id"]) and row["sys_cpu"] in row["built_on"]
        assert row["accuracy_reused"] is False and want[cell_id]["map"] is not None
        for key in SCORES:   # scored on the device from the bundle's images: exactly bench.run's figures
            assert row[key] == want[cell_id][key], (cell_id, key)
        assert row["latency_p50_ms"] > 0 and row["executed_precision"] == want[cell_id]["executed_precision"]
    assert {"int8", "fp32"} == {r["precision"] for r in got.values()}


def test_a_resumed_measurement_keeps_to_its_bundle(exported, tmp_path):
    bundle, _ = exported
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text("")
    (out / "run.json").write_text(json.dumps({"bundle_id": "another"}))
    r = _measure(bundle, out, "--resume")
    assert r.returncode == 2 and "measured bundle another" in r.stderr


def _flip_a_byte(bundle: Path) -> str:
    f = next(p for p in sorted((bundle / "artifacts").rglob("*")) if p.suffix in (".bin", ".tflite"))
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    return f.name


def _drop_an_artifact_file(bundle: Path) -> str:
    f = next(p for p in sorted((bundle / "artifacts").rglob("*")) if p.suffix == ".tflite")
    f.unlink()
    return f.name


def _unknown_version(bundle: Path) -> str:
    m = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**m, "format": 99}))
    return "bundle format 99"


def _truncate_a_shard(bundle: Path) -> str:
    f = next((bundle / "scoring").rglob("shard-000.npz"))
    f.write_bytes(f.read_bytes()[:1000])
    return f.name


@pytest.mark.parametrize("damage", [_flip_a_byte, _drop_an_artifact_file, _unknown_version, _truncate_a_shard],
                         ids=["checksum", "missing-artifact", "unknown-version", "truncated-shard"])
def test_a_damaged_bundle_is_one_line_and_exit_2_before_any_cell(exported, tmp_path, damage):
    copy = tmp_path / "bundle"
    shutil.copytree(exported[0], copy)
    needle = damage(copy)
    r = _measure(copy, tmp_path / "run")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.measure: error:") and needle in lines[0], r.stderr
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_export_refuses_a_used_bundle_folder(exported):
    r = _run("bench.export", *SWEEP, "--out", str(exported[0]))
    assert r.returncode == 2 and "holds a bundle already" in r.stderr
