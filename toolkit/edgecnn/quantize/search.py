"""`--calibration search`: each activation's int8 range chosen by the error it causes at the model's output.

    searched = search_ranges(observed)                         # on the PT2E graph of the model being exported
    ranges = searched.ranges_for(histograms, outputs)          # for any graph of the same model (.tflite, .onnx)

One method for every tensor suits no real model everywhere: on the real MobileNetV2 percentile is best for most
tensors, but some lose more to rounding than to clipping and others the reverse, and what counts is not a
tensor's own error but how much of it reaches the logits. Starting from percentile ranges, every int8 activation
in graph order tries each rule's range for its own histogram (the four methods, and min/max cut to 0.75, 0.55
and 0.4 of itself: deeper than percentile and MSE usually clip) and keeps the one with the least squared output
error against the float model on the calibration images (weights int8 and biases corrected as convert will do,
every other activation at its current range: one pass of coordinate descent). Only the graph after the tensor
runs again for each try. On the real MobileNetV2 the logits' SQNR rose from 18.5 to 20.2 dB in both formats
(docs/export.md#int8-calibration); the search took 211 s on 2 cores then, and takes about a third of
that since its fake quantization goes through quantized tensors.

The choice is a rule per tensor, found again in another graph of the same model by the tensor's values (its
histogram's range and moments): the .onnx quantizes the same activations under other names, and gets the same
choices. A tensor not found there keeps percentile. Greedy choice cannot undo a clip made in several tensors in a
row (an outlier carried through a block): that stays clipped. Nor does it foresee the widening XNNPACK's limit
forces on a few ranges after it (pt2e.keep_requantizable).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgecnn.quantize.pt2e import Observed, correct_rounding_bias, is_activation_observer
from edgecnn.quantize.ranges import METHODS, MIN_SPAN, Histogram, activation_range

START = "percentile"  # the best single method on real photos (benchmarks/results/int8_methods.md)
CUTS = (0.75, 0.55, 0.4)  # fractions of the min/max range tried beside the methods
RULES = (*METHODS, *(f"minmax*{cut}" for cut in CUTS))
MAX_SAMPLES = 32  # calibration images the search scores on: the values its re-runs read stay in memory
SAME_VALUES = 1e-3  # fingerprints closer than this (relative to the tensor's range) are the same tensor's


def rule_range(hist: Histogram, rule: str) -> tuple[float, float]:
    """(low, high) by a range method, or by min/max cut to a fraction of itself ("minmax*0.55")."""
    if rule in METHODS:
        return activation_range(hist, rule)
    cut = float(rule.removeprefix("minmax*"))
    low, high = min(hist.low, 0.0) * cut, max(hist.high, 0.0) * cut
    return low, max(high, low + MIN_SPAN)


def fingerprint(hist: Histogram) -> np.ndarray:
    """What identifies a tensor's values across graphs: its range, first two moments and number of values (many
    ReLU6 outputs share the range 0..6; an observer PT2E shares with a pooling after it counts those values too,
    so the number decides only among tensors whose values match)."""
    total = max(hist.counts.sum(), 1.0)
    centres = hist.centres
    return np.array([hist.low, hist.high, (hist.counts * centres).sum() / total,
                     np.sqrt((hist.counts * centres**2).sum() / total), hist.counts.sum()])


@dataclass
class SearchedRanges:
    """The rule chosen for each activation, by its values' fingerprint, and what the search did."""

    choices: list[tuple[np.ndarray, str]] = field(default_factory=list)
    report: dict = field(default_factory=dict)

    def rule_for(self, hist: Histogram) -> str:
        """The rule chosen for the tensor with these values (the closest in number of values, then in moments),
        else START."""
        mine = fingerprint(hist)
        tolerance = SAME_VALUES * max(abs(hist.low), abs(hist.high), 1e-6)
        matches = []
        for theirs, rule in self.choices:
            distance = np.abs(theirs[:4] - mine[:4]).max()
            if distance <= tolerance:
                matches.append((abs(np.log(max(theirs[4], 1.0) / max(mine[4], 1.0))), distance, rule))
        return min(matches, key=lambda m: m[:2])[2] if matches else START

    def ranges_for(self, histograms: dict[str, Histogram], outputs=()) -> dict[str, tuple[float, float]]:
        """Every tensor's range by its chosen rule (min/max for the graph's outputs, as for every method)."""
        return {name: rule_range(hist, "minmax" if name in outputs else self.rule_for(hist))
                for name, hist in histograms.items()}


