"""`edgecnn label`: a COCO detection dataset from a camera's own footage, labelled by a teacher detector
(torch-free).

The folder it writes (`images/` and `annotations.json`) is what `coco:PATH` reads back for training. Frames where
the teacher found nothing are kept: they teach a student what background looks like. The dataset is built under a
temporary name beside `--out` and renamed into place when complete, so a stopped run leaves nothing half-written;
Ctrl-C on a camera or stream ends the capture and keeps the frames taken so far.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgecnn import __version__
from edgecnn.atomic import fsync_dir, scratch_beside, write_json
from edgecnn.data import IMAGE_SUFFIXES, image_files
from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.capture import open_capture, source_kind
from edgecnn.runtime.detector import Detector
from edgecnn.runtime.formats import model_bytes

JPEG_QUALITY = 95


@dataclass
class LabelOptions:
    start: int = 0  # first frame (or image) index taken
    end: int | None = None  # one past the last; None: to the end of the source
    every: int = 1
    min_score: float | None = None  # instead of the teacher card's


def parse_frames(text: str) -> tuple[int, int | None]:
    """'START:END' (END exclusive, either may be empty) → (start, end)."""
    start, sep, end = text.partition(":")
    try:
        first = int(start) if start.strip() else 0
        last = int(end) if end.strip() else None
    except ValueError:
        first, last = -1, None
    if not sep or first < 0 or (last is not None and last <= first):
        raise EdgeCNNError(f"--frames {text}: expected START:END frame numbers with START < END, e.g. 0:600")
    return first, last


@dataclass
class Picture:
    index: int  # in the source
    image: np.ndarray
    original: Path | None = None  # an image file: copied as it is, not re-encoded


def pictures(source: str, options: LabelOptions) -> Iterator[Picture]:
    """The frames (or images) `options` select, in order."""
    wanted = range(options.start, options.end if options.end is not None else 2**62, options.every)
    if Path(source).is_dir():
        for index, path in enumerate(image_files(Path(source), "SOURCE")):
            if index in wanted:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    raise EdgeCNNError(f"{path}: not a readable image")
                yield Picture(index, image, path)
        return
    if source_kind(source) == "file" and not Path(source).is_file():
        raise EdgeCNNError(f"SOURCE {source}: no such file or folder")
    capture = open_capture(source)
    if capture is None:
        raise EdgeCNNError(f"SOURCE {source}: OpenCV cannot open it as a video, camera or stream")
    try:
        if source_kind(source) == "file" and options.start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, options.start)
        index = options.start if source_kind(source) == "file" else 0
        while index < wanted.stop:
            ok, frame = capture.read()
            if not ok:
                return
            if index in wanted:
                yield Picture(index, frame)
            index += 1
    finally:
        capture.release()


def label_dataset(source: str, teacher: Detector, teacher_path: Path, out: Path, options: LabelOptions) -> dict:
    """Label `source` with `teacher` into a new COCO dataset folder `out`; returns what it wrote (counts)."""
    if out.exists():
        raise EdgeCNNError(f"--out {out}: already exists; label into a new folder (nothing there was changed)")
    if options.min_score is not None:
        teacher.min_score = options.min_score
    with scratch_beside(out) as scratch:
        work = scratch / out.name
        try:
            (work / "images").mkdir(parents=True)
            images, annotations = _label_pictures(source, teacher, options, work / "images")
            write_json(work / "annotations.json", {
                "info": {"description": f"{source} labelled by {teacher_path.name}", "version": __version__,
                         "teacher": str(teacher_path), "teacher_sha256": _sha256(teacher_path),
                         "min_score": teacher.min_score, "source": source},
                "images": images, "annotations": annotations,
                "categories": [{"id": i + 1, "name": name} for i, name in enumerate(teacher.labels)],
            })
            fsync_dir(work / "images")
            work.replace(out)
            fsync_dir(out.parent)
        except OSError as e:  # a full disk or a folder that vanished: nothing is left under --out
            raise EdgeCNNError(f"cannot write the dataset to {out}: {e.strerror or e}") from None
    return {"images": len(images), "boxes": len(annotations),
            "with_boxes": len({a["image_id"] for a in annotations})}


def _label_pictures(source: str, teacher: Detector, options: LabelOptions,
                    folder: Path) -> tuple[list[dict], list[dict]]:
    """Save each selected picture into `folder` and list it with the teacher's boxes (COCO records)."""
    images, annotations = [], []
    try:
        for picture in pictures(source, options):
            found = teacher.detect(picture.image)  # before the image is listed: an interrupt here leaves
            images.append(_save(picture, folder, len(images) + 1))  # no image without its boxes
            for d in found:
                x1, y1, x2, y2 = d.box
                annotations.append({"id": len(annotations) + 1, "image_id": len(images), "category_id": d.index + 1,
                                    "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                                    "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0, "score": round(d.score, 4)})
    except KeyboardInterrupt:  # a camera or stream has no end: Ctrl-C keeps what was taken
        pass
    if not images:
        raise EdgeCNNError(f"SOURCE {source}: no frame in the range asked for (--frames {options.start}:"
                           f"{'' if options.end is None else options.end})")
    return images, annotations


def _save(picture: Picture, folder: Path, image_id: int) -> dict:
    if picture.original is not None and picture.original.suffix.lower() in IMAGE_SUFFIXES:
        name = f"{image_id:06d}{picture.original.suffix.lower()}"
        shutil.copyfile(picture.original, folder / name)
    else:
        name = f"{image_id:06d}.jpg"
        ok, jpeg = cv2.imencode(".jpg", picture.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise EdgeCNNError(f"frame {picture.index}: OpenCV cannot encode it as JPEG")
        (folder / name).write_bytes(jpeg.tobytes())
    height, width = picture.image.shape[:2]
    return {"id": image_id, "file_name": f"images/{name}", "width": width, "height": height,
            "frame": picture.index}


def _sha256(path: Path) -> str:
    return hashlib.sha256(model_bytes(path)).hexdigest()
