"""Ultralytics YOLO detection layout: a `data.yaml` naming image folders (or image lists) per
split, and beside each `images/` folder a `labels/` folder with one `.txt` per image.

What this reads, as Ultralytics does (`ultralytics/data/utils.py`: `img2label_paths`,
`check_det_dataset`, `verify_image_label`):
- `path` is the data set root; relative to the yaml's folder when relative, the yaml's folder
  when absent. `train` / `val` / `test` are a folder, a `.txt` list of images (lines starting
  `./` are relative to the list's folder, other relative lines to the root), or a list of those.
  Roboflow exports put data.yaml at the root and name `../valid/images`: an entry starting
  `../` that does not exist is taken from the root instead (`valid/images`), as Ultralytics'
  `check_det_dataset` does.
- `names` is a list or an {index: name} mapping; `nc`, when given, must agree with it.
- The label of `.../images/a/b.jpg` is `.../labels/a/b.txt` (the last `images` folder swapped);
  a missing label file is an image without objects, as Ultralytics treats it.
- A label line is `class cx cy w h` (normalised to the image), or `class x1 y1 ... xn yn`: a
  polygon of at least 3 points, whose bounds are the box and whose fill is the instance mask,
  so token labels come from masks when every object of the image has its polygon.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .base import DataError, DetectionDataset, Sample, coco_dict, one_line, read_rgb, xyxy_to_xywh

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLIT_KEYS = {"train": "train", "val": "val", "test": "test"}


def read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise DataError(f"YOLO data file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"not a YOLO data file: {path} ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise DataError(f"not a YOLO data file: {path} (top level is not a mapping)")
    return data


def class_names(data: dict, path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"not a YOLO data file: {path} ('names' keys must be class indices)") from None
        if keys != list(range(len(keys))):
            raise DataError(f"not a YOLO data file: {path} ('names' indices must be 0..{len(keys) - 1})")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise DataError(f"not a YOLO data file: {path} (missing 'names')")
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"not a YOLO data file: {path} (nc {data['nc']} but {len(names)} names)")
    return [str(n) for n in names]


def data_root(data: dict, path: Path) -> Path:
    root = Path(str(data["path"])).expanduser() if data.get("path") else path.parent
    return root if root.is_absolute() else (path.parent / root).resolve()


def split_entries(data: dict, split: str) -> list[str]:
    entry = data.get(SPLIT_KEYS.get(split, split))
    if entry is None:
        return []
    return [str(e) for e in entry] if isinstance(entry, list) else [str(entry)]


def image_files(data: dict, path: Path, split: str) -> list[Path]:
    """Every image of `split`, sorted (the order, and so the image ids, never depend on the
    file system's listing order)."""
    root = data_root(data, path)
    files: list[Path] = []
    for entry in split_entries(data, split):
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else (root / p)
        if not p.exists() and entry.startswith("../") and (root / entry[3:]).exists():
            p = root / entry[3:]   # Roboflow's layout (module docstring)
        if p.is_dir():
            files += [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    f = Path(line)
                    f = p.parent / line[2:] if line.startswith("./") else (f if f.is_absolute() else root / f)
                    files.append(f)
        else:
            raise DataError(f"{path}: '{split}: {entry}' is neither an image folder nor a .txt list ({p} not found)")
    return sorted(set(files))


def label_file(image: Path) -> Path:
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")   # images and labels side by side
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


@dataclass
class _Objects:
    labels: np.ndarray                  # (n,) int64
    boxes: np.ndarray                   # (n, 4) float32 normalised xyxy
    polygons: list[np.ndarray | None]   # normalised (k, 2) per object, None for box lines


def parse_labels(path: Path, num_classes: int) -> _Objects:
    labels, boxes, polygons = [], [], []
    if path.is_file():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}:{n}"
            try:
                cls, values = int(parts[0]), np.array([float(v) for v in parts[1:]], dtype=np.float64)
            except ValueError:
                raise DataError(f"not a YOLO label line: {where} ({line.strip()[:60]!r})") from None
            if not 0 <= cls < num_classes:
                raise DataError(f"class {cls} outside the {num_classes} names of data.yaml: {where}")
            if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 1.0 + 1e-6:
                raise DataError(f"YOLO coordinates must be normalised to [0, 1]: {where}")
            if len(values) == 4:
                cx, cy, w, h = values
                box, poly = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], None
            elif len(values) >= 6 and len(values) % 2 == 0:
                poly = values.reshape(-1, 2)
                box = [*poly.min(axis=0), *poly.max(axis=0)]
            else:
                raise DataError(f"a YOLO label line has 5 values (box) or 1 + 2k, k >= 3 (polygon); "
                                f"got {len(parts)}: {where}")
            labels.append(cls)
            boxes.append(np.clip(box, 0.0, 1.0))
            polygons.append(poly)
    return _Objects(np.array(labels, dtype=np.int64), np.array(boxes, dtype=np.float32).reshape(-1, 4), polygons)


