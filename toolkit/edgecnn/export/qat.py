"""Quantization-aware training through PT2E: fine-tune with fake-quantized weights and activations.

BatchNorm is folded into the convolutions first. That sidesteps litert-torch's conv+BN QAT patterns (broken
with torch 2.14) and the collapse MobileNetV3 shows when PT2E QAT trains through BatchNorm layers whose
running statistics (momentum 0.01) trail the fake-quantized weights.

The result serves both formats: the fake-quantized graph converts to an int8 .tflite as it is, and its tuned
weights, copied back into the float (BN-folded) model, are what onnxruntime then quantizes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from rich.console import Console
from torch import nn

from edgecnn.data import load_dataset
from edgecnn.errors import EdgeCNNError, shorten
from edgecnn.export.sources import ExportSource
from edgecnn.loader import make_loader, normalise_batch, set_epoch
from edgecnn.native import quiet_native_output
from edgecnn.quantize.graph_capture import export_graph
from edgecnn.quantize.pt2e import channels_last, litert_torch, quantizer
from edgecnn.recipe import Recipe
from edgecnn.train import learning_rate


@dataclass
class QATResult:
    prepared: torch.fx.GraphModule  # NHWC in, fake-quantized: converts straight to an int8 .tflite
    tuned: nn.Module  # the tuned weights as a float NCHW model (BatchNorm folded)
    epochs: int
    accuracy: float  # held-out top-1 of the fake-quantized model

    def converted(self) -> torch.fx.GraphModule:
        """The int8 graph (NHWC input) that converts to .tflite as it is."""
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        prepared = copy.deepcopy(self.prepared)
        move_exported_model_to_eval(prepared)
        with quiet_native_output():
            return convert_pt2e(prepared, fold_quantize=False)

    @property
    def scheme_prefix(self) -> str:
        """How the artefact's int8 scheme description starts after QAT."""
        return f"QAT ({self.epochs} epochs, BatchNorm folded), then "


def fold_batchnorm(model: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception as e:
        raise EdgeCNNError(f"QAT needs BatchNorm folded into convolutions, and torch.fx could not trace the "
                           f"model: {shorten(str(e), 200)}") from None


def _nhwc(images: torch.Tensor, source: ExportSource) -> torch.Tensor:
    return normalise_batch(images, source.pre, torch.device("cpu")).permute(0, 2, 3, 1)


def _accuracy(prepared: torch.fx.GraphModule, loader, source: ExportSource) -> float:
    from torchao.quantization.pt2e import move_exported_model_to_eval

    move_exported_model_to_eval(prepared)
    correct = seen = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (prepared(_nhwc(images, source)).argmax(1) == labels).sum().item()
            seen += len(labels)
    return correct / max(1, seen)


def quantization_aware_training(source: ExportSource, recipe: Recipe, console: Console) -> QATResult:
    litert_torch()
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    q, size = recipe.quantize, source.pre.img_size
    torch.manual_seed(recipe.seed)
    folded = fold_batchnorm(source.model)
    graph = export_graph(channels_last(folded), torch.zeros(2, size, size, 3), max_batch=4096)
    with quiet_native_output():
        prepared = prepare_qat_pt2e(graph, quantizer([], qat=True))

    dataset = load_dataset(recipe.data.dataset)
    train_loader = make_loader(dataset.train, source.pre, recipe.data.batch_size, train=True,
                               augment=tuple(recipe.data.augment), seed=recipe.seed, workers=recipe.data.workers)
    test_loader = make_loader(dataset.test, source.pre, recipe.data.batch_size * 2, train=False)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=q.lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.train.label_smoothing)
    total = q.epochs * len(train_loader)
    step = 0
    for epoch in range(q.epochs):
        set_epoch(train_loader, epoch, recipe.seed)
        move_exported_model_to_train(prepared)
        for images, labels in train_loader:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, 0, q.lr)
            loss = criterion(prepared(_nhwc(images, source)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        accuracy = _accuracy(prepared, test_loader, source)
        console.print(f"QAT epoch {epoch + 1}/{q.epochs}: loss {loss.item():.4f}, fake-quant top-1 {accuracy:.2%}")

    tuned_state = {k.removeprefix("wrapped."): v for k, v in prepared.state_dict().items()}
    folded.load_state_dict({k: tuned_state[k] for k in folded.state_dict()})
    return QATResult(prepared, folded.eval(), q.epochs, accuracy)
