"""Scores any runner (eager model, OpenVINO, TFLite...) on a data split: mAP through
faster-coco-eval and BAViT token accuracy, from the runner's own outputs."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from bavit.data import DetectionDataset
from bavit.encode import LabelMode, encode, label_mode_for
from bavit.evaluate import coco_map, detections_from_outputs
from bavit.labels import token_metrics

# (B, 3, S, S) float32 -> (logits (B, D, C+1), boxes (B, D, 4), token_logits (B, N))
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def score(run: Runner, dataset: DetectionDataset, size: int, patch: int, indices: Sequence[int],
          batch: int = 8, label_mode: LabelMode | None = None, pad_batches: bool = True,
          with_map: bool = True, cat_ids: Sequence[int | None] | None = None, box_frame: str = "input") -> dict:
    """Runs `run` over the samples in fixed-size batches. Static-shape models need every
    batch full: the last one is padded with copies and the copies' outputs are dropped.
    `cat_ids`: the data-set category of each model class (`evaluate.category_map`);
    default the data set's own contiguous labels. With mask labels, images without masks
    (most of VOC's Main lists) count for mAP but not for token figures: `token_images`
    says how many did."""
    mode = label_mode_for(dataset, label_mode)
    dets: list[dict] = []
    counts = np.zeros(4, dtype=np.int64)  # tp fp fn tn
    token_images = 0
    for start in range(0, len(indices), batch):
        samples = [dataset[i] for i in indices[start:start + batch]]
        labelled = np.array([mode != "masks" or s.masks is not None for s in samples])
        chunk = [encode(s, size, patch, mode if ok else "boxes") for s, ok in zip(samples, labelled)]
        pixels = np.stack([e.pixels for e in chunk])
        n = len(chunk)
        if pad_batches and n < batch:
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch - n, axis=0)])
        logits, boxes, token_logits = (np.asarray(a)[:n] for a in run(pixels))
        if with_map:
            dets += detections_from_outputs(logits, boxes, [e.scale for e in chunk], [e.image_id for e in chunk],
                                            cat_ids or dataset.cat_ids, size, [e.orig_size for e in chunk],
                                            box_frame=box_frame)
        if labelled.any():
            m = token_metrics((token_logits >= 0)[labelled], np.stack([e.token_fg for e in chunk])[labelled])
            counts += [m["tp"], m["fp"], m["fn"], m["tn"]]
            token_images += int(labelled.sum())
    tp, fp, fn, tn = counts.tolist()
    result = coco_map(dataset.coco_gt(list(indices)), dets) if with_map else {}
    if token_images:
        result.update(token_acc=(tp + tn) / counts.sum(), fg_recall=tp / max(tp + fn, 1),
                      fg_precision=tp / max(tp + fp, 1))
    else:
        result.update(token_acc=None, fg_recall=None, fg_precision=None)
    result.update(images=len(indices), token_images=token_images, label_mode=mode)
    result["detections"] = dets
    return result
