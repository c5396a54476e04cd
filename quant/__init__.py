"""Quantization: one calibration set shared by all backends, one recipe module per backend.
Every recipe exposes NAME and SETTINGS, which go into each result row."""
from __future__ import annotations

from typing import Any


def module_paths(node: Any) -> list[str]:
    """The module paths an FX node was traced inside (outermost first), from its
    `nn_module_stack`: the PT2E recipes keep nodes under named modules in float by it."""
    stack = node.meta.get("nn_module_stack") or {}
    return [v[0] if isinstance(v, (tuple, list)) else str(v) for v in stack.values()]


def in_modules(node: Any, modules: tuple[str, ...]) -> bool:
    """Whether an FX node was traced inside one of `modules` (module paths)."""
    return any(p == m or p.startswith(m + ".") for p in module_paths(node) for m in modules)
