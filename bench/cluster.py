"""`python -m bench.run --cluster ADDRESS --devices NAME,...|auto [sweep options] --out RUN`:
one sweep built here and measured on many devices, each a Ray node.

A device joins the cluster declaring itself with a custom resource,

    ray start --address=HEAD:6379 --resources='{"bavit-device:rpi5": 1}'

in its own environment (bavit-bench with its runtime, e.g. `[measure-litert,cluster]`: no
torch needed). This machine builds the sweep's bundle once (bench.export, into RUN/bundle),
puts it in Ray's object store, and starts one measuring agent per device: a Ray task that
asks for that device's resource (1 of 1), so it runs on the node that declares it, and a
device measures one sweep at a time with nothing else of ours beside it. The agent unpacks
the bundle there and runs `python -m bench.measure` on it with the node's own Python; its
rows stream back as the device writes them (a Ray streaming generator) into
RUN/devices/NAME/results.jsonl, each with `device_name` and `node_id`. When every device is
done, RUN holds the devices' joint report (reports.build of RUN/devices/*).

Faults: a device no node offers is said before anything is built, and its cells are recorded
`unavailable: no node offers bavit-device:NAME`. A node lost mid-measurement (Ray raises on
the stream) makes each of its cells not yet recorded `failed`, naming the node; the other
devices go on. `--resume` (with the same --out) keeps the bundle and each device's recorded
rows, drops the failed ones and lets each device measure what is missing (bench.measure
--resume on its node), so every cell is recorded once.

Nothing imports ray unless --cluster is given; ray is the `[cluster]` extra."""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.bundle import MANIFEST, read_bundle
from bench.cells import RESULTS, append_row, has_rows, start_over
from bench.options import UsageError

RESOURCE = "bavit-device:"
NO_NODE = "no node offers " + RESOURCE
DEVICES_DIR = "devices"
BUNDLE_DIR = "bundle"
# options bench.run takes that are not the sweep's: they stay here, the rest goes to bench.export
_OWN_VALUE = ("--cluster", "--devices", "--out")
_OWN_FLAG = ("--resume", "--force", "--no-report")
# options bench.measure takes from the same command line
_MEASURE_VALUE = ("--profile-seconds", "--timeout")
_MEASURE_FLAG = ("--profile",)


@dataclass(frozen=True)
class Device:
    name: str
    node_id: str = ""          # "" when no live node offers it
    address: str = ""


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise UsageError(f"--cluster needs ray ({err}); pip install 'bavit-bench[cluster]'") from None
    return ray


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(bench.export's arguments, bench.measure's extra arguments) out of bench.run's."""
    export, measure = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        takes_value = "=" not in arg and name in _OWN_VALUE + _MEASURE_VALUE
        value = [argv[i + 1]] if takes_value and i + 1 < len(argv) else []
        if name in _OWN_VALUE or name in _OWN_FLAG:
            pass
        elif name in _MEASURE_VALUE or name in _MEASURE_FLAG:
            measure += [arg, *value]
            export += [arg, *value] if name == "--profile" else []    # the bundle carries the profile's parts
        else:
            export.append(arg)
        i += 1 + len(value)
    return export, measure


def devices_of(ray, wanted: str) -> list[Device]:
    """The devices asked for, each with the live node that offers it (the first, by node id)."""
    offered: dict[str, Device] = {}
    for node in sorted(ray.nodes(), key=lambda n: n["NodeID"]):
        if not node.get("Alive"):
            continue
        for key in node.get("Resources", {}):
            if key.startswith(RESOURCE) and key[len(RESOURCE):] not in offered:
                offered[key[len(RESOURCE):]] = Device(key[len(RESOURCE):], node["NodeID"],
                                                      node.get("NodeManagerAddress", ""))
    if wanted.strip() == "auto":
        if not offered:
            raise UsageError(f"--devices auto: no node of the cluster declares a {RESOURCE}NAME resource")
        return [offered[n] for n in sorted(offered)]
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise UsageError(f"--devices {wanted!r}: give distinct device names, comma-separated, or auto")
    return [offered.get(n, Device(n)) for n in names]


def _tar(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname="bundle")
    return buf.getvalue()


