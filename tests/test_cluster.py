"""bench.run --cluster on a local Ray cluster of two nodes (ray.cluster_utils.Cluster), each
declaring its own bavit-device resource: every cell measured on the node its device names, a
node lost mid-sweep, and --resume after it comes back. The tiny model, one scenario."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cluster

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["--weights", "weights/tiny", "--detector", "detector", "--target", "openvino,tflite", "--precision",
         "fp32", "--keep", "1.0,0.5", "--scenario", "single-stream", "--images", "8", "--calib-images", "8",
         "--warmup", "0", "--rounds", "1", "--processes", "1"]


def _rows(folder: Path) -> list[dict]:
    path = folder / "results.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


# -- no cluster needed ------------------------------------------------------------------------------
def test_split_argv_keeps_the_sweep_for_export_and_the_measuring_options_for_the_devices():
    export, measure = cluster.split_argv(["--target", "openvino", "--cluster", "ray://h:10001", "--devices=a,b",
                                          "--out", "r", "--resume", "--profile", "--timeout", "60", "--keep", "1.0"])
    assert export == ["--target", "openvino", "--profile", "--keep", "1.0"]
    assert measure == ["--profile", "--timeout", "60"]


class _FakeRay:
    def __init__(self, nodes):
        self._nodes = nodes

    def nodes(self):
        return self._nodes


def test_devices_resolved_from_the_nodes_resources():
    ray = _FakeRay([{"NodeID": "n2", "Alive": True, "Resources": {"CPU": 1, "bavit-device:nuc": 1}},
                    {"NodeID": "n1", "Alive": True, "Resources": {"bavit-device:rpi5": 1}},
                    {"NodeID": "n0", "Alive": False, "Resources": {"bavit-device:gone": 1}}])
    assert [(d.name, d.node_id) for d in cluster.devices_of(ray, "auto")] == [("nuc", "n2"), ("rpi5", "n1")]
    got = cluster.devices_of(ray, "rpi5,gone")
    assert [(d.name, d.node_id) for d in got] == [("rpi5", "n1"), ("gone", "")]   # a dead node offers nothing
    with pytest.raises(cluster.UsageError, match="distinct"):
        cluster.devices_of(ray, "rpi5,rpi5")
    with pytest.raises(cluster.UsageError, match="no node"):
        cluster.devices_of(_FakeRay([]), "auto")


def _bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_devices_without_cluster_and_cluster_without_devices_are_refused(tmp_path):
    proc = _bench(*SWEEP, "--devices", "a", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "give --cluster too" in proc.stderr
    proc = _bench(*SWEEP, "--cluster", "auto", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "--cluster needs --devices" in proc.stderr
    assert not (tmp_path / "r" / "bundle").exists()      # refused before anything is built


# -- a local two-node cluster -------------------------------------------------------------------------
@pytest.fixture
def two_nodes():
    if os.environ.get("BAVIT_REQUIRE_BACKENDS") != "1":   # tox installs [cluster]: there ray must import
        pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"bavit-device:a": 1}})
    node_b = c.add_node(num_cpus=1, resources={"bavit-device:b": 1})
    c.wait_for_nodes()
    yield c, node_b
    c.shutdown()


def _node_ids(c) -> dict[str, str]:
    """device -> node id, read back from the cluster's own view."""
    import ray as ray_

    ray_.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    try:
        return {k.split(":", 1)[1]: n["NodeID"] for n in ray_.nodes() if n["Alive"]
                for k in n["Resources"] if k.startswith("bavit-device:")}
    finally:
        ray_.shutdown()


def test_each_device_measures_on_its_node_and_a_missing_device_is_said_before_the_build(two_nodes, tmp_path):
    c, _ = two_nodes
    out = tmp_path / "run"
    proc = _bench(*SWEEP, "--round-seconds", "0.1", "--cluster", c.address, "--devices", "a,b,ghost",
                  "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert err.index("device ghost: unavailable: no node offers bavit-device:ghost") < err.index("build")
    nodes = _node_ids(c)
    for device in ("a", "b"):
        rows = _rows(out / "devices" / device)
        assert len(rows) == 4 and len({r["cell_id"] for r in rows}) == 4
        for r in rows:
            assert r["status"] == "ok", r.get("error")
            assert r["device_name"] == device and r["node_id"] == nodes[device]
            assert r["torch_imported"] is False and r["map"] is not None
    ghost = _rows(out / "devices" / "ghost")
    assert len(ghost) == 4 and all(r["status"] == "unavailable" and "no node offers bavit-device:ghost" in r["error"]
                                   for r in ghost)
    # one report, the devices side by side
    assert (out / "report.html").is_file() and (out / "devices.csv").is_file()


def test_a_node_lost_mid_sweep_fails_its_cells_and_resume_completes_them(two_nodes, tmp_path):
    c, node_b = two_nodes
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", *SWEEP, "--round-seconds", "1.5", "--cluster",
                             c.address, "--devices", "a,b", "--out", str(out), "--no-report"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 600
    while not _rows(out / "devices" / "b") and time.monotonic() < deadline:   # b's first target is done
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.5)
    lost = node_b.node_id
    c.remove_node(node_b)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    rows_b = _rows(out / "devices" / "b")
    failed = [r for r in rows_b if r["status"] == "failed"]
    assert failed and all(lost in r["error"] and "lost while measuring" in r["error"] for r in failed)
    assert len({r["cell_id"] for r in rows_b}) == len(rows_b) == 4
    assert all(r["status"] == "ok" for r in _rows(out / "devices" / "a"))     # the other device went on
    # the device comes back (a new node declaring it); --resume measures only what is missing
    c.add_node(num_cpus=1, resources={"bavit-device:b": 1})
    c.wait_for_nodes()
    ok_before = {r["cell_id"]: r["started_at"] for r in rows_b if r["status"] == "ok"}
    proc = _bench(*SWEEP, "--round-seconds", "0.1", "--cluster", c.address, "--devices", "a,b", "--out", str(out),
                  "--resume", "--no-report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows_b = _rows(out / "devices" / "b")
    assert len(rows_b) == 4 and len({r["cell_id"] for r in rows_b}) == 4       # each cell recorded once
    assert all(r["status"] == "ok" for r in rows_b)
    assert {r["cell_id"]: r["started_at"] for r in rows_b if r["cell_id"] in ok_before} == ok_before
    assert {r["node_id"] for r in rows_b if r["cell_id"] not in ok_before} == {_node_ids(c)["b"]}
    assert len(_rows(out / "devices" / "a")) == 4
