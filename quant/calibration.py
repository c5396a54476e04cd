"""The calibration set every backend's int8 recipe sees: the same preprocessed images, drawn
from the training split (never the split mAP is scored on), seeded."""
from __future__ import annotations

import numpy as np

from bavit.data import DetectionDataset
from bavit.data.preprocess import preprocess

DEFAULT_IMAGES = 128


def calibration_images(dataset: DetectionDataset, size: int, n: int = DEFAULT_IMAGES, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) float32, a seeded random subset of `dataset`."""
    if len(dataset) == 0:
        raise ValueError("calibration data set is empty")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    return np.stack([preprocess(dataset[int(i)].image, size)[0] for i in sorted(idx)]).astype(np.float32)
