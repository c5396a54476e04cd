"""Targets that misbehave on purpose, plugged in through $BAVIT_TARGET_PLUGINS, so the
harness's failure, memory and resume handling is tested without slow conversions."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from targets.base import Recipe, Runner, RuntimeOptions, Target

# "drift": a call costs DRIFT_BASE_MS x keep, times a factor that grows by DRIFT_RATE per
# second since the model was loaded (a machine slowing down during a sweep)
DRIFT_BASE_MS = 40.0   # long against the call's own overhead, which would bias the ratio below 2
DRIFT_RATE = 0.3


class FakeTarget(Target):
    recipes = {"fp32": Recipe(), "int8": Recipe("fake", calibrated=True)}

    def __init__(self, name: str, behaviour: str = "ok") -> None:
        self.name = name
        self.behaviour = behaviour

    def available(self) -> str | None:
        return "fake runtime is not installed" if self.behaviour == "unavailable" else None

    def build_unavailable(self) -> str | None:
        return "fake converter is not installed" if self.behaviour == "no-converter" else None

    def versions(self) -> dict[str, str]:
        return {"fake": self.behaviour}

    def build(self, pipeline, precision: str, batch: int, calibration, out: Path) -> dict:
        if self.behaviour == "no-converter":
            raise ImportError("no module named fake_converter")
        cfg = pipeline.detector.config
        shapes = {"d": cfg.num_detection_tokens, "c": cfg.num_labels + 1, "n": pipeline.num_tokens}
        np.save(out / "model.npy", np.zeros(16, dtype=np.float32))
        return {"files": ["model.npy"], "extra": shapes, "recipe": "fake" if precision == "int8" else "none"}

    def load(self, artifact, options: RuntimeOptions) -> Runner:
        if self.behaviour == "raise":
            raise RuntimeError("boom: this target always fails")
        if self.behaviour == "hang":
            time.sleep(3600)
        ballast = np.ones(200 * 2**20, dtype=np.uint8) if self.behaviour == "alloc200" else None
        d, c, n = (artifact.extra[k] for k in "dcn")

        timed: list[np.ndarray] = []

        t0 = time.time()

        def run(pixels: np.ndarray):
            b = len(pixels)
            if self.behaviour == "drift":
                time.sleep(DRIFT_BASE_MS / 1000 * artifact.keep * (1 + DRIFT_RATE * (time.time() - t0)))
            if not timed:  # the first call is the harness's timed batch
                timed.append(pixels.copy())
            if self.behaviour == "accuracy-fails" and not np.array_equal(pixels, timed[0]):
                raise RuntimeError("boom: only the timed batch runs")
            boxes = np.full((b, d, 4), 0.25, dtype=np.float32)
            if ballast is not None:
                boxes += ballast[0] * 0
            return np.zeros((b, d, c), np.float32), boxes, np.zeros((b, n), np.float32)
        return Runner(run, "f32")


FAKE = FakeTarget("fake")
FAKE_RAISE = FakeTarget("fake-raise", "raise")
FAKE_ALLOC = FakeTarget("fake-alloc", "alloc200")
FAKE_HANG = FakeTarget("fake-hang", "hang")
FAKE_UNAVAILABLE = FakeTarget("fake-missing", "unavailable")
FAKE_NO_CONVERTER = FakeTarget("fake-noconv", "no-converter")
FAKE_ACCURACY_FAILS = FakeTarget("fake-badacc", "accuracy-fails")
FAKE_DRIFT = FakeTarget("fake-drift", "drift")
# the harness's subprocesses import this as `fake_targets` (tests/ on their PYTHONPATH)
PLUGINS = ",".join(f"{t.name}=fake_targets:{var}" for var, t in
                   [("FAKE", FAKE), ("FAKE_RAISE", FAKE_RAISE), ("FAKE_ALLOC", FAKE_ALLOC),
                    ("FAKE_HANG", FAKE_HANG), ("FAKE_UNAVAILABLE", FAKE_UNAVAILABLE),
                    ("FAKE_NO_CONVERTER", FAKE_NO_CONVERTER), ("FAKE_ACCURACY_FAILS", FAKE_ACCURACY_FAILS),
                    ("FAKE_DRIFT", FAKE_DRIFT)])
