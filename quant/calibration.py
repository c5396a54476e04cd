"""The calibration set every backend's int8 recipe sees: the same preprocessed images, seeded,
drawn from another split than the scored one, or from past the scored images when a data
set has only that split (bench.run records which in each int8 row)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the recipes import this module in measured processes too: numpy only at import
    from bavit.data import DetectionDataset

DEFAULT_IMAGES = 128


def calibration_images(dataset: "DetectionDataset", size: "int | tuple[int, int]", n: int = DEFAULT_IMAGES,
                       seed: int = 0, skip: int = 0) -> np.ndarray:
    """(n, 3, H, W) float32, a seeded random subset of `dataset` past its first `skip`
    images: when a data set has only the split that is scored, the scored images (the
    first ones) stay out of calibration."""
    from bavit.data.preprocess import preprocess

    if len(dataset) <= skip:
        raise ValueError(f"calibration data set has {len(dataset)} images, none past the first {skip}")
    rng = np.random.default_rng(seed)
    idx = skip + rng.choice(len(dataset) - skip, size=min(n, len(dataset) - skip), replace=False)
    return np.stack([preprocess(dataset[int(i)].image, size)[0] for i in sorted(idx)]).astype(np.float32)


def calibration_batches(calibration: np.ndarray, batch: int) -> list[np.ndarray]:
    """(N, 3, S, S) -> full (batch, 3, S, S) float32 batches for a static-batch model: the
    remainder is dropped, and a set smaller than one batch is repeated to fill one."""
    calibration = np.asarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be a non-empty (N, 3, S, S) array, got shape {calibration.shape}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if len(calibration) < batch:
        calibration = np.resize(calibration, (batch,) + calibration.shape[1:])
    n = len(calibration) // batch
    return [np.ascontiguousarray(calibration[i * batch:(i + 1) * batch]) for i in range(n)]
