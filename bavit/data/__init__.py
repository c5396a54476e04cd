"""Data sets behind one spec string, so every CLI accepts the same `--data` values:

- `synthetic`: the built-in generated set;
- `coco:ROOT`: a COCO-style folder (images/{split} + annotations/instances_{split}.json, or the
  official {split}2017 layout), one split per file pair;
- `coco:ANNOTATIONS.json,IMAGE_DIR`: any COCO instances export (CVAT, Label Studio, Roboflow).
  It is one set: it serves whichever split is asked and has no other split;
- `voc:ROOT`: a VOC-layout folder (Pascal's 20 classes, or its own: see `VocDataset`);
- `yolo:PATH/data.yaml`: the Ultralytics YOLO detection layout (`bavit.data.yolo`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from .base import DataError, DetectionDataset, Sample

# The loaders (PIL, pycocotools, yaml) are imported on first use: the measuring side scores
# preprocessed arrays with bavit.data.preprocess and bavit.evaluate alone, on a device where
# none of them is installed.
_LOADERS = {"CocoDataset": ".coco", "coco_paths": ".coco", "make_synthetic": ".synthetic",
            "synthetic_dataset": ".synthetic", "VocDataset": ".voc", "YoloDataset": ".yolo"}


def __getattr__(name: str):
    if name in _LOADERS:
        return getattr(importlib.import_module(_LOADERS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CocoDataset",
    "DataError",
    "DataSpec",
    "DetectionDataset",
    "Sample",
    "VocDataset",
    "YoloDataset",
    "annotation_files",
    "has_split",
    "load_dataset",
    "make_synthetic",
    "parse_data",
    "synthetic_dataset",
]

FORMS = "synthetic, coco:ROOT, coco:ANNOTATIONS.json,IMAGE_DIR, voc:ROOT or yolo:PATH/data.yaml"


@dataclass(frozen=True)
class DataSpec:
    """A parsed `--data` value. `path` is the root folder, the data.yaml, or (for an explicit
    COCO pair) the annotation file, whose images are in `images`."""
    kind: str
    path: Path | None = None
    images: Path | None = None

    @property
    def one_set(self) -> bool:
        """An explicit COCO pair is a single set of images, whatever split is asked."""
        return self.images is not None


def parse_data(spec: str) -> DataSpec:
    """The spec's form and paths, checked to exist; one-line DataError naming what is wrong."""
    kind, sep, rest = spec.partition(":")
    if kind == "synthetic" and not sep:
        return DataSpec("synthetic")
    if kind not in ("coco", "voc", "yolo") or not sep:
        raise DataError(f"unknown data spec '{spec}' (expected {FORMS})")
    if not rest:
        raise DataError(f"data spec '{spec}' needs a path after '{kind}:'")
    if kind == "coco" and "," in rest:
        ann, _, images = rest.partition(",")
        parsed = DataSpec("coco", Path(ann).expanduser(), Path(images).expanduser())
        if not ann.endswith(".json") or not images:
            raise DataError(f"data spec '{spec}': expected coco:ANNOTATIONS.json,IMAGE_DIR")
        for p, what in ((parsed.path, "annotation file"), (parsed.images, "image folder")):
            if not p.exists():
                raise DataError(f"{what} not found: {p}")
        return parsed
    parsed = DataSpec(kind, Path(rest).expanduser())
    if kind == "yolo" and parsed.path.suffix not in (".yaml", ".yml"):
        raise DataError(f"data spec '{spec}': expected yolo:PATH/data.yaml")
    if not parsed.path.exists():
        raise DataError(f"{'YOLO data file' if kind == 'yolo' else f'{kind.upper()} root'} not found: {parsed.path}")
    return parsed


def has_split(spec: str, split: str) -> bool:
    """Whether `split` is a set of images of its own, from its files alone (opening COCO
    train parses ~450 MB). An explicit COCO pair has no split besides the one it serves."""
    data = parse_data(spec)
    if data.kind == "synthetic":
        return True
    if data.one_set:
        return False
    if data.kind == "voc":
        return any((data.path / "ImageSets" / sub / f"{split}.txt").is_file() for sub in ("Main", "Segmentation"))
    if data.kind == "yolo":
        from .yolo import image_files, read_yaml
        try:
            return bool(image_files(read_yaml(data.path), data.path, split))
        except DataError:   # a split the yaml names but whose folder is missing: not a split
            return False
    from .coco import coco_paths
    image_dir, ann_file = coco_paths(data.path, split)
    return image_dir.is_dir() and ann_file.is_file()


def annotation_files(spec: str) -> list[Path]:
    """The files that define a folder data set's ground truth (its identity for the
    accuracy cache); images are left out, as reading them would cost a pass over the data."""
    data = parse_data(spec)
    if data.kind == "synthetic":
        return []
    if data.one_set:
        return [data.path]
    if data.kind == "yolo":
        from .yolo import image_files, label_file, read_yaml
        meta = read_yaml(data.path)
        images = set()
        for split in ("train", "val", "test"):
            try:
                images |= set(image_files(meta, data.path, split))
            except DataError:
                pass
        # an image without a label file is an image without objects: the images are part of
        # the ground truth too
        labels = {label_file(f) for f in images}
        return [data.path, *sorted(images), *sorted(p for p in labels if p.is_file())]
    files = sorted(p for p in data.path.rglob("*") if p.suffix in (".json", ".xml", ".txt", ".yaml", ".png")
                   and p.is_file())
    if data.kind == "voc":   # a class list beside the folder names the classes too
        from .voc import CLASS_FILES
        files += [data.path.parent / n for n in CLASS_FILES if (data.path.parent / n).is_file()]
    return files


def load_dataset(spec: str, split: str = "val", size: int | tuple[int, int] = 64,
                 n_images: int | None = None) -> DetectionDataset:
    """Open the data set `spec` names (module docstring) at `split`.

    `size` (the model input, N or (H, W)) only matters for the synthetic set: its square
    images are generated at the input's longer side. For real sets `n_images` keeps the
    first images, for quick runs.
    """
    from .coco import CocoDataset, coco_paths
    from .synthetic import synthetic_dataset
    from .voc import VocDataset
    from .yolo import YoloDataset

    data = parse_data(spec)
    if data.kind == "synthetic":
        side = size if isinstance(size, int) else max(size)
        return synthetic_dataset(split=split, size=int(side), n_images=n_images)
    if data.kind == "voc":
        return VocDataset(data.path, split, max_images=n_images)
    if data.kind == "yolo":
        return YoloDataset(data.path, split, max_images=n_images)
    if data.one_set:
        return CocoDataset(data.images, data.path, max_images=n_images)
    image_dir, ann_file = coco_paths(data.path, split)
    return CocoDataset(image_dir, ann_file, max_images=n_images)
