"""python -m bench.export --out BUNDLE [the sweep options of bench.run]: build every artifact
of a sweep on this machine and write them, with the timed inputs and the scored images, into
a bundle folder that `python -m bench.measure BUNDLE --out RUN` measures on the device it
runs on, with a runtime installed and no torch (bench.bundle).

The sweep's measuring settings (rounds, round seconds, warm-up, threads, OpenVINO int8's float
precision) travel in the bundle: a device measures as this command line says. `--profile`
also builds what LiteRT's per-stage profile needs; `bench.measure --profile` profiles."""
from __future__ import annotations

import hashlib
import shutil
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.build import build_phase
from bench.bundle import MANIFEST, BundleCell, write_bundle
from bench.options import UsageError, parse_args, quiet_import_noise, terminate
from bench.plan import prepare
from bench.procs import Children
from bench.system import fingerprint


def _model_identity(weights: str, detectors: list[str]) -> dict:
    """Which weights were built: their folder and the sha256 of every weights and config
    file in it (a random model has none)."""
    root = Path(weights)
    files = {}
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file() and (p.suffix == ".safetensors" or p.name == "config.json"):
                files[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return {"weights": weights, "detectors": detectors, "files": files}


def export(argv: list[str] | None = None) -> int:
    args = parse_args(argv, prog="python -m bench.export", description=__doc__)
    signal.signal(signal.SIGTERM, terminate)
    quiet_import_noise()
    if not args.out:
        print("bench.export: error: --out BUNDLE is required (the bundle folder to write)", file=sys.stderr)
        return 2
    if args.resume:
        print("bench.export: error: --resume: a bundle is exported whole (use --force to write it again)",
              file=sys.stderr)
        return 2
    bundle = Path(args.out)
    if (bundle / MANIFEST).is_file() and not args.force:
        print(f"bench.export: error: --out {bundle}: holds a bundle already; pass --force to replace it, or choose "
              "another --out", file=sys.stderr)
        return 2
    if args.force:
        for name in ("artifacts", "inputs", "scoring", "logs", "work"):
            shutil.rmtree(bundle / name, ignore_errors=True)
        (bundle / MANIFEST).unlink(missing_ok=True)
    try:
        p = prepare(args, argv, inputs=bundle / "inputs", record=False)
    except UsageError as err:
        print(f"bench.export: error: {err}", file=sys.stderr)
        return 2
    timing = dict(p.timing)
    built, ok_cells, not_built = build_phase(p.todo, p.build, p.work, p.logs, timing)
    cells = [BundleCell(c, "built") for c in ok_cells] + [BundleCell(n.cell, n.status, n.error) for n in not_built]
    order = {c.cell_id: i for i, c in enumerate(p.cells)}
    cells.sort(key=lambda bc: order[bc.cell.cell_id])
    manifest = write_bundle(bundle, p.measure, cells, built,
                            created=datetime.now(UTC).isoformat(), argv=sys.argv if argv is None else argv,
                            builder=fingerprint(), model=_model_identity(p.build.weights, list(args.detector)),
                            calibration={"data": p.build.calib_data, "split": p.build.calib_split,
                                         "skip": p.build.calib_skip, "images": p.build.calib_images,
                                         "note": p.measure.calibration_note})
    shutil.rmtree(p.work, ignore_errors=True)
    size = sum(f.bytes for f in manifest.files)
    failed = sum(c.status == "failed" for c in cells)
    print(f"bundle {bundle} ({manifest.bundle_id}): {len(ok_cells)} cells built, "
          f"{sum(c.status == 'unavailable' for c in cells)} unavailable, {failed} failed; "
          f"{len(manifest.files)} files, {size / 2**20:.1f} MiB", file=sys.stderr)
    print(f"measure it: python -m bench.measure {bundle} --out RUN", file=sys.stderr)
    return 1 if failed else 0


def main() -> None:
    try:
        sys.exit(export())
    except KeyboardInterrupt:
        Children.kill_all()
        print("bench.export: interrupted; the bundle has no manifest (export it again)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
