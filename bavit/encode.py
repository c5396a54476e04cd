"""Samples -> what models are trained and scored on: the static-size input, boxes relative
to it, and per-patch targets (foreground flag for BAViT, majority class for the detector's
dense training head). One place, so training and validation see identical targets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from bavit.data import DetectionDataset, Sample
from bavit.data.preprocess import Size, boxes_to_input, hw, preprocess, preprocess_masks
from bavit.labels import labels_from_masks, token_labels

LabelMode = Literal["masks", "boxes"]


@dataclass
class Encoded:
    pixels: np.ndarray        # (3, H, W) float32, normalised
    boxes: np.ndarray         # (n, 4) cx, cy, w, h in [0, 1] of the H x W input
    labels: np.ndarray        # (n,) int64
    token_fg: np.ndarray      # (gh * gw,) bool: BAViT target
    patch_class: np.ndarray   # (gh * gw,) int64: 0 background, c + 1 object class c
    scale: float
    orig_size: tuple[int, int]
    image_id: int


def label_mode_for(dataset: DetectionDataset, requested: LabelMode | None) -> LabelMode:
    """Masks when the set has them, unless the user asked for boxes."""
    if requested:
        return requested
    return "masks" if len(dataset) and dataset[0].masks is not None else "boxes"


def encode(sample: Sample, size: Size, patch: int, mode: LabelMode, threshold: float = 0.5) -> Encoded:
    in_h, in_w = hw(size)
    pixels, scale = preprocess(sample.image, size)
    xyxy = boxes_to_input(sample.boxes, scale).astype(np.float32).reshape(-1, 4)
    masks = preprocess_masks(sample.masks, scale, size) if sample.masks is not None else None
    fg = token_labels(masks, xyxy, mode, size, patch, threshold).reshape(-1)
    if sample.fg_extra is not None:  # crowds, void bands: foreground to keep, whatever the labels
        extra = preprocess_masks(sample.fg_extra[None], scale, size)[0]
        if masks is not None and mode == "masks":  # counted with the objects it borders
            extra |= masks.any(axis=0)
        fg |= labels_from_masks(extra, patch, threshold).reshape(-1)
    cls_map = np.zeros((in_h, in_w), dtype=np.int64)
    if masks is not None:
        for m, lab in zip(masks, sample.labels):
            cls_map[m] = lab + 1
    else:  # boxes only: largest first, so small boxes stay visible on top
        order = np.argsort(-(xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]))
        for j in order:
            x0, y0, x1, y1 = np.round(xyxy[j]).astype(int).clip(0, [in_w, in_h, in_w, in_h])
            cls_map[y0:y1, x0:x1] = sample.labels[j] + 1
    gh, gw = in_h // patch, in_w // patch
    blocks = cls_map.reshape(gh, patch, gw, patch).transpose(0, 2, 1, 3).reshape(gh * gw, patch * patch)
    n_cls = int(cls_map.max()) + 1
    patch_class = np.apply_along_axis(np.bincount, 1, blocks, minlength=n_cls).argmax(1)
    cxcywh = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                       xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], -1) / [in_w, in_h, in_w, in_h]
    h, w = sample.image.shape[:2]
    return Encoded(pixels, cxcywh.astype(np.float32), sample.labels.astype(np.int64), fg, patch_class,
                   scale, (h, w), sample.image_id)
