"""Regression tests for the adversarial pass (issue 18): hostile names, hosts and files end in one clear line,
never in a crash, an injected option or a terminal that obeys a file."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import assert_clean_error, edgecnn, edgecnn_in_process, free_port, record
from edgecnn.data import load_dataset, read_image
from edgecnn.errors import EdgeCNNError
from edgecnn.export.sources import video_frames
from edgecnn.preprocess import Preprocess
from edgecnn.recipe import load_recipe
from edgecnn.runtime import load
from edgecnn.runtime.classifier import Classifier
from edgecnn.runtime.modelfile import embed_card, read_model_file
from edgecnn.watch import WatchOptions, run_watch
from test_watch import VIDEOS, _gst_rtsp_available, _start_rtsp, needs_videos

needs_rtsp = pytest.mark.skipif(not _gst_rtsp_available(), reason="GStreamer RTSP server missing")

pytestmark = pytest.mark.reliability

ESCAPES = "\x1b[2J\x1b[H\x1b[32mintegrity verified\x1b[0m"


def test_an_ssh_destination_is_never_an_option(digits_int8, tmp_path):
    marker = tmp_path / "ran"
    hostile = [f"ssh://-oProxyCommand=touch {marker}@host", "ssh://-oProxyCommand=touch@host",
               "ssh://pi@-oProxyCommand=x", "ssh://p\ti@host", "ssh://pi@ho\x07st"]
    for url in hostile:
        assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", url), "may not start with '-'")
    assert not marker.exists()
    record("ssh destinations", tried=len(hostile), handled=len(hostile))


def crafted_card_copy(source, path, **fields):
    """`source` with its card's fields replaced, sealed again: a file that verifies, written by an attacker."""
    path.write_bytes(source.read_bytes())
    embed_card(path, {**read_model_file(source).card, **fields})
    return path


@needs_videos
def test_text_from_a_file_cannot_drive_the_terminal(digits_int8, tmp_path):
    labels = [ESCAPES, "[bold red]fake[/bold red]", "\u202eevil", *map(str, range(3, 10))]
    crafted = crafted_card_copy(digits_int8["onnx"], tmp_path / "crafted.onnx", labels=labels,
                                edgecnn_version=ESCAPES)
    shown = edgecnn("info", crafted)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout
    assert "\\x1b[2J" in shown.stdout and "[bold red]fake" in shown.stdout  # shown, escaped, not obeyed
    refused = edgecnn("watch", crafted, VIDEOS / "bikes.mp4", "--alert", "cat")
    assert_clean_error(refused, "not a label")
    assert "\x1b" not in refused.stderr and "\\x1b[2J" in refused.stderr
    record("terminal escapes in cards", tried=2, handled=2)


def _bad_name(folder, stem: bytes, suffix: bytes):
    """A path whose file name is not valid UTF-8, as Python hands such names around (surrogate escapes)."""
    return folder / os.fsdecode(stem + b"\xff\xfe" + suffix)


def test_image_names_that_are_not_utf8(tmp_path):
    """OpenCV 5's imread crashed the process on such names: the images are read, training runs."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(8):
            name = _bad_name(tmp_path / "photos" / label, f"img{i}".encode(), b".png") if i % 2 else \
                tmp_path / "photos" / label / f"img{i}.png"
            ok, png = cv2.imencode(".png", rng.integers(0, 255, (20, 20, 3), np.uint8))
            name.write_bytes(png.tobytes())
    assert read_image(_bad_name(tmp_path / "photos" / "a", b"img1", b".png")).shape == (20, 20, 3)
    result = edgecnn_in_process("train", "--model", "tinycnn", "--dataset", f"imagefolder:{tmp_path / 'photos'}",
                                "--epochs", "1", "--img-size", "16", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    record("file names that are not UTF-8", tried=2, handled=2)


@needs_videos
def test_video_names_that_are_not_utf8(digits_int8, tmp_path):
    video = _bad_name(tmp_path, b"camera", b".mp4")
    shutil.copy(VIDEOS / "bikes.mp4", video)
    assert_clean_error(edgecnn("watch", digits_int8["tflite"], video, "--max-frames", "2"), "not valid UTF-8",
                       "b'")
    with pytest.raises(EdgeCNNError, match="not valid UTF-8"):  # export --calib-video reads frames here
        video_frames(video, 10, Preprocess(32), 5)
    record("file names that are not UTF-8", tried=1, handled=1)


@needs_videos
@needs_rtsp
def test_a_camera_that_comes_up_after_watch_starts(digits_int8, tmp_path):
    """A box that boots before its camera: watch keeps trying until --give-up-after, as after a drop."""
    port = free_port()
    watch = subprocess.Popen([sys.executable, "-m", "edgecnn", "watch", digits_int8["onnx"],
                              f"rtsp://127.0.0.1:{port}/s", "--give-up-after", "60", "--max-frames", "5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    server = _start_rtsp(VIDEOS / "bikes.mp4", port)
    try:
        stdout, stderr = watch.communicate(timeout=90)
    finally:
        server.kill()
        watch.kill()
    assert watch.returncode == 0 and "5 frames processed" in stdout, stderr
    started = time.monotonic()
    assert_clean_error(edgecnn("watch", digits_int8["onnx"], f"rtsp://127.0.0.1:{free_port()}/s",
                               "--give-up-after", "2"), "cannot open stream", "within 2 s")
    assert time.monotonic() - started > 2
    record("watch: camera down at start", tried=2, handled=2)


class FramesItCannotTake(Classifier):
    """A classifier every frame is wrong for: the pipeline's own path for frames it must skip."""

    def prepare(self, image, color="BGR"):
        raise EdgeCNNError(f"a {image.shape[1]}×{image.shape[0]} frame does not fit this model")


