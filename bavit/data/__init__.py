"""Data sets behind one spec string, so every CLI accepts the same `--data` values."""

from __future__ import annotations

from pathlib import Path

from .base import DataError, DetectionDataset, Sample
from .coco import CocoDataset, coco_paths
from .synthetic import make_synthetic, synthetic_dataset
from .voc import VocDataset

__all__ = [
    "CocoDataset",
    "DataError",
    "DetectionDataset",
    "Sample",
    "VocDataset",
    "has_split",
    "load_dataset",
    "make_synthetic",
    "synthetic_dataset",
]


def has_split(spec: str, split: str) -> bool:
    """Whether `split` exists, from its files alone (opening COCO train parses ~450 MB)."""
    kind, _, path = spec.partition(":")
    if kind == "synthetic":
        return True
    root = Path(path).expanduser()
    if kind == "voc":
        return any((root / "ImageSets" / sub / f"{split}.txt").is_file() for sub in ("Main", "Segmentation"))
    image_dir, ann_file = coco_paths(root, split)
    return image_dir.is_dir() and ann_file.is_file()


def load_dataset(spec: str, split: str = "val", size: int = 64, n_images: int | None = None) -> DetectionDataset:
    """Open `synthetic`, `coco:PATH` or `voc:PATH`.

    `size` only matters for the synthetic set (it is the generated image
    side); for real sets `n_images` keeps the first images, for quick runs.
    """
    kind, sep, path = spec.partition(":")
    if kind == "synthetic" and not sep:
        return synthetic_dataset(split=split, size=size, n_images=n_images)
    if kind in ("coco", "voc") and sep:
        if not path:
            raise DataError(f"data spec '{spec}' needs a path after '{kind}:'")
        root = Path(path).expanduser()
        if kind == "voc":
            return VocDataset(root, split, max_images=n_images)
        image_dir, ann_file = coco_paths(root, split)
        return CocoDataset(image_dir, ann_file, max_images=n_images)
    raise DataError(f"unknown data spec '{spec}' (expected synthetic, coco:PATH or voc:PATH)")
