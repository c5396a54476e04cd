"""bavit_bench as a library: bb.run and python -m bench.run with the same options write the
same rows (apart from what is measured in time), bb.load / bb.decide read them back, and bad
input raises instead of exiting. The tiny model, torch eager, one scenario."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bavit_bench as bb

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = dict(weights="weights/tiny", detector="detector", target="torch", precision="fp32", keep=[1.0, 0.5],
               scenario="single-stream", images=8, warmup=0, rounds=1, processes=1, round_seconds=0.1,
               no_report=True)
# what differs between two runs of the same sweep: when and how fast, and what the second found cached
TIMED = re.compile(r"^(started_at|run_id|load_s|first_inference_ms|.*rss.*|throughput.*|latency.*|round_.*|"
                   r"spread_pct|interval_pct|load_max|noisy.*|achieved_gops|peak_pct|artifact_cached|"
                   r"accuracy_reused|convert_s|sys_background_reclaim)$")


def _rows(run: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines() if x.strip()]
    here = str(run)     # paths into the run folder (detections_file) are the same relative to it
    return {r["cell_id"]: {k: v.replace(here, "RUN") if isinstance(v, str) else v for k, v in r.items()
                           if not TIMED.match(k)} for r in rows}


def test_run_writes_the_rows_the_command_line_writes(tmp_path):
    cli = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "bench.run", *bb.argv_of(**OPTIONS), "--out", str(cli)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = tmp_path / "api"
    df = bb.run(**OPTIONS, out=str(api))
    want, got = _rows(cli), _rows(api)
    assert set(got) == set(want) and len(got) == 2
    for cell_id in want:
        assert got[cell_id] == want[cell_id], cell_id
    # the DataFrame is the run's rows with the derived columns
    assert sorted(df["cell_id"]) == sorted(want) and (df["status"] == "ok").all()
    assert {"speedup_vs_target_dense_fp32", "map_drop_pts"} <= set(df.columns)
    assert df["throughput_ips"].dtype.kind == "f" and df["keep"].dtype.kind == "f"
    again = bb.load(api)
    assert list(again["cell_id"]) == list(df["cell_id"])
    picks = bb.decide(again, max_map_drop=100)
    assert len(picks) >= 1 and set(picks["scenario"]) == {"single-stream"}


def test_bad_input_raises_before_any_work(tmp_path):
    with pytest.raises(bb.UsageError, match="--keep"):
        bb.run(**{**OPTIONS, "keep": [1.5]}, out=str(tmp_path / "a"))
    with pytest.raises(bb.UsageError, match="unrecognized arguments: --no-such-option"):
        bb.run(**OPTIONS, no_such_option=3)
    assert not (tmp_path / "a").exists()
    with pytest.raises(bb.UsageError):
        bb.load(tmp_path / "nowhere")
    with pytest.raises(bb.UsageError):
        bb.decide(None, max_map_drop=-1)      # the limits are checked first


def test_argv_of():
    assert bb.argv_of(target="all", keep=[1.0, 0.5], no_report=True, resume=False, cache=None) == [
        "--target", "all", "--keep", "1.0,0.5", "--no-report"]
