"""--profile: per-node times from each runtime's profiler, summed into stages by module path,
on a tiny random pipeline; and the name -> module -> stage mapping itself."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_bench import bench, rows

from bavit.stages import stage_of
from targets.openvino_backend import module_of


def test_stage_of_module_paths_of_both_families():
    assert stage_of("classifier.layers.0.attention") == "reducer" and stage_of("selector") == "reducer"
    assert stage_of("detector.det.vit.embeddings.patch_embeddings.projection.body.0") == "embed"
    assert stage_of("detector.det.model.backbone.model.encoder.stages.2") == "embed"
    assert stage_of("detector.det.vit.encoder.layer.11.output.dense") == "encoder"
    assert stage_of("detector.det.model.decoder.layers.0.encoder_attn") == "decoder"
    assert stage_of("detector.det.bbox_predictor.layers.2") == "heads"
    assert stage_of("detector") == "other" and stage_of("") == "other"
    assert stage_of("detector.det.vit.encoderX") == "other"     # a prefix is a whole path component


def test_module_of_openvino_node_names():
    assert module_of("__module.detector.det.vit.encoder.layer.6.intermediate.dense/aten::linear/MatMul") \
        == "detector.det.vit.encoder.layer.6.intermediate.dense"
    assert module_of("pixel_values/fq_output_0_abcd_acdb___module.classifier.patch_embeddings.projection/"
                     "aten::_convolution/Convolution") == "classifier.patch_embeddings.projection"
    assert module_of("Multiply_9537,Multiply_9537/DequantizationMultiply") == ""


@pytest.mark.slow
def test_profiled_cells_split_into_stages_and_keep_their_speed_figures(tmp_path):
    out = tmp_path / "run"
    bench(out, "--target", "torch,openvino,tflite", "--keep", "1.0,0.5", "--precision", "fp32",
          "--scenario", "single-stream", "--images", "0", "--profile", "--profile-seconds", "0.5", check=True)
    got = {(r["target"], r["keep"]): r for r in rows(out)}
    assert len(got) == 6 and all(r["status"] == "ok" for r in got.values())
    for (target, keep), r in got.items():
        assert r["throughput_ips"] > 0 and r["latency_p50_ms"] > 0      # the unprofiled figures stand
        stages = json.loads(r["profile_stages"])
        assert sum(stages.values()) == pytest.approx(r["profile_nodes_ms"], rel=1e-3)
        assert ("reducer" in stages) == (keep < 1.0) and "encoder" in stages and "heads" in stages
        assert stages.get("other", 0.0) < 0.15 * r["profile_nodes_ms"], stages   # nodes found their modules
        assert r["profile_calls"] >= 3 and 0.3 < r["profile_vs_p50"] < 3.0 and 0.3 < r["profile_vs_plain"] < 3.0
        if target == "tflite":      # LiteRT: one stage artifact per stage, each one timed node
            assert r["profile_method"].startswith("LiteRT: each stage its own .tflite")
            # per-stage medians need not sum below the median chained call, but not far above it
            assert r["profile_nodes_ms"] <= r["profile_wall_ms"] * 1.5
        with open(out / r["profile_file"]) as f:
            table = list(csv.DictReader(f))
        assert sum(float(t["share"]) for t in table) == pytest.approx(1.0, abs=1e-3)
        assert sum(float(t["ms_per_call"]) for t in table) == pytest.approx(r["profile_nodes_ms"], rel=1e-3)
        assert {t["stage"] for t in table} == set(stages)
    ov = [t["exec_type"] for t in csv.DictReader(open(out / got[("openvino", 1.0)]["profile_file"]))]
    assert any("f32" in e.lower() for e in ov)                  # OpenVINO says which kernel and precision ran
    page = (out / "report.html").read_text()
    assert "Per-stage time" in page and "top 15 of" in page and "same minutes" in page


def test_a_crash_building_profile_stages_blames_no_artifact(tmp_path, monkeypatch):
    """A build process that dies while building an artifact's profile stages (after its
    `Built` line) costs no cell: that artifact stands, the rest are built by a new process."""
    import json as _json

    import bench.build as build
    from bench.contracts import PROFILE_PARTS, BuildSpec, Built, ReductionSpec, to_json

    specs = [BuildSpec(m, "tflite", "fp32", 1, "random:tiny", "detector", None, ReductionSpec("bavit", 0.5),
                       "synthetic", "train", 0, 8, str(tmp_path), profile=True) for m in ("A", "B")]

    class Exited:
        returncode = -9

        def __init__(self, spec_file, out_file):
            todo = [s["model_id"] for s in _json.loads(spec_file.read_text())]
            with open(out_file, "a") as f:
                f.write(to_json(Built(todo[0], True, artifact="x")) + "\n")
            current = out_file.with_name(out_file.name + ".current")
            if todo[0] == "A":        # dies building A's stages
                current.write_text(PROFILE_PARTS + "A")
            else:
                current.unlink(missing_ok=True)

        def poll(self):
            return self.returncode

    def spawn(args, log, threads, **kw):
        return Exited(Path(args[1]), Path(args[2]))

    monkeypatch.setattr(build, "spawn", spawn)
    proc = build.BuildProcess(specs, "0", tmp_path, tmp_path, 1)
    results: dict = {}

    class Bar:
        def update(self, n): ...

        def set_description(self, d): ...

    while proc.poll(results, 60.0, Bar()):
        pass
    assert results["A"].ok and results["B"].ok and proc.attempt == 2
