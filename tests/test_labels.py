"""Token labels from masks and boxes against hand-computed grids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bavit.data.base import DataError
from bavit.labels import labels_from_boxes, labels_from_masks, token_labels, token_metrics


def test_masks_threshold_edges():
    # 2x2 grid of 4x4 patches (16 px each); foreground counts 8, 7, 16, 0.
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:2, 0:4] = True  # patch (0,0): 8/16 = 0.5 exactly
    mask[0, 4:8] = True
    mask[1, 4:7] = True  # patch (0,1): 7/16
    mask[4:8, 0:4] = True  # patch (1,0): 16/16
    got = labels_from_masks(mask, patch=4, threshold=0.5)
    np.testing.assert_array_equal(got, [[True, False], [True, False]])
    np.testing.assert_array_equal(labels_from_masks(mask, patch=4, threshold=7 / 16), [[True, True], [True, False]])
    np.testing.assert_array_equal(labels_from_masks(mask, patch=4, threshold=1.0), [[False, False], [True, False]])


def test_masks_threshold_decimal_is_inclusive():
    # 30 of 100 pixels with threshold 0.3 must count: the fraction equals the threshold.
    mask = np.zeros((10, 20), dtype=bool)
    mask[:3, :10] = True
    np.testing.assert_array_equal(labels_from_masks(mask, patch=10, threshold=0.3), [[True, False]])


def test_masks_reject_non_multiple_size():
    with pytest.raises(ValueError, match="multiple of patch"):
        labels_from_masks(np.zeros((20, 16), dtype=bool), patch=16)


def test_boxes_fractional_exact_area():
    # patch 16 on a 32x32 image; each row of the grid is tested separately.
    half = [[0, 0, 8.0, 16]]  # exactly 0.5 of patch (0,0)
    assert labels_from_boxes(np.array(half), 32, 32)[0, 0]
    assert not labels_from_boxes(np.array([[0, 0, 7.99, 16]]), 32, 32)[0, 0]
    # 0.5 split over two patches: x in [8, 24) covers half of (0,0) and half of (0,1).
    np.testing.assert_array_equal(
        labels_from_boxes(np.array([[8.0, 0, 24.0, 16]]), 32, 32), [[True, True], [False, False]]
    )
    # fractional on both axes: 11.5 x 11.5 = 132.25 of 256 = 0.5166 -> fg at 0.5, bg at 0.52
    frac = np.array([[0.25, 0.25, 11.75, 11.75]])
    assert labels_from_boxes(frac, 32, 32, threshold=0.5)[0, 0]
    assert not labels_from_boxes(frac, 32, 32, threshold=0.52)[0, 0]


def test_boxes_union_not_sum():
    # Two identical half boxes: union is 0.5, not 1.0.
    twice = np.array([[0, 0, 8, 16], [0, 0, 8, 16]], dtype=float)
    assert not labels_from_boxes(twice, 16, 16, threshold=0.6)[0, 0]
    assert labels_from_boxes(twice, 16, 16, threshold=0.5)[0, 0]
    # Overlapping [0,6) and [4,10): union 10/16 = 0.625 (sum would be 12/16).
    overlap = np.array([[0, 0, 6, 16], [4, 0, 10, 16]], dtype=float)
    assert labels_from_boxes(overlap, 16, 16, threshold=0.625)[0, 0]
    assert not labels_from_boxes(overlap, 16, 16, threshold=0.63)[0, 0]
    # L-shaped union of fractional boxes: 16*4.5 + 4.5*(16-4.5) = 72 + 51.75 = 123.75 / 256
    ell = np.array([[0, 0, 16, 4.5], [0, 0, 4.5, 16]])
    assert labels_from_boxes(ell, 16, 16, threshold=123.75 / 256)[0, 0]
    assert not labels_from_boxes(ell, 16, 16, threshold=124 / 256)[0, 0]


def test_boxes_clip_and_empty():
    out = labels_from_boxes(np.array([[-10, -10, 38, 40]], dtype=float), 32, 48)
    np.testing.assert_array_equal(out, [[True, True, False], [True, True, False]])
    assert not labels_from_boxes(np.zeros((0, 4)), 32, 32).any()
    assert not labels_from_boxes(np.array([[5, 5, 5, 9]], dtype=float), 32, 32).any()


def test_boxes_match_masks_on_integer_boxes():
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.integers(0, 64, (5, 2, 2)), axis=1).reshape(5, 4)[:, [0, 2, 1, 3]].astype(float)
    mask = np.zeros((64, 64), dtype=bool)
    for x0, y0, x1, y1 in boxes.astype(int):
        mask[y0:y1, x0:x1] = True
    for thr in (0.1, 0.5, 0.9):
        np.testing.assert_array_equal(labels_from_boxes(boxes, 64, 64, 16, thr), labels_from_masks(mask, 16, thr))


def test_token_labels_modes():
    masks = np.zeros((2, 32, 32), dtype=bool)
    masks[0, :16, :16] = True
    masks[1, 16:, 16:24] = True  # half of patch (1,1)
    np.testing.assert_array_equal(token_labels(masks, None, "masks", 32), [[True, False], [False, True]])
    boxes = np.array([[16, 0, 32, 16]], dtype=float)
    np.testing.assert_array_equal(token_labels(None, boxes, "boxes", 32), [[False, True], [False, False]])
    with pytest.raises(DataError, match="use --labels boxes"):
        token_labels(None, boxes, "masks", 32)
    fallback = token_labels(None, boxes, "masks", 32, allow_box_fallback=True)
    np.testing.assert_array_equal(fallback, [[False, True], [False, False]])
    assert not token_labels(np.zeros((0, 32, 32), dtype=bool), None, "masks", 32).any()


def test_token_metrics():
    pred = np.array([[True, True], [False, False]])
    target = np.array([[True, False], [True, False]])
    m = token_metrics(pred, target)
    assert m["accuracy"] == 0.5 and m["fg_recall"] == 0.5 and m["fg_precision"] == 0.5
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)
    empty = token_metrics(np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    assert empty["accuracy"] == 1.0 and math.isnan(empty["fg_recall"]) and math.isnan(empty["fg_precision"])
