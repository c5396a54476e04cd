"""Backends ("systems under test") behind one interface; see targets.base.

Importing this package imports no runtime: each backend module imports its packages lazily."""
from __future__ import annotations

import importlib

from targets.base import Artifact, ConversionError, Runner, Target

NAMES = ("torch", "openvino", "tflite")


def get_target(name: str) -> Target:
    if name not in NAMES:
        raise ValueError(f"unknown target '{name}' (choose from {', '.join(NAMES)})")
    module = importlib.import_module(f"targets.{name}_backend")
    return module.TARGET


__all__ = ["Artifact", "ConversionError", "Runner", "Target", "get_target", "NAMES"]
