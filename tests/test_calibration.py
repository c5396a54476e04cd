"""The calibration set and its static-batch grouping, shared by every int8 recipe."""
from __future__ import annotations

import numpy as np
import pytest

from bavit.data import load_dataset
from quant.calibration import calibration_batches, calibration_images


def test_calibration_batches():
    imgs = np.zeros((5, 3, 4, 4), np.float32)
    assert [b.shape[0] for b in calibration_batches(imgs, 2)] == [2, 2]
    assert [b.shape[0] for b in calibration_batches(imgs[:1], 4)] == [4]
    with pytest.raises(ValueError):
        calibration_batches(imgs[:0], 2)


def test_calibration_images_are_seeded_preprocessed_subset():
    ds = load_dataset("synthetic", "train", size=64, n_images=32)
    a, b = calibration_images(ds, 64, n=8, seed=0), calibration_images(ds, 64, n=8, seed=0)
    assert a.shape == (8, 3, 64, 64) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, calibration_images(ds, 64, n=8, seed=1))


def test_calibration_skips_the_scored_images():
    """A data set with only the scored split calibrates past the images that are scored."""
    from bavit.data.preprocess import preprocess

    ds = load_dataset("synthetic", "val", size=64, n_images=12)
    calib = calibration_images(ds, 64, n=8, seed=0, skip=4)
    scored = [preprocess(ds[i].image, 64)[0] for i in range(4)]
    rest = [preprocess(ds[i].image, 64)[0] for i in range(4, 12)]
    assert calib.shape == (8, 3, 64, 64)
    assert all(any(np.array_equal(c, r) for r in rest) and not any(np.array_equal(c, s) for s in scored)
               for c in calib)
    with pytest.raises(ValueError, match="none past the first 12"):
        calibration_images(ds, 64, n=8, skip=12)
