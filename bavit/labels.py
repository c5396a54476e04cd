"""Patch-token foreground/background labels (the BAViT supervision signal).

BAViT trains a per-token classifier that decides which patch tokens carry
object content; these functions turn ground truth into that per-patch
target, from masks when the set has them and from boxes otherwise.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .data.base import DataError

_EPS = 1e-9  # float slack so a patch covered by exactly `threshold` is foreground despite rounding


def _grid_shape(height: int, width: int, patch: int) -> tuple[int, int]:
    """Refuse sizes that are not whole patches: a partial patch has no token in the ViT."""
    if patch <= 0 or height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch {patch}")
    return height // patch, width // patch


def labels_from_masks(mask: np.ndarray, patch: int = 16, threshold: float = 0.5) -> np.ndarray:
    """(H, W) bool union mask -> (H/patch, W/patch) bool: foreground fraction >= threshold.

    Block reduction via reshape gives the exact pixel count per patch.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    gh, gw = _grid_shape(*mask.shape, patch)
    counts = mask.reshape(gh, patch, gw, patch).sum(axis=(1, 3))
    return counts / (patch * patch) >= threshold - _EPS


def labels_from_boxes(
    boxes_xyxy: np.ndarray,
    height: int,
    width: int,
    patch: int = 16,
    threshold: float = 0.5,
) -> np.ndarray:
    """(n, 4) xyxy boxes in pixels -> (H/patch, W/patch) bool: union coverage >= threshold.

    Exact for fractional coordinates: the plane is cut at every box edge and
    every patch boundary, so each resulting cell lies entirely inside or
    outside each box and entirely within one patch; summing the areas of
    covered cells per patch gives the true area of the union (no pixel
    rasterisation or supersampling error). Boxes are clipped to the image.
    """
    gh, gw = _grid_shape(height, width, patch)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if len(boxes) == 0:
        return np.zeros((gh, gw), dtype=bool)

    xs = np.unique(np.concatenate([boxes[:, [0, 2]].ravel(), np.arange(gw + 1) * patch]))
    ys = np.unique(np.concatenate([boxes[:, [1, 3]].ravel(), np.arange(gh + 1) * patch]))
    covered = np.zeros((len(ys) - 1, len(xs) - 1), dtype=bool)
    ix = np.searchsorted(xs, boxes[:, [0, 2]])
    iy = np.searchsorted(ys, boxes[:, [1, 3]])
    for (x0, x1), (y0, y1) in zip(ix, iy):
        covered[y0:y1, x0:x1] = True

    area = covered * np.diff(ys)[:, None] * np.diff(xs)[None, :]
    col_starts = np.searchsorted(xs, np.arange(gw) * patch)
    row_starts = np.searchsorted(ys, np.arange(gh) * patch)
    per_patch = np.add.reduceat(np.add.reduceat(area, col_starts, axis=1), row_starts, axis=0)
    return per_patch / (patch * patch) >= threshold - _EPS


def token_labels(
    masks: np.ndarray | None,
    boxes: np.ndarray | None,
    mode: Literal["masks", "boxes"],
    size: int | tuple[int, int],
    patch: int = 16,
    threshold: float = 0.5,
    allow_box_fallback: bool = False,
) -> np.ndarray:
    """Token grid for one preprocessed sample (masks (n, H, W) or xyxy boxes in input pixels;
    `size` N for N x N inputs, or (H, W)).

    Box labels mark background inside boxes as foreground, which changes what
    the pruner learns; so a missing mask only falls back to boxes when the
    caller opted in, otherwise the user is told to choose box labels.
    """
    if mode == "masks" and masks is None:
        if not allow_box_fallback:
            raise DataError("data set has no segmentation masks; use --labels boxes")
        mode = "boxes"
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if mode == "masks":
        masks = np.asarray(masks, dtype=bool)
        if masks.shape[1:] != (height, width):
            raise ValueError(f"masks must be (n, {height}, {width}), got {masks.shape}")
        return labels_from_masks(masks.any(axis=0), patch, threshold)
    if mode == "boxes":
        empty = np.zeros((0, 4), dtype=np.float32)
        return labels_from_boxes(empty if boxes is None else boxes, height, width, patch, threshold)
    raise ValueError(f"unknown label mode '{mode}' (expected masks or boxes)")


def token_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Accuracy and foreground recall/precision of predicted keep-masks.

    Recall is NaN when the target has no foreground and precision is NaN when
    nothing was predicted foreground: the ratio is undefined, and NaN (unlike
    1.0) cannot silently inflate an average; use np.nanmean, or pool the
    returned tp/fp/fn/tn counts for a micro-average.
    """
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred & ~target))
    fn = int(np.count_nonzero(~pred & target))
    tn = int(pred.size) - tp - fp - fn
    return {
        "accuracy": (tp + tn) / pred.size if pred.size else float("nan"),
        "fg_recall": tp / (tp + fn) if tp + fn else float("nan"),
        "fg_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }
