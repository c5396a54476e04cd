"""Scores any runner (eager model, OpenVINO, TFLite...) on a data split: the split encoded into
a scoring set (bavit.scoring), then scored from the runner's own outputs."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bavit.data import DetectionDataset
from bavit.data.preprocess import hw, resize
from bavit.encode import LabelMode, encode, label_mode_for
from bavit.scoring import SHARD_IMAGES, Runner, ScoringSet, Shard
from bavit.scoring import score as score_set


def encode_split(dataset: DetectionDataset, indices: Sequence[int], size: int | tuple[int, int], patch: int,
                 label_mode: LabelMode | None = None, shard_images: int = SHARD_IMAGES) -> ScoringSet:
    """The samples at `indices` as a scoring set: resized uint8 images, token targets, and
    the ground truth of exactly these images. Masks when the set has them (unless
    `label_mode` says boxes); an image without masks then gets box targets, which are not
    counted (`labelled` False)."""
    mode = label_mode_for(dataset, label_mode)
    h, w = hw(size)
    ids, scales, origs, labelled, shards = [], [], [], [], []
    for start in range(0, len(indices), shard_images):
        part = indices[start:start + shard_images]
        images = np.zeros((len(part), h, w, 3), dtype=np.uint8)
        extents = np.zeros((len(part), 2), dtype=np.int32)
        fgs = []
        for j, i in enumerate(part):
            sample = dataset[i]
            ok = mode != "masks" or sample.masks is not None
            enc = encode(sample, size, patch, mode if ok else "boxes")
            resized, _ = resize(sample.image, size)
            images[j, :resized.shape[0], :resized.shape[1]] = resized
            extents[j] = resized.shape[:2]
            fgs.append(enc.token_fg)
            ids.append(int(enc.image_id))
            scales.append(float(enc.scale))
            origs.append(tuple(int(v) for v in enc.orig_size))
            labelled.append(bool(ok))
        shards.append(Shard(images, extents, np.stack(fgs) if fgs else np.zeros((0, 0), dtype=bool)))
    return ScoringSet((h, w), patch, mode, ids, scales, origs, labelled, list(dataset.cat_ids),
                      dataset.coco_gt(list(indices)), shards)


def score(run: Runner, dataset: DetectionDataset, size: int | tuple[int, int], patch: int, indices: Sequence[int],
          batch: int = 8, label_mode: LabelMode | None = None, pad_batches: bool = True,
          with_map: bool = True, cat_ids: Sequence[int | None] | None = None, box_frame: str = "input") -> dict:
    """`run` scored on the samples at `indices` (bavit.scoring.score)."""
    return score_set(run, encode_split(dataset, indices, size, patch, label_mode), batch, pad_batches, with_map,
                     cat_ids, box_frame)
