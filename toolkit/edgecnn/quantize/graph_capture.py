"""The model as the ATen graph PT2E quantizes: torch.export, with what litert-torch's quantizer needs to see."""

from __future__ import annotations

import operator

import torch
from torch import nn
from torch.nn import functional as F

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.native import quiet_native_output

# Ops called as functions or operators, by the source litert-torch's annotators look for (`get_source_partitions`).
_SOURCES = {torch.ops.aten.add.Tensor: operator.add, torch.ops.aten.add_.Tensor: operator.iadd,
            torch.ops.aten.mul.Tensor: operator.mul, torch.ops.aten.mul_.Tensor: operator.imul,
            torch.ops.aten.cat.default: torch.cat, torch.ops.aten.max_pool2d.default: F.max_pool2d,
            torch.ops.aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d}
# Functional ReLU, which the fused sum + ReLU pattern looks for, by the function non-strict export names
# (`torch_fn`): `F.relu`, not `torch.relu`, as strict export tells them apart.
_FUNCTIONS = {"function.relu": F.relu, "function.relu_": F.relu_}


def export_graph(model: nn.Module, example: torch.Tensor, max_batch: int = 1024) -> torch.fx.GraphModule:
    """torch.export for PT2E, any batch size up to `max_batch`.

    Non-strict export is 3× faster than strict (a MobileNetV2 1.5 against 4.6 s, the SSDLite student 2.8 against
    9.0 s) but does not record each op's source (`source_fn_stack`), by which litert-torch's annotators find sums,
    products, concatenations, pools and fused sum + ReLU: without it a residual sum that feeds the next one is read
    unquantized. `_record_sources` writes what strict export would have."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with quiet_native_output():  # torch.export logs deprecation notices through glog
        try:
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
        except Exception as e:
            raise EdgeCNNError(f"torch.export cannot export the model: {first_line(e)}") from None
    graph = program.module()
    _record_sources(graph)
    return graph


def _record_sources(graph: torch.fx.GraphModule) -> None:
    """Each op's source as strict export records it: the torch.nn module class for an op inside one (keyed by the
    module call, so two calls of one shared ReLU stay two partitions), else the function or operator."""
    for node in graph.graph.nodes:
        if node.op != "call_function" or "source_fn_stack" in node.meta:
            continue
        stack = node.meta.get("nn_module_stack") or {"": ("", None)}
        call, (_, kind) = next(reversed(stack.items()))
        module = _torch_nn_class(kind)
        function = (node.meta.get("torch_fn") or ("", ""))[1]
        if module is not None:
            node.meta["source_fn_stack"] = [(call, module)]
        elif function in _FUNCTIONS:
            node.meta["source_fn_stack"] = [(node.name, _FUNCTIONS[function])]
        elif node.target in _SOURCES:
            node.meta["source_fn_stack"] = [(node.name, _SOURCES[node.target])]


def _torch_nn_class(kind: type | str | None) -> type | None:
    """The torch.nn module class `kind` names (non-strict export names it by its dotted path), else None."""
    name = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}" if kind else ""
    if not name.startswith("torch.nn.modules."):
        return None
    found = getattr(nn, name.rsplit(".", 1)[1], None)
    return found if isinstance(found, type) else None