class YoloDataset(DetectionDataset):
    """One split of an Ultralytics-layout data set (module docstring). Category k is
    `names[k]` with COCO id k + 1; image ids are 1..N in sorted path order."""

    def __init__(self, yaml_path: Path, split: str, max_images: int | None = None) -> None:
        self.yaml_path = Path(yaml_path)
        data = read_yaml(self.yaml_path)
        self.categories = class_names(data, self.yaml_path)
        self.cat_ids = list(range(1, len(self.categories) + 1))
        self._files = image_files(data, self.yaml_path, split)
        if not self._files:
            raise DataError(f"{self.yaml_path}: no images in split '{split}'")
        if max_images is not None:
            self._files = self._files[:max_images]
        self._objects = [parse_labels(label_file(f), len(self.categories)) for f in self._files]
        # masks exist when the labels are polygons; an image without objects then has an empty
        # stack, and in a box-only set none (so the label mode is decided by the set, not by
        # whether its first image happens to be empty)
        self.has_polygons = any(p is not None for o in self._objects for p in o.polygons)
        self._sizes: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._files)

    def image_ids(self) -> list[int]:
        return list(range(1, len(self._files) + 1))

    def label_files(self) -> list[Path]:
        return [label_file(f) for f in self._files]

    def _size(self, i: int) -> tuple[int, int]:
        """(width, height) from the image header, which mAP needs without decoding pixels."""
        if i not in self._sizes:
            try:
                with Image.open(self._files[i]) as im:
                    self._sizes[i] = im.size
            except OSError as exc:
                raise DataError(f"cannot read image: {self._files[i]} ({one_line(exc)})") from None
        return self._sizes[i]

    def _pixel_boxes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        w, h = self._size(i)
        boxes = self._objects[i].boxes * np.array([w, h, w, h], dtype=np.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])   # empty boxes dropped, as COCO's
        return boxes, keep

    def __getitem__(self, i: int) -> Sample:
        i = self._check_index(i)
        image = read_rgb(self._files[i])
        h, w = image.shape[:2]
        self._sizes[i] = (w, h)
        boxes, keep = self._pixel_boxes(i)
        objs = self._objects[i]
        polys = [p for p, k in zip(objs.polygons, keep) if k]
        masks = None
        if self.has_polygons and all(p is not None for p in polys):
            masks = np.zeros((0, h, w), dtype=bool)
            if polys:
                rles = mask_utils.frPyObjects([(p * [w, h]).ravel().tolist() for p in polys], h, w)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    masks = np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1), dtype=bool)
        return Sample(image=image, boxes=boxes[keep], labels=objs.labels[keep], masks=masks, image_id=i + 1)

    def coco_gt(self, indices: Sequence[int] | None = None) -> dict:
        chosen = range(len(self)) if indices is None else [self._check_index(i) for i in indices]
        images, anns = [], []
        for i in chosen:
            w, h = self._size(i)
            images.append({"id": i + 1, "width": w, "height": h, "file_name": self._files[i].name})
            boxes, keep = self._pixel_boxes(i)
            for box, label in zip(xyxy_to_xywh(boxes[keep]), self._objects[i].labels[keep]):
                anns.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": [float(v) for v in box],
                             "area": float(box[2] * box[3]), "iscrowd": 0})
        categories = [{"id": cid, "name": name} for cid, name in zip(self.cat_ids, self.categories)]
        return coco_dict(images, anns, categories)
