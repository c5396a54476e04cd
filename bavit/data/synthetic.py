"""Deterministic synthetic detection set written as a real COCO folder.

Writing actual PNG + instances JSON (instead of generating in memory) means
the synthetic set exercises exactly the same loader, evaluator and CLI paths
as real COCO, and can be inspected with standard COCO tools.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from .coco import CocoDataset

CATEGORIES = ("circle", "square", "triangle", "star")
GENERATOR_VERSION = 1  # bump when the drawing changes so stale caches are not reused
MIN_VISIBLE = 0.3  # an instance hidden beyond this is unlabelled: nobody could localise it
DEFAULT_N = {"train": 20000, "val": 500}


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _pattern(rng: np.random.Generator, size: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The [y0:y1, x0:x1] window of a random (size, size) field in [0, 1].

    Stripes, gradient or smooth noise, used both for backgrounds and object
    fills so colour alone never tells an object from the background. Only the
    window is computed because objects are small and this is the hot loop.
    """
    yy = ((np.arange(y0, y1, dtype=np.float32) + 0.5) / size)[:, None]
    xx = ((np.arange(x0, x1, dtype=np.float32) + 0.5) / size)[None, :]
    kind = rng.integers(3)
    if kind == 0:
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(2.0, 8.0)
        phase = rng.uniform(0, 2 * np.pi)
        return 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    if kind == 1:
        theta = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.cos(theta) + yy * np.sin(theta)
        return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    cells = int(rng.integers(2, 7))
    low = Image.fromarray(rng.integers(0, 256, (cells, cells), dtype=np.uint8))
    return np.asarray(low.resize((x1 - x0, y1 - y0), Image.BILINEAR), dtype=np.float32) / 255.0


def _paint(rng: np.random.Generator, size: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Two random colours blended by a random pattern, (y1-y0, x1-x0, 3) uint8."""
    c0, c1 = _colour(rng), _colour(rng)
    t = _pattern(rng, size, y0, y1, x0, x1)[..., None]
    return (c0 + t * (c1 - c0)).astype(np.uint8)


def _shape_mask(kind: int, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """Rasterise one shape with PIL (C speed); r is the circumradius."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        if kind == 3:  # five-pointed star: alternate outer and inner radius
            n, radii = 10, np.tile([r, 0.45 * r], 5)
        else:
            n = 4 if kind == 1 else 3
            radii = np.full(n, r)
        a = angle + 2 * np.pi * np.arange(n) / n
        pts = list(zip((cx + radii * np.cos(a)).tolist(), (cy + radii * np.sin(a)).tolist()))
        draw.polygon(pts, fill=1)
    return np.asarray(canvas, dtype=bool)


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image; return it and (class, visible mask) for each labelled instance.

    Later objects paint over earlier ones, so the visible mask of an object is
    its full mask minus everything drawn after it. There is no per-pixel
    noise: it would make PNGs incompressible (GBs for the train cache) and
    slow to write, while the textures already keep the background non-flat.
    """
    image = _paint(rng, size, 0, size, 0, size)
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(1, 7))):
        kind = int(rng.integers(len(CATEGORIES)))
        r = rng.uniform(0.08, 0.25) * size
        cx, cy = rng.uniform(r, size - r, 2)
        mask = _shape_mask(kind, float(cx), float(cy), float(r), float(rng.uniform(0, 2 * np.pi)), size)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        window = image[y0:y1, x0:x1]
        local = mask[y0:y1, x0:x1]
        window[local] = _paint(rng, size, y0, y1, x0, x1)[local]
        objects.append((kind, mask))

    labelled = []
    covered = np.zeros((size, size), dtype=bool)
    for kind, full in reversed(objects):
        visible = full & ~covered
        covered |= full
        if visible.sum() >= MIN_VISIBLE * full.sum():
            labelled.append((kind, visible))
    return image, labelled[::-1]


def _annotation(mask: np.ndarray, kind: int, image_id: int, ann_id: int) -> dict:
    """COCO annotation whose box and area come from the visible mask (pixel-edge xywh)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    w, h = int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": kind + 1,
        "bbox": [x0, y0, w, h],
        "area": int(mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
    }


def split_seed(seed: int, split: str) -> list[int]:
    """Seed material for a split: different splits never share images for the same seed."""
    return [int(seed), zlib.crc32(split.encode("utf-8"))]


def make_synthetic(out_dir: Path, n_images: int, size: int, seed: int, split: str) -> Path:
    """Write `n_images` images and their COCO instances JSON under `out_dir`; return `out_dir`.

    Each image has its own RNG stream keyed by (seed, split, index), so the
    output is byte-identical for the same arguments and any prefix of a
    larger set equals the smaller set.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images" / split
    ann_dir = out_dir / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    base = split_seed(seed, split)
    images, annotations = [], []
    for i in range(n_images):
        rng = np.random.default_rng(base + [i])
        image, objects = render_image(rng, size)
        image_id, file_name = i + 1, f"{i + 1:06d}.png"
        Image.fromarray(image).save(image_dir / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for kind, mask in objects:
            annotations.append(_annotation(mask, kind, image_id, len(annotations) + 1))
    data = {
        "info": {"description": f"bavit synthetic v{GENERATOR_VERSION}", "seed": seed, "split": split},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CATEGORIES)],
    }
    (ann_dir / f"instances_{split}.json").write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    return out_dir


def cache_root() -> Path:
    """Where generated sets live: $BAVIT_CACHE, else ~/.cache/bavit_bench."""
    env = os.environ.get("BAVIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bavit_bench"


def synthetic_dataset(
    split: str = "val",
    size: int = 64,
    n_images: int | None = None,
    seed: int = 0,
    root: Path | None = None,
) -> CocoDataset:
    """Generate the set once into the cache and load it with the COCO loader.

    Generation happens in a private temp folder that is renamed into place,
    so concurrent processes either see a complete set or none; the loser of
    a race simply discards its copy.
    """
    n = DEFAULT_N.get(split, DEFAULT_N["val"]) if n_images is None else int(n_images)
    root = Path(root) if root is not None else cache_root()
    final = root / f"synthetic-v{GENERATOR_VERSION}-s{size}-n{n}-seed{seed}-{split}"
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        tmp.chmod(0o755)  # mkdtemp's 0700 would survive the rename and hide a shared cache
        try:
            make_synthetic(tmp, n, size, seed, split)
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return CocoDataset(final / "images" / split, final / "annotations" / f"instances_{split}.json")
