"""Export to .tflite and .onnx, float or int8, each artefact verified before it gets its final name.

    artefacts = export(source, options, out_dir, calibration, verification)

Per format the steps are the same: build into a temp file, embed the model card, load and run it in its
runtime, list its ops (an int8 export with a float compute op left fails, naming the op), compare with the
float PyTorch model, apply the accuracy gate (with the layer fallback), then rename into place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from edgecnn import __version__
from edgecnn.errors import EdgeCNNError, closest
from edgecnn.export.fallback import fewest_float_layers
from edgecnn.export.sources import ExportSource, Images
from edgecnn.export.verify import FloatReference, Verification, float_reference, median_latency_ms, verify
from edgecnn.runtime.backends import open_backend
from edgecnn.runtime.modelfile import embed_card

FORMATS = ("tflite", "onnx")
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}
RANKING_SAMPLES = 256


@dataclass
class ExportOptions:
    formats: tuple[str, ...] = FORMATS
    int8: bool = False
    target: str = "x86"
    max_accuracy_drop: float | None = None  # top-1 points (1.0 = one point); None: report only
    fallback: bool = True
    allow_float_ops: bool = False


@dataclass
class Artefact:
    path: str
    format: str
    int8: bool
    size_bytes: int
    float_ops: list[str]
    accuracy: float | None
    float_accuracy: float | None
    agreement: float
    max_logit_error: float
    export_seconds: float
    samples: int
    status: str = "ok"  # ok | gate failed | float ops left
    float_layers: list[str] = field(default_factory=list)
    fallback: dict | None = None
    ops: dict = field(default_factory=dict)

    @property
    def drop(self) -> float:
        return accuracy_drop(self.accuracy, self.float_accuracy, self.agreement)


def accuracy_drop(accuracy: float | None, float_accuracy: float | None, agreement: float) -> float:
    """Top-1 points lost against the float model; without labels, the points of disagreement."""
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


def model_card(source: ExportSource, path: Path, options: ExportOptions, calibration: Images | None,
               float_layers: list[str]) -> dict:
    """What the runtime needs to use the file, and where it came from; read back with `edgecnn info`."""
    backend = open_backend(path)
    tensor = lambda spec: {  # noqa: E731
        "name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype.name,
        "scale": spec.scale, "zero_point": spec.zero_point,
    }
    layout = "NHWC" if path.suffix == ".tflite" else "NCHW"
    return {
        "edgecnn_version": __version__,
        "card_version": 1,
        "task": "image-classification",
        "labels": source.labels,
        "preprocess": {**source.pre.to_dict(), "layout": layout},
        "input": {**tensor(backend.input), "layout": layout},
        "output": {**tensor(backend.output), "kind": "logits"},
        "source": {"model": source.name, "width": source.width, "dataset": source.dataset,
                   "from": source.origin, "recipe_hash": source.recipe_hash},
        "quantization": {
            "int8": options.int8,
            "scheme": _scheme(path.suffix, options) if options.int8 else None,
            "calibration": None if calibration is None else {"samples": len(calibration),
                                                              "images": calibration.description},
            "float_layers": float_layers,
        },
    }


def _scheme(suffix: str, options: ExportOptions) -> str:
    if suffix == ".tflite":
        return "PT2E static int8, per-channel symmetric weights, int8 activations"
    if options.target == "x86":
        return "onnxruntime QDQ, uint8 activations + int8 per-channel weights, reduce_range (x86)"
    return "onnxruntime QDQ, int8 activations + int8 per-channel weights (arm)"


class FormatBuilder:
    """How one format writes an artefact with some layers kept in float, and ranks its layers."""

    def __init__(self, fmt: str, source: ExportSource, options: ExportOptions, calibration: torch.Tensor | None,
                 scratch: Path):
        self.fmt, self.source, self.options, self.calibration, self.scratch = fmt, source, options, calibration, scratch
        self._float_onnx: Path | None = None

    def build(self, path: Path, float_layers: list[str]) -> None:
        size = self.source.pre.img_size
        if self.fmt == "tflite":
            from edgecnn.export.tflite import export_tflite

            export_tflite(self.source.model, size, path, self.calibration, float_layers)
            return
        from edgecnn.export.onnx import export_float_onnx, quantize_onnx

        if self.calibration is None:
            export_float_onnx(self.source.model, size, path)
            return
        if self._float_onnx is None:
            self._float_onnx = self.scratch / "float.onnx"
            export_float_onnx(self.source.model, size, self._float_onnx)
        quantize_onnx(self._float_onnx, path, self.calibration, self.options.target, float_layers)

    def candidates(self) -> dict[str, str]:
        """Layer id (what `build` takes) → the PyTorch module path shown to the user."""
        if self.fmt == "tflite":
            from edgecnn.export.tflite import quantizable_layers

            return {name: name for name in quantizable_layers(self.source.model)}
        from edgecnn.export.onnx import quantizable_nodes

        return quantizable_nodes(self._float_onnx)

    def rank(self, images: Images, reference: FloatReference, baseline: float) -> list[str]:
        """Candidates ordered by how much keeping each one alone in float recovers, most first."""
        gains = {}
        for layer in self.candidates():
            gains[layer] = baseline - self._drop_with_float(layer, images, reference)
        return sorted(gains, key=lambda k: -gains[k])

    def _drop_with_float(self, layer: str, images: Images, reference: FloatReference) -> float:
        if self.fmt == "tflite":
            # Simulated in PyTorch (PT2E fake-quant) instead of converting once per layer.
            from edgecnn.data import normalise_batch
            from edgecnn.export.tflite import simulate_int8

            sim = simulate_int8(self.source.model, self.source.pre.img_size, self.calibration, [layer])
            with torch.no_grad():
                x = normalise_batch(torch.from_numpy(images.pixels), self.source.pre, torch.device("cpu"))
                logits = np.concatenate([sim(x[i : i + 1].permute(0, 2, 3, 1)).numpy() for i in range(len(x))])
        else:
            from edgecnn.export.verify import artefact_logits

            path = self.scratch / "rank.onnx"
            self.build(path, [layer])
            logits = artefact_logits(path, images)
        accuracy = None if images.labels is None else float((logits.argmax(1) == images.labels).mean())
        agreement = float((logits.argmax(1) == reference.logits.argmax(1)).mean())
        return accuracy_drop(accuracy, reference.accuracy, agreement)


def export(
    source: ExportSource,
    options: ExportOptions,
    out_dir: str | Path,
    calibration: Images | None,
    verification: Images,
    console: Console | None = None,
) -> list[Artefact]:
    """Write one verified artefact per format into out_dir; each is checked before its final name appears."""
    console = console or Console()
    out_dir = Path(out_dir)
    if options.int8 and (calibration is None or len(calibration) == 0):
        raise EdgeCNNError("--int8 needs calibration images: a dataset (checkpoint or --dataset) or --calib-images DIR")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeCNNError(f"cannot create output folder {out_dir}: {e.strerror or e}") from None
    calib_tensor = None
    if options.int8:
        from edgecnn.data import normalise_batch

        calib_tensor = normalise_batch(torch.from_numpy(calibration.pixels), source.pre, torch.device("cpu"))
    reference = float_reference(source.model, source.pre, verification)
    stem = source.name + ("_int8" if options.int8 else "")
    import tempfile

    artefacts = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as scratch:
        for fmt in options.formats:
            builder = FormatBuilder(fmt, source, options, calib_tensor, Path(scratch))
            final = out_dir / f"{stem}{SUFFIX[fmt]}"
            console.print(f"exporting {final} ...")
            artefacts.append(_export_one(builder, final, Path(scratch), calibration, verification, reference,
                                         console))
    return artefacts


def _export_one(builder: FormatBuilder, final: Path, scratch: Path, calibration: Images | None,
                verification: Images, reference: FloatReference, console: Console) -> Artefact:
    options, source = builder.options, builder.source
    started = time.perf_counter()

    def build_verified(path: Path, float_layers: list[str]) -> Verification:
        builder.build(path, float_layers)
        embed_card(path, model_card(source, path, options, calibration, float_layers))
        return verify(path, verification, reference)

    work = scratch / f"{final.stem}.work{final.suffix}"
    checked = build_verified(work, [])
    artefact = _artefact(final, builder.fmt, options, checked, reference, time.perf_counter() - started, [])
    over_budget = options.max_accuracy_drop is not None and artefact.drop > options.max_accuracy_drop
    if options.int8 and over_budget and options.fallback:
        artefact, checked = _fallback(builder, work, final, scratch, artefact, build_verified, verification,
                                      reference, console, started)
        over_budget = artefact.drop > options.max_accuracy_drop
    if options.int8 and artefact.float_ops and not artefact.float_layers and not options.allow_float_ops:
        artefact.status = "float ops left"
    elif over_budget:
        artefact.status = "gate failed"
    if artefact.status == "ok":
        work.replace(final)
    else:
        final.unlink(missing_ok=True)
    return artefact


def _artefact(final: Path, fmt: str, options: ExportOptions, checked: Verification, reference: FloatReference,
              seconds: float, float_layers: list[str]) -> Artefact:
    ops = checked.model_file
    return Artefact(
        path=str(final), format=fmt, int8=options.int8, size_bytes=ops.path.stat().st_size,
        float_ops=checked.float_ops, accuracy=checked.accuracy, float_accuracy=reference.accuracy,
        agreement=checked.agreement, max_logit_error=checked.max_logit_error, export_seconds=round(seconds, 2),
        samples=checked.samples, float_layers=float_layers,
        ops={"total": len(ops.ops), "compute": len(ops.compute_ops), "int8": len(ops.int8_ops),
             "float": len(ops.float_ops), "input": ops.inputs[0]["dtype"], "output": ops.outputs[0]["dtype"]},
    )


def _fallback(builder: FormatBuilder, work: Path, final: Path, scratch: Path, full_int8: Artefact,
              build_verified: Callable[[Path, list[str]], Verification], verification: Images,
              reference: FloatReference, console: Console, started: float) -> tuple[Artefact, Verification | None]:
    options = builder.options
    console.print(f"  drop {full_int8.drop:.2f} points > budget {options.max_accuracy_drop}: ranking layers by "
                  "quantization sensitivity")
    subset = verification.head(RANKING_SAMPLES)
    ranked = builder.rank(subset, FloatReference(reference.logits[: len(subset)], reference.accuracy
                                                 if subset is verification else _subset_accuracy(reference, subset)),
                          full_int8.drop)
    names = builder.candidates()
    trial = scratch / f"{final.stem}.trial{final.suffix}"

    def drop_with(layers: list[str]) -> float:
        checked = build_verified(trial, layers)
        return accuracy_drop(checked.accuracy, reference.accuracy, checked.agreement)

    found = fewest_float_layers(ranked, drop_with, options.max_accuracy_drop)
    if found is None:
        console.print("  even with every layer in float the drop stays over budget")
        return full_int8, None
    int8_latency, int8_size = median_latency_ms(work), work.stat().st_size
    checked = build_verified(work, found.float_layers)
    shown = [names[layer] for layer in found.float_layers]
    artefact = _artefact(final, builder.fmt, options, checked, reference, time.perf_counter() - started, shown)
    artefact.fallback = {
        "float_layers": shown, "ranked_candidates": len(ranked), "artefacts_tried": found.tried,
        "int8_drop": full_int8.drop, "drop": artefact.drop,
        "latency_ms_int8": int8_latency, "latency_ms": median_latency_ms(work),
        "size_bytes_int8": int8_size, "size_bytes": artefact.size_bytes,
    }
    console.print(f"  kept {len(shown)} layer(s) in float: {', '.join(shown)} → drop {artefact.drop:.2f} points")
    return artefact, checked


def _subset_accuracy(reference: FloatReference, subset: Images) -> float | None:
    if subset.labels is None:
        return None
    return float((reference.logits[: len(subset)].argmax(1) == subset.labels).mean())
