"""Export to every format of `edgecnn.runtime.formats`, float or int8, each artefact verified before it gets its
final name.

    artefacts = export(source, options, out_dir, calibration, verification)

Per format the steps are the same: build into a scratch file, embed the model card, load and run it in its
runtime, list its ops (an int8 export with a float compute op left fails, naming the op), compare it with the
float PyTorch model, apply the accuracy gate (with the layer fallback), and only then rename it into place.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from edgecnn import __version__
from edgecnn.atomic import exclusive_folder, install_model
from edgecnn.errors import EdgeCNNError
from edgecnn.export.fallback import fewest_float_layers
from edgecnn.export.prepare import adarounded, equalized, range_searched
from edgecnn.export.sources import ExportSource, Images
from edgecnn.quantize.calibrate import SEARCH
from edgecnn.runtime.backends import TensorSpec, open_backend
from edgecnn.runtime.formats import DEFAULT_FORMATS, FORMATS, model_files, model_size
from edgecnn.runtime.modelfile import embed_card
from edgecnn.signals import Interrupts, interruptible

if TYPE_CHECKING:  # torch and what needs it load with the export itself, after the command line is checked
    import torch

    from edgecnn.export.verify import FloatReference, Verification

LOW_AGREEMENT, LOW_SURE_AGREEMENT = 0.90, 0.95  # below these the report warns
SMALL_VERIFICATION = 100  # fewer images than this make one image worth more than a point


@dataclass
class ExportOptions:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    int8: bool = False
    target: str = "host"  # the CPU the int8 scheme is for (edgecnn.quantize.target)
    max_accuracy_drop: float | None = None  # top-1 points (1.0 = one point); None: report only
    fallback: bool = True
    allow_float_ops: bool = False
    sidecar: bool = False  # also write FILE.sha256 beside each artefact
    calibration: str = "auto"  # activation range method, or auto: the best on the calibration images
    equalize: bool = True  # rescale activation channels before post-training int8 (edgecnn.quantize.equalize)
    adaround: bool = False  # learn the int8 weights' rounding on the calibration images (edgecnn.quantize.adaround)

    def __post_init__(self) -> None:
        if self.adaround and not self.int8:
            raise EdgeCNNError("--adaround learns how int8 weights are rounded: add --int8")


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
    logit_sqnr_db: float | None = None  # a classifier's logits against the float model's (dB)
    export_seconds: float = 0.0
    samples: int = 0
    status: str = "ok"  # ok | gate failed | float ops left | export failed
    error: str | None = None
    float_layers: list[str] = field(default_factory=list)
    fallback: dict | None = None
    ops: dict = field(default_factory=dict)
    calibration: dict | None = None  # the range method chosen and every candidate's numbers
    scheme: dict | None = None  # the int8 scheme, its target and why
    layer_errors: list[dict] = field(default_factory=list)  # SQNR (dB) per quantized layer, worst first
    warnings: list[str] = field(default_factory=list)
    sha256: str | None = None  # of the installed file, hashed before it got its final name
    # Detectors: mAP@0.5 against the ground truth, the float model's, and box agreement (mAP@0.5 against the float
    # model's boxes; also in `agreement`).
    map50: float | None = None
    float_map50: float | None = None
    box_agreement: float | None = None
    float_boxes: int | None = None  # boxes the float model shows (score ≥ the card's threshold) on those images

    @property
    def drop(self) -> float:
        """Points lost against the float model: top-1 for a classifier, mAP@0.5 for a detector."""
        if self.box_agreement is not None:
            return accuracy_drop(self.map50, self.float_map50, self.agreement)
        return accuracy_drop(self.accuracy, self.float_accuracy, self.agreement)


def accuracy_drop(score: float | None, float_score: float | None, agreement: float) -> float:
    """Points of `score` (top-1 or mAP@0.5) lost against the float model; without labels, the points of
    disagreement with it."""
    if score is None or float_score is None:
        return 100.0 * (1.0 - agreement)
    return 100.0 * (float_score - score)


def model_card(source: ExportSource, path: Path, fmt: str, scheme: str | None, calibration: Images | None,
               float_layers: list[str], target: dict | None = None) -> dict:
    """What the runtime needs to use the file, and where it came from; `edgecnn info` prints it."""
    backend = open_backend(path)
    return {
        "edgecnn_version": __version__,
        "card_version": 2,  # 2: sealed with a content hash
        "task": source.task,
        "labels": source.labels,
        "preprocess": {**source.pre.to_dict(), "layout": FORMATS[fmt].layout},
        "input": {**backend.input.to_card(), "layout": FORMATS[fmt].layout},
        **_task_card(source, backend.outputs),
        "source": {"model": source.name, "width": source.width, "dataset": source.dataset, "from": source.origin,
                   "recipe_hash": source.recipe_hash, "macs": source.macs},
        "quantization": {
            "int8": scheme is not None,
            "scheme": scheme,
            "calibration": None if calibration is None else {"samples": len(calibration),
                                                              "images": calibration.description},
            "float_layers": float_layers,
            "target": target,
            "equalization": source.equalization if scheme is not None else None,
            # Without the seconds it took: the same export gives the same file.
            "adaround": {k: v for k, v in source.adaround.items() if k != "seconds"}
            if scheme is not None and source.adaround else None,
        },
    }


def _task_card(source: ExportSource, outputs: list[TensorSpec]) -> dict:
    """A classifier's logits tensor; a detector's outputs and the "detect" section (anchors, box coding)."""
    if source.task == "classify":
        return {"output": {**outputs[0].to_card(), "kind": "logits"}}
    # The model returns (box encodings, class scores); a file may reorder them, and only the score output
    # can lack a last axis of 4 (or both have it, with 3 classes: then the model's order stands).
    boxes = [o for o in outputs if o.shape[-1] == 4]
    box = boxes[0] if len(boxes) == 1 else outputs[0]
    scores = next(o for o in outputs if o is not box)
    return {"outputs": [o.to_card() for o in outputs], "detect": source.model.card_section(box.name, scores.name)}


def format_builder(fmt: str, source: ExportSource, calibration: torch.Tensor | None, scheme, scratch: Path):
    """The builder of one format: `build(path, float_layers)` with its `candidate` ranges, `target()`,
    `candidates()`, `layer_errors`, `layer_id(layer)` and `method`."""
    return FORMATS[fmt].exporter.Builder(source, calibration, scheme, scratch)


def warnings(artefact: Artefact, options: ExportOptions, samples: int) -> list[str]:
    """What the numbers do not say by themselves: low agreement, a verification set too small to judge, a gate
    finer than one image."""
    found = []
    one_image = 100.0 / max(samples, 1)
    if artefact.float_boxes == 0:  # box agreement is then 1 (this file shows none either) or 0
        found.append(f"the float model shows no box on the {samples} verification images (score ≥ the card's "
                     "threshold), " + ("nor does this file: box agreement cannot judge it" if artefact.agreement
                                       else "but this file does: int8 lifted scores over the threshold")
                     + "; verify on images with objects, or train longer")
    elif artefact.box_agreement is not None:
        if artefact.box_agreement < LOW_AGREEMENT:
            found.append(f"int8 finds the float model's boxes with mAP@0.5 {artefact.box_agreement:.3f} only "
                         f"(< {LOW_AGREEMENT}): look at the worst layers and the calibration images")
    elif artefact.agreement < LOW_AGREEMENT:
        found.append(f"int8 agrees with the float model on only {artefact.agreement:.1%} of the verification "
                     f"images (< {LOW_AGREEMENT:.0%}): look at the worst layers and the calibration images"
                     + ("" if options.adaround else ", or learn the weights' rounding (--adaround)")
                     + (", or keep 8-bit weights in onnxruntime's exact u8×u8 kernels (--target x86-avx2-u8u8, "
                        "slower)" if artefact.format == "onnx" and (artefact.scheme or {}).get("reduce_range") else ""))
    if artefact.confident_agreement is not None and artefact.confident_agreement < LOW_SURE_AGREEMENT:
        found.append(f"on the images the float model is sure of, only {artefact.confident_agreement:.1%} agree "
                     f"(< {LOW_SURE_AGREEMENT:.0%})")
    if samples < SMALL_VERIFICATION:
        found.append(f"only {samples} verification images: one image is {one_image:.1f} points, too few to judge "
                     "a fraction of a point")
    if options.max_accuracy_drop is not None and options.max_accuracy_drop < one_image:
        found.append(f"--max-accuracy-drop {options.max_accuracy_drop} is finer than one verification image "
                     f"({one_image:.1f} points): the gate passes only when no image changes")
    return found


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
    with exclusive_folder(out_dir, "export"), interruptible() as interrupts:
        return _export_all(source, options, out_dir, calibration, verification, console, interrupts)


def _export_all(source: ExportSource, options: ExportOptions, out_dir: Path, calibration: Images | None,
                verification: Images, console: Console, interrupts: Interrupts) -> list[Artefact]:
    try:
        scratch_dir = tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-")
    except OSError as e:
        raise EdgeCNNError(f"cannot write to output folder {out_dir}: {e.strerror or e}") from None
    import torch

    from edgecnn.export.verify import float_reference

    calib_tensor = scheme = calib_reference = None
    reference = float_reference(source.model, source.pre, verification, task=source.task)
    if options.int8:
        from edgecnn.loader import normalise_batch
        from edgecnn.quantize.target import scheme_for

        scheme = scheme_for(options.target)
        calib_tensor = normalise_batch(torch.from_numpy(calibration.pixels), source.pre, torch.device("cpu"))
        calib_reference = float_reference(source.model, source.pre, calibration, task=source.task)
        if options.equalize and source.qat is None:
            source = equalized(source, calib_tensor)
    if source.macs is None:
        from edgecnn.summary import complexity

        source.macs = complexity(source.model, source.pre.img_size).macs
    rounded: dict = {}  # weight grid → the source with its weights' rounding learned on that grid (--adaround)
    searched: dict = {}  # id of a source → that source with its activation ranges searched (--calibration search)
    stem = source.name + ("_int8" if options.int8 else "")
    artefacts = []
    verified: list[tuple[Artefact, Path]] = []  # (artefact, its verified scratch file), installed at the end
    with scratch_dir as scratch:
        for fmt in options.formats:
            interrupts.check()
            final = out_dir / f"{stem}{FORMATS[fmt].suffix}"
            work = Path(scratch) / f"{final.stem}.work{final.suffix}"
            console.print(f"exporting {final} ...")
            fmt_source = source
            if options.adaround:
                grid = FORMATS[fmt].exporter.Builder.weight_grid(scheme)
                if grid not in rounded:
                    rounded[grid] = adarounded(source, calib_tensor, grid, console)
                fmt_source = rounded[grid]
            if options.int8 and options.calibration == SEARCH and fmt_source.qat is None:
                if id(fmt_source) not in searched:
                    searched[id(fmt_source)] = range_searched(fmt_source, calib_tensor, console)
                fmt_source = searched[id(fmt_source)]
            builder = format_builder(fmt, fmt_source, calib_tensor, scheme, Path(scratch))
            try:
                artefact = _export_one(builder, fmt, options, Path(scratch), work, final, calibration,
                                       verification, reference, console, calib_reference)
            except EdgeCNNError as e:
                artefact = Artefact(str(final), fmt, options.int8, status="export failed", error=str(e))
            except OSError as e:  # a full disk while building: nothing is written under the final name
                artefact = Artefact(str(final), fmt, options.int8, status="export failed",
                                    error=f"cannot write {final}: {e.strerror or e}")
            artefacts.append(artefact)
            if artefact.status == "ok":
                verified.append((artefact, work))
        # An interrupted export leaves nothing under a final name: every format is built and verified first,
        # then all are installed, with signals held for the few renames.
        interrupts.check()
        with interrupts.deferred():
            for artefact, work in verified:
                try:
                    artefact.sha256 = install_model(work, Path(artefact.path), options.sidecar)
                except (OSError, EdgeCNNError) as e:  # a disk that filled up at the last moment
                    artefact.status = "export failed"
                    artefact.error = str(e) if isinstance(e, EdgeCNNError) else f"cannot write {artefact.path}: {e}"
    return artefacts


def _export_one(builder, fmt: str, options: ExportOptions, scratch: Path, work: Path, final: Path,
                calibration: Images | None, verification: Images, reference: FloatReference, console: Console,
                calib_reference: FloatReference | None) -> Artefact:
    """Build, verify and gate one format into `work`; the caller installs it when its status is ok."""
    from edgecnn.export.verify import verify

    started = time.perf_counter()

    def build_with_card(path: Path, float_layers: list[str]) -> None:
        scheme = builder.build(path, float_layers)
        names = builder.candidates() if float_layers else {}
        shown = [names[layer] for layer in float_layers]
        target = builder.target() if scheme else None
        embed_card(path, model_card(builder.source, path, fmt, scheme, calibration, shown, target))

    def build_verified(path: Path, float_layers: list[str]) -> Verification:
        build_with_card(path, float_layers)
        return verify(path, verification, reference)

    choice = None
    if options.int8 and builder.source.qat is None:
        choice = _choose_ranges(builder, options, work, build_with_card, calibration, calib_reference, console)
    # auto leaves its chosen candidate's artefact in `work`: it is verified as it is, not built again.
    built = choice is not None and choice.chosen.agreement is not None
    checked = verify(work, verification, reference) if built else build_verified(work, [])
    artefact = _artefact(final, fmt, options, checked, reference, started)
    artefact.layer_errors = builder.layer_errors if options.int8 else []
    over_budget = options.max_accuracy_drop is not None and artefact.drop > options.max_accuracy_drop
    # The fallback ranks layers by post-training quantization; after QAT that ranking would not apply.
    if options.int8 and over_budget and options.fallback and builder.source.qat is None:
        errors = artefact.layer_errors
        artefact = _fallback(builder, fmt, options, scratch, work, final, artefact, build_verified, reference,
                             console, started)
        artefact.layer_errors = errors
        over_budget = artefact.drop > options.max_accuracy_drop
    if options.int8:  # of the artefact that is kept, the fallback's included
        artefact.scheme = builder.target()
        artefact.calibration = choice.report() if choice else {"method": builder.method}
        if builder.source.equalization is not None:
            artefact.calibration["equalization"] = builder.source.equalization
        if builder.source.adaround is not None:
            artefact.calibration["adaround"] = builder.source.adaround
        if builder.source.searched is not None:
            artefact.calibration["search"] = builder.source.searched.report
        artefact.warnings = warnings(artefact, options, len(verification))
    if options.int8 and artefact.float_ops and not artefact.float_layers and not options.allow_float_ops:
        artefact.status = "float ops left"
    elif over_budget:
        artefact.status = "gate failed"
    return artefact


def _choose_ranges(builder, options: ExportOptions, work: Path, build_with_card, calibration: Images,
                   calib_reference: FloatReference, console: Console):
    """Set the builder's activation-range candidate: the requested method, or for auto the one whose artefact
    agrees best with the float model on the calibration images. Candidates that were built leave the chosen
    one's artefact in `work` and its build as the builder's last (what `layer_errors` reads)."""
    from edgecnn.export.verify import artefact_outputs, class_logits
    from edgecnn.quantize.calibrate import Candidate, candidates, choose

    builds = {}  # method → (its trial file, the builder's record of that build)

    def logits_with(candidate: Candidate) -> np.ndarray:
        builder.candidate = candidate
        trial = work.with_name(f"{work.stem}.{candidate.method}{work.suffix}")
        build_with_card(trial, [])
        builds[candidate.method] = (trial, builder.last_build)
        return class_logits(artefact_outputs(trial, calibration))

    if options.calibration == "auto":
        console.print(f"  choosing activation ranges on {len(calibration)} calibration images")
    choice = choose(candidates(options.calibration), logits_with, calib_reference.logits, console.print)
    builder.candidate = choice.chosen
    if builds:
        trial, builder.last_build = builds.pop(choice.chosen.method)
        # Copies (an OpenVINO model is two files): the ONNX builder's record of the build is the trial file itself.
        for source, target in zip(model_files(trial), model_files(work), strict=True):
            shutil.copyfile(source, target)
        for other, _ in builds.values():
            for path in model_files(other):
                path.unlink(missing_ok=True)
    return choice


def _artefact(final: Path, fmt: str, options: ExportOptions, checked: Verification, reference: FloatReference,
              started: float, float_layers: list[str] | None = None) -> Artefact:
    ops = checked.model_file
    detector = reference.task == "detect"
    return Artefact(
        map50=checked.map50, float_map50=reference.map50, box_agreement=checked.agreement if detector else None,
        float_boxes=checked.float_boxes,
        path=str(final), format=fmt, int8=options.int8, size_bytes=model_size(ops.path),
        float_ops=checked.float_ops, accuracy=checked.accuracy, float_accuracy=reference.accuracy,
        agreement=checked.agreement, confident_agreement=checked.confident_agreement,
        confident_samples=checked.confident_samples, max_logit_error=checked.max_logit_error,
        logit_sqnr_db=checked.logit_sqnr_db,
        export_seconds=round(time.perf_counter() - started, 2), samples=checked.samples,
        float_layers=float_layers or [],
        ops={"total": len(ops.ops), "compute": len(ops.compute_ops), "int8": len(ops.int8_ops),
             "float": len(ops.float_ops), "input": ops.inputs[0]["dtype"], "output": ops.outputs[0]["dtype"]},
    )


def _fallback(builder, fmt: str, options: ExportOptions, scratch: Path, work: Path, final: Path,
              full_int8: Artefact, build_verified, reference: FloatReference, console: Console,
              started: float) -> Artefact:
    from edgecnn.export.verify import interleaved_latency_ms

    budget = options.max_accuracy_drop
    console.print(f"  {fmt}: drop {full_int8.drop:.2f} points > budget {budget}: keeping the noisiest layers "
                  "(lowest SQNR) in float")
    ranked = [builder.layer_id(row["layer"]) for row in full_int8.layer_errors]
    trial = scratch / f"{final.stem}.trial{final.suffix}"

    def drop_with(layers: list[str]) -> float:
        checked = build_verified(trial, layers)
        if reference.task == "detect":
            return accuracy_drop(checked.map50, reference.map50, checked.agreement)
        return accuracy_drop(checked.accuracy, reference.accuracy, checked.agreement)

    found = fewest_float_layers(ranked, drop_with, budget)
    if found is None:
        console.print(f"  {fmt}: even with every ranked layer in float the drop stays over budget")
        full_int8.fallback = {"float_layers": None, "ranked_layers": len(ranked), "int8_drop": full_int8.drop,
                              "note": "no set of float layers met the budget"}
        return full_int8
    fully_int8 = scratch / f"{final.stem}.int8{final.suffix}"
    for source, target in zip(model_files(work), model_files(fully_int8), strict=True):  # OpenVINO: .xml + .bin
        source.replace(target)
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
