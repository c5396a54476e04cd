"""Pascal VOC loader (boxes from XML, instance masks from SegmentationObject)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .base import DataError, DetectionDataset, Sample, coco_dict, one_line, read_rgb, xyxy_to_xywh

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
_IGNORE = 255  # VOC marks object boundaries / "void" with 255 in segmentation PNGs


@dataclass
class _Record:
    """Parsed XML for one image; boxes already converted to 0-based pixel edges."""

    name: str
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) float32 xyxy
    labels: np.ndarray  # (n,) int64
    difficult: np.ndarray  # (n,) bool


def _text(node: ET.Element, tag: str, xml_path: Path) -> str:
    found = node.find(tag)
    if found is None or found.text is None:
        raise DataError(f"VOC annotation lacks <{tag}>: {xml_path}")
    return found.text.strip()


CLASS_FILES = ("labels.txt", "classes.txt")   # LabelImg's and most exporters' class lists
_BACKGROUND = ("background", "__background__", "_background_")


def _object_names(xml_path: Path) -> list[str]:
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"not a VOC annotation file: {xml_path} ({one_line(exc)})") from None
    return [_text(obj, "name", xml_path) for obj in root.iter("object")]


def voc_classes(root: Path) -> tuple[list[str], str]:
    """The class list of a VOC-layout folder, and where it came from: a `labels.txt` /
    `classes.txt` in the folder or beside it (one name per line; a leading background entry,
    index 0 of segmentation PNGs, is dropped); else Pascal's 20 when every annotated name is
    one of them; else the names found in all of Annotations/ (every split, so train and val
    agree), sorted."""
    for folder in (root, root.parent):
        for name in CLASS_FILES:
            path = folder / name
            if path.is_file():
                names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
                if names and names[0].lower() in _BACKGROUND:
                    names = names[1:]
                if not names or len(set(names)) != len(names):
                    raise DataError(f"class list {path} is empty or names a class twice")
                return names, str(path)
    found = sorted({n for xml in (root / "Annotations").glob("*.xml") for n in _object_names(xml)})
    if set(found) <= set(VOC_CLASSES):
        return list(VOC_CLASSES), "Pascal VOC's 20 classes"
    return found, f"the {len(found)} names in {root / 'Annotations'}, sorted"


def _parse_xml(xml_path: Path, name: str, classes: Sequence[str], source: str) -> _Record:
    """Read one VOC XML.

    VOC boxes are 1-based with inclusive corners, so pixel columns xmin..xmax
    span the continuous interval [xmin - 1, xmax); that is the xyxy we keep,
    which makes width = xmax - xmin + 1 as in the VOC devkit.
    """
    if not xml_path.is_file():
        raise DataError(f"annotation file not found: {xml_path}")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"not a VOC annotation file: {xml_path} ({one_line(exc)})") from None
    size = root.find("size")
    width = int(float(_text(size, "width", xml_path))) if size is not None else 0
    height = int(float(_text(size, "height", xml_path))) if size is not None else 0
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        cls = _text(obj, "name", xml_path)
        if cls not in classes:
            raise DataError(f"class '{cls}' in {xml_path} is not in the class list ({source})")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"VOC annotation lacks <bndbox>: {xml_path}")
        x0, y0, x1, y1 = (float(_text(bnd, t, xml_path)) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x0 - 1, y0 - 1, x1, y1])
        labels.append(classes.index(cls))
        diff = obj.find("difficult")
        difficult.append(diff is not None and (diff.text or "0").strip() == "1")
    return _Record(
        name=name,
        width=width,
        height=height,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(labels, dtype=np.int64),
        difficult=np.array(difficult, dtype=bool),
    )


def _image_ids(names: list[str]) -> list[int]:
    """Numeric ids from VOC names ('2008_000123' -> 2008000123) so ids stay stable across
    subsets; positional ids when names are not numeric or would collide."""
    digits = [n.replace("_", "") for n in names]
    if all(d.isdigit() for d in digits):
        ids = [int(d) for d in digits]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(1, len(names) + 1))


def _read_index_png(path: Path) -> np.ndarray:
    """Palette PNG -> per-pixel palette index (not RGB), which is what VOC stores."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(f"segmentation PNG is not palette/greyscale ({im.mode}): {path}")
            return np.asarray(im, dtype=np.uint8).copy()
    except OSError as exc:
        raise DataError(f"cannot read image: {path} ({one_line(exc)})") from None


