"""The package layout's own rules: no import cycle between our modules (function-level imports
included: a lazy import only hides a cycle), and the measuring side imports nothing of the
build side at import time."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bavit", "bench", "targets", "quant", "reports")


def _graph() -> dict[str, set[str]]:
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
                target = ".".join(filter(None, [base, node.module or ""]))
                names = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files]
                edges[mod].update(names or ([target] if target in files else []))
            elif isinstance(node, ast.Import):
                edges[mod].update(a.name for a in node.names if a.name in files)
        edges[mod].discard(mod)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_between_our_modules():
    edges = _graph()
    assert len(edges) > 40 and "bavit.detectors" in edges["bavit.reducers.shared"]   # the graph is read
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_measuring_side_imports_no_build_side_package():
    code = ("import sys, bench.measure, bench.worker, bench.bundle, bench.procs, bench.loop, bench.stats, bavit.scoring, "
            "targets.openvino_backend, targets.tflite_backend, targets.onnxruntime_backend, "
            "targets.executorch_backend; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'PIL', 'pandas', "
            "'pycocotools', 'nncf', 'litert_torch', 'torchao', 'scipy', 'yaml', 'onnxscript', 'executorch'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
