"""`edgecnn label`: a COCO dataset from footage, labelled by a teacher detector (torch-free)."""

from __future__ import annotations

from pathlib import Path

import click

from edgecnn.cli.common import THREADS, console, no_verify_option


@click.command()
@click.argument("source")
@click.option("--teacher", "teacher_path", type=click.Path(path_type=Path), required=True,
              help="A detector file (an edgecnn export, or one sealed with `edgecnn adopt --task detect`).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="A new folder: images/ and annotations.json (COCO), read back as coco:FOLDER.")
@click.option("--frames", help="START:END, the frames (or images) to take, END excluded [default: all].")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Take every N-th frame.")
@click.option("--min-score", type=click.FloatRange(0, 1), help="Score a box needs [default: the teacher card's].")
@click.option("--threads", type=THREADS, default=2, show_default=True, help="Inference threads.")
@no_verify_option("Do not check the teacher against its content hash.")
def label(source: str, teacher_path: Path, out: Path, frames: str | None, every: int, min_score: float | None,
          threads: int, no_verify: bool) -> None:
    """Label SOURCE — a video file, camera index, rtsp:// or http:// stream, or a folder of images — with the
    teacher's boxes, and write a COCO detection dataset to --out (frames without boxes included)."""
    from edgecnn.label import LabelOptions, label_dataset, parse_frames
    from edgecnn.runtime import load
    from edgecnn.runtime.report import shown

    start, end = parse_frames(frames) if frames else (0, None)
    teacher = load(teacher_path, threads, verify=not no_verify, task="detect")
    for note in teacher.notes:
        console.print(shown(note))
    counts = label_dataset(source, teacher, teacher_path, out, LabelOptions(start, end, every, min_score))
    console.print(shown(f"wrote {out}: {counts['images']} images, {counts['boxes']} boxes "
                        f"({counts['images'] - counts['with_boxes']} images without any)"))
