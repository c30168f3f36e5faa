import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from lors.data.detection import CocoDetection, collate, write_shapes
from lors.tasks.coco_eval import coco_evaluate


def test_shapes_writer_is_deterministic_and_loads(tmp_path):
    write_shapes(tmp_path / "a", 6, 3, size=64, seed=3)
    write_shapes(tmp_path / "b", 6, 3, size=64, seed=3)
    ja = (tmp_path / "a/annotations/instances_train.json").read_text()
    assert ja == (tmp_path / "b/annotations/instances_train.json").read_text()
    assert (tmp_path / "a/train/000002.png").read_bytes() == (tmp_path / "b/train/000002.png").read_bytes()
    data = json.loads(ja)
    ds = CocoDetection(tmp_path / "a/train", tmp_path / "a/annotations/instances_train.json", max_size=64)
    assert len(ds) == 6 and [c["name"] for c in ds.categories] == ["rectangle", "ellipse", "triangle"]
    img, t = ds[0]
    anns = [a for a in data["annotations"] if a["image_id"] == t["image_id"]]
    assert img.shape == (3, 64, 64) and len(t["labels"]) == len(anns)
    for (x, y, w, h), box, a in zip([a["bbox"] for a in anns], t["boxes"], anns):
        assert torch.allclose(box, torch.tensor([(x + w / 2) / 64, (y + h / 2) / 64, w / 64, h / 64]), atol=1e-6)
        assert ds.label_to_cat[int(t["labels"][0])] in (1, 2, 3)


def write_coco(tmp_path, images, annotations, categories):
    (tmp_path / "img").mkdir()
    for im in images:
        Image.new("RGB", (im["width"], im["height"]), (10, 20, 30)).save(tmp_path / "img" / im["file_name"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann


def test_coco_loader_category_mapping_crowd_empty_resize_flip(tmp_path):
    images = [{"id": 7, "file_name": "a.png", "width": 100, "height": 50},
              {"id": 9, "file_name": "b.png", "width": 40, "height": 40}]
    anns = [{"id": 1, "image_id": 7, "category_id": 90, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 1}]
    cats = [{"id": 90, "name": "z"}, {"id": 3, "name": "a"}]
    ann = write_coco(tmp_path, images, anns, cats)
    ds = CocoDetection(tmp_path / "img", ann, max_size=64)
    assert ds.cat_to_label == {3: 0, 90: 1}
    img, t = ds[0]  # 100x50 -> 64x32 (scale 0.64); the crowd box is dropped
    assert img.shape == (3, 32, 64) and t["labels"].tolist() == [1]
    assert torch.allclose(t["boxes"][0], torch.tensor([20 / 100, 10 / 50, 20 / 100, 10 / 50]), atol=1e-6)
    assert t["orig_size"].tolist() == [100, 50] and t["size"].tolist() == [64, 32]
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    flip = CocoDetection(tmp_path / "img", ann, max_size=64, train=True)
    torch.manual_seed(0)
    flips = {round(flip[0][1]["boxes"][0, 0].item(), 4) for _ in range(20)}
    assert flips == {0.2, 0.8}  # cx and 1 - cx
    images_b, sizes, targets = collate([ds[0], ds[1]])
    assert images_b.shape == (2, 3, 64, 64) and sizes.tolist() == [[64, 32], [64, 64]]
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDetection(tmp_path / "img", tmp_path / "missing.json")


def test_perfect_predictions_give_ap_100(tmp_path):
    write_shapes(tmp_path, 0, 5, size=64, seed=1)
    ann = tmp_path / "annotations/instances_val.json"
    data = json.loads(ann.read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in data["annotations"]]
    m = coco_evaluate(ann, dets)
    assert m["AP"] == pytest.approx(100.0) and m["AP50"] == pytest.approx(100.0)
    assert m["APl"] == -1.0  # no object larger than 96 x 96 in 64-px images: pycocotools' "no data"
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2], d["bbox"][1], d["bbox"][2], d["bbox"][3]]} for d in dets]
    assert coco_evaluate(ann, shifted)["AP"] < 50.0


def test_make_shapes_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lors.cli", "make-shapes", str(tmp_path / "s"), "--train", "3",
                        "--val", "2", "--size", "48"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "s/train").glob("*.png"))) == 3
    r = subprocess.run([sys.executable, "-m", "lors.cli", "make-shapes", str(tmp_path / "t"), "--train", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--train" in r.stderr