@needs_videos
def test_watch_that_classified_nothing_fails_and_says_why(digits_int8):
    classifier = load(digits_int8["tflite"])
    classifier.__class__ = FramesItCannotTake
    with pytest.raises(EdgeCNNError, match=r"none of \d+ frames could be processed .* does not fit this model"):
        run_watch(str(VIDEOS / "bikes.mp4"), classifier, WatchOptions(max_frames=5), threading.Event())
    record("watch: nothing classified", tried=1, handled=1)


def _export_process(checkpoint, out):
    return subprocess.Popen([sys.executable, "-m", "edgecnn", "export", checkpoint, "--int8", "--calibration",
                             "minmax", "--out", out, "--json", out / "report.json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(process, text: str) -> None:
    for line in process.stdout:
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed: {process.stderr.read()}")


@pytest.mark.parametrize("delay", [0.0, 1.5, 4.0])
def test_ctrl_c_during_export_always_stops_it(digits_checkpoint, tmp_path, delay):
    """SIGINT at some point of the conversion: exit 130, no file under a final name, no scratch left."""
    out = tmp_path / "out"
    export = _export_process(digits_checkpoint, out)
    try:
        _wait_for(export, "exporting")
        time.sleep(delay)
        export.send_signal(signal.SIGINT)
        _, stderr = export.communicate(timeout=120)
    finally:
        export.kill()
    assert export.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not out.exists() or list(out.iterdir()) == []
    record("export: Ctrl-C", tried=1, handled=1)


CTRL_C_DURING_IMPORT = """
import os, signal, sys, threading, time
from edgecnn.signals import interruptible
sys.path.insert(0, sys.argv[1])
started = time.monotonic()
with interruptible():
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        import slow_module
        time.sleep(10)
    except KeyboardInterrupt:
        print(sys.modules["slow_module"].LAST_LINE_RAN, round(time.monotonic() - started, 1))
"""


def test_ctrl_c_during_an_import_waits_for_it_then_stops(tmp_path):
    """An import cut midway can crash (jaxlib's native modules segfault when their initialisation is cut, which
    killed an export with SIGSEGV on Ctrl-C): the interrupt comes right after the import instead."""
    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(1.5)\nLAST_LINE_RAN = True\n")
    done = subprocess.run([sys.executable, "-c", CTRL_C_DURING_IMPORT, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    last_line_ran, seconds = done.stdout.split()
    assert last_line_ran == "True" and 1.5 <= float(seconds) < 5, done.stdout
    record("Ctrl-C during an import", tried=1, handled=1)


def test_two_exports_into_one_folder(digits_checkpoint, tmp_path):
    out = tmp_path / "out"
    first = _export_process(digits_checkpoint, out)
    try:
        _wait_for(first, "exporting")
        second = edgecnn("export", digits_checkpoint, "--int8", "--out", out)
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert_clean_error(second, "another export is writing to this folder")
    assert first.returncode == 0, stderr
    for artefact in json.loads((out / "report.json").read_text())["artifacts"]:
        assert hashlib.sha256(Path(artefact["path"]).read_bytes()).hexdigest() == artefact["sha256"]
    record("export: two writers", tried=1, handled=1)


def test_a_card_that_contradicts_its_tensors_is_refused(digits_int8, tmp_path):
    card = read_model_file(digits_int8["tflite"]).card
    huge = crafted_card_copy(digits_int8["tflite"], tmp_path / "huge.tflite",
                             preprocess={**card["preprocess"], "img_size": 20000})
    assert_clean_error(edgecnn("watch", huge, "0"), "card says input size 20000", "32×32")
    wrong_labels = crafted_card_copy(digits_int8["onnx"], tmp_path / "labels.onnx", labels=["cat", "dog"])
    with pytest.raises(EdgeCNNError, match="name 2 classes but the model outputs 10"):
        load(wrong_labels)
    with pytest.raises(EdgeCNNError, match="img_size 64 does not fit .* fixed at 32×32"):
        load(digits_int8["onnx"], img_size=64)
    record("cards that contradict their tensors", tried=3, handled=3)


@needs_videos
def test_runtime_settings_that_would_give_nan_scores(digits_int8, tmp_path):
    video = VIDEOS / "bikes.mp4"
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    cases = [(("--std", "0,0,0"), "std [0.0, 0.0, 0.0]"), (("--mean", "nan,0,0"), "mean [nan, 0.0, 0.0]"),
             (("--labels", tmp_path / "labels.txt"), "name 2 classes but the model outputs 10")]
    for args, message in cases:
        assert_clean_error(edgecnn("watch", digits_int8["tflite"], video, *args), message)
    with pytest.raises(EdgeCNNError, match="std"):
        load(digits_int8["tflite"], std=(0.0, 0.0, 0.0))
    record("watch/runtime: preprocessing that gives NaN, labels that do not fit", tried=4, handled=4)


def test_a_declared_input_too_large_to_allocate(tmp_path):
    """A third-party file declaring a 1×3×100000×100000 input (224 GiB as float) is refused before anything
    allocates it: by the runtime, `bench` and `summary`."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
         onnx.helper.make_node("Flatten", ["pooled"], ["y"])], "huge",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 100000, 100000])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "huge.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    with pytest.raises(EdgeCNNError, match="would take 111.8 GiB"):
        load(path)
    result = edgecnn("bench", path, "--runs", "1")
    assert result.returncode != 0 and "GiB per inference" in result.stderr, result.stderr
    record("declared inputs too large to allocate", tried=2, handled=2)


def test_an_image_folder_is_checked_once_and_every_problem_listed(tmp_path):
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    for split, label, count in (("train", "cat", 3), ("train", "dog", 3), ("val", "cat", 1), ("val", "dog", 1),
                                ("val", "owl", 1)):
        (tmp_path / split / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (tmp_path / split / label / f"{i}.png").write_bytes(png)
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "train" / "cat" / "zero.jpg").write_bytes(b"")
    (tmp_path / "train" / "dog" / "text.png").write_text("not a picture")
    with pytest.raises(EdgeCNNError) as caught:
        load_dataset(f"imagefolder:{tmp_path}")
    message = str(caught.value)
    for problem in ("4 problem(s)", "class 'owl' is in val/ but not in train/", "class 'empty' has no images",
                    "zero.jpg: empty file", "text.png: not an image file"):
        assert problem in message, message
    (tmp_path / "empty-only").mkdir()
    for name in ("a", "b"):
        (tmp_path / "empty-only" / name).mkdir()
    assert_clean_error(edgecnn("train", "--model", "tinycnn", "--dataset", f"imagefolder:{tmp_path / 'empty-only'}",
                               "--out", tmp_path / "run"), "2 problem(s)", "has no images")
    record("image folders with problems", tried=2, handled=2)


ALIAS_BOMB = "\n".join(
    [f"l0: &l0 [{', '.join(['x'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["train: {lr: *l8}"])


def test_recipes_that_expand_escape_or_spell_numbers_differently(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)  # 9⁹ = 387 million values from about 500 bytes
    started = time.monotonic()
    result = edgecnn("run", bomb, timeout=60)
    assert_clean_error(result, "expands to more than 100,000 values")
    assert time.monotonic() - started < 30 and len(result.stderr) < 500
    for name in ("../../escaped", "/tmp/escaped", ".."):
        recipe = tmp_path / "escape.yaml"
        recipe.write_text(f"name: '{name}'\ntrain: {{epochs: 1}}\n")
        assert_clean_error(edgecnn("run", recipe, cwd=tmp_path), "must be one folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml", "escape.yaml"]
    written = tmp_path / "lr.yaml"
    written.write_text("train: {lr: 1e-3, warmup_epochs: 2.5e-1}\n")
    assert load_recipe(written).train.lr == 0.001 and load_recipe(written).train.warmup_epochs == 0.25
    record("recipes: alias bombs, names outside runs/", tried=4, handled=4)


def test_checkpoints_find_their_dataset_from_any_directory(tmp_path):
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    for label in ("a", "b"):
        (tmp_path / "work" / "photos" / label).mkdir(parents=True)
        for i in range(6):
            (tmp_path / "work" / "photos" / label / f"{i}.png").write_bytes(png)
    trained = edgecnn_in_process("train", "--model", "tinycnn", "--dataset", "imagefolder:photos", "--epochs", "1",
                                 "--img-size", "16", "--out", "run", cwd=tmp_path / "work")
    assert trained.returncode == 0, trained.stderr
    elsewhere = edgecnn_in_process("eval", tmp_path / "work" / "run" / "best.pt", cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr
    shutil.move(tmp_path / "work" / "photos", tmp_path / "moved")
    assert_clean_error(edgecnn("eval", tmp_path / "work" / "run" / "best.pt"), "give --dataset")
    record("checkpoints: dataset paths", tried=2, handled=2)


def test_an_onnx_file_whose_external_weights_are_missing(tmp_path):
    weights = onnx.numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "external",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])], [weights])
    path = tmp_path / "external.onnx"
    onnx.save(onnx.helper.make_model(graph), path, save_as_external_data=True, location="external.bin",
              size_threshold=0)
    (tmp_path / "external.bin").unlink()
    assert_clean_error(edgecnn("summary", path), "cannot read its weights", "external.bin")
    record("onnx files with missing external weights", tried=1, handled=1)