# torch.quantize_per_tensor + dequantize compute what fake_quantize_per_tensor_affine computes, bit for bit, 2.4-3.4×
# faster on CPU (fake quantization took 360 of the search's 436 s on MobileNetV2); PyTorch marks quantized tensors
# deprecated, so the slower op stays the fallback.
_QUANTIZED_DTYPES = {(-128, 127): torch.qint8, (0, 255): torch.quint8}


def _fake_quantize(x: torch.Tensor, scale: float, zero: int, low: int, high: int) -> torch.Tensor:
    dtype = _QUANTIZED_DTYPES.get((low, high))
    if dtype is not None and hasattr(torch, "quantize_per_tensor"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.quantize_per_tensor(x, scale, zero, dtype).dequantize()
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, low, high)


class _Quantize(nn.Module):
    """An activation observer's stand-in: int8 over the range being tried, with the scale convert_pt2e derives."""

    def __init__(self, observer: nn.Module):
        super().__init__()
        self.observer = copy.deepcopy(observer)
        self.qparams = (1.0, 0)

    def set_range(self, low: float, high: float) -> None:
        self.observer.min_val.fill_(low)
        self.observer.max_val.fill_(high)
        scale, zero = self.observer.calculate_qparams()
        self.qparams = (float(scale), int(zero))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fake_quantize(x, *self.qparams, self.observer.quant_min, self.observer.quant_max)


class _QuantizeWeight(nn.Module):
    """A weight observer's stand-in: the per-channel int8 weight convert_pt2e will store."""

    def __init__(self, observer: nn.Module):
        super().__init__()
        scale, zero = observer.calculate_qparams()
        self.scale, self.zero = scale.float(), zero.int()
        self.axis, self.low, self.high = observer.ch_axis, observer.quant_min, observer.quant_max

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_channel_affine(w, self.scale, self.zero, self.axis, self.low, self.high)


