"""A bundle: a sweep built on this machine (`python -m bench.export`) for a device to measure
(`python -m bench.measure`). A folder:

    manifest.json          the typed, versioned `Manifest` below
    artifacts/<key>/       each artifact folder as the cache holds it (its name is its content key)
    inputs/inputs-b{B}.npy the timed batch of each size
    scoring/<key>/         the scored images, token targets and ground truth (bavit.scoring)
    logs/                  the build processes' logs

Every file is listed in the manifest with its sha256, and checked before any cell runs.
Reading a bundle needs numpy alone: no torch, no converter, no data loader.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.cells import Cell
from bench.contracts import Built, MeasurePlan, from_dict

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle that cannot be measured as written: one line naming the file."""


@dataclass(frozen=True)
class BundleFile:
    path: str                     # relative to the bundle folder
    sha256: str
    bytes: int


@dataclass(frozen=True)
class BundleCell:
    cell: Cell
    status: str                   # built | unavailable | failed (on the building machine)
    error: str | None = None


@dataclass(frozen=True)
class Manifest:
    format: int
    created: str                  # UTC, ISO 8601
    argv: list[str]               # the bench.export command line
    plan: MeasurePlan             # its paths relative to the bundle folder
    cells: list[BundleCell]
    built: list[Built]            # artifact paths relative to the bundle folder
    files: list[BundleFile]
    builder: dict[str, Any]       # the building machine's fingerprint (bench.system.fingerprint)
    model: dict[str, Any]         # weights label, detectors, and the sha256 of each weights file
    calibration: dict[str, Any]   # what int8 calibrated on
    bundle_id: str = ""           # sha256 over the files' checksums: one bundle, one id


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def write_bundle(folder: Path, plan: MeasurePlan, cells: list[BundleCell], built: dict[str, Built], *,
                 created: str, argv: list[str], builder: dict, model: dict, calibration: dict) -> Manifest:
    """Copies the built artifacts and the scoring set into `folder` (whose inputs/ the export
    wrote already) and writes the manifest last: a bundle without one is unfinished."""
    (folder / MANIFEST).unlink(missing_ok=True)
    rel_built = []
    for b in built.values():
        if b.ok and b.artifact:
            src = Path(b.artifact)
            _copy(src, folder / "artifacts" / src.name)
            b = replace(b, artifact=f"artifacts/{src.name}")
        rel_built.append(b)
    scoring = None
    if plan.scoring_set:
        src = Path(plan.scoring_set)
        _copy(src, folder / "scoring" / src.name)
        scoring = f"scoring/{src.name}"
    rel_plan = replace(plan, inputs="inputs", scoring_set=scoring, built_on="", bundle="")
    files = [BundleFile(str(p.relative_to(folder)), _sha256(p), p.stat().st_size)
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
             and p.relative_to(folder).parts[0] in ("artifacts", "inputs", "scoring")]
    bundle_id = hashlib.sha256("".join(f"{f.path}:{f.sha256};" for f in files).encode()).hexdigest()[:16]
    manifest = Manifest(BUNDLE_FORMAT, created, argv, rel_plan, cells, rel_built, files, builder, model, calibration,
                        bundle_id)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=1, default=str))
    tmp.rename(folder / MANIFEST)
    return manifest


def read_bundle(folder: str | Path, verify: bool = True) -> Manifest:
    """The manifest, after checking that every file it lists is there, whole and unchanged."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a folder")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (not a bundle, or its export did not finish)") from None
    except ValueError as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    version = data.get("format") if isinstance(data, dict) else None
    if version != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {version!r}; this bench.measure reads format {BUNDLE_FORMAT} "
                          "(export it again with this version)")
    try:
        manifest = from_dict(Manifest, data)
    except (TypeError, KeyError, ValueError) as err:
        raise BundleError(f"{path}: not a manifest of format {BUNDLE_FORMAT} ({err})") from None
    if verify:
        for f in manifest.files:
            p = folder / f.path
            if not p.is_file():
                raise BundleError(f"{p}: missing (listed in {MANIFEST})")
            if p.stat().st_size != f.bytes:
                raise BundleError(f"{p}: {p.stat().st_size} bytes, {MANIFEST} lists {f.bytes} (truncated or changed "
                                  "since export)")
            if _sha256(p) != f.sha256:
                raise BundleError(f"{p}: checksum differs from {MANIFEST} (changed since export)")
    listed = {f.path for f in manifest.files}
    for b in manifest.built:
        if b.ok and not any(p.startswith(f"{b.artifact}/") for p in listed):
            raise BundleError(f"{folder / (b.artifact or '?')}: artifact of {b.model_id} not listed in {MANIFEST}")
    return manifest


def resolved(folder: Path, manifest: Manifest) -> tuple[MeasurePlan, dict[str, Built]]:
    """The plan and artifacts with the bundle's relative paths made absolute."""
    folder = folder.resolve()
    p = manifest.plan
    plan = replace(p, inputs=str(folder / p.inputs),
                   scoring_set=str(folder / p.scoring_set) if p.scoring_set else None,
                   built_on=_machine(manifest.builder), bundle=f"{folder.name}@{manifest.bundle_id}")
    built = {b.model_id: replace(b, artifact=str(folder / b.artifact)) if b.ok and b.artifact else b
             for b in manifest.built}
    return plan, built


def _machine(fp: dict) -> str:
    return f"{fp.get('sys_cpu', '?')} ({fp.get('sys_cores', '?')} cores; {fp.get('sys_isa', '')}; host " \
           f"{fp.get('sys_host', '?')})"


__all__ = ["BUNDLE_FORMAT", "MANIFEST", "BundleCell", "BundleError", "BundleFile", "Manifest", "read_bundle",
           "resolved", "write_bundle"]
