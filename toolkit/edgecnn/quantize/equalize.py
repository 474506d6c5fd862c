"""Per-channel activation equalization before int8: rescale channels so one per-tensor range fits them all.

    model, report = equalize(model, calibration)

int8 activations get one scale per tensor, so a tensor whose channels differ in range (MobileNetV2's first
convolution: most channels under 0.5, one at 4.5) spends its levels on the widest channel and rounds the others
to a few steps. A channel can be divided by s without changing the model when everything between the layers
that write it and the layers that read it is per-channel and positively homogeneous (BatchNorm output, ReLU,
ReLU6 below its clip, max pooling, residual sums): the writers' output channel is divided by s (weights per
output channel: no effect on their int8 precision) and the readers' input channel multiplied by s. A depthwise
reader holds each input channel in its own per-channel weight scale, so there every channel is raised to the
widest for free; a dense reader's weight column grows with s, so there the channel's activation range and its
weight column (relative to its rows) meet half-way, as in cross-layer equalization (Nagel et al. 2019).
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from edgecnn.errors import first_line

MAX_GROWTH = 256.0  # no channel is scaled up or down by more: a near-dead one is not blown up to the widest
# Raising a channel multiplies its writer's weights. A channel with weights far larger than what its output keeps
# (ReLU cuts most of it) is raised only while its writer's input scale × weight scale / output scale stays below
# this: XNNPACK refuses a layer at 256, and a range method may still narrow the output (edgecnn keeps 128 there).
MAX_REQUANTIZATION = 32.0

_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.MaxPool2d)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6}
_SUMS = {operator.add, torch.add}


@dataclass
class _Group:
    """Tensors that must share one per-channel scale: those its writers produce and everything per-channel in
    between, up to the convolutions that read them."""

    writers: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # node names of the writers' inputs
    outputs: list[str] = field(default_factory=list)  # node names of the writers' outputs as int8 quantizes them
    readers: list[nn.Conv2d] = field(default_factory=list)
    measured: list[str] = field(default_factory=list)  # node names whose values int8 quantizes per tensor
    clipped: list[str] = field(default_factory=list)  # node names of what ReLU6 (or a 0..max Hardtanh) reads
    clip: float = float("inf")  # the lowest of their upper clips


def _clip(module: nn.Module | None, node: torch.fx.Node) -> float | None:
    """The upper clip of a ReLU6-like node (lower clip 0), else None."""
    if isinstance(module, nn.Hardtanh) and module.min_val == 0.0 and module.max_val > 0:
        return float(module.max_val)
    return 6.0 if node.op == "call_function" and node.target is F.relu6 else None


class _Groups:
    """Union-find over the traced graph's tensors, then the groups whose every member and reader allows scaling."""

    def __init__(self, graph: torch.fx.GraphModule):
        self.modules = dict(graph.named_modules())
        self.nodes = list(graph.graph.nodes)
        self.parent = {n: n for n in self.nodes}
        self.calls = Counter(n.target for n in self.nodes if n.op == "call_module")
        self.read_directly = {n.target for n in self.nodes if n.op == "get_attr"}
        self.uses = Counter(id(p) for _, p in graph.named_parameters(remove_duplicate=False))

    def find(self, node):
        while self.parent[node] is not node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a, b) -> None:
        self.parent[self.find(a)] = self.find(b)

    def module(self, node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def layer(self, node) -> nn.Module | None:
        """The node's module if its weights can take this group's scales: called once, positionally, with
        parameters of its own (not shared with another module, not read by the graph directly, not computed by
        a parametrization)."""
        module = self.module(node)
        if module is None or self.calls[node.target] != 1 or not node.args or parametrize.is_parametrized(module):
            return None
        own = module._parameters
        if "weight" not in own or any(self.uses[id(p)] > 1 for p in own.values() if p is not None):
            return None
        if any(f"{node.target}.{name}" in self.read_directly for name in own):
            return None
        return module

    def writer(self, node) -> tuple[nn.Conv2d, nn.BatchNorm2d | None] | None:
        """(conv, its BatchNorm) when the node's value is a convolution's output channels."""
        module = self.layer(node)
        if isinstance(module, nn.Conv2d):
            users = list(node.users)
            if len(users) == 1 and isinstance(self.module(users[0]), nn.BatchNorm2d):
                return None  # the BatchNorm's output is the one scaled
            return module, None
        if isinstance(module, nn.BatchNorm2d) and module.affine and module.bias is not None:
            source = node.args[0]
            conv = self.layer(source) if isinstance(source, torch.fx.Node) else None
            if isinstance(conv, nn.Conv2d) and len(source.users) == 1:
                return conv, module
        return None

    def passes(self, node) -> bool:
        module = self.module(node)
        if module is not None:
            return isinstance(module, _PASS_MODULES) or _clip(module, node) is not None
        if node.op != "call_function":
            return False
        if node.target in _SUMS:
            return len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args) and not node.kwargs
        return node.target in _PASS_FUNCTIONS

    def activation(self, node) -> bool:
        module = self.module(node)
        if module is not None:
            return isinstance(module, (nn.ReLU, nn.ReLU6)) or _clip(module, node) is not None
        return node.op == "call_function" and node.target in _PASS_FUNCTIONS

    def reads(self, node, value) -> bool:
        """The node is a convolution taking `value` as its input."""
        return isinstance(self.layer(node), nn.Conv2d) and node.args[0] is value

    def groups(self) -> list[_Group]:
        members = [n for n in self.nodes if self.writer(n) or self.passes(n)]
        for node in members:
            if self.passes(node):
                for arg in node.all_input_nodes:
                    self.union(node, arg)
        by_root: dict = {}
        for node in self.nodes:
            by_root.setdefault(self.find(node), []).append(node)
        found = []
        for nodes in by_root.values():
            group = self._group(nodes, set(members))
            if group is not None:
                found.append(group)
        return found

    def _group(self, nodes: list, members: set) -> _Group | None:
        if any(n not in members for n in nodes):
            return None  # a graph input, a reshape, a multiply: something that does not keep channels apart
        group, inside, writers = _Group(), set(nodes), []
        for node in nodes:
            clip = _clip(self.module(node), node)
            if clip is not None:
                group.clip = min(group.clip, clip)
                group.clipped += [n.name for n in node.all_input_nodes]
            if (written := self.writer(node)) is not None:
                group.writers.append(written)
                conv_node = node if written[1] is None else node.args[0]
                group.sources.append(conv_node.args[0].name)
                writers.append(node)
            for user in node.users:
                if self.reads(user, node):  # also a convolution whose own output is in the group
                    group.readers.append(self.module(user))
                elif user not in inside or not self.passes(user):
                    return None
            if not all(self.activation(u) for u in node.users):  # an activation fused to its writer is not
                group.measured.append(node.name)  # quantized before it, only after
        for node in writers:  # through the activations fused to it
            while node.name not in group.measured and len(node.users) == 1:
                node = next(iter(node.users))
            group.outputs.append(node.name if node.name in group.measured else group.measured[0])
        return group if group.writers and group.readers else None


