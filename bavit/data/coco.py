"""COCO instances-format loader (real COCO and the synthetic set share it)."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .base import DataError, DetectionDataset, Sample, coco_dict, one_line, read_rgb

_REQUIRED_KEYS = ("images", "annotations", "categories")


def _load_instances(ann_file: Path) -> dict:
    """Read and sanity-check the JSON up front so a wrong file fails with its name, not a KeyError later."""
    if not ann_file.is_file():
        raise DataError(f"annotation file not found: {ann_file}")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not a COCO instances file: {ann_file} ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise DataError(f"not a COCO instances file: {ann_file} (top level is not an object)")
    for key in _REQUIRED_KEYS:
        if not isinstance(data.get(key), list):
            raise DataError(f"not a COCO instances file: {ann_file} (missing '{key}')")
    return data


def _has_segmentation(ann: dict) -> bool:
    seg = ann.get("segmentation")
    return bool(seg) and (isinstance(seg, dict) or any(len(p) >= 6 for p in seg))


class CocoDataset(DetectionDataset):
    """Images from `image_dir`, instances from a COCO `instances_*.json`.

    Crowd annotations are kept for evaluation (COCOeval ignores detections on
    them) but left out of `Sample`s, because a crowd region is not one object
    and would teach a wrong box. Annotations with empty boxes are dropped
    everywhere. `max_images` keeps the first images by id, for quick runs.
    """

    def __init__(self, image_dir: Path, ann_file: Path, max_images: int | None = None) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.image_dir.is_dir():
            raise DataError(f"image folder not found: {self.image_dir}")
        data = _load_instances(self.ann_file)
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.categories = [str(c["name"]) for c in cats]
        self.cat_ids = [int(c["id"]) for c in cats]
        self._label_of = {cid: k for k, cid in enumerate(self.cat_ids)}
        self._cat_records = [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]

        images = sorted(data["images"], key=lambda im: im["id"])
        if max_images is not None:
            images = images[:max_images]
        self._images = images
        self._anns: dict[int, list[dict]] = {int(im["id"]): [] for im in images}
        for ann in data["annotations"]:
            if ann.get("category_id") not in self._label_of:
                raise DataError(
                    f"not a COCO instances file: {self.ann_file} "
                    f"(annotation {ann.get('id')} has unknown category_id {ann.get('category_id')})"
                )
            box = ann.get("bbox", (0, 0, 0, 0))
            if (not isinstance(box, (list, tuple)) or len(box) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
                raise DataError(f"not a COCO instances file: {self.ann_file} (annotation {ann.get('id')} has bbox "
                                f"{box!r}: expected four numbers x, y, width, height)")
            x, y, w, h = box
            if w > 0 and h > 0 and ann["image_id"] in self._anns:
                self._anns[ann["image_id"]].append(ann)

        # pycocotools' annToRLE handles polygons, RLE and uncompressed RLE alike.
        self._coco = COCO()
        self._coco.dataset = {"images": images, "annotations": data["annotations"], "categories": cats}
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco.createIndex()

    def __len__(self) -> int:
        return len(self._images)

    def image_ids(self) -> list[int]:
        return [int(im["id"]) for im in self._images]

    def __getitem__(self, i: int) -> Sample:
        info = self._images[self._check_index(i)]
        image = read_rgb(self.image_dir / info["file_name"])
        h, w = image.shape[:2]
        if (h, w) != (info["height"], info["width"]):
            raise DataError(
                f"image size {w}x{h} differs from annotation {info['width']}x{info['height']}: "
                f"{self.image_dir / info['file_name']}"
            )
        anns = [a for a in self._anns[int(info["id"])] if not a.get("iscrowd", 0)]
        crowds = [a for a in self._anns[int(info["id"])] if a.get("iscrowd", 0) and _has_segmentation(a)]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = np.array([self._label_of[a["category_id"]] for a in anns], dtype=np.int64)
        masks = self._masks(anns, h, w) if all(_has_segmentation(a) for a in anns) else None
        crowd = self._masks(crowds, h, w).any(axis=0) if crowds else None
        return Sample(image=image, boxes=boxes, labels=labels, masks=masks, image_id=int(info["id"]),
                      fg_extra=crowd)

    def _masks(self, anns: list[dict], h: int, w: int) -> np.ndarray:
        """Decode all instances of an image in one pycocotools call (polygons, RLE alike).

        pycocotools trips a numpy-2 DeprecationWarning inside its own decoder;
        it is muted here because users cannot act on it.
        """
        if not anns:
            return np.zeros((0, h, w), dtype=bool)
        rles = [self._coco.annToRLE(ann) for ann in anns]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = mask_utils.decode(rles)
        return np.ascontiguousarray(decoded.transpose(2, 0, 1), dtype=bool)

    def coco_gt(self, indices: Sequence[int] | None = None) -> dict:
        chosen = range(len(self)) if indices is None else [self._check_index(i) for i in indices]
        images, anns = [], []
        for i in chosen:
            info = self._images[i]
            images.append({k: info[k] for k in ("id", "width", "height", "file_name")})
            for ann in self._anns[int(info["id"])]:
                anns.append({
                    **ann,
                    "area": float(ann.get("area", ann["bbox"][2] * ann["bbox"][3])),
                    "iscrowd": int(ann.get("iscrowd", 0)),
                })
        return coco_dict(images, anns, list(self._cat_records))


def coco_paths(root: Path, split: str) -> tuple[Path, Path]:
    """Locate images and annotations for `split` under a COCO-style root.

    Accepts our own layout (images/{split}, annotations/instances_{split}.json)
    and the official COCO 2017 one ({split}2017, instances_{split}2017.json);
    when nothing matches, the first candidate is returned so the error names
    the path the user most likely meant.
    """
    image_dirs = [root / "images" / split, root / f"{split}2017", root / "images" / f"{split}2017", root / split]
    ann_files = [root / "annotations" / f"instances_{split}.json", root / "annotations" / f"instances_{split}2017.json"]
    image_dir = next((p for p in image_dirs if p.is_dir()), image_dirs[0])
    ann_file = next((p for p in ann_files if p.is_file()), ann_files[0])
    return image_dir, ann_file
