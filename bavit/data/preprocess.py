"""Fixed-shape preprocessing shared by PyTorch, exported and quantised models.

Every model input is H x W (`size`: an int N for N x N, or (H, W)): the image is resized by
the largest factor that fits it inside, aspect kept (letterbox), and padded bottom/right.
A single static shape is what lets ONNX / OpenVINO / TFLite exports and their quantisers
work without dynamic axes, and padding only bottom/right keeps the map back to original
pixels a pure scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .base import DetectionDataset

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


Size = int | tuple[int, int]


def hw(size: Size) -> tuple[int, int]:
    """(H, W) of a model input given as N (square) or (H, W)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def resized_shape(height: int, width: int, size: Size) -> tuple[int, int, float]:
    """(new_h, new_w, scale): the image scaled to fit inside the H x W input, aspect kept.

    Rounding makes the per-axis factor differ from `scale` by < 0.5 px over
    the image; boxes use the single `scale`, which keeps the inverse map
    trivial at the cost of that sub-pixel error.
    """
    out_h, out_w = hw(size)
    scale = min(out_h / height, out_w / width)
    return min(out_h, max(1, round(height * scale))), min(out_w, max(1, round(width * scale))), scale


def preprocess(image: np.ndarray, size: Size) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 RGB -> ((3, H_in, W_in) float32, scale): `resize`, then `normalise`."""
    resized, scale = resize(image, size)
    return normalise(resized, size), scale


def resize(image: np.ndarray, size: Size) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 RGB -> ((new_h, new_w, 3) uint8, scale), fitted inside the input.

    Apart from `normalise` so that what a device is sent to score is the resized image in
    uint8 (a quarter of the float input), and normalising it there gives the very floats."""
    from PIL import Image

    h, w = image.shape[:2]
    new_h, new_w, scale = resized_shape(h, w, size)
    if (new_h, new_w) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    return image, scale


def normalise(resized: np.ndarray, size: Size) -> np.ndarray:
    """(h, w, 3) uint8 resized image -> (3, H_in, W_in) float32 model input.

    Normalisation happens before padding so padded pixels are exactly 0 in
    model space (the "mean colour"), matching what HF YOLOS padding produces.
    """
    new_h, new_w = resized.shape[:2]
    normalised = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    out = np.zeros((3, *hw(size)), dtype=np.float32)
    out[:, :new_h, :new_w] = normalised.transpose(2, 0, 1)
    return out


def preprocess_masks(masks: np.ndarray, scale: float, size: Size) -> np.ndarray:
    """(n, H, W) bool -> (n, H_in, W_in) bool, nearest-neighbour, padded with False.

    Sampling at pixel centres (as PIL does) keeps the masks aligned with the
    bilinear-resized image; one fancy-indexing gather resizes all n at once.
    """
    n, h, w = masks.shape
    new_h, new_w, _ = resized_shape(h, w, size)
    rows = np.minimum(((np.arange(new_h) + 0.5) * h / new_h).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(new_w) + 0.5) * w / new_w).astype(np.int64), w - 1)
    out = np.zeros((n, *hw(size)), dtype=bool)
    out[:, :new_h, :new_w] = masks[:, rows[:, None], cols[None, :]]
    return out


def boxes_to_input(boxes_xyxy: np.ndarray, scale: float) -> np.ndarray:
    """Original-pixel xyxy -> model-input-pixel xyxy (padding is bottom/right, so no offset)."""
    return np.asarray(boxes_xyxy, dtype=np.float32) * np.float32(scale)


def boxes_to_original(
    boxes_cxcywh: np.ndarray,
    scale: float,
    size: Size,
    orig_size: tuple[int, int] | None = None,
    frame: str = "input",
) -> np.ndarray:
    """Model boxes (cx, cy, w, h in [0, 1]) -> original-pixel xyxy.

    `frame` "input": fractions of the H x W input (this project's models); "image":
    fractions of the resized image without its padding (DETR / stock HF), which needs
    `orig_size`. With `orig_size` = (H, W) boxes are clipped to the real image, because a
    box reaching into the padding cannot overlap any ground truth there.
    """
    b = np.asarray(boxes_cxcywh, dtype=np.float64)
    half = b[..., 2:] / 2
    xyxy = np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)
    if frame == "image":   # fractions of the resized image are fractions of the original (HF post-processing)
        if orig_size is None:
            raise ValueError("boxes in the image frame need the original image size")
        h, w = orig_size
        xyxy = xyxy * np.array([w, h, w, h])
    elif frame == "input":
        in_h, in_w = hw(size)
        xyxy = xyxy * (np.array([in_w, in_h, in_w, in_h]) / scale)
    else:
        raise ValueError(f"unknown box frame {frame!r}")
    if orig_size is not None:
        h, w = orig_size
        xyxy = np.clip(xyxy, 0, [w, h, w, h])
    return xyxy.astype(np.float32)


def batch(dataset: DetectionDataset, indices: Sequence[int], size: Size) -> tuple[np.ndarray, list[float]]:
    """Stack preprocessed images of `indices` into (B, 3, H_in, W_in) with their scales."""
    arrays, scales = [], []
    for i in indices:
        arr, scale = preprocess(dataset[i].image, size)
        arrays.append(arr)
        scales.append(scale)
    if not arrays:
        return np.zeros((0, 3, *hw(size)), dtype=np.float32), []
    return np.stack(arrays), scales