def agent(payload: bytes, bundle_id: str, prior: dict[str, str], flags: list[str]):
    """The measuring agent, on the device's node: yields {"node"}, then {"row"} per line the
    device's bench.measure writes, then {"run_json"} and {"done"}. Its measuring process dies
    with it (PR_SET_PDEATHSIG), so a lost agent leaves nothing running on the device."""
    import os
    import signal
    import subprocess
    import tempfile
    import time

    import ray

    yield {"kind": "node", "node_id": ray.get_runtime_context().get_node_id()}
    root = Path(tempfile.gettempdir()) / f"bavit-device-{bundle_id}"
    bundle = root / BUNDLE_DIR
    if not (bundle / MANIFEST).is_file():
        tmp = Path(tempfile.mkdtemp(prefix="unpack-", dir=root if root.is_dir() else None))
        with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
            tar.extractall(tmp, filter="data")
        root.mkdir(parents=True, exist_ok=True)
        try:
            (tmp / BUNDLE_DIR).rename(bundle)
        except OSError:        # another agent of this bundle on the same node unpacked it first
            pass
    run = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    for name, text in prior.items():
        (run / name).write_text(text)
    sent = len(prior.get(RESULTS, "").splitlines())

    def die_with_parent() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
        except OSError:
            pass

    cmd = [sys.executable, "-m", "bench.measure", str(bundle), "--out", str(run), "--no-report", *flags]
    if prior:
        cmd.append("--resume")
    with open(run / "agent.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def new_rows() -> list[str]:
            nonlocal sent
            path = run / RESULTS
            if not path.is_file():
                return []
            lines = path.read_text().splitlines()
            complete = lines if path.read_text().endswith("\n") else lines[:-1]
            fresh, sent = complete[sent:], max(sent, len(complete))
            return fresh

        while proc.poll() is None:
            for line in new_rows():
                yield {"kind": "row", "line": line}
            time.sleep(0.5)
        for line in new_rows():
            yield {"kind": "row", "line": line}
    if (run / "run.json").is_file():
        yield {"kind": "run_json", "text": (run / "run.json").read_text()}
    yield {"kind": "done", "rc": proc.returncode, "log_tail": (run / "agent.log").read_text()[-3000:]}


class _Recorder:
    """A device's rows on this machine (RUN/devices/NAME), and the rows it writes itself for
    cells its device never recorded."""

    def __init__(self, folder: Path, bundle: Path, device: Device) -> None:
        from bench.contracts import MeasureOptions
        from bench.bundle import resolved
        from bench.measure import Measure

        self.folder, self.device = folder, device
        manifest = read_bundle(bundle)
        plan, _ = resolved(bundle, manifest)
        self.cells = [bc.cell for bc in manifest.cells]
        self.measure = Measure(plan, MeasureOptions(False, 1.0, 1.0, str(folder / "cache")), folder,
                               datetime.now(UTC).strftime("%Y%m%dT%H%M%S"), {})
        self.lock = threading.Lock()

    def write(self, row: dict) -> None:
        with self.lock:
            append_row(self.folder, dict(row, device_name=self.device.name, node_id=row.get("node_id")
                                         or self.device.node_id))

    def fill(self, status: str, error: str) -> int:
        """A row with `status` for every cell the device has not recorded in this run."""
        recorded = {json.loads(line)["cell_id"] for line in (self.folder / RESULTS).read_text().splitlines()
                    if line.strip()} if (self.folder / RESULTS).is_file() else set()
        missing = [c for c in self.cells if c.cell_id not in recorded]
        for cell in missing:
            self.write(self.measure.row(cell, status, error=error))
        return len(missing)


def _again(row: dict) -> bool:
    """A row --resume measures again: a failed cell, or one whose device had no node then."""
    return row.get("status") == "failed" or str(row.get("error") or "").startswith(NO_NODE)


def _prior(folder: Path, resume: bool) -> dict[str, str]:
    """What a resumed device starts from: its recorded rows without those measured again (so
    each cell ends with one row) and its run.json."""
    results = folder / RESULTS
    if not resume or not has_rows(folder):
        return {}
    kept = [line for line in results.read_text().splitlines() if line.strip() and not _again(json.loads(line))]
    results.write_text("".join(line + "\n" for line in kept))
    prior = {RESULTS: results.read_text()}
    if (folder / "run.json").is_file():
        prior["run.json"] = (folder / "run.json").read_text()
    return prior


def _drive(ray, device: Device, payload, bundle_id: str, recorder: _Recorder, prior: dict[str, str],
           flags: list[str]) -> None:
    """One device's agent, its stream written down as it comes."""
    node = device.node_id
    try:
        stream = ray.remote(agent).options(resources={RESOURCE + device.name: 1}, num_cpus=0, max_retries=0,
                                           num_returns="streaming").remote(payload, bundle_id, prior, flags)
        for ref in stream:
            msg = ray.get(ref)
            if msg["kind"] == "node":
                node = msg["node_id"]
            elif msg["kind"] == "row":
                recorder.write(dict(json.loads(msg["line"]), node_id=node))
            elif msg["kind"] == "run_json":
                (recorder.folder / "run.json").write_text(msg["text"])
            elif msg["kind"] == "done":
                if msg["rc"] not in (0, 1):
                    n = recorder.fill("failed", f"bench.measure on device {device.name} exited {msg['rc']}: "
                                                f"{msg['log_tail'].strip().splitlines()[-1:]}")
                    print(f"bench.run: device {device.name}: bench.measure exited {msg['rc']}; {n} cells failed",
                          file=sys.stderr)
    except ray.exceptions.RayError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        n = recorder.fill("failed", f"node {node} ({device.address}) of device {device.name} lost while "
                                    f"measuring: {type(err).__name__}: {first[:200]}")
        print(f"bench.run: device {device.name}: node {node} lost ({type(err).__name__}); {n} cells failed",
              file=sys.stderr)


def run_cluster(args: argparse.Namespace, argv: list[str] | None) -> int:
    """bench.run with --cluster: exit 0 when every device measured every cell it could, 1 when
    a cell failed, 2 on bad input (before anything is built)."""
    from bench.export import export

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args.devices:
            raise UsageError("--cluster needs --devices NAME,... (or auto)")
        if not args.out:
            raise UsageError("--cluster needs --out RUN (the run folder the devices' rows come back to)")
        out = Path(args.out)
        if (out / DEVICES_DIR).is_dir() and any(has_rows(d) for d in (out / DEVICES_DIR).iterdir()) \
                and not (args.resume or args.force):
            raise UsageError(f"--out {out}: holds devices' rows of an earlier run; pass --resume to finish it, "
                             "--force to start over, or choose another --out")
        ray = import_ray()
        ray.init(address=None if args.cluster == "auto" else args.cluster, logging_level="ERROR",
                 log_to_driver=False)
        devices = devices_of(ray, args.devices)
    except UsageError as err:
        print(f"bench.run: error: {err}", file=sys.stderr)
        return 2
    except ConnectionError as err:
        print(f"bench.run: error: --cluster {args.cluster}: {err}", file=sys.stderr)
        return 2
    absent = [d for d in devices if not d.node_id]
    for d in absent:
        print(f"bench.run: device {d.name}: unavailable: {NO_NODE}{d.name}", file=sys.stderr)
    bundle = out / BUNDLE_DIR
    export_args, measure_flags = split_argv(argv)
    if args.force:
        import shutil

        shutil.rmtree(out / DEVICES_DIR, ignore_errors=True)
    if args.force or not (args.resume and (bundle / MANIFEST).is_file()):
        rc = export([*export_args, "--out", str(bundle), "--force"])
        if rc == 2:
            return 2
    manifest = read_bundle(bundle)
    payload = ray.put(_tar(bundle))
    threads = []
    for d in devices:
        folder = out / DEVICES_DIR / d.name
        folder.mkdir(parents=True, exist_ok=True)
        prior = _prior(folder, args.resume)
        if not prior:
            start_over(folder)
        recorder = _Recorder(folder, bundle, d)
        if not d.node_id:
            recorder.fill("unavailable", f"{NO_NODE}{d.name}")
            continue
        t = threading.Thread(target=_drive, args=(ray, d, payload, manifest.bundle_id, recorder, prior,
                                                  measure_flags), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    (out / "run.json").write_text(json.dumps({
        "argv": argv, "cluster": args.cluster, "bundle_id": manifest.bundle_id,
        "devices": {d.name: {"node_id": d.node_id, "address": d.address} for d in devices}}, indent=1))
    if not args.no_report:
        try:
            from reports.build import build_devices   # pandas may be missing here
            build_devices([out / DEVICES_DIR / d.name for d in devices], out, max_map_drop=args.max_map_drop,
                          max_latency_ms=args.max_latency_ms, max_rss_mb=args.max_rss_mb)
            print(f"report: {out / 'report.html'}")
        except Exception as err:  # noqa: BLE001 - the rows are safe in RUN/devices/*/results.jsonl
            print(f"bench.run: report failed: {type(err).__name__}: {err}", file=sys.stderr)
    failed = any(json.loads(line).get("status") == "failed"
                 for d in devices for line in (out / DEVICES_DIR / d.name / RESULTS).read_text().splitlines()
                 if line.strip())
    return 1 if failed else 0