class _QuantizeFixed(nn.Module):
    """An observer with fixed parameters' stand-in (a sigmoid's or softmax's output: 0..1 whatever the data)."""

    def __init__(self, observer: nn.Module):
        super().__init__()
        scale, zero = observer.calculate_qparams()
        self.qparams = (float(scale), int(zero), observer.quant_min, observer.quant_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fake_quantize(x, *self.qparams)


def _stand_in(observer: nn.Module) -> nn.Module:
    if is_activation_observer(observer):
        return _Quantize(observer)
    if getattr(observer, "qscheme", None) == torch.per_channel_symmetric:
        return _QuantizeWeight(observer)
    return _QuantizeFixed(observer)


def _simulated(observed: Observed) -> tuple[torch.fx.GraphModule, dict[str, _Quantize], dict[str, set[str]]]:
    """A copy of the prepared graph that computes what the int8 graph will, with each activation's range settable
    (by the observer's name in `observed.histograms`), and every name each of those is called by in the graph."""
    graph = copy.deepcopy(observed.prepared)
    correct_rounding_bias(graph, observed.input_means)
    originals = dict(observed.prepared.named_modules(remove_duplicate=False))
    stand_ins: dict[int, nn.Module] = {}  # an observer shared by several tensors (a concatenation's) stays one
    for name in dict(graph.named_modules(remove_duplicate=False)):
        original = originals.get(name)
        if original is None or not hasattr(original, "calculate_qparams"):
            continue
        if id(original) not in stand_ins:
            stand_ins[id(original)] = _stand_in(original)
        parent, _, child = name.rpartition(".")
        setattr(graph.get_submodule(parent) if parent else graph, child, stand_ins[id(original)])
    named = {name: stand_ins[id(m)] for name, m in observed.prepared.named_modules() if id(m) in stand_ins}
    quantizers = {name: m for name, m in named.items() if isinstance(m, _Quantize)}
    # prepare_pt2e shares one observer among a concatenation's inputs under several names, one per call.
    aliases = {name: {alias for alias, m in originals.items() if m is originals[name]} for name in quantizers}
    return graph, quantizers, aliases


class _Replay:
    """The values a change at one activation reads from before it, kept, so that only the nodes after it run
    again: for a chain of blocks, each quantizer's input and the residual branches around it."""

    def __init__(self, graph: torch.fx.GraphModule, samples: torch.Tensor, targets: dict[str, set[str]]):
        self.graph, self.samples = graph, samples
        self.after = {t: self._after(names) for t, names in targets.items()}
        self.kept: set = set()  # read by some re-run but computed before it (parameters included: no copies)
        for changed in self.after.values():
            inside = set(changed)
            self.kept.update(a for n in changed for a in n.all_input_nodes if a not in inside)
        self.output = next(n for n in graph.graph.nodes if n.op == "output")
        self.values = self._run()

    def _after(self, names: set[str]) -> list[torch.fx.Node]:
        """The nodes whose values depend on a call of the module by one of `names`, in graph order."""
        found: dict = {}
        for node in self.graph.graph.nodes:
            if (node.op == "call_module" and node.target in names) or any(a in found for a in node.all_input_nodes):
                found[node] = None
        return list(found)

    def _run(self) -> dict:
        """The kept values and the output's, from a run of the whole graph."""
        kept, output, known = self.kept, self.output, {}

        class Keeping(torch.fx.Interpreter):
            def run_node(self, node):
                value = super().run_node(node)
                if node in kept or node is output:
                    known[node] = _copy(value)
                return value

        with torch.no_grad():
            Keeping(self.graph).run(self.samples)
        return known

    def rerun(self, target: str) -> dict:
        """The kept values and the output's with everything from `target` on computed again; each value is
        dropped after its last reader ran unless it is kept."""
        changed = self.after[target]
        last_read = {a: i for i, node in enumerate(changed) for a in node.all_input_nodes}
        interpreter = torch.fx.Interpreter(self.graph)
        # An in-place op in the re-run (ResNet's `out += identity`) writes into what it reads: give it a copy.
        written = {n.args[0] for n in changed if _in_place(n)}
        interpreter.env = {n: _copy(v) if n in written else v for n, v in self.values.items()
                           if n not in self.after[target]}
        captured = {n: v for n, v in self.values.items() if n not in self.after[target] and n is not self.output}
        with torch.no_grad():
            for i, node in enumerate(changed):
                interpreter.env[node] = interpreter.run_node(node)
                if node in self.kept:
                    captured[node] = _copy(interpreter.env[node])
                for a in node.all_input_nodes:
                    if last_read[a] == i and a not in self.kept:
                        del interpreter.env[a]
        captured[self.output] = interpreter.env[self.output]
        return captured

    def outputs(self, values: dict) -> list[torch.Tensor]:
        return torch.utils._pytree.tree_leaves(values[self.output])


def _in_place(node: torch.fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


def _copy(value):
    """A value as it is now, safe from in-place ops that run later (parameters are never written: no copy)."""
    return value.clone() if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) else value


def _error(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return float(sum(((o - r) ** 2).sum() for o, r in zip(outputs, reference, strict=True)))


def search_ranges(observed: Observed) -> SearchedRanges:
    """Choose each activation's range rule by the output error it causes (see the module's docstring)."""
    started = time.perf_counter()
    samples = observed.inputs(observed.calibration[:MAX_SAMPLES])
    graph, quantizers, aliases = _simulated(observed)
    histograms = {name: observed.histograms[name] for name in quantizers}
    chosen = {name: "minmax" if name in observed.outputs else START for name in histograms}
    for name, hist in histograms.items():
        quantizers[name].set_range(*rule_range(hist, chosen[name]))
    with torch.no_grad():
        reference = torch.utils._pytree.tree_leaves(copy.deepcopy(observed.prepared)(samples))
    first_calls = {alias: name for name, names in aliases.items() for alias in names}
    order = [first_calls[n.target] for n in graph.graph.nodes if n.op == "call_module" and n.target in first_calls]
    order = [name for name in dict.fromkeys(order) if name not in observed.outputs]  # a shared one: tried once
    replay = _Replay(graph, samples, {name: aliases[name] for name in order})
    start_error = best_error = _error(replay.outputs(replay.values), reference)
    for name in order:
        current = rule_range(histograms[name], chosen[name])
        tried = {current}
        for rule in RULES:
            candidate = rule_range(histograms[name], rule)
            if candidate in tried:
                continue
            tried.add(candidate)
            quantizers[name].set_range(*candidate)
            values = replay.rerun(name)
            error = _error(replay.outputs(values), reference)
            if error < best_error:
                best_error, chosen[name], current, replay.values = error, rule, candidate, values
            del values  # a rejected try's values would otherwise stay alive through the next
        quantizers[name].set_range(*current)
    report = {"start": START, "tensors": len(chosen), "rules": dict(sorted(Counter(chosen.values()).items())),
        "samples": len(samples), "output_error_vs_start": round(best_error / max(start_error, 1e-30), 3),
        "seconds": round(time.perf_counter() - started, 1)}
    return SearchedRanges([(fingerprint(histograms[n]), m) for n, m in chosen.items()], report)
