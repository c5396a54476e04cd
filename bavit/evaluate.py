"""COCO box mAP of detector outputs, via faster-coco-eval or pycocotools.

Two backends because faster-coco-eval is the fast default while pycocotools
is the reference implementation that published numbers come from; the test
suite checks that both agree.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .data.preprocess import boxes_to_original

_KEYS = ("map", "ap50", "ap75")


def _clean_detections(detections: list[dict], gt: dict) -> list[dict]:
    """Copy detections (both libraries write into them) and check their image ids.

    Both libraries assert on unknown image ids with a bare AssertionError; a
    ValueError naming the ids is more useful.
    """
    known = {img["id"] for img in gt["images"]}
    unknown = sorted({d["image_id"] for d in detections} - known)
    if unknown:
        raise ValueError(f"detections reference image ids missing from the ground truth: {unknown[:10]}")
    return [
        {
            "image_id": d["image_id"],
            "category_id": int(d["category_id"]),
            "bbox": [float(v) for v in d["bbox"]],
            "score": float(d["score"]),
        }
        for d in detections
    ]


def _stats(gt: dict, dets: list[dict], backend: str) -> np.ndarray:
    """Run evaluate/accumulate/summarize with library chatter swallowed."""
    gt = copy.deepcopy(gt)
    gt.setdefault("info", {})
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster

            quiet = lambda *args, **kwargs: None  # noqa: E731
            coco_gt = COCO(gt, print_function=quiet)
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
        elif backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        else:
            raise ValueError(f"unknown mAP backend '{backend}' (expected faster or pycocotools)")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def coco_map(
    gt: dict,
    detections: list[dict],
    backend: Literal["faster", "pycocotools"] = "faster",
) -> dict[str, float]:
    """COCO bbox AP@[.5:.95], AP50 and AP75.

    No detections scores 0.0 without calling the library (pycocotools crashes
    on an empty result list). When the ground truth has no objects at all the
    libraries report -1; that is returned as NaN, since AP is undefined.
    """
    if backend not in ("faster", "pycocotools"):
        raise ValueError(f"unknown mAP backend '{backend}' (expected faster or pycocotools)")
    dets = _clean_detections(detections, gt)
    has_gt = any(not a.get("iscrowd", 0) for a in gt["annotations"])
    if not has_gt:
        return {k: float("nan") for k in _KEYS}
    if not dets:
        return {k: 0.0 for k in _KEYS}
    stats = _stats(gt, dets, backend)
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(_KEYS, stats[:3])}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def category_map(id2label: dict | None, num_labels: int, categories: Sequence[str],
                 cat_ids: Sequence[int]) -> list[int | None] | None:
    """Data-set category id of each model class (None: a class the data set lacks), or None
    when the two cannot be matched. By name when the model names every data-set category
    (stock HF YOLOS: 91 classes, index = COCO id, "N/A" in the gaps); else by position when
    the counts agree (models trained here on the data set's contiguous labels)."""
    labels = {int(k): str(v) for k, v in (id2label or {}).items()}
    if categories and set(categories) <= set(labels.values()):
        by_name = dict(zip(categories, cat_ids))
        return [by_name.get(labels.get(i, "")) for i in range(num_labels)]
    return list(cat_ids) if num_labels == len(cat_ids) else None


def detections_from_outputs(
    logits: np.ndarray,
    boxes: np.ndarray,
    scales: Sequence[float],
    image_ids: Sequence[int],
    cat_ids: Sequence[int | None],
    size: int | tuple[int, int],
    orig_sizes: Sequence[tuple[int, int]],
    topk: int = 100,
    box_frame: str = "input",
) -> list[dict]:
    """COCO result dicts from YOLOS-style outputs.

    logits (B, D, C+1) with the last class = no-object, boxes (B, D, 4) cx, cy,
    w, h as fractions of the model input or of the unpadded image (`box_frame`, see
    bavit.yolos), orig_sizes (H, W) per image.
    Every (token, class) pair is a candidate scored by its softmax
    probability, as in DETR's COCO evaluation: letting one token propose
    several classes raises recall at no cost to precision ranking. The best
    `topk` per image are kept (COCO counts at most 100 per image anyway).
    """
    logits = np.asarray(logits, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    b, d, c1 = logits.shape
    n_cls = c1 - 1
    if n_cls != len(cat_ids):
        raise ValueError(f"logits have {n_cls} object classes but cat_ids has {len(cat_ids)}")
    probs = _softmax(logits)[..., :n_cls]
    probs[..., [c is None for c in cat_ids]] = 0.0  # classes the data set does not have
    probs = probs.reshape(b, d * n_cls)
    k = min(topk, d * n_cls)
    out: list[dict] = []
    if k <= 0:
        return out
    for i in range(b):
        top = np.argpartition(-probs[i], k - 1)[:k] if k < d * n_cls else np.arange(d * n_cls)
        top = top[np.argsort(-probs[i, top], kind="stable")]
        tokens, labels = np.divmod(top, n_cls)
        xyxy = boxes_to_original(boxes[i, tokens], scales[i], size, tuple(orig_sizes[i]), box_frame)
        for (x0, y0, x1, y1), label, score in zip(xyxy.tolist(), labels.tolist(), probs[i, top].tolist()):
            if cat_ids[label] is None:
                continue
            out.append({
                "image_id": int(image_ids[i]),
                "category_id": int(cat_ids[label]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": score,
            })
    return out