class VocDataset(DetectionDataset):
    """Pascal VOC split under `root` (the VOC2007/VOC2012 folder).

    Images listed in ImageSets/Main/{split}.txt (or ImageSets/Segmentation/
    when Main is absent). Instance masks come from SegmentationObject, whose
    k-th instance index belongs to the k-th XML object; SegmentationClass,
    when present, is used to check that pairing. Images without a
    SegmentationObject PNG have `masks=None`. "difficult" objects are real
    objects, so they stay in `Sample`s, but `coco_gt` marks them iscrowd=1:
    the closest COCOeval analogue of VOC's "neither reward nor penalise".

    The classes are the folder's own (`voc_classes`): LabelImg, CVAT and most VOC-XML
    exports are not Pascal's 20. `classes_source` says where the list came from.
    """

    def __init__(self, root: Path, split: str, max_images: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"VOC root not found: {self.root}")
        self.image_dir = self.root / "JPEGImages"
        if not self.image_dir.is_dir():
            raise DataError(f"image folder not found: {self.image_dir}")
        split_files = [self.root / "ImageSets" / sub / f"{split}.txt" for sub in ("Main", "Segmentation")]
        split_file = next((p for p in split_files if p.is_file()), None)
        if split_file is None:
            raise DataError(f"split file not found: {split_files[0]}")
        names = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        if max_images is not None:
            names = names[:max_images]
        classes, self.classes_source = voc_classes(self.root)
        self.categories = list(classes)
        self.cat_ids = list(range(1, len(classes) + 1))
        self._records = [_parse_xml(self.root / "Annotations" / f"{n}.xml", n, classes, self.classes_source)
                         for n in names]
        self._ids = _image_ids(names)

    def __len__(self) -> int:
        return len(self._records)

    def image_ids(self) -> list[int]:
        return list(self._ids)

    def __getitem__(self, i: int) -> Sample:
        i = self._check_index(i)
        rec = self._records[i]
        image = read_rgb(self.image_dir / f"{rec.name}.jpg")
        inst = self._instances(rec, image.shape[:2])
        return Sample(
            image=image,
            boxes=rec.boxes.copy(),
            labels=rec.labels.copy(),
            masks=None if inst is None else self._masks(rec, inst, self._instance_path(rec)),
            image_id=self._ids[i],
            fg_extra=None if inst is None else inst == _IGNORE,  # the void band around objects
        )

    def _instance_path(self, rec: _Record) -> Path:
        return self.root / "SegmentationObject" / f"{rec.name}.png"

    def _instances(self, rec: _Record, shape: tuple[int, ...]) -> np.ndarray | None:
        obj_path = self._instance_path(rec)
        if not obj_path.is_file():
            return None
        inst = _read_index_png(obj_path)
        if inst.shape != shape:
            raise DataError(f"segmentation size {inst.shape} differs from image {shape}: {obj_path}")
        return inst

    def _masks(self, rec: _Record, inst: np.ndarray, obj_path: Path) -> np.ndarray:
        present = set(np.unique(inst).tolist()) - {0, _IGNORE}
        if present and max(present) > len(rec.labels):
            raise DataError(f"instance index {max(present)} but {len(rec.labels)} XML objects: {obj_path}")
        masks = inst[None] == np.arange(1, len(rec.labels) + 1, dtype=np.uint8)[:, None, None]
        cls_path = self.root / "SegmentationClass" / f"{rec.name}.png"
        if cls_path.is_file():
            self._check_classes(masks, rec, _read_index_png(cls_path), cls_path)
        return masks

    @staticmethod
    def _check_classes(masks: np.ndarray, rec: _Record, cls_map: np.ndarray, cls_path: Path) -> None:
        """Refuse a mis-paired instance PNG rather than train on masks of the wrong object."""
        for k, mask in enumerate(masks):
            values = cls_map[mask]
            if values.size and np.bincount(values, minlength=256).argmax() != rec.labels[k] + 1:
                raise DataError(f"instance {k + 1} class disagrees with XML object {k + 1}: {cls_path}")

    def _size(self, rec: _Record) -> tuple[int, int]:
        """(width, height) from the XML; the image header only when the XML has none."""
        if rec.width > 0 and rec.height > 0:
            return rec.width, rec.height
        path = self.image_dir / f"{rec.name}.jpg"
        try:
            with Image.open(path) as im:
                return im.size
        except OSError as exc:
            raise DataError(f"cannot read image: {path} ({one_line(exc)})") from None

    def coco_gt(self, indices: Sequence[int] | None = None) -> dict:
        chosen = range(len(self)) if indices is None else [self._check_index(i) for i in indices]
        images, anns = [], []
        for i in chosen:
            rec = self._records[i]
            width, height = self._size(rec)
            images.append({"id": self._ids[i], "width": width, "height": height, "file_name": f"{rec.name}.jpg"})
            for box, label, diff in zip(xyxy_to_xywh(rec.boxes), rec.labels, rec.difficult):
                anns.append({
                    "image_id": self._ids[i],
                    "category_id": self.cat_ids[int(label)],
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(diff),
                })
        categories = [{"id": cid, "name": name} for cid, name in zip(self.cat_ids, self.categories)]
        return coco_dict(images, anns, categories)
