"""Common data-set contract shared by the synthetic, COCO and VOC loaders.

Everything downstream (token labels, preprocessing, mAP) only relies on this
module, so a new data source is usable once it yields `Sample`s and can
describe its ground truth as a COCO dict.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Bad input data or option.

    The message is a single line naming the file or option at fault, so CLIs
    can print it verbatim instead of a traceback.
    """


@dataclass
class Sample:
    """One image with its instances, all in original-image pixel coordinates.

    Keeping original coordinates here (and resizing only in `preprocess`)
    means evaluation can compare against the untouched ground truth.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (n, 4) float32 xyxy
    labels: np.ndarray  # (n,) int64 contiguous class index
    masks: np.ndarray | None  # (n, H, W) bool visible instance masks
    image_id: int
    # (H, W) bool pixels that are foreground for BAViT but no detection target: COCO crowd
    # regions (COCOeval ignores detections there), VOC's void band around objects
    fg_extra: np.ndarray | None = None


class DetectionDataset(ABC):
    """Indexable detection data set with a COCO view of its ground truth.

    `categories[k]` / `cat_ids[k]` give the name / COCO category id of the
    contiguous label k, which is what models predict; `cat_ids` maps
    predictions back to ids that the COCO evaluators understand.
    """

    categories: list[str]
    cat_ids: list[int]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, i: int) -> Sample: ...

    @abstractmethod
    def image_ids(self) -> list[int]: ...

    @abstractmethod
    def coco_gt(self, indices: Sequence[int] | None = None) -> dict:
        """COCO-format ground truth for the chosen samples (all when None)."""

    def _check_index(self, i: int) -> int:
        """Normalise negative indices and raise IndexError so `for s in ds` stops."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        return i % n


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8, turning IO/decoder failures into DataError."""
    from PIL import Image

    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except OSError as exc:
        raise DataError(f"cannot read image: {path} ({one_line(exc)})") from None


def one_line(exc: BaseException | str) -> str:
    """Collapse a message to one line so DataError keeps its single-line promise."""
    return " ".join(str(exc).split())


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """COCO stores boxes as x, y, width, height; models and masks use corners."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_dict(images: list[dict], annotations: list[dict], categories: list[dict]) -> dict:
    """Assemble a COCO gt dict that both pycocotools and faster-coco-eval accept.

    Annotation ids are renumbered from 1 because pycocotools treats a matched
    ground-truth id of 0 as "unmatched" and would silently lose that match;
    'info' is present because some pycocotools versions read it in loadRes.
    """
    anns = [{**ann, "id": k} for k, ann in enumerate(annotations, start=1)]
    return {
        "info": {"description": "bavit ground truth"},
        "images": images,
        "annotations": anns,
        "categories": categories,
    }
