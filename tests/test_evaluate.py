"""COCO mAP with both backends and decoding of raw detector outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bavit.data import load_dataset, make_synthetic
from bavit.data.coco import CocoDataset
from bavit.data.preprocess import boxes_to_input, resized_shape
from bavit.evaluate import coco_map, detections_from_outputs

BACKENDS = ["faster", "pycocotools"]


def _gt() -> dict:
    return {
        "images": [{"id": 1, "width": 100, "height": 80}, {"id": 2, "width": 100, "height": 80}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 40, 40, 30], "area": 1200, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 60, 60], "area": 3600, "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
    }


def _perfect(gt: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_score_one(backend):
    gt = _gt()
    dets = _perfect(gt)
    result = coco_map(gt, dets, backend=backend)
    assert result == pytest.approx({"map": 1.0, "ap50": 1.0, "ap75": 1.0})
    assert gt == _gt() and dets == _perfect(_gt())  # inputs untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_shifted_box_lowers_map(backend):
    dets = _perfect(_gt())
    dets[2].update(bbox=[15, 15, 60, 60], score=0.5)  # IoU = 45*45 / (2*3600 - 2025) = 0.39
    result = coco_map(_gt(), dets, backend=backend)
    assert result["map"] < 1.0 and result["ap50"] < 1.0
    # category 5 stays perfect; category 3 reaches recall 0.5 at precision 1, i.e. 51 of the
    # 101 COCO recall points -> AP 51/101 at every IoU threshold.
    assert result["map"] == pytest.approx((1 + 51 / 101) / 2)


def test_backends_agree_on_noisy_detections():
    rng = np.random.default_rng(0)
    dets = []
    for a in _gt()["annotations"]:
        for _ in range(5):
            box = np.array(a["bbox"], float) + rng.normal(0, 4, 4)
            dets.append({"image_id": a["image_id"], "category_id": int(rng.choice([3, 5])),
                         "bbox": box.tolist(), "score": float(rng.uniform())})
    fast, ref = coco_map(_gt(), dets, "faster"), coco_map(_gt(), dets, "pycocotools")
    assert 0 < ref["map"] < 1
    assert fast == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_detections_and_empty_gt(backend):
    assert coco_map(_gt(), [], backend=backend) == {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
    no_objects = {**_gt(), "annotations": []}
    assert all(math.isnan(v) for v in coco_map(no_objects, _perfect(_gt()), backend=backend).values())


def test_crowd_gt_is_ignored():
    gt = _gt()
    gt["annotations"][1]["iscrowd"] = 1  # e.g. a VOC "difficult" object
    without = [d for d in _perfect(gt) if d["category_id"] != 5]
    assert coco_map(gt, without)["map"] == pytest.approx(1.0)
    assert coco_map(gt, _perfect(gt))["map"] == pytest.approx(1.0)  # hitting it is not a false positive


def test_bad_image_id_and_backend():
    with pytest.raises(ValueError, match="missing from the ground truth"):
        coco_map(_gt(), [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="unknown mAP backend"):
        coco_map(_gt(), _perfect(_gt()), backend="detectron")


def test_detections_from_outputs_decodes_boxes_and_scores():
    size, scale, orig = 64, 0.64, (50, 100)  # 100x50 image -> 64x32 input
    box_in = boxes_to_input(np.array([[10.0, 5.0, 60.0, 45.0]]), scale)[0]  # original xyxy -> input
    cxcywh = np.array([(box_in[0] + box_in[2]) / 2, (box_in[1] + box_in[3]) / 2,
                       box_in[2] - box_in[0], box_in[3] - box_in[1]]) / size
    logits = np.full((1, 3, 3), -10.0, np.float32)
    logits[0, 0] = [-5.0, 5.0, -5.0]  # token 0: class 1
    logits[0, 1] = [2.0, -5.0, 0.0]  # token 1: class 0 with p ~ 0.88
    logits[0, 2, 2] = 10.0  # token 2: no-object
    boxes = np.tile(cxcywh, (1, 3, 1)).astype(np.float32)
    dets = detections_from_outputs(logits, boxes, [scale], [42], [7, 9], size, [orig], topk=4)
    assert len(dets) == 4
    assert [d["category_id"] for d in dets[:2]] == [9, 7]
    assert dets[0]["score"] == pytest.approx(np.exp(5) / (np.exp(5) + 2 * np.exp(-5)))
    assert all(d["image_id"] == 42 for d in dets)
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
    np.testing.assert_allclose(dets[0]["bbox"], [10, 5, 50, 40], atol=1e-3)
    assert len(detections_from_outputs(logits, boxes, [scale], [42], [7, 9], size, [orig])) == 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_end_to_end_on_synthetic(tmp_path, backend):
    """Fake model outputs built from the ground truth must score mAP 1 after the full decode."""
    root = make_synthetic(tmp_path, n_images=6, size=48, seed=0, split="val")
    ds = CocoDataset(root / "images/val", root / "annotations/instances_val.json")
    size, n_tokens, n_cls = 64, 8, len(ds.cat_ids)
    logits = np.full((len(ds), n_tokens, n_cls + 1), -8.0, np.float32)
    logits[..., -1] = 8.0
    boxes = np.full((len(ds), n_tokens, 4), 0.5, np.float32)
    scales, sizes = [], []
    for i in range(len(ds)):
        s = ds[i]
        _, _, scale = resized_shape(*s.image.shape[:2], size)
        inp = boxes_to_input(s.boxes, scale) / size
        boxes[i, : len(inp)] = np.c_[(inp[:, :2] + inp[:, 2:]) / 2, inp[:, 2:] - inp[:, :2]]
        logits[i, np.arange(len(inp)), s.labels] = 8.0
        logits[i, : len(inp), -1] = -8.0
        scales.append(scale)
        sizes.append(s.image.shape[:2])
    dets = detections_from_outputs(logits, boxes, scales, ds.image_ids(), ds.cat_ids, size, sizes)
    assert coco_map(ds.coco_gt(), dets, backend=backend)["map"] == pytest.approx(1.0)


def test_category_map_by_name_for_stock_coco_heads():
    """Stock HF YOLOS: 91 classes, index = COCO id, "N/A" in the gaps; the data set's own
    category ids are whatever its annotation file says."""
    from bavit.evaluate import category_map

    id2label = {0: "N/A", 1: "person", 2: "bicycle", 3: "N/A", 4: "dog"}
    assert category_map(id2label, 5, ["person", "dog"], [1, 18]) == [None, 1, None, None, 18]
    # our own models: default names, contiguous labels -> by position; no match -> None
    default = {0: "LABEL_0", 1: "LABEL_1"}
    assert category_map(default, 2, ["circle", "square"], [1, 2]) == [1, 2]
    assert category_map(default, 3, ["circle", "square"], [1, 2]) is None


def test_classes_the_data_set_lacks_yield_no_detections():
    logits = np.full((1, 2, 4), -9.0, dtype=np.float32)
    logits[0, 0, 0] = 9.0  # token 0: class 0, which the data set lacks
    logits[0, 1, 1] = 9.0  # token 1: class 1 -> category 7
    boxes = np.full((1, 2, 4), 0.5, dtype=np.float32)
    dets = detections_from_outputs(logits, boxes, [1.0], [5], [None, 7, None], 64, [(64, 64)])
    assert dets and {d["category_id"] for d in dets} == {7}
    assert max(d["score"] for d in dets) > 0.99


@pytest.mark.parametrize("frame", ["image", "input"])
def test_each_box_frame_scores_its_own_box_exactly_on_a_letterboxed_non_square_image(tmp_path, frame):
    """A stock HF head predicts fractions of the unpadded image (DETR's convention), this
    project's models fractions of the padded square input. On a 40x20 image letterboxed into
    64x64 (padding below), a head that predicts the true box in its frame scores AP 1.0 with
    its own decoding and not with the other one."""
    from PIL import Image

    from bavit.validate import score

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "images/a.png")
    gt = np.array([8.0, 4.0, 24.0, 16.0])                     # xyxy, original pixels
    (tmp_path / "labels/a.txt").write_text(f"0 {16 / 40} {10 / 20} {16 / 40} {12 / 20}\n")
    (tmp_path / "data.yaml").write_text("val: images\nnames: [thing]\n")
    ds = load_dataset(f"yolo:{tmp_path / 'data.yaml'}", "val")
    size = 64
    new_h, new_w, scale = resized_shape(20, 40, size)
    assert (new_h, new_w) == (32, 64)                          # letterboxed: 32 rows of padding
    cx, cy, w, h = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2, gt[2] - gt[0], gt[3] - gt[1]
    if frame == "image":   # fractions of the resized image = fractions of the original
        box = [cx / 40, cy / 20, w / 40, h / 20]
    else:                  # fractions of the 64x64 input
        box = [cx * scale / size, cy * scale / size, w * scale / size, h * scale / size]

    def run(px):
        logits = np.array([[[8.0, -8.0]]], np.float32).repeat(len(px), 0)
        return logits, np.array([[box]], np.float32).repeat(len(px), 0), np.zeros((len(px), 16), np.float32)

    other = {"image": "input", "input": "image"}[frame]
    mine = score(run, ds, size, 16, [0], batch=1, box_frame=frame)
    np.testing.assert_allclose(mine["detections"][0]["bbox"], [8, 4, 16, 12], atol=1e-4)
    assert mine["map"] == pytest.approx(1.0)
    assert score(run, ds, size, 16, [0], batch=1, box_frame=other)["map"] < 0.5
