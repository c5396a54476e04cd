"""Backends ("systems under test") behind one interface; see targets.base.

Importing this package imports no runtime: each backend module imports its packages lazily."""
from __future__ import annotations

import importlib
import os

from targets.base import Artifact, ConversionError, Runner, Target

NAMES = ("torch", "openvino", "tflite", "inductor", "onnxruntime", "executorch")
# what --target all runs: `inductor` compiles every artifact to C++ and `executorch` lowers one
# program per batch (minutes each on 2 cores), which the main job's time budget does not hold;
# they are named explicitly
DEFAULT_TARGETS = ("torch", "openvino", "tflite", "onnxruntime")


def plugins() -> dict[str, str]:
    """Extra targets from $BAVIT_TARGET_PLUGINS="name=module:ATTR,...": third-party backends
    (and the harness tests' fault-injecting targets) behind the same interface."""
    spec = os.environ.get("BAVIT_TARGET_PLUGINS", "")
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, ref = item.partition("=")
        if not ref or ":" not in ref:
            raise ValueError(f"BAVIT_TARGET_PLUGINS entry '{item}' is not name=module:ATTR")
        out[name.strip()] = ref.strip()
    return out


def known_targets() -> tuple[str, ...]:
    return NAMES + tuple(n for n in plugins() if n not in NAMES)


def get_target(name: str) -> Target:
    extra = plugins()
    if name in NAMES:
        return importlib.import_module(f"targets.{name}_backend").TARGET
    if name in extra:
        module, _, attr = extra[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    raise ValueError(f"unknown target '{name}' (choose from {', '.join(known_targets())})")


__all__ = ["Artifact", "ConversionError", "Runner", "Target", "get_target", "known_targets", "NAMES",
           "DEFAULT_TARGETS"]
