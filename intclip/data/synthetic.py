"""A generated dataset in the exact Intentonomy format, whose labels are visible in the pixels.

Each class is a coloured square at its own place in the image; an image shows the squares of its
labels. The demo and the tests train on it: a model that learns anything reaches a high mAP, so
a broken pipeline shows at once, without the real (20 GB) images.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.common.files import atomic_write_text


@dataclass(frozen=True)
class SyntheticDataset:
    image_root: Path
    train: Path
    val: Path
    test: Path
    num_classes: int

    def data_config(self, **settings: object) -> dict[str, object]:
        """The `data:` section of a training config reading this dataset, plus `settings`."""
        return {
            "image_root": str(self.image_root),
            "train": str(self.train),
            "val": str(self.val),
            "test": str(self.test),
            "num_classes": self.num_classes,
            **settings,
        }


def _colour(label: int, num_classes: int) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(label / num_classes, 0.9, 1.0)
    return int(red * 255), int(green * 255), int(blue * 255)


def _draw(labels: list[int], num_classes: int, size: int, rng: np.random.Generator) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(0, 60, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    side = max(2, size // 3)
    for label in labels:
        cell = label % 9
        x = (cell % 3) * side + int(rng.integers(0, max(1, side // 4)))
        y = (cell // 3) * side + int(rng.integers(0, max(1, side // 4)))
        draw.rectangle(
            [x, y, x + side * 3 // 4, y + side * 3 // 4], fill=_colour(label, num_classes)
        )
    return image


def make_synthetic_intentonomy(
    root: Path,
    num_classes: int = 4,
    sizes: tuple[int, int, int] = (96, 33, 33),
    image_size: int = 32,
    seed: int = 0,
) -> SyntheticDataset:
    """Write images and train/val/test annotation JSONs under `root`.

    Train annotations carry `category_ids_softprob` (k/3 agreement, as the real train file);
    val and test carry `category_ids`. Image files are `low/<id>.png` under `root/images`.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    image_root = root / "images"
    (image_root / "low").mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count in zip(("train", "val", "test"), sizes, strict=True):
        images, annotations = [], []
        for number in range(count):
            image_id = f"{split}{number:05d}"
            chosen = rng.random(num_classes) < 0.35
            if not chosen.any():
                chosen[rng.integers(num_classes)] = True
            labels = [int(i) for i in np.flatnonzero(chosen)]
            _draw(labels, num_classes, image_size, rng).save(image_root / "low" / f"{image_id}.png")
            images.append({"id": image_id, "filename": f"low/{image_id}.png"})
            annotation: dict[str, object] = {"id": number, "image_id": image_id}
            if split == "train":
                agreement = rng.integers(1, 4, size=num_classes) / 3.0
                annotation["category_ids_softprob"] = [
                    round(float(agreement[i]), 4) if chosen[i] else 0.0 for i in range(num_classes)
                ]
            else:
                annotation["category_ids"] = labels
            annotations.append(annotation)
        categories = [{"id": i, "name": f"class{i}"} for i in range(num_classes)]
        document = {
            "info": {"description": f"synthetic Intentonomy-format {split} split"},
            "categories": categories,
            "images": images,
            "annotations": annotations,
        }
        files[split] = root / f"synthetic_{split}.json"
        atomic_write_text(files[split], json.dumps(document, indent=1) + "\n")
    return SyntheticDataset(image_root, files["train"], files["val"], files["test"], num_classes)
