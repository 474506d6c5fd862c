"""Post-training int8 in PyTorch through PT2E, with edgecnn's own activation ranges.

    observed = observe(model, calibration, layout="NHWC")    # export, insert observers, gather histograms
    graph = observed.convert("mse")                           # ranges chosen by one method → fake-quant graph

Before converting, each layer's bias absorbs the mean error its weights' rounding causes on the calibration images
(bias correction, Nagel et al. 2019, from the measured input means): on the real MobileNetV2 it lifts the logits'
signal-to-noise ratio by 0.5–1.3 dB (benchmarks/results/int8_reference.md).

litert-torch converts the graph as it is; its per-layer outputs against the float graph's give the .tflite's
signal-to-quantization-noise report. The file's kernels round differently from the fake-quantized graph (on the
real MobileNetV2 about one top-1 in five differs), so range methods are scored on the real file, not here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgecnn.errors import EdgeCNNError
from edgecnn.native import quiet_native_output
from edgecnn.quantize.calibrate import SEARCH
from edgecnn.quantize.graph_capture import export_graph
from edgecnn.quantize.ranges import Histogram, activation_ranges


def litert_torch():
    """Import the converter stack with its first-import notices (absl, oneDNN, torch pytree) kept quiet."""
    with quiet_native_output():
        import litert_torch
        import litert_torch.quantize.quant_config  # noqa: F401  (pulls in jax and transformers)
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    return litert_torch


class NHWCInput(nn.Module):
    """Takes camera-layout (N, H, W, C) input; the converter folds the transpose into the first conv."""

    def __init__(self, wrapped: nn.Module):
        super().__init__()
        self.wrapped = wrapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped(x.permute(0, 3, 1, 2))


def channels_last(model: nn.Module) -> nn.Module:
    return NHWCInput(model).eval()


def quantizer(float_layers: Sequence[str] = (), qat: bool = False):
    """litert-torch's PT2E quantizer (per-channel symmetric int8 weights, int8 activations) that leaves the named
    modules in float. For post-training quantization activations get min/max observers whose ranges edgecnn
    replaces with its own choice before converting."""
    litert_torch()
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class PartialQuantizer(PT2EQuantizer):
        """litert-torch's own set_module_name() matches names rebuilt from nn_module_stack keys, which no longer
        carry the module path in torch 2.14; the stack's values do."""

        # Its conv+BN QAT annotators build their patterns with a torch.export call that torch 2.14 refuses;
        # edgecnn folds BatchNorm into the convolutions before QAT instead, so those patterns never occur.
        STATIC_QAT_ONLY_OPS: list[str] = []

        def _annotate_for_static_quantization_config(self, model):
            keep = set(float_layers)

            def quantized(node) -> bool:
                # Paths as module_path() gives them: a graph traced through the NHWC wrapper prefixes "wrapped.",
                # one traced from the model itself (.pte's NCHW) does not.
                stack = node.meta.get("nn_module_stack", {}).values()
                return not keep.intersection(path.removeprefix("wrapped.") for path, _ in stack)

            self._annotate_all_static_patterns(model, self.global_config, quantized)
            return model

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if not qat:
        act = dataclasses.replace(config.input_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    return PartialQuantizer().set_global(config)


def is_activation_observer(module: nn.Module) -> bool:
    return getattr(module, "qscheme", None) == torch.per_tensor_affine and hasattr(module, "min_val")


_CLAMPS = {
    torch.ops.aten.relu.default: (0.0, math.inf), torch.ops.aten.relu_.default: (0.0, math.inf),
    torch.ops.aten.hardtanh.default: (-1.0, 1.0), torch.ops.aten.hardtanh_.default: (-1.0, 1.0),
    torch.ops.aten.clamp.default: (-math.inf, math.inf),
}


def _output_bounds(node: torch.fx.Node) -> tuple[float, float]:
    """The values that survive the clamps consuming an observed tensor. The quantizer leaves ReLU6 (hardtanh)
    after the convolution's output quantizer and lets it share the scale: a range over the convolution's raw
    output (MobileNetV2: about -9 to 20) would spend most of its 256 levels on values ReLU6 then cuts away."""
    bounds = (-math.inf, math.inf)
    for user in node.users:
        if user.target not in _CLAMPS:
            return -math.inf, math.inf
        low, high = _CLAMPS[user.target]
        args = list(user.args[1:]) + [None, None]
        low = low if args[0] is None else float(args[0])
        high = high if args[1] is None else float(args[1])
        bounds = (max(bounds[0], low) if bounds[0] != -math.inf else low,
                  min(bounds[1], high) if bounds[1] != math.inf else high)
    return bounds


def module_path(node: torch.fx.Node) -> str | None:
    """The innermost PyTorch module a graph node came from, without the NHWC wrapper's prefix."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.removeprefix("wrapped.") or None


WEIGHTED = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def weighted_nodes(graph: torch.fx.GraphModule) -> dict[str, str]:
    """Graph node name → module path of every conv/linear node."""
    return {n.name: module_path(n) or n.name for n in graph.graph.nodes if n.target in WEIGHTED}


@dataclass
class Observed:
    """The PT2E-prepared graph of one model and the histograms of its activations on the calibration images."""

    prepared: torch.fx.GraphModule
    histograms: dict[str, Histogram]
    calibration: torch.Tensor  # normalised N×3×H×W
    layout: str
    input_means: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # conv/linear node → per channel
    outputs: frozenset[str] = frozenset()  # the observers of the graph's outputs

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 2, 3, 1) if self.layout == "NHWC" else images

    def with_ranges(self, method: str, searched=None) -> torch.fx.GraphModule:
        """A copy of the prepared graph with every activation observer holding its range by `method` (for
        "search", the method `searched` chose for it)."""
        prepared = copy.deepcopy(self.prepared)
        ranges = (searched.ranges_for(self.histograms, self.outputs) if method == SEARCH
                  else activation_ranges(self.histograms, method, self.outputs))
        for name, module in prepared.named_modules():
            if name in ranges:
                module.min_val.fill_(ranges[name][0])
                module.max_val.fill_(ranges[name][1])
        return prepared

    def convert(self, method: str, fold_weights: bool = False, correct_bias: bool = True,
                searched=None) -> torch.fx.GraphModule:
        """The fake-quantized graph with every activation range chosen by `method` (and, with `correct_bias`, the
        biases corrected for the weights' rounding); with `fold_weights` the weights are stored as int8 constants
        (what ExecuTorch lowers) instead of float ones quantized in the graph (what litert-torch converts)."""
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        prepared = self.with_ranges(method, searched)
        keep_requantizable(prepared)
        if correct_bias:
            correct_rounding_bias(prepared, self.input_means)
        with quiet_native_output():
            return convert_pt2e(prepared, fold_quantize=fold_weights)


BATCH = 32
XNNPACK_LIMIT = 256.0  # XNNPACK refuses a conv/linear whose input scale × weight scale / output scale reaches this
REQUANTIZATION_LIMIT = 128.0  # edgecnn keeps a factor of two below it
WIDENING_PASSES = 8


def _output_observer(node: torch.fx.Node, modules: dict) -> nn.Module | None:
    """The activation observer of a layer's output, after the clamps fused into it."""
    while len(node.users) == 1:
        node = next(iter(node.users))
        module = modules.get(node.target) if node.op == "call_module" else None
        if module is not None:
            return module if is_activation_observer(module) else None
        if node.target not in _CLAMPS:
            return None
    return None


def _requantization(node: torch.fx.Node, modules: dict) -> tuple[nn.Module, float, float] | None:
    """(output observer, input scale × largest weight scale, output scale) of a quantized conv/linear node;
    None for one kept in float or in a pattern the quantizer left alone."""
    source, weight = (modules.get(getattr(a, "target", None)) for a in node.args[:2])
    output = _output_observer(node, modules)
    if not (is_activation_observer(source) and is_activation_observer(output)) \
            or getattr(weight, "qscheme", None) != torch.per_channel_symmetric:
        return None
    product = float(source.calculate_qparams()[0]) * float(weight.calculate_qparams()[0].max())
    return output, product, float(output.calculate_qparams()[0])


def _widen(observer: nn.Module, scale: float) -> None:
    """Stretch the observer's range (about 0) to give `scale`; from its true width, as a range narrower than
    the observer's least scale (eps) already has that scale."""
    low, high = min(float(observer.min_val), 0.0), max(float(observer.max_val), 0.0)
    width = scale * (observer.quant_max - observer.quant_min)
    if high - low <= 0:
        observer.min_val.fill_(0.0)
        observer.max_val.fill_(width)
    else:
        observer.min_val.fill_(low * width / (high - low))
        observer.max_val.fill_(high * width / (high - low))


def keep_requantizable(prepared: torch.fx.GraphModule) -> None:
    """Widen, where needed, a conv/linear output range so that XNNPACK takes the layer: a channel with weights
    far larger than what its output keeps (an under-trained model's BatchNorm, values mostly cut by ReLU) makes
    input scale × weight scale / output scale reach XNNPACK's limit, and the file fails to prepare. A widened
    output is the input scale its readers see, and through an observer shared by a concatenation's inputs it can
    be an earlier layer's too: passes repeat until nothing changes. What no widening can fix is refused here,
    naming the layer, rather than by XNNPACK with a node number."""
    modules = dict(prepared.named_modules(remove_duplicate=False))  # a shared observer has several names
    layers = [n for n in prepared.graph.nodes if n.target in WEIGHTED]
    for _ in range(WIDENING_PASSES):
        widened = False
        for node in layers:
            found = _requantization(node, modules)
            if found is not None and found[2] * REQUANTIZATION_LIMIT < found[1]:
                _widen(found[0], found[1] / REQUANTIZATION_LIMIT)
                widened = True
        if not widened:
            return
    for node in layers:
        found = _requantization(node, modules)
        if found is not None and found[1] >= found[2] * XNNPACK_LIMIT:
            raise EdgeCNNError(f"{module_path(node) or node.name}: its weights are too large for its int8 input "
                               f"and output ranges (input scale × weight scale / output scale "
                               f"{found[1] / found[2]:.0f} ≥ {XNNPACK_LIMIT:.0f}, XNNPACK's limit) even after "
                               "widening: a layer this far out of proportion is likely untrained or collapsed")


def feed(graph: torch.fx.GraphModule, samples: torch.Tensor) -> None:
    """Run every sample through the graph (its observers record what they see; the outputs are not needed)."""
    with torch.no_grad():
        for batch in _batches(samples):
            graph(batch)


def observe(model: nn.Module, calibration: torch.Tensor, layout: str = "NHWC",
            float_layers: Sequence[str] = ()) -> Observed:
    """Export `model` (NHWC input for TFLite, NCHW as it is), insert observers and histogram every activation
    the int8 graph will quantize: one pass for the extremes, one for the histograms over them."""
    litert_torch()  # first: its quiet import also silences torchao's import-time notices
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    observed = Observed(None, {}, calibration, layout)  # type: ignore[arg-type]
    samples = observed.inputs(calibration)
    graph = export_graph(channels_last(model) if layout == "NHWC" else model.eval(), samples[:2])
    with quiet_native_output():
        prepared = prepare_pt2e(graph, quantizer(float_layers))
    feed(prepared, samples)
    observers = {name: m for name, m in prepared.named_modules() if is_activation_observer(m)}
    bounds = {n.target: _output_bounds(n) for n in prepared.graph.nodes if n.target in observers}
    histograms = {name: Histogram.empty(*np.clip([m.min_val.item(), m.max_val.item()], *bounds[name]))
                  for name, m in observers.items()}

    def hook(name):
        return lambda module, args, output: histograms[name].add(np.clip(args[0].detach().numpy(), *bounds[name]))

    handles = [m.register_forward_hook(hook(name)) for name, m in observers.items()]
    try:
        feed(prepared, samples)
    finally:
        for handle in handles:
            handle.remove()
    observed.prepared, observed.histograms = prepared, histograms
    observed.outputs = graph_output_observers(prepared, observers)
    observed.input_means = input_means(prepared, samples)
    return observed


_RESHAPES = {torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten.permute.default,
             torch.ops.aten.flatten.using_ints, torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims}


def graph_output_observers(prepared: torch.fx.GraphModule, observers: dict[str, nn.Module]) -> frozenset[str]:
    """The activation observers whose values leave the graph as its outputs (through reshapes)."""
    names = set()
    for output in (n for n in prepared.graph.nodes if n.op == "output"):
        for node in torch.utils._pytree.tree_leaves(output.args):
            while isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in _RESHAPES:
                node = node.args[0]
            if isinstance(node, torch.fx.Node) and node.op == "call_module" and node.target in observers:
                names.add(node.target)
    return frozenset(names)


class _InputSums(torch.fx.Interpreter):
    """Sums, per input channel, of what every conv/linear node reads."""

    def __init__(self, graph: torch.fx.GraphModule):
        super().__init__(graph)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def run_node(self, node):
        if node.target in WEIGHTED:
            x = self.env[node.args[0]]
            channel = 1 if node.target == torch.ops.aten.conv2d.default else x.dim() - 1  # linear: the last
            dims = [d for d in range(x.dim()) if d != channel]
            self.sums[node.name] = self.sums.get(node.name, 0) + x.double().sum(dim=dims)
            self.counts[node.name] = self.counts.get(node.name, 0) + x.numel() // x.shape[channel]
        return super().run_node(node)


def input_means(graph: torch.fx.GraphModule, samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean input of every conv/linear node on the samples."""
    sums = _InputSums(graph)
    with torch.no_grad():
        for batch in _batches(samples):
            sums.run(batch)
    return {name: (total / sums.counts[name]).float() for name, total in sums.sums.items()}


def _attribute(graph: torch.fx.GraphModule, target: str) -> torch.Tensor:
    return functools.reduce(getattr, target.split("."), graph)


def correct_rounding_bias(prepared: torch.fx.GraphModule, means: dict[str, torch.Tensor]) -> None:
    """Subtract from each quantized layer's bias the mean output error its weights' int8 rounding causes:
    ΔW · E[x] per output channel, with ΔW from the layer's own weight observer (the scales convert will use) and
    E[x] the input's per-channel mean on the calibration images. A layer without a bias gets one."""
    modules = dict(prepared.named_modules())
    for node in [n for n in prepared.graph.nodes if n.target in WEIGHTED and n.name in means]:
        observer = modules.get(getattr(node.args[1], "target", None))
        if observer is None or getattr(observer, "qscheme", None) != torch.per_channel_symmetric:
            continue  # kept in float
        weight = _attribute(prepared, node.args[1].args[0].target).detach()
        scale, zero = (t.reshape(-1, *[1] * (weight.dim() - 1)) for t in observer.calculate_qparams())
        error = (torch.clamp(torch.round(weight / scale) + zero, observer.quant_min, observer.quant_max) - zero) * scale
        error = (error - weight).flatten(2).sum(2) if weight.dim() == 4 else error - weight
        groups = node.args[6] if node.target == torch.ops.aten.conv2d.default and len(node.args) > 6 else 1
        per_group = means[node.name].reshape(groups, -1)  # the input channels each output channel reads
        shift = (error * per_group.repeat_interleave(len(weight) // groups, dim=0)).sum(1)
        _bias(prepared, node).data -= shift


def _bias(graph: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor:
    """The node's bias tensor; a zero one is added (as a graph constant) to a layer that has none."""
    if len(node.args) > 2 and node.args[2] is not None:
        return _attribute(graph, node.args[2].target)
    name = f"{node.name}_rounding_bias"
    channels = _attribute(graph, node.args[1].args[0].target).shape[0]
    graph.register_buffer(name, torch.zeros(channels))
    with graph.graph.inserting_before(node):
        bias = graph.graph.get_attr(name)
    node.args = (*node.args[:2], bias, *node.args[3:])
    graph.recompile()
    return getattr(graph, name)


class _Done(Exception):
    pass


def node_values(graph: torch.fx.GraphModule, batch: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named nodes on one batch, through the fx interpreter; stops after the last of them."""
    wanted, values = set(names), {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if node.name in wanted:
                values[node.name] = result.detach().clone()  # a later in-place op (ReLU6) would change it
                if len(values) == len(wanted):
                    raise _Done
            return result

    with torch.no_grad(), contextlib.suppress(_Done):
        Recorder(graph).run(batch)
    return values


def _batches(samples: torch.Tensor):
    return (samples[i : i + BATCH] for i in range(0, len(samples), BATCH))


def sqnr_db(signal: float, noise: float) -> float:
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


def quantized_layers(converted: torch.fx.GraphModule) -> dict[str, str]:
    """Node name → module path of every conv/linear whose weight is int8 (dequantized), i.e. not kept in float."""
    paths = weighted_nodes(converted)
    return {n.name: paths[n.name] for n in converted.graph.nodes if n.target in WEIGHTED
            and "dequantize" in str(getattr(n.args[1], "target", ""))}


def _passes_through(node: torch.fx.Node) -> bool:
    return node.op == "call_module" or node.target in _CLAMPS or "quantize" in str(node.target)


def layer_outputs(graph: torch.fx.GraphModule, layers) -> dict[str, str]:
    """Layer node → the node holding its output as the next layer sees it: after its activation (ReLU6) and its
    output quantizer. A pre-activation value would count noise on negatives that ReLU6 then discards."""
    nodes = {n.name: n for n in graph.graph.nodes}
    ends = {}
    for name in layers:
        node = nodes[name]
        while len(node.users) == 1 and _passes_through(next(iter(node.users))):
            node = next(iter(node.users))
        if str(node.target) == "quantized_decomposed.quantize_per_tensor.default":  # int8 codes, several readers:
            node = next(u for u in node.users if "dequantize" in str(u.target))  # their values, as floats
        ends[name] = node.name
    return ends


def layer_errors(observed: Observed, converted: torch.fx.GraphModule, samples: torch.Tensor) -> list[dict]:
    """Signal-to-quantization-noise ratio (dB) of every quantized conv/linear layer's output (after its
    activation, as the next layer sees it) against the float graph's, worst first."""
    layers = quantized_layers(converted)
    float_ends, int8_ends = layer_outputs(observed.prepared, layers), layer_outputs(converted, layers)
    signal, noise = dict.fromkeys(layers, 0.0), dict.fromkeys(layers, 0.0)
    for batch in _batches(observed.inputs(samples)):
        reference = node_values(observed.prepared, batch, list(float_ends.values()))
        actual = node_values(converted, batch, list(int8_ends.values()))
        for name in layers:
            expected = reference[float_ends[name]]
            signal[name] += float((expected**2).sum())
            noise[name] += float(((expected - actual[int8_ends[name]]) ** 2).sum())
    rows = [{"layer": path, "sqnr_db": round(sqnr_db(signal[n], noise[n]), 2)} for n, path in layers.items()]
    return sorted(rows, key=lambda r: r["sqnr_db"])
