"""Quantization-aware training (recipe `quantize: {method: qat}`) through PT2E."""

import io

import pytest
import torch
from edgecnn.export.sources import source_from_checkpoint
from edgecnn.recipe import DataConfig, ExportConfig, ModelConfig, QuantizeConfig, Recipe
from edgecnn.runtime.modelfile import read_model_file
from edgecnn.workflows.export import run_export
from rich.console import Console


@pytest.mark.slow  # trains the MobileNetV3, then QAT and two exports: about 65 s on one worker
def test_qat_on_mobilenet_v3_does_not_collapse(trained, tmp_path):
    """PT2E QAT is known to collapse MobileNetV3 to chance; edgecnn folds BatchNorm first and must hold."""
    ckpt = trained("mobilenet_v3_small_edge")
    float_top1 = torch.load(ckpt, weights_only=True)["metrics"]["top1"]
    recipe = Recipe(
        data=DataConfig(img_size=32), model=ModelConfig("mobilenet_v3_small_edge", 0.5),
        quantize=QuantizeConfig(method="qat", epochs=1, lr=0.001), export=ExportConfig(formats=["tflite", "onnx"]),
    )
    log = io.StringIO()
    outputs, metrics = run_export(recipe, ckpt, tmp_path, Console(file=log, width=200))
    assert "QAT epoch 1/1" in log.getvalue()
    for fmt in ("tflite", "onnx"):
        model_file = read_model_file(outputs[fmt])
        assert model_file.float_ops == [] and model_file.card["quantization"]["scheme"].startswith("QAT (1 epochs")
        assert metrics[f"{fmt}_accuracy"] >= float_top1 - 0.02, metrics
        assert metrics[f"{fmt}_agreement"] >= 0.95, metrics


def test_qat_keeps_the_original_model_untouched(trained):
    from edgecnn.export.qat import fold_batchnorm

    source = source_from_checkpoint(trained("resnet8"))
    before = {k: v.clone() for k, v in source.model.state_dict().items()}
    folded = fold_batchnorm(source.model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(folded(x), source.model(x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in source.model.state_dict().items())
