"""The accuracy pass on arrays: a split as a model sees it (`ScoringSet`), scored from any
runner's outputs (mAP through faster-coco-eval, BAViT token figures).

A scoring set is encoded once from a data set (bavit.validate.encode_split) and written to a
folder, where a measuring process (this machine's, or a device's from a bundle) reads it with
numpy alone: no data loader, PIL, pycocotools or torch. Images travel resized, in uint8, and
are normalised here by the same function as everywhere else, so a device scores the very
floats this machine would.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from bavit.data.preprocess import hw, normalise
from bavit.evaluate import coco_map, detections_from_outputs
from bavit.labels import token_metrics

SCORING_FORMAT = 1
SHARD_IMAGES = 100     # images per shard file: what a scoring process holds in memory at once
META = "scoring.json"

# (B, 3, H, W) float32 -> (logits (B, D, C+1), boxes (B, D, 4), token_logits (B, N))
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


class ScoringSetError(ValueError):
    """A scoring set folder that cannot be read as written: one line naming the file."""


@dataclass
class Shard:
    images: np.ndarray     # (k, H, W, 3) uint8: image j resized into [:extents[j, 0], :extents[j, 1]], zero beyond
    extents: np.ndarray    # (k, 2) int32: each image's resized height and width
    token_fg: np.ndarray   # (k, N) bool: the BAViT target of each token


@dataclass(frozen=True)
class ShardFile:
    path: Path
    images: int


@dataclass
class ScoringSet:
    size: tuple[int, int]
    patch: int
    label_mode: str                     # "masks" or "boxes": what token_fg was made from
    image_ids: list[int]
    scales: list[float]                 # resize factor of each image (boxes map back through it)
    orig_sizes: list[tuple[int, int]]
    labelled: list[bool]                # False: no masks for this image (it counts for mAP only)
    cat_ids: list[int]                  # data-set category id of each contiguous label
    ground_truth: dict                  # COCO dict of exactly these images
    shards: list[Shard | ShardFile] = field(default_factory=list)   # in memory, or files read one at a time

    def __len__(self) -> int:
        return len(self.image_ids)

    def shard(self, i: int) -> Shard:
        item = self.shards[i]
        return item if isinstance(item, Shard) else _read_shard(item, self)

    def inputs(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(model input (3, H, W) float32, token_fg) of each image, in order."""
        for i in range(len(self.shards)):
            s = self.shard(i)
            for img, (h, w), fg in zip(s.images, s.extents, s.token_fg):
                yield normalise(img[:h, :w], self.size), fg

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for i in range(len(self.shards)):
            s = self.shard(i)
            name = f"shard-{i:03d}.npz"
            np.savez_compressed(folder / name, images=s.images, extents=s.extents, token_fg=s.token_fg)
            names.append({"file": name, "images": int(len(s.images))})
        meta = {"format": SCORING_FORMAT, "size": list(self.size), "patch": self.patch,
                "label_mode": self.label_mode, "image_ids": self.image_ids, "scales": self.scales,
                "orig_sizes": [list(s) for s in self.orig_sizes], "labelled": self.labelled,
                "cat_ids": self.cat_ids, "ground_truth": self.ground_truth, "shards": names}
        (folder / META).write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: str | Path) -> "ScoringSet":
        folder = Path(folder)
        path = folder / META
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise ScoringSetError(f"{path}: missing") from None
        except ValueError:
            raise ScoringSetError(f"{path}: not valid JSON") from None
        if meta.get("format") != SCORING_FORMAT:
            raise ScoringSetError(f"{path}: scoring set format {meta.get('format')!r}, this reader knows "
                                  f"{SCORING_FORMAT}")
        n = len(meta["image_ids"])
        if sum(s["images"] for s in meta["shards"]) != n:
            raise ScoringSetError(f"{path}: its shards hold {sum(s['images'] for s in meta['shards'])} images, "
                                  f"its list {n}")
        out = cls(tuple(meta["size"]), meta["patch"], meta["label_mode"], meta["image_ids"], meta["scales"],
                  [tuple(s) for s in meta["orig_sizes"]], meta["labelled"], meta["cat_ids"], meta["ground_truth"])
        out.shards = [ShardFile(folder / s["file"], s["images"]) for s in meta["shards"]]
        return out


def _read_shard(file: ShardFile, owner: ScoringSet) -> Shard:
    path, want = file.path, file.images
    h, w = hw(owner.size)
    try:
        with np.load(path, allow_pickle=False) as z:
            shard = Shard(z["images"], z["extents"], z["token_fg"])
    except FileNotFoundError:
        raise ScoringSetError(f"{path}: missing") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise ScoringSetError(f"{path}: unreadable shard ({type(err).__name__}: {err})") from None
    k = len(shard.images)
    if (shard.images.dtype != np.uint8 or shard.images.shape[1:] != (h, w, 3) or shard.extents.shape != (k, 2)
            or len(shard.token_fg) != k or k != want):
        raise ScoringSetError(f"{path}: shard holds {k} images of shape {shard.images.shape[1:]}, expected "
                              f"{want} of ({h}, {w}, 3)")
    return shard


def score(run: Runner, sset: ScoringSet, batch: int = 8, pad_batches: bool = True, with_map: bool = True,
          cat_ids: Sequence[int | None] | None = None, box_frame: str = "input") -> dict:
    """Runs `run` over the set in fixed-size batches. Static-shape models need every batch
    full: the last one is padded with copies and the copies' outputs are dropped.
    `cat_ids`: the data-set category of each model class (`evaluate.category_map`); default
    the set's own contiguous labels. Images without masks under mask labels count for mAP but
    not for token figures: `token_images` says how many did."""
    dets: list[dict] = []
    counts = np.zeros(4, dtype=np.int64)  # tp fp fn tn
    token_images = 0
    inputs = sset.inputs()
    n_all = len(sset)
    for start in range(0, n_all, batch):
        chunk = [next(inputs) for _ in range(min(batch, n_all - start))]
        idx = range(start, start + len(chunk))
        labelled = np.array([sset.labelled[i] for i in idx])
        pixels = np.stack([c[0] for c in chunk])
        n = len(chunk)
        if pad_batches and n < batch:
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch - n, axis=0)])
        logits, boxes, token_logits = (np.asarray(a)[:n] for a in run(pixels))
        if with_map:
            dets += detections_from_outputs(logits, boxes, [sset.scales[i] for i in idx],
                                            [sset.image_ids[i] for i in idx], cat_ids or sset.cat_ids, sset.size,
                                            [sset.orig_sizes[i] for i in idx], box_frame=box_frame)
        if labelled.any():
            m = token_metrics((token_logits >= 0)[labelled], np.stack([c[1] for c in chunk])[labelled])
            counts += [m["tp"], m["fp"], m["fn"], m["tn"]]
            token_images += int(labelled.sum())
    tp, fp, fn, tn = counts.tolist()
    result = coco_map(sset.ground_truth, dets) if with_map else {}
    if token_images:
        result.update(token_acc=(tp + tn) / counts.sum(), fg_recall=tp / max(tp + fn, 1),
                      fg_precision=tp / max(tp + fp, 1))
    else:
        result.update(token_acc=None, fg_recall=None, fg_precision=None)
    result.update(images=n_all, token_images=token_images, label_mode=sset.label_mode)
    result["detections"] = dets
    return result
