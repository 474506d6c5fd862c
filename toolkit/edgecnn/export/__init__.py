"""Export to .tflite and .onnx, float or int8, each artefact verified before it gets its final name.

    artefacts = export(source, options, out_dir, calibration, verification)

Per format the steps are the same: build into a scratch file, embed the model card, load and run it in its
runtime, list its ops (an int8 export with a float compute op left fails, naming the op), compare it with the
float PyTorch model, apply the accuracy gate (with the layer fallback), and only then rename it into place.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from edgecnn import __version__
from edgecnn.atomic import fsync_dir, write_bytes
from edgecnn.errors import EdgeCNNError, closest
from edgecnn.export.fallback import fewest_float_layers
from edgecnn.export.sources import ExportSource, Images
from edgecnn.export.verify import FloatReference, Verification, compare, float_reference, interleaved_latency_ms, verify
from edgecnn.runtime.backends import TensorSpec, open_backend
from edgecnn.runtime.integrity import sidecar_line, sidecar_path
from edgecnn.runtime.modelfile import embed_card

FORMATS = ("tflite", "onnx")
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}
LAYOUT = {"tflite": "NHWC", "onnx": "NCHW"}
RANKING_SAMPLES = 256  # verification images used to rank layers for the fallback


@dataclass
class ExportOptions:
    formats: tuple[str, ...] = FORMATS
    int8: bool = False
    target: str = "x86"
    max_accuracy_drop: float | None = None  # top-1 points (1.0 = one point); None: report only
    fallback: bool = True
    allow_float_ops: bool = False
    sidecar: bool = False  # also write FILE.sha256 beside each artefact


@dataclass
class Artefact:
    path: str
    format: str
    int8: bool
    size_bytes: int = 0
    float_ops: list[str] = field(default_factory=list)
    accuracy: float | None = None
    float_accuracy: float | None = None
    agreement: float = 0.0
    confident_agreement: float | None = None  # on images the float model is ≥ 50 % sure of
    confident_samples: int = 0
    max_logit_error: float = float("nan")
    export_seconds: float = 0.0
    samples: int = 0
    status: str = "ok"  # ok | gate failed | float ops left | export failed
    error: str | None = None
    float_layers: list[str] = field(default_factory=list)
    fallback: dict | None = None
    ops: dict = field(default_factory=dict)

    @property
    def drop(self) -> float:
        return accuracy_drop(self.accuracy, self.float_accuracy, self.agreement)


def accuracy_drop(accuracy: float | None, float_accuracy: float | None, agreement: float) -> float:
    """Top-1 points lost against the float model; without labels, the points of disagreement with it."""
    if accuracy is None or float_accuracy is None:
        return 100.0 * (1.0 - agreement)
    return 100.0 * (float_accuracy - accuracy)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    for f in formats:
        if f not in FORMATS:
            raise EdgeCNNError(f"unknown format '{f}'{closest(f, FORMATS)}; choose from {', '.join(FORMATS)}")
    if not formats:
        raise EdgeCNNError("no format given: use --format tflite,onnx")
    return formats


def _tensor_card(spec: TensorSpec) -> dict:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype.name, "scale": spec.scale,
            "zero_point": spec.zero_point}


def model_card(source: ExportSource, path: Path, fmt: str, scheme: str | None, calibration: Images | None,
               float_layers: list[str]) -> dict:
    """What the runtime needs to use the file, and where it came from; `edgecnn info` prints it."""
    backend = open_backend(path)
    return {
        "edgecnn_version": __version__,
        "card_version": 2,  # 2: sealed with a content hash
        "task": "image-classification",
        "labels": source.labels,
        "preprocess": {**source.pre.to_dict(), "layout": LAYOUT[fmt]},
        "input": {**_tensor_card(backend.input), "layout": LAYOUT[fmt]},
        "output": {**_tensor_card(backend.output), "kind": "logits"},
        "source": {"model": source.name, "width": source.width, "dataset": source.dataset, "from": source.origin,
                   "recipe_hash": source.recipe_hash, "macs": source.macs},
        "quantization": {
            "int8": scheme is not None,
            "scheme": scheme,
            "calibration": None if calibration is None else {"samples": len(calibration),
                                                              "images": calibration.description},
            "float_layers": float_layers,
        },
    }


def format_builder(fmt: str, source: ExportSource, options: ExportOptions, calibration: torch.Tensor | None,
                   scratch: Path):
    """The builder of one format: `build(path, float_layers)`, `candidates()`, `logits_with_float(layer, images)`."""
    if fmt == "tflite":
        from edgecnn.export.tflite import TFLiteBuilder

        return TFLiteBuilder(source, calibration)
    from edgecnn.export.onnx import OnnxBuilder

    return OnnxBuilder(source, calibration, options.target, scratch)


def rank_layers(builder, images: Images, reference: FloatReference, int8_drop: float) -> list[str]:
    """Layers ordered by how much keeping each one alone in float recovers, most first."""
    gains = {}
    for layer in builder.candidates():
        accuracy, agreement, _ = compare(builder.logits_with_float(layer, images), reference)
        gains[layer] = int8_drop - accuracy_drop(accuracy, reference.accuracy, agreement)
    return sorted(gains, key=lambda k: -gains[k])


def export(
    source: ExportSource,
    options: ExportOptions,
    out_dir: str | Path,
    calibration: Images | None,
    verification: Images,
    console: Console | None = None,
) -> list[Artefact]:
    """Write one verified artefact per format into out_dir; a format that fails is reported, not written."""
    console = console or Console()
    out_dir = Path(out_dir)
    if options.int8 and (calibration is None or len(calibration) == 0):
        raise EdgeCNNError("--int8 needs calibration images: a dataset (checkpoint or --dataset) or --calib-images DIR")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        scratch_dir = tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-")
    except OSError as e:
        raise EdgeCNNError(f"cannot write to output folder {out_dir}: {e.strerror or e}") from None
    calib_tensor = None
    if options.int8:
        from edgecnn.loader import normalise_batch

        calib_tensor = normalise_batch(torch.from_numpy(calibration.pixels), source.pre, torch.device("cpu"))
    reference = float_reference(source.model, source.pre, verification)
    if source.macs is None:
        from edgecnn.prune import complexity

        source.macs = complexity(source.model, source.pre.img_size).macs
    stem = source.name + ("_int8" if options.int8 else "")
    artefacts = []
    with scratch_dir as scratch:
        for fmt in options.formats:
            final = out_dir / f"{stem}{SUFFIX[fmt]}"
            console.print(f"exporting {final} ...")
            builder = format_builder(fmt, source, options, calib_tensor, Path(scratch))
            try:
                artefact = _export_one(builder, fmt, options, Path(scratch), final, calibration, verification,
                                       reference, console)
            except EdgeCNNError as e:
                artefact = Artefact(str(final), fmt, options.int8, status="export failed", error=str(e))
            except OSError as e:  # a full disk while building: nothing is written under the final name
                artefact = Artefact(str(final), fmt, options.int8, status="export failed",
                                    error=f"cannot write {final}: {e.strerror or e}")
            artefacts.append(artefact)
    return artefacts


def _export_one(builder, fmt: str, options: ExportOptions, scratch: Path, final: Path, calibration: Images | None,
                verification: Images, reference: FloatReference, console: Console) -> Artefact:
    started = time.perf_counter()

    def build_verified(path: Path, float_layers: list[str]) -> Verification:
        scheme = builder.build(path, float_layers)
        names = builder.candidates() if float_layers else {}
        shown = [names[layer] for layer in float_layers]
        embed_card(path, model_card(builder.source, path, fmt, scheme, calibration, shown))
        return verify(path, verification, reference)

    work = scratch / f"{final.stem}.work{final.suffix}"
    artefact = _artefact(final, fmt, options, build_verified(work, []), reference, started)
    over_budget = options.max_accuracy_drop is not None and artefact.drop > options.max_accuracy_drop
    # The fallback ranks layers by post-training quantization; after QAT that ranking would not apply.
    if options.int8 and over_budget and options.fallback and builder.source.qat is None:
        artefact = _fallback(builder, fmt, options, scratch, work, final, artefact, build_verified, verification,
                             reference, console, started)
        over_budget = artefact.drop > options.max_accuracy_drop
    if options.int8 and artefact.float_ops and not artefact.float_layers and not options.allow_float_ops:
        artefact.status = "float ops left"
    elif over_budget:
        artefact.status = "gate failed"
    if artefact.status == "ok":
        install(work, final, options.sidecar)
    return artefact


def install(work: Path, final: Path, sidecar: bool) -> None:
    """Give the verified file its final name (atomic, durable). An old sidecar goes first: a stale one beside
    the new file would call it corrupt, while a missing one only leaves the embedded hash to check."""
    sidecar_path(final).unlink(missing_ok=True)
    with open(work, "rb+") as f:
        os.fsync(f.fileno())
    work.replace(final)
    fsync_dir(final.parent)
    if sidecar:
        write_bytes(sidecar_path(final), sidecar_line(final, final.read_bytes()).encode())
        sidecar_path(final).chmod(0o644)  # as readable as the model it describes (mkstemp made it 0600)


def _artefact(final: Path, fmt: str, options: ExportOptions, checked: Verification, reference: FloatReference,
              started: float, float_layers: list[str] | None = None) -> Artefact:
    ops = checked.model_file
    return Artefact(
        path=str(final), format=fmt, int8=options.int8, size_bytes=ops.path.stat().st_size,
        float_ops=checked.float_ops, accuracy=checked.accuracy, float_accuracy=reference.accuracy,
        agreement=checked.agreement, confident_agreement=checked.confident_agreement,
        confident_samples=checked.confident_samples, max_logit_error=checked.max_logit_error,
        export_seconds=round(time.perf_counter() - started, 2), samples=checked.samples,
        float_layers=float_layers or [],
        ops={"total": len(ops.ops), "compute": len(ops.compute_ops), "int8": len(ops.int8_ops),
             "float": len(ops.float_ops), "input": ops.inputs[0]["dtype"], "output": ops.outputs[0]["dtype"]},
    )


def _fallback(builder, fmt: str, options: ExportOptions, scratch: Path, work: Path, final: Path,
              full_int8: Artefact, build_verified, verification: Images, reference: FloatReference, console: Console,
              started: float) -> Artefact:
    budget = options.max_accuracy_drop
    console.print(f"  {fmt}: drop {full_int8.drop:.2f} points > budget {budget}: ranking layers by "
                  "quantization sensitivity")
    subset = verification.head(RANKING_SAMPLES)
    ranked = rank_layers(builder, subset, reference.head(len(subset)), full_int8.drop)
    trial = scratch / f"{final.stem}.trial{final.suffix}"

    def drop_with(layers: list[str]) -> float:
        checked = build_verified(trial, layers)
        return accuracy_drop(checked.accuracy, reference.accuracy, checked.agreement)

    found = fewest_float_layers(ranked, drop_with, budget)
    if found is None:
        console.print(f"  {fmt}: even with every ranked layer in float the drop stays over budget")
        full_int8.fallback = {"float_layers": None, "ranked_layers": len(ranked), "int8_drop": full_int8.drop,
                              "note": "no set of float layers met the budget"}
        return full_int8
    fully_int8 = scratch / f"{final.stem}.int8{final.suffix}"
    work.replace(fully_int8)
    names = builder.candidates()
    shown = [names[layer] for layer in found.float_layers]
    artefact = _artefact(final, fmt, options, build_verified(work, found.float_layers), reference, started, shown)
    latency = interleaved_latency_ms({"int8": fully_int8, "fallback": work})
    artefact.fallback = {
        "float_layers": shown, "ranked_layers": len(ranked), "artefacts_tried": found.tried,
        "int8_drop": full_int8.drop, "drop": artefact.drop,
        "latency_ms_int8": latency["int8"], "latency_ms": latency["fallback"],
        "size_bytes_int8": full_int8.size_bytes, "size_bytes": artefact.size_bytes,
    }
    console.print(f"  {fmt}: kept {len(shown)} layer(s) in float ({', '.join(shown)}): drop "
                  f"{full_int8.drop:.2f} → {artefact.drop:.2f} points")
    return artefact
