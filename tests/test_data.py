"""Data loaders (synthetic/COCO/VOC), preprocessing and input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bavit.data import CocoDataset, DataError, VocDataset, load_dataset, make_synthetic, synthetic_dataset
from bavit.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    batch,
    boxes_to_input,
    boxes_to_original,
    preprocess,
    preprocess_masks,
)
from bavit.data.synthetic import CATEGORIES

# ---------------------------------------------------------------- synthetic / COCO


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synth"), n_images=12, size=64, seed=3, split="val")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_layout_and_determinism(synth_root, tmp_path):
    assert len(list((synth_root / "images" / "val").glob("*.png"))) == 12
    again = make_synthetic(tmp_path / "again", n_images=12, size=64, seed=3, split="val")
    assert _files(synth_root) == _files(again)  # byte-identical JSON and PNGs
    other = make_synthetic(tmp_path / "other", n_images=12, size=64, seed=4, split="val")
    assert _files(other) != _files(synth_root)


def test_synthetic_splits_do_not_overlap(tmp_path):
    val = make_synthetic(tmp_path / "v", 4, 32, 0, "val")
    train = make_synthetic(tmp_path / "t", 4, 32, 0, "train")
    for name in ("000001.png", "000002.png"):
        assert (val / "images/val" / name).read_bytes() != (train / "images/train" / name).read_bytes()


def test_synthetic_read_back_through_coco_loader(synth_root):
    ann_file = synth_root / "annotations" / "instances_val.json"
    data = json.loads(ann_file.read_text())
    ds = CocoDataset(synth_root / "images" / "val", ann_file)
    assert len(ds) == 12 and ds.image_ids() == list(range(1, 13))
    assert ds.categories == list(CATEGORIES) and ds.cat_ids == [1, 2, 3, 4]
    areas: dict[int, list[int]] = {}
    for ann in data["annotations"]:
        assert ann["iscrowd"] == 0
        areas.setdefault(ann["image_id"], []).append(ann["area"])
    n_objects = 0
    for sample in ds:
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
        assert 1 <= len(sample.boxes) <= 6
        assert sample.labels.dtype == np.int64 and set(sample.labels) <= {0, 1, 2, 3}
        assert sample.masks is not None and sample.masks.shape == (len(sample.boxes), 64, 64)
        assert not (sample.masks.sum(axis=0) > 1).any(), "visible masks must not overlap"
        for box, mask in zip(sample.boxes, sample.masks):
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert sample.masks.sum(axis=(1, 2)).tolist() == areas[sample.image_id]  # area = visible area
        n_objects += len(sample.boxes)
    assert n_objects == len(data["annotations"])
    gt = ds.coco_gt([0, 2])
    assert [im["id"] for im in gt["images"]] == [1, 3]
    assert {a["image_id"] for a in gt["annotations"]} == {1, 3}
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))


def test_synthetic_dataset_cache_is_reused(tmp_path, monkeypatch):
    ds = synthetic_dataset("val", size=32, n_images=5, seed=0, root=tmp_path)
    assert len(ds) == 5
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and not folders[0].name.startswith(".")  # temp dir was renamed away
    stamp = (ds.ann_file.stat().st_mtime_ns, ds.ann_file)
    again = synthetic_dataset("val", size=32, n_images=5, seed=0, root=tmp_path)
    assert (again.ann_file.stat().st_mtime_ns, again.ann_file) == stamp
    monkeypatch.setenv("BAVIT_CACHE", str(tmp_path))
    via_spec = load_dataset("synthetic", split="val", size=32, n_images=5)
    assert via_spec.ann_file == ds.ann_file


def test_coco_crowd_is_foreground_not_a_target_and_kept_for_eval(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img" / "b.png")
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 30, "height": 20},
                   {"id": 9, "file_name": "b.png", "width": 30, "height": 20}],
        "annotations": [
            {"id": 0, "image_id": 7, "category_id": 5, "bbox": [2, 3, 10, 5], "area": 50, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 30, 20], "area": 600, "iscrowd": 1,
             "segmentation": {"size": [20, 30], "counts": [0, 600]}},
        ],
        "categories": [{"id": 5, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path / "img", tmp_path / "ann.json")
    assert ds.categories == ["cat", "dog"] and ds.cat_ids == [3, 5]
    first, second = ds[0], ds[1]
    np.testing.assert_array_equal(first.boxes, [[2, 3, 12, 8]])
    np.testing.assert_array_equal(first.labels, [1])
    assert first.masks.shape == (1, 20, 30) and first.masks[0, 3:8, 2:12].all()
    assert len(second.boxes) == 0 and second.image_id == 9  # image without objects is kept
    assert first.fg_extra.shape == (20, 30) and first.fg_extra.all() and second.fg_extra is None
    from bavit.encode import encode
    assert encode(first, 32, 8, "masks").token_fg.sum() == 12  # the crowd region is foreground
    gt = ds.coco_gt()
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    assert all(a["id"] >= 1 for a in gt["annotations"])


# ---------------------------------------------------------------- VOC


def _voc_xml(name: str, w: int, h: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    objs = "".join(
        f"<object><name>{cls}</name><difficult>{diff}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for cls, b, diff in objects
    )
    return f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height>" \
           f"<depth>3</depth></size>{objs}</annotation>"


def _palette_png(arr: np.ndarray, path: Path) -> None:
    im = Image.fromarray(arr.astype(np.uint8))
    im.putpalette(np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tobytes())
    assert im.mode == "P"
    im.save(path)


@pytest.fixture()
def voc_root(tmp_path) -> Path:
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "SegmentationObject", "SegmentationClass"):
        (root / sub).mkdir(parents=True)
    (root / "ImageSets/Main/val.txt").write_text("2008_000001\n2008_000002\n")
    for name in ("2008_000001", "2008_000002"):
        Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    # Image 1: a dog (1-based inclusive x 3..10, y 2..9) and a difficult person.
    (root / "Annotations/2008_000001.xml").write_text(
        _voc_xml("2008_000001", 32, 24, [("dog", (3, 2, 10, 9), 0), ("person", (15, 5, 30, 20), 1)])
    )
    (root / "Annotations/2008_000002.xml").write_text(_voc_xml("2008_000002", 32, 24, [("car", (1, 1, 32, 24), 0)]))
    inst = np.zeros((24, 32), np.uint8)
    inst[1:9, 2:10] = 1
    inst[4:20, 14:30] = 2
    inst[4, 14:30] = 255  # boundary pixels are not part of the instance
    _palette_png(inst, root / "SegmentationObject/2008_000001.png")
    cls = np.where(inst == 1, 12, np.where(inst == 2, 15, inst))  # dog = 12, person = 15 (1-based)
    _palette_png(cls, root / "SegmentationClass/2008_000001.png")
    return root


def test_voc_boxes_labels_masks(voc_root):
    ds = load_dataset(f"voc:{voc_root}", split="val")
    assert isinstance(ds, VocDataset) and len(ds) == 2
    assert ds.image_ids() == [2008000001, 2008000002]
    assert ds.categories[11] == "dog" and ds.cat_ids[11] == 12
    s = ds[0]
    assert s.image.shape == (24, 32, 3)
    np.testing.assert_array_equal(s.boxes, [[2, 1, 10, 9], [14, 4, 30, 20]])
    np.testing.assert_array_equal(s.labels, [11, 14])
    assert s.masks.shape == (2, 24, 32) and s.masks.dtype == bool
    assert s.masks[0].sum() == 64 and s.masks[0, 1:9, 2:10].all()
    assert s.masks[1].sum() == 15 * 16 and not s.masks[1, 4].any()
    assert s.fg_extra.sum() == 16 and s.fg_extra[4, 14:30].all()  # the void band: foreground for BAViT
    from dataclasses import replace

    from bavit.encode import encode
    with_void, without = (encode(x, 32, 8, "masks").token_fg for x in (s, replace(s, fg_extra=None)))
    assert with_void.sum() == without.sum() + 1 and with_void[2] and not without[2]  # 24 + 8 void px of 64
    assert ds[1].masks is None and ds[1].fg_extra is None  # no SegmentationObject for this image
    np.testing.assert_array_equal(ds[1].boxes, [[0, 0, 32, 24]])
    gt = ds.coco_gt()
    assert [a["bbox"] for a in gt["annotations"]] == [[2, 1, 8, 8], [14, 4, 16, 16], [0, 0, 32, 24]]
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1, 0]  # difficult -> ignored in eval
    assert [a["category_id"] for a in gt["annotations"]] == [12, 15, 7]


def test_voc_mispaired_segmentation_is_refused(voc_root):
    inst = np.asarray(Image.open(voc_root / "SegmentationObject/2008_000001.png"))
    _palette_png(np.where(inst == 1, 2, np.where(inst == 2, 1, inst)), voc_root / "SegmentationObject/2008_000001.png")
    with pytest.raises(DataError, match="disagrees"):
        VocDataset(voc_root, "val")[0]


def test_voc_split_fallback_to_segmentation(voc_root):
    (voc_root / "ImageSets/Main/val.txt").unlink()
    (voc_root / "ImageSets/Segmentation").mkdir()
    (voc_root / "ImageSets/Segmentation/val.txt").write_text("2008_000001\n")
    assert len(VocDataset(voc_root, "val")) == 1


# ---------------------------------------------------------------- preprocessing


def test_preprocess_resize_pad_and_normalise():
    image = np.full((40, 80, 3), 200, np.uint8)  # H=40, W=80 -> 32 x 64 at size 64
    arr, scale = preprocess(image, 64)
    assert arr.shape == (3, 64, 64) and arr.dtype == np.float32 and scale == 0.8
    expected = (200 / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(arr[:, :32, :], np.broadcast_to(expected[:, None, None], (3, 32, 64)), rtol=1e-6)
    assert not arr[:, 32:, :].any()  # bottom padding is exactly zero after normalisation


def test_preprocess_masks_and_boxes_round_trip():
    masks = np.zeros((2, 40, 80), bool)
    masks[0, :20, :40] = True
    out = preprocess_masks(masks, 0.8, 64)
    assert out.shape == (2, 64, 64)
    assert out[0, :16, :32].all() and out[0].sum() == 16 * 32 and not out[1].any()

    boxes = np.array([[10.0, 5.0, 50.0, 35.0]])
    inp = boxes_to_input(boxes, 0.8)
    np.testing.assert_allclose(inp, [[8, 4, 40, 28]])
    cxcywh = np.array([[(8 + 40) / 2, (4 + 28) / 2, 32, 24]]) / 64
    np.testing.assert_allclose(boxes_to_original(cxcywh, 0.8, 64), boxes, atol=1e-4)
    clipped = boxes_to_original(np.array([[0.5, 0.5, 1.0, 1.0]]), 0.8, 64, orig_size=(40, 80))
    np.testing.assert_allclose(clipped, [[0, 0, 80, 40]])


def test_non_square_input_letterboxes_and_maps_back():
    """An H x W input (here 48 x 96): the image is scaled by the largest factor that fits
    (a 40x60 image by 1.2 -> 48x72), padded right; masks, boxes and token labels follow."""
    from bavit.data import Sample
    from bavit.encode import encode

    image = np.full((40, 60, 3), 200, np.uint8)
    arr, scale = preprocess(image, (48, 96))
    assert arr.shape == (3, 48, 96) and scale == pytest.approx(1.2)
    assert arr[:, :, :72].any() and not arr[:, :, 72:].any()
    masks = np.zeros((1, 40, 60), bool)
    masks[0, :20, :30] = True
    out = preprocess_masks(masks, scale, (48, 96))
    assert out.shape == (1, 48, 96) and out[0].sum() == 24 * 36
    boxes = np.array([[10.0, 5.0, 50.0, 35.0]])
    inp = boxes_to_input(boxes, scale)[0]
    cxcywh = np.array([[(inp[0] + inp[2]) / 2 / 96, (inp[1] + inp[3]) / 2 / 48,
                        (inp[2] - inp[0]) / 96, (inp[3] - inp[1]) / 48]])
    np.testing.assert_allclose(boxes_to_original(cxcywh, scale, (48, 96)), boxes, atol=1e-4)
    enc = encode(Sample(image, boxes.astype(np.float32), np.array([1]), masks, 7), (48, 96), 16, "masks")
    assert enc.pixels.shape == (3, 48, 96) and enc.token_fg.shape == (3 * 6,) and enc.patch_class.shape == (18,)
    np.testing.assert_allclose(enc.boxes, cxcywh, atol=1e-6)
    # the 24x36 mask: patches (0, 0-1) full, (1, 0-1) half (foreground at threshold 0.5), column 2 a quarter
    expected = np.zeros((3, 6), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(enc.token_fg.reshape(3, 6), expected)


def test_batch_shapes(synth_root):
    ds = CocoDataset(synth_root / "images" / "val", synth_root / "annotations" / "instances_val.json")
    x, scales = batch(ds, [0, 1, 2], 32)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32 and scales == [0.5, 0.5, 0.5]


# ---------------------------------------------------------------- bad input


def _assert_one_line(exc: pytest.ExceptionInfo, culprit: str) -> None:
    msg = str(exc.value)
    assert culprit in msg and "\n" not in msg, msg


def test_missing_image_folder(tmp_path):
    (tmp_path / "ann.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DataError) as exc:
        CocoDataset(tmp_path / "nope", tmp_path / "ann.json")
    _assert_one_line(exc, str(tmp_path / "nope"))
    with pytest.raises(DataError) as exc:
        load_dataset(f"coco:{tmp_path / 'absent'}")
    _assert_one_line(exc, str(tmp_path / "absent"))


@pytest.mark.parametrize("content", ['{"images": [], "categories": []}', "[1, 2]", "{not json"])
def test_not_a_coco_file(tmp_path, content):
    (tmp_path / "img").mkdir()
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(DataError) as exc:
        CocoDataset(tmp_path / "img", tmp_path / "bad.json")
    _assert_one_line(exc, f"not a COCO instances file: {tmp_path / 'bad.json'}")


def test_missing_annotation_file(tmp_path):
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError) as exc:
        CocoDataset(tmp_path / "img", tmp_path / "none.json")
    _assert_one_line(exc, str(tmp_path / "none.json"))


@pytest.mark.parametrize("spec", ["imagenet", "coco", "voc:", "synthetic:x", "lvis:/data"])
def test_unknown_data_spec(spec):
    with pytest.raises(DataError) as exc:
        load_dataset(spec)
    _assert_one_line(exc, f"'{spec}'")


def test_voc_missing_root(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset(f"voc:{tmp_path / 'VOCmissing'}")
    _assert_one_line(exc, str(tmp_path / "VOCmissing"))


def test_voc_images_without_masks_score_map_but_not_tokens(voc_root):
    """VOC's Main lists are mostly images without SegmentationObject: they count for mAP,
    and only the masked ones for the token figures."""
    from bavit.validate import score

    ds = load_dataset(f"voc:{voc_root}", split="val")

    def run(px):
        b = len(px)
        return np.zeros((b, 4, 21), np.float32), np.full((b, 4, 4), 0.5, np.float32), np.ones((b, 16), np.float32)

    res = score(run, ds, 32, 8, [0, 1], batch=2)
    assert res["label_mode"] == "masks" and res["images"] == 2 and res["token_images"] == 1
    assert res["map"] is not None and 0 < res["token_acc"] < 1 and res["fg_recall"] == 1.0


# ---------------------------------------------------------------- the formats users bring


def _as_yolo(coco_root: Path, out: Path, split: str = "val") -> Path:
    """The synthetic COCO split re-exported as Ultralytics' layout (box lines), the way a
    user's converter would write it, with a list-of-names yaml and a Roboflow-style relative
    val path."""
    data = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
    by_id = {im["id"]: im for im in data["images"]}
    (out / "valid" / "images").mkdir(parents=True)
    (out / "valid" / "labels").mkdir()
    for im in data["images"]:
        image = (coco_root / "images" / split / im["file_name"]).read_bytes()
        (out / "valid" / "images" / im["file_name"]).write_bytes(image)
    lines: dict[int, list[str]] = {}
    for a in data["annotations"]:
        im = by_id[a["image_id"]]
        x, y, w, h = a["bbox"]
        lines.setdefault(a["image_id"], []).append(
            f"{a['category_id'] - 1} {(x + w / 2) / im['width']:.8f} {(y + h / 2) / im['height']:.8f} "
            f"{w / im['width']:.8f} {h / im['height']:.8f}")
    for image_id, ls in lines.items():
        name = Path(by_id[image_id]["file_name"]).with_suffix(".txt").name
        (out / "valid" / "labels" / name).write_text("\n".join(ls) + "\n")
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    (out / "yolo").mkdir()
    (out / "yolo" / "data.yaml").write_text(f"train: ../valid/images\nval: ../valid/images\nnc: {len(names)}\n"
                                            f"names: {json.dumps(names)}\n")
    return out / "yolo" / "data.yaml"


def test_yolo_export_of_a_coco_set_reads_back_the_same_ground_truth(synth_root, tmp_path):
    from bavit.data import YoloDataset, has_split

    coco = load_dataset(f"coco:{synth_root}", "val")
    yaml_path = _as_yolo(synth_root, tmp_path)
    yolo = load_dataset(f"yolo:{yaml_path}", "val")
    assert isinstance(yolo, YoloDataset) and len(yolo) == len(coco) == 12
    assert yolo.categories == coco.categories and has_split(f"yolo:{yaml_path}", "train")
    assert not has_split(f"yolo:{yaml_path}", "test")
    for i in range(len(coco)):
        a, b = coco[i], yolo[i]
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert b.masks is None   # box lines: token labels come from boxes
    ga, gb = coco.coco_gt(), yolo.coco_gt()
    assert [(x["image_id"], x["category_id"]) for x in ga["annotations"]] == \
           [(x["image_id"], x["category_id"]) for x in gb["annotations"]]
    np.testing.assert_allclose([x["bbox"] for x in ga["annotations"]], [x["bbox"] for x in gb["annotations"]],
                               atol=1e-3)


def test_yolo_polygons_are_masks_and_their_bounds_boxes(tmp_path):
    for sub in ("images/val", "labels/val"):
        (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "images/val/a.png")
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "images/val/b.png")   # no label file
    # a 10x10 px square at x 10..20, y 5..15, as a polygon; class 1 of 2
    (tmp_path / "labels/val/a.txt").write_text("1 0.25 0.25 0.5 0.25 0.5 0.75 0.25 0.75\n")
    (tmp_path / "data.yaml").write_text("path: .\nval: images/val\nnames: {0: cat, 1: dog}\n")
    ds = load_dataset(f"yolo:{tmp_path / 'data.yaml'}", "val")
    assert ds.categories == ["cat", "dog"] and ds.image_ids() == [1, 2]
    s = ds[0]
    np.testing.assert_allclose(s.boxes, [[10, 5, 20, 15]], atol=1e-4)
    assert s.labels.tolist() == [1] and s.masks.shape == (1, 20, 40)
    assert s.masks[0, 6:14, 11:19].all() and not s.masks[0, :4].any() and not s.masks[0, :, 22:].any()
    empty = ds[1]
    assert len(empty.boxes) == 0 and empty.masks.shape == (0, 20, 40)
    assert [a["category_id"] for a in ds.coco_gt()["annotations"]] == [2]


def test_yolo_roboflow_layout_and_a_background_first_image(tmp_path):
    """Roboflow's export: data.yaml at the root naming `../train/images`, resolved from the
    root as Ultralytics does. A box-only set whose first image has no objects still has no
    masks, so token labels come from boxes."""
    from bavit.data import has_split
    from bavit.encode import label_mode_for

    for split in ("train", "valid"):
        for sub in ("images", "labels"):
            (tmp_path / split / sub).mkdir(parents=True)
        for name in ("a", "b"):
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / split / "images" / f"{name}.jpg")
        (tmp_path / split / "labels" / "b.txt").write_text("0 0.5 0.5 0.5 0.5\n")   # a.jpg: background
    (tmp_path / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n"
                                        "nc: 1\nnames: ['thing']\n")
    spec = f"yolo:{tmp_path / 'data.yaml'}"
    ds = load_dataset(spec, "val")
    assert len(ds) == 2 and ds[0].masks is None and len(ds[0].boxes) == 0 and len(ds[1].boxes) == 1
    assert label_mode_for(ds, None) == "boxes"
    assert has_split(spec, "train") and not has_split(spec, "test")   # test's folder is missing


@pytest.mark.parametrize("line,culprit", [
    ("2 0.5 0.5 0.1 0.1", "class 2 outside the 2 names"),
    ("0 0.5 0.5 1.5 0.1", "normalised to [0, 1]"),
    ("0 0.5 0.5 0.1", "got 4"),
    ("x 0.5 0.5 0.1 0.1", "not a YOLO label line"),
])
def test_yolo_bad_label_line_names_file_and_line(tmp_path, line, culprit):
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images/a.jpg")
    (tmp_path / "labels/a.txt").write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
    (tmp_path / "data.yaml").write_text("val: images\nnames: [a, b]\n")
    with pytest.raises(DataError) as exc:
        load_dataset(f"yolo:{tmp_path / 'data.yaml'}", "val")
    _assert_one_line(exc, culprit)
    assert f"{tmp_path / 'labels/a.txt'}:2" in str(exc.value)


def test_coco_export_pair_is_one_set(synth_root, tmp_path):
    """Any COCO instances file with any image folder (CVAT, Label Studio, Roboflow exports):
    it serves the asked split and claims no other, so int8 calibrates past the scored images."""
    from bavit.data import has_split, parse_data

    ann = tmp_path / "export.json"
    ann.write_text((synth_root / "annotations" / "instances_val.json").read_text())
    spec = f"coco:{ann},{synth_root / 'images' / 'val'}"
    ds = load_dataset(spec, "val")
    assert len(ds) == 12 and parse_data(spec).one_set and not has_split(spec, "train")
    assert load_dataset(spec, "train").image_ids() == ds.image_ids()
    for bad, culprit in ((f"coco:{ann},{tmp_path / 'nope'}", f"image folder not found: {tmp_path / 'nope'}"),
                         (f"coco:{tmp_path / 'x.json'},{tmp_path}",
                          f"annotation file not found: {tmp_path / 'x.json'}"),
                         (f"coco:{tmp_path}/a.txt,{tmp_path}", "expected coco:ANNOTATIONS.json,IMAGE_DIR")):
        with pytest.raises(DataError) as exc:
            load_dataset(bad)
        _assert_one_line(exc, culprit)


def test_voc_folder_with_its_own_classes(voc_root):
    from bavit.data.voc import voc_classes

    xml = voc_root / "Annotations/2008_000002.xml"
    xml.write_text(xml.read_text().replace("<name>car</name>", "<name>widget</name>"))
    for png in (voc_root / "SegmentationObject").glob("*"):
        png.unlink()
    # no class list: the names of every annotation, sorted
    ds = load_dataset(f"voc:{voc_root}", split="val")
    assert ds.categories == ["dog", "person", "widget"] and "sorted" in ds.classes_source
    assert ds[1].labels.tolist() == [2] and ds.coco_gt()["categories"][2] == {"id": 3, "name": "widget"}
    # a labels.txt beside the folder wins; its background entry is index 0 of the PNGs, not a class
    (voc_root.parent / "labels.txt").write_text("background\nwidget\nperson\ndog\n")
    ds = load_dataset(f"voc:{voc_root}", split="val")
    assert ds.categories == ["widget", "person", "dog"] and ds.classes_source.endswith("labels.txt")
    assert ds[0].labels.tolist() == [2, 1]
    (voc_root / "classes.txt").write_text("widget\nperson\n")   # in the folder: before the one beside it
    with pytest.raises(DataError) as exc:
        load_dataset(f"voc:{voc_root}", split="val")
    _assert_one_line(exc, f"class 'dog' in {voc_root / 'Annotations/2008_000001.xml'} is not in the class list")
    assert voc_classes(voc_root)[1] == str(voc_root / "classes.txt")
