"""Machine fingerprint put on every result row: numbers from two machines are only
comparable when it is known what each was."""
from __future__ import annotations

import json
import os
import platform
import socket

import psutil

from targets.base import package_version

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni")
PACKAGES = ("torch", "transformers", "torchao", "openvino", "nncf", "litert-torch", "ai-edge-litert",
            "tflite-runtime", "numpy", "faster-coco-eval")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def versions() -> dict[str, str]:
    return {name: v for name in PACKAGES if (v := package_version(name))}


def fingerprint() -> dict:
    model, flags = _cpuinfo()
    return {
        "sys_cpu": model,
        "sys_cores": os.cpu_count(),
        "sys_isa": " ".join(f for f in ISA_FLAGS if f in flags),
        "sys_ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "sys_os": f"{platform.system()} {platform.release()}",
        "sys_python": platform.python_version(),
        "sys_versions": json.dumps(versions(), sort_keys=True),
        "sys_host": socket.gethostname(),
    }


def data_fingerprint(spec: str, split: str) -> dict:
    """What identifies a data set's content for the accuracy cache without reading it: the
    synthetic set is generated from its code (its version key); a folder by the sizes and
    modification times of its annotation files."""
    kind, _, path = spec.partition(":")
    if kind == "synthetic":
        from bavit.data.synthetic import GENERATOR_VERSION
        return {"synthetic": GENERATOR_VERSION, "split": split}
    from bavit.data import annotation_files
    from bench.contracts import digest
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in annotation_files(spec)]
    return {"spec": spec, "split": split, "files": digest(stats)}
