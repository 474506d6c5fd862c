"""`edgecnn watch`: run a classifier or a detector on a video file or camera stream as it plays (torch-free)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgecnn.cli.common import IMG_SIZE, THREADS, console, no_verify_option, options_from, rgb, warn_about_threads
from edgecnn.runtime.formats import ENGINES


@click.command()
@click.argument("model_path", metavar="FILE", type=click.Path(path_type=Path))
@click.argument("source")
@click.option("--threads", type=THREADS, default=2, show_default=True, help="Inference threads.")
@click.option("--img-size", type=IMG_SIZE, help="Input size, for files without an edgecnn card.")
@click.option("--mean", help="Normalisation mean r,g,b (0..1), for files without a card.")
@click.option("--std", help="Normalisation std r,g,b, for files without a card.")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Class names, one per line.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the model on every N-th frame.")
@click.option("--max-fps", type=click.FloatRange(min=0, min_open=True),
              help="Run the model on at most this many frames/s.")
@click.option("--roi", help="Look only at this region: x,y,w,h in pixels.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after N frames went through the model.")
@click.option("--alert", help="Comma-separated labels that make an event (a detector's also LABEL@ZONE).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Score an --alert label needs.")
@click.option("--min-frames", type=click.IntRange(min=1), default=3, show_default=True,
              help="Frames in a row a label must hold to make an event (and be absent to re-arm).")
@click.option("--zone", "zone_texts", multiple=True,
              help="Detector: a zone 'NAME:x,y;x,y;x,y;...' (pixels, quoted); enter/leave events, dwell time. "
                   "Repeatable.")
@click.option("--line", "line_texts", multiple=True,
              help="Detector: a counting line NAME:x1,y1,x2,y2 (pixels); crossings per direction. Repeatable.")
@click.option("--classify", "classifier_path", type=click.Path(path_type=Path),
              help="Detector: run this classifier on each tracked box's crop (detect → classify).")
@click.option("--min-score", type=click.FloatRange(0, 1),
              help="Detector: score a box needs [default: the model card's].")
@click.option("--events", type=click.Path(path_type=Path),
              help="Append one JSON line per event here; snapshots go to <name>_snapshots/.")
@click.option("--save", type=click.Path(path_type=Path), help="Write the annotated video (.mp4, .avi).")
@click.option("--show", is_flag=True, help="Show the annotated frames in a window (when a display exists).")
@click.option("--stats-json", type=click.Path(path_type=Path), help="Write the pipeline statistics at the end.")
@click.option("--realtime", is_flag=True, help="Play a video file at its own frame rate, as a camera would deliver it.")
@click.option("--give-up-after", type=click.FloatRange(min=0), help="Stop when a stream stays down this many seconds.")
@click.option("--backend", type=click.Choice(ENGINES),
              help="Run FILE in this engine where it reads the format (openvino also runs .onnx) [default: its own].")
@no_verify_option("Do not check an edgecnn file against its content hash.")
def watch(model_path: Path, source: str, threads: int, img_size: int | None, mean: str | None, std: str | None,
          labels_file: Path | None, alert: str | None, zone_texts: tuple[str, ...], line_texts: tuple[str, ...],
          classifier_path: Path | None, no_verify: bool, backend: str | None,
          **params) -> None:
    """Run the classifier or detector FILE (.tflite, .onnx, OpenVINO .xml, ExecuTorch .pte) on SOURCE — a video
    file, camera index or rtsp://, http:// stream — as it plays (torch-free). A detector's boxes are tracked;
    --zone and --line turn them into events and counts."""
    import signal
    import threading

    import cv2

    from edgecnn.data import read_labels
    from edgecnn.runtime import load
    from edgecnn.runtime.report import shown
    from edgecnn.scene import parse_line, parse_zone
    from edgecnn.watch import WatchOptions, parse_roi, run_watch

    warn_about_threads(threads)
    labels = read_labels(labels_file) if labels_file else None
    model = load(model_path, threads, img_size=img_size, mean=rgb(mean, "--mean"), std=rgb(std, "--std"),
                 labels=labels, verify=not no_verify, backend=backend)
    classifier = load(classifier_path, threads, verify=not no_verify, task="classify") if classifier_path else None
    for note in model.notes + (classifier.notes if classifier else []):
        console.print(shown(note))
    alerts = tuple(a.strip() for a in alert.split(",") if a.strip()) if alert else ()
    options = options_from(WatchOptions, params, alert_labels=alerts,
                           roi=parse_roi(params["roi"]) if params["roi"] else None,
                           zones=[parse_zone(z) for z in zone_texts], lines=[parse_line(ln) for ln in line_texts])
    # A reconnecting stream makes OpenCV and FFmpeg log every failed try; the status lines say what matters.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    summary = run_watch(source, model, options, stop, report=console.print, classifier=classifier)
    latency = summary["latency_ms"] or {"p50": float("nan"), "p90": float("nan")}
    console.print(f"{summary['frames_processed']} frames processed of {summary['frames_captured']} captured "
                  f"({summary['frames_dropped']} dropped, {summary['bad_frames']} bad, {summary['reconnects']} "
                  f"reconnects); inference {summary['inference_fps']:.1f} fps, capture {summary['capture_fps']:.1f} "
                  f"fps; latency p50 {latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms; {summary['events']} events")
    for name, counts in summary.get("lines", {}).items():
        console.print(shown(f"line {name}: {counts['in']} in, {counts['out']} out"))
    for name, counts in summary.get("zones", {}).items():
        console.print(shown(f"zone {name}: {counts['entered']} entered, {counts['left']} left"))
