"""Machine fingerprint put on every result row: numbers from two machines are only
comparable when it is known what each was."""
from __future__ import annotations

import json
import os
import platform
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from targets.base import package_version

BF16_UNITS = ("avx512_bf16", "amx_bf16")   # CPU flags of native bf16 arithmetic (else oneDNN emulates it)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni",
             "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve")   # x86, then ARM (dot product, fp16, int8 mm)
X86 = ("x86_64", "amd64", "i386", "i686")
PACKAGES = ("torch", "transformers", "torchao", "openvino", "nncf", "litert-torch", "ai-edge-litert",
            "tflite-runtime", "onnxruntime", "onnx", "onnxscript", "executorch", "numpy", "faster-coco-eval")


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The CPU's model and ISA flags from /proc/cpuinfo. An emulated process (qemu-user, e.g.
    an aarch64 Python on an x86 machine) reads the host's file: its x86 model and flags are
    not this process's CPU, so the model says so and no flags are taken."""
    model, flags, x86_lines = platform.processor() or "unknown", set(), False
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model") and model in ("unknown", "", "x86_64", "aarch64"):
                    model = value.strip()          # x86; a Raspberry Pi's board line
                elif key.strip() in ("flags", "Features") and not flags:   # x86, ARM
                    flags = set(value.split())
                    x86_lines |= key.strip() == "flags"
    except OSError:
        pass
    machine = platform.machine()
    if x86_lines and machine.lower() not in X86:
        return f"{machine} emulated on {model}", set()
    return model, flags


def bf16_units() -> list[str]:
    """The CPU's native bf16 units (flags), empty where bf16 would be emulated."""
    _, flags = _cpuinfo()
    return [f for f in BF16_UNITS if f in flags]


def versions() -> dict[str, str]:
    return {name: v for name in PACKAGES if (v := package_version(name))}


DAMON = Path("/sys/kernel/mm/damon/admin/kdamonds")


DAMON_RECLAIM = Path("/sys/module/damon_reclaim/parameters/enabled")


def background_reclaim(root: Path = DAMON, module: Path = DAMON_RECLAIM) -> str:
    """Kernel work that takes memory away from running processes on its own schedule: a DAMON
    kdamond that is on with a `pageout` scheme drops pages it finds idle (the code, libraries
    and mmapped models of cells that wait their turn between slices), and they are faulted back
    in inside a timed window. Some VMs run one to hand memory back to the host. "" when none."""
    found = []
    for kdamond in sorted(root.glob("[0-9]*")):
        try:
            if (kdamond / "state").read_text().strip() != "on":
                continue
            actions = {a.read_text().strip() for a in kdamond.glob("contexts/*/schemes/*/action")}
        except OSError:
            continue
        if "pageout" in actions:
            found.append(f"DAMON pageout (kdamond {kdamond.name})")
    try:   # the in-kernel module that runs the same pageout on its own
        if module.read_text().strip() == "Y":
            found.append("DAMON_RECLAIM")
    except OSError:
        pass
    return ", ".join(found)


def fingerprint() -> dict:
    model, flags = _cpuinfo()
    return {
        "sys_cpu": model,
        "sys_arch": platform.machine(),
        "sys_cores": os.cpu_count(),
        "sys_isa": " ".join(f for f in ISA_FLAGS if f in flags),
        "sys_ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "sys_os": f"{platform.system()} {platform.release()}",
        "sys_python": platform.python_version(),
        "sys_versions": json.dumps(versions(), sort_keys=True),
        "sys_host": socket.gethostname(),
        "sys_background_reclaim": background_reclaim(),
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


# -- the machine's peak ------------------------------------------------------------------------
# Dense multiply-add throughput per core and cycle, counted as 2 ops per multiply-add, for the
# best unit the CPU reports; best first within a precision. Two vector FMA pipes are assumed
# (the CPU does not say how many it has; some AVX-512 Xeons have one, which halves fp32/int8).
OPS_PER_CYCLE: tuple[tuple[str, str, int, str], ...] = (
    ("fp32", "avx512f", 64, "AVX-512 FMA: 2 pipes x 16 fp32 lanes x 2"),
    ("fp32", "avx2", 32, "AVX2 FMA: 2 pipes x 8 fp32 lanes x 2"),
    ("fp32", "asimd", 16, "NEON FMA: 2 pipes x 4 fp32 lanes x 2"),
    ("bf16", "amx_bf16", 1024, "AMX-BF16: 512 bf16 multiply-adds per TMUL cycle x 2"),
    ("bf16", "avx512_bf16", 128, "AVX512-BF16 vdpbf16ps: 2 pipes x 32 bf16 pairs x 2"),
    ("int8", "amx_int8", 2048, "AMX-INT8: 1024 int8 multiply-adds per TMUL cycle x 2"),
    ("int8", "avx512_vnni", 256, "AVX512-VNNI vpdpbusd: 2 pipes x 64 int8 products x 2"),
    ("int8", "avx_vnni", 128, "AVX-VNNI vpdpbusd: 2 pipes x 32 int8 products x 2"),
    ("int8", "avx2", 64, "AVX2 vpmaddubsw + vpmaddwd: 2 pipes x 32 int8 products x 2 per 2 instructions"),
    ("int8", "asimddp", 64, "NEON sdot: 2 pipes x 16 int8 products x 2"),
)


@dataclass(frozen=True)
class Peak:
    """Peak ops/s of one precision on this machine: cores x clock x ops per core per cycle.
    `basis` is the formula with its numbers and sources, or why there is no figure."""
    precision: str
    gops: float | None
    basis: str


def clock_ghz() -> tuple[float | None, str]:
    """The clock the peak is computed at, and where it came from: the highest frequency the
    kernel's cpufreq reports, else /proc/cpuinfo's 'cpu MHz' (in a VM the host's nominal
    clock; turbo is not known), else the model name's '@ x.xxGHz'."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                return float(value) / 1000, "/proc/cpuinfo cpu MHz (nominal; turbo not known)"
            if key.strip() == "model name" and not model:
                model = value
    except (OSError, ValueError):
        pass
    if m := re.search(r"@\s*([0-9.]+)\s*GHz", model):
        return float(m.group(1)), "the CPU model name (nominal)"
    return None, "no clock readable (cpufreq, /proc/cpuinfo)"


def peak(precision: str, threads: int) -> Peak:
    """The peak a cell running `threads` threads can reach: SMT siblings share their core's
    vector units, so at most one thread per physical core counts. A precision without its
    own units (bf16 on a CPU without bf16 instructions) gets fp32's peak, said so."""
    _, flags = _cpuinfo()
    ghz, source = clock_ghz()
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    cores = max(1, min(threads, physical))
    unit = next(((ops, what) for p, flag, ops, what in OPS_PER_CYCLE if p == precision and flag in flags), None)
    note = ""
    if unit is None and precision != "fp32":
        unit = next(((ops, what) for p, flag, ops, what in OPS_PER_CYCLE if p == "fp32" and flag in flags), None)
        note = f"; no {precision} units: fp32's peak"
    if unit is None:
        return Peak(precision, None, f"no known vector unit for {precision} in the CPU flags")
    if ghz is None:
        return Peak(precision, None, source)
    ops, what = unit
    return Peak(precision, round(cores * ghz * ops, 1),
                f"{cores} core{'s' if cores > 1 else ''} x {ghz:.2f} GHz ({source}) x {ops} ops/cycle ({what}){note}")