def _channel_ranges(graph: torch.fx.GraphModule, names: set[str], calibration: torch.Tensor) -> dict:
    """Per channel of the named nodes on the calibration images: the largest |value| and the largest value
    (what ReLU6 compares with its clip), as a 2 × channels tensor."""
    ranges: dict[str, torch.Tensor] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if node.name in names and isinstance(result, torch.Tensor) and result.dim() == 4:
                values = result.detach()
                peak = torch.stack([values.abs().amax(dim=(0, 2, 3)), values.amax(dim=(0, 2, 3))])
                ranges[node.name] = torch.maximum(ranges[node.name], peak) if node.name in ranges else peak
            return result

    with torch.no_grad():
        for i in range(0, len(calibration), 32):
            Recorder(graph).run(calibration[i : i + 32])
    return ranges


def _column_ranges(conv: nn.Conv2d) -> torch.Tensor:
    """Per input channel, its largest weight relative to the range of the output channel (row) holding it:
    what int8 sees with one scale per output channel."""
    weight = conv.weight.detach().abs().flatten(2).amax(dim=2)  # out × in/groups
    relative = weight / weight.amax(dim=1, keepdim=True).clamp_min(1e-30)
    per_group = relative.view(conv.groups, conv.out_channels // conv.groups, -1).amax(dim=1)
    return per_group.flatten()  # input channel c = group · (in/groups) + column


def _scales(group: _Group, ranges: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """s per channel (its values divided by s, its readers' weights multiplied): activation range a and
    relative weight range w meet at sqrt(a·w) each (CLE's balance; for depthwise readers the weights do not
    matter and the channel goes all the way to the widest). Then the limits: no tensor of the group gets a
    wider range than it had, ReLU6 cuts what it cut before and nothing else, no scale beyond MAX_GROWTH."""
    tensors = torch.stack([ranges[name][0] for name in group.measured])
    peak = tensors.amax(dim=0)
    widest = peak.max()
    if widest <= 0:
        return None
    dense = [r for r in group.readers if r.groups != r.in_channels]
    if dense:
        columns = torch.stack([_column_ranges(r) for r in dense]).amax(dim=0)
        s = ((peak / widest) / (columns / columns.max().clamp_min(1e-30))).sqrt()
    else:
        columns, s = None, peak / widest
    s = torch.maximum(s, (tensors / tensors.amax(dim=1, keepdim=True).clamp_min(1e-30)).amax(dim=0))
    keep = (peak <= 0) | ~torch.isfinite(s)
    if group.clipped:  # a channel ReLU6 reaches keeps its scale; the others stay below the clip
        before = torch.stack([ranges[name][1] for name in group.clipped]).amax(dim=0).clamp_min(0)
        keep |= before >= group.clip
        s = torch.maximum(s, before / group.clip)
    if columns is not None:
        keep |= columns <= 0
    s = torch.maximum(s, _least_scale(group, ranges))
    return torch.where(keep, torch.ones_like(s), s.clamp(1.0 / MAX_GROWTH, MAX_GROWTH))


def _least_scale(group: _Group, ranges: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per channel, the smallest s that keeps every writer's requantization scale (input scale × weight scale /
    output scale, estimated from the measured ranges: int8 steps of range/255 and weight/127) at or below
    MAX_REQUANTIZATION, or where it already was. The output is the writer's own tensor, whose range equalization
    does not widen."""
    least = torch.zeros(group.writers[0][0].out_channels)
    for (conv, norm), source, output in zip(group.writers, group.sources, group.outputs, strict=True):
        weight = conv.weight.detach().abs().flatten(1).amax(dim=1)
        if norm is not None and norm.running_var is not None:
            weight = weight * norm.weight.detach().abs() / (norm.running_var + norm.eps).sqrt()
        ratio = ranges[source][0].max() * weight / (127.0 * ranges[output][0].max().clamp_min(1e-30))
        least = torch.maximum(least, (ratio / MAX_REQUANTIZATION).clamp(max=1.0))
    return least


def _scale_writer(conv: nn.Conv2d, norm: nn.BatchNorm2d | None, s: torch.Tensor) -> None:
    if norm is not None:
        norm.weight.div_(s)
        norm.bias.div_(s)
        return
    conv.weight.div_(s.view(-1, 1, 1, 1))
    if conv.bias is not None:
        conv.bias.div_(s)


def _scale_reader(conv: nn.Conv2d, s: torch.Tensor) -> None:
    """Multiply the weights that read input channel c by s[c] (grouped convolutions: within c's group)."""
    per_group = conv.in_channels // conv.groups
    out_per_group = conv.out_channels // conv.groups
    weight = conv.weight.view(conv.groups, out_per_group, per_group, *conv.weight.shape[2:])
    weight.mul_(s.view(conv.groups, 1, per_group, 1, 1))


def _consistent(group: _Group, ranges: dict[str, torch.Tensor]) -> bool:
    """Every tensor of the group was measured, all with the channel count its writers and readers have (a
    residual sum may broadcast one channel over many)."""
    names = group.measured + group.clipped + group.sources
    if any(name not in ranges for name in names):
        return False
    widths = {ranges[name].shape[1] for name in group.measured + group.clipped}
    widths |= {conv.out_channels for conv, _ in group.writers} | {conv.in_channels for conv in group.readers}
    return len(widths) == 1


def equalize(model: nn.Module, calibration: torch.Tensor) -> tuple[nn.Module, dict]:
    """A copy of `model` (in eval mode) with its activation channels equalized on the calibration images
    (normalised NCHW), and what was done: {"groups": n, "channels": n} or {"skipped": why}. The outputs do not
    change on the calibration images (up to float rounding); elsewhere ReLU6 may cut a raised channel's values
    beyond the calibration images' range, as the int8 range does anyway."""
    try:
        model = copy.deepcopy(model).eval()
        graph = torch.fx.symbolic_trace(model)
        groups = _Groups(graph).groups()
        measured = {name for g in groups for name in g.measured + g.clipped + g.sources}
        ranges = _channel_ranges(graph, measured, calibration)
    except Exception as e:  # control flow torch.fx cannot trace, a model that cannot be copied: quantize it as it is
        return model, {"skipped": f"cannot copy or trace the model (torch.fx): {first_line(e)}"}
    scaled = done = 0
    with torch.no_grad():
        for group in groups:
            s = _scales(group, ranges) if _consistent(group, ranges) else None
            if s is None:
                continue
            for conv, norm in group.writers:
                _scale_writer(conv, norm, s)
            for conv in group.readers:
                _scale_reader(conv, s)
            done += 1
            scaled += int((s != 1).sum())
    return model, {"groups": done, "channels": scaled}
