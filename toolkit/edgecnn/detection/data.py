"""Box datasets: COCO JSON (`coco:PATH`) and YOLO txt (`yolo:PATH`) folders, read and checked up front (no torch).

Every box is checked once when the dataset is read: a box outside its image, without area, or of a class the
dataset does not name stops the run with one line naming the file and the box, before any training starts.
Boxes are kept normalised to their image (x1, y1, x2, y2 in [0, 1]) so they follow any resize.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecnn.data import image_files, read_image
from edgecnn.errors import EdgeCNNError, printable

# Annotation tools round: a box may overhang its image by this much (pixels for COCO, a fraction for YOLO) and
# is clipped; more is a wrong box.
COCO_SLACK_PX = 1.0
YOLO_SLACK = 1e-3
FORMATS = ("coco", "yolo")


@dataclass
class BoxImage:
    path: Path
    boxes: np.ndarray  # (K, 4) float32 x1, y1, x2, y2 normalised to the image
    labels: np.ndarray  # (K,) int64 class index from 0

    def image(self) -> np.ndarray:
        """The image as RGB uint8."""
        return read_image(self.path)


@dataclass
class BoxDataset:
    spec: str
    classes: list[str]
    images: list[BoxImage]

    def __len__(self) -> int:
        return len(self.images)


def load_box_dataset(spec: str) -> BoxDataset:
    kind, sep, path = spec.partition(":")
    if not sep or kind not in FORMATS or not path:
        raise EdgeCNNError(f"dataset {spec}: a detection dataset is coco:FOLDER (annotations.json + images) or "
                           "yolo:FOLDER (images/, labels/, classes.txt)")
    folder = Path(path)
    if not folder.exists():
        raise EdgeCNNError(f"dataset {spec}: {folder} does not exist")
    dataset = _coco(folder) if kind == "coco" else _yolo(folder)
    dataset.spec = spec
    if not dataset.images:
        raise EdgeCNNError(f"dataset {spec}: no images")
    return dataset


def _coco(path: Path) -> BoxDataset:
    """A COCO JSON file, or a folder holding annotations.json; file names are relative to the JSON's folder (or
    its images/ subfolder)."""
    source = path / "annotations.json" if path.is_dir() else path
    try:
        data = json.loads(source.read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        index = {c["id"]: i for i, c in enumerate(categories)}
        images = {im["id"]: im for im in data["images"]}
        annotations = data["annotations"]
    except OSError as e:
        raise EdgeCNNError(f"cannot read {source}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise EdgeCNNError(f"{source}: not COCO annotations ({type(e).__name__}: {printable(e)})") from None
    boxes: dict[int, list] = {i: [] for i in images}
    for n, ann in enumerate(annotations):
        where = f"{source}: annotation {ann.get('id', n)}"
        image = images.get(ann.get("image_id"))
        if image is None:
            raise EdgeCNNError(f"{where}: image_id {printable(ann.get('image_id'))} is not in 'images'")
        where += f" on {printable(image.get('file_name'))}"
        if ann.get("category_id") not in index:
            raise EdgeCNNError(f"{where}: category_id {printable(ann.get('category_id'))} is not in 'categories'")
        box = _coco_box(ann.get("bbox"), image, where)
        boxes[ann["image_id"]].append((box, index[ann["category_id"]]))
    root = source.parent
    records = []
    for image_id, image in images.items():
        name = str(image.get("file_name", ""))
        found = next((p for p in (root / name, root / "images" / name) if p.is_file()), None)
        if found is None:
            raise EdgeCNNError(f"{source}: image {printable(name)} not found under {root} (or {root / 'images'})")
        records.append(_record(found, boxes[image_id]))
    return BoxDataset("", [str(c["name"]) for c in categories], records)


def _coco_box(bbox, image: dict, where: str) -> np.ndarray:
    try:
        x, y, w, h = (float(v) for v in bbox)
        width, height = float(image["width"]), float(image["height"])
    except (TypeError, ValueError, KeyError):
        raise EdgeCNNError(f"{where}: bbox {printable(bbox)} is not [x, y, width, height] (or the image has no "
                           "width/height)") from None
    if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
        raise EdgeCNNError(f"{where}: bbox {printable(bbox)} has no area")
    if x < -COCO_SLACK_PX or y < -COCO_SLACK_PX or x + w > width + COCO_SLACK_PX or y + h > height + COCO_SLACK_PX:
        raise EdgeCNNError(f"{where}: bbox {printable(bbox)} lies outside the {width:g}×{height:g} image")
    return np.clip([x / width, y / height, (x + w) / width, (y + h) / height], 0, 1)


def _yolo(folder: Path) -> BoxDataset:
    """images/ and labels/ (one .txt per image: `class cx cy w h`, normalised), class names in classes.txt or
    data.yaml `names`."""
    classes = _yolo_classes(folder)
    images_dir = folder / "images" if (folder / "images").is_dir() else folder
    labels_dir = folder / "labels" if (folder / "labels").is_dir() else images_dir
    records = []
    for path in image_files(images_dir, "yolo images"):
        label_file = labels_dir / path.relative_to(images_dir).with_suffix(".txt")
        found = []
        if label_file.is_file():
            for n, line in enumerate(label_file.read_text().splitlines(), 1):
                if line.strip():
                    found.append(_yolo_box(line, classes, f"{label_file}:{n}"))
        records.append(_record(path, found))
    return BoxDataset("", classes, records)


def _yolo_classes(folder: Path) -> list[str]:
    if (folder / "classes.txt").is_file():
        return [c.strip() for c in (folder / "classes.txt").read_text().splitlines() if c.strip()]
    if (folder / "data.yaml").is_file():
        import yaml

        try:
            names = yaml.safe_load((folder / "data.yaml").read_text()).get("names")
        except (yaml.YAMLError, AttributeError) as e:
            raise EdgeCNNError(f"{folder / 'data.yaml'}: not YAML with `names` ({e})") from None
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if isinstance(names, list) and names:
            return [str(n) for n in names]
    raise EdgeCNNError(f"yolo:{folder}: no classes.txt (one name per line) or data.yaml with `names`")


def _yolo_box(line: str, classes: list[str], where: str) -> tuple[np.ndarray, int]:
    parts = line.split()
    try:
        cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
        if len(parts) != 5:
            raise ValueError
    except (ValueError, IndexError):
        raise EdgeCNNError(f"{where}: expected `class cx cy w h`, got {printable(line.strip())}") from None
    if not 0 <= cls < len(classes):
        raise EdgeCNNError(f"{where}: class {cls} is not one of the {len(classes)} classes")
    if not all(map(math.isfinite, (cx, cy, w, h))) or w <= 0 or h <= 0:
        raise EdgeCNNError(f"{where}: box {printable(line.strip())} has no area")
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    if (box < -YOLO_SLACK).any() or (box > 1 + YOLO_SLACK).any():
        raise EdgeCNNError(f"{where}: box {printable(line.strip())} lies outside the image (values are fractions "
                           "of the image size)")
    return np.clip(box, 0, 1), cls


def _record(path: Path, found: list[tuple[np.ndarray, int]]) -> BoxImage:
    boxes = np.array([b for b, _ in found], np.float32).reshape(-1, 4)
    return BoxImage(path, boxes, np.array([c for _, c in found], np.int64))
