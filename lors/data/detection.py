"""Detection data in COCO format: a dataset, a collate function, and a synthetic-shapes writer.

``CocoDetection`` reads an instances JSON and its image folder with Pillow, maps
category ids to contiguous labels 0..K-1 (sorted by id), drops crowd boxes from the
training targets (COCO evaluation still sees them) and keeps images without boxes.
Images are resized so the longer side is ``max_size`` (aspect kept), normalised, and
optionally flipped; targets are ``boxes`` (T, 4) cxcywh normalised by the resized
image, ``labels`` (T,), ``image_id``, ``orig_size`` and ``size`` (w, h).

``write_shapes`` renders a deterministic synthetic set (rectangles, ellipses,
triangles; random colours, sizes from tiny to large, overlaps, noisy backgrounds)
and writes it in COCO format, so detection runs need nothing downloaded.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import require

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
SHAPES = ("rectangle", "ellipse", "triangle")


class CocoDetection(Dataset):
    def __init__(self, image_dir: str | Path, ann_file: str | Path, max_size: int = 128, train: bool = False):
        require("PIL", "detection", "COCO-format detection data")
        self.image_dir, ann_file = Path(image_dir), Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {ann_file}")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image directory not found: {self.image_dir}")
        data = json.loads(ann_file.read_text())
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{ann_file} is not a COCO instances file: missing '{key}'")
        self.ann_file = ann_file
        self.categories = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_to_label = {c["id"]: i for i, c in enumerate(self.categories)}
        self.label_to_cat = {i: c for c, i in self.cat_to_label.items()}
        self.images = sorted(data["images"], key=lambda im: im["id"])
        self.anns: dict[int, list] = {im["id"]: [] for im in self.images}
        for a in data["annotations"]:
            if a["image_id"] in self.anns:
                self.anns[a["image_id"]].append(a)
        self.max_size, self.train = max_size, train

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        info = self.images[i]
        with Image.open(self.image_dir / info["file_name"]) as im:
            im = im.convert("RGB")
            w0, h0 = im.size
            scale = self.max_size / max(w0, h0)
            w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
            im = im.resize((w, h), Image.BILINEAR)
            img = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        boxes, labels = [], []
        for a in self.anns[info["id"]]:
            x, y, bw, bh = a["bbox"]
            if a.get("iscrowd", 0) or bw <= 0 or bh <= 0:
                continue
            boxes.append([x * scale, y * scale, (x + bw) * scale, (y + bh) * scale])
            labels.append(self.cat_to_label[a["category_id"]])
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if self.train and torch.rand(()) < 0.5:
            img = img.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], -1)
        cxcywh = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h,
                              (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h], -1)
        target = {"boxes": cxcywh, "labels": torch.tensor(labels, dtype=torch.long), "image_id": info["id"],
                  "orig_size": torch.tensor([w0, h0]), "size": torch.tensor([w, h])}
        return (img - MEAN) / STD, target


def collate(batch, divisor: int = 32):
    """Pad images to a common size divisible by ``divisor``: (images (B, 3, H, W), image_sizes (B, 2) (w, h), targets)."""
    imgs, targets = zip(*batch)
    H = max(im.shape[1] for im in imgs)
    W = max(im.shape[2] for im in imgs)
    H, W = math.ceil(H / divisor) * divisor, math.ceil(W / divisor) * divisor
    padded = torch.stack([F.pad(im, (0, W - im.shape[2], 0, H - im.shape[1])) for im in imgs])
    sizes = torch.stack([t["size"] for t in targets])
    return padded, sizes, list(targets)


# -- synthetic shapes ------------------------------------------------------------------------

def _draw_shape(draw, kind: str, box, color) -> None:
    x0, y0, x1, y1 = box
    if kind == "rectangle":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=color)
    elif kind == "ellipse":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=color)
    else:  # triangle with its apex on the top edge and base on the bottom edge: tight box
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=color)


def render_shapes_image(rng: np.random.Generator, size: int, max_objects: int = 6):
    """One image (PIL) and its objects [(category index, [x, y, w, h])]."""
    from PIL import Image, ImageDraw

    bg = rng.integers(0, 256, 3)
    noise = rng.normal(0, rng.uniform(5, 30), (size, size, 3))
    pixels = np.clip(bg[None, None, :] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 4)):  # clutter lines that are not objects
        draw.line([tuple(rng.integers(0, size, 2)), tuple(rng.integers(0, size, 2))],
                  fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3)))
    objects = []
    n = 0 if rng.random() < 0.05 else int(rng.integers(1, max_objects + 1))
    for _ in range(n):
        side = math.exp(rng.uniform(math.log(6), math.log(size * 0.6)))  # tiny to large, log-uniform
        aspect = math.exp(rng.uniform(-0.6, 0.6))
        w = max(4, min(size, round(side * aspect)))
        h = max(4, min(size, round(side / aspect)))
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        kind = int(rng.integers(0, len(SHAPES)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        _draw_shape(draw, SHAPES[kind], (x0, y0, x0 + w, y0 + h), color)
        objects.append((kind, [x0, y0, w, h]))
    return img, objects


def write_shapes(out: str | Path, n_train: int, n_val: int, size: int = 128, seed: int = 0) -> Path:
    """Write ``out/{train,val}/*.png`` and ``out/annotations/instances_{train,val}.json``; deterministic in ``seed``."""
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 1)):
        rng = np.random.default_rng([seed, offset])
        (out / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            img, objects = render_shapes_image(rng, size)
            name = f"{i:06d}.png"
            img.save(out / split / name)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for kind, (x, y, w, h) in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": kind + 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        (out / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out
