import pytest
import torch
import torchvision
from edgecnn.errors import EdgeCNNError
from edgecnn.models import MODELS
from edgecnn.models.build import build_model, load_pretrained
from edgecnn.models.mobilenet_v3_edge import HardSigmoidReLU6


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_classifies(name):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", [n for n, spec in MODELS.items() if spec.has_width])
def test_width_shrinks_models(name):
    def params(width):
        return sum(p.numel() for p in build_model(name, 10, width).parameters())

    assert params(0.5) < params(1.0)


def test_width_rounds_channels_to_multiples_of_8():
    model = build_model("tinycnn", 10, width=0.3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)


def test_bad_names_and_options():
    with pytest.raises(EdgeCNNError, match="did you mean 'mobilenet_v3_small'"):
        build_model("mobilenet_v3_smal", 10)
    with pytest.raises(EdgeCNNError, match="no width option"):
        build_model("resnet18", 10, width=0.5)
    with pytest.raises(EdgeCNNError, match="at least 2 classes"):
        build_model("tinycnn", 1)


def test_resnet8_matches_the_mlperf_tiny_reference_size():
    params = sum(p.numel() for p in build_model("resnet8", 10).parameters())
    assert 77_000 < params < 80_000  # MLPerf Tiny's resnet8 has 78k parameters


def test_edge_mobilenet_v3_computes_what_torchvision_does():
    """Same weights, same outputs: the ReLU6 gate is exactly Hardsigmoid, so pretrained weights carry over."""
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    edge = build_model("mobilenet_v3_small_edge", 10).eval()
    edge.load_state_dict(reference.state_dict())
    assert not any(isinstance(m, torch.nn.Hardsigmoid) for m in edge.modules())
    assert any(isinstance(m, HardSigmoidReLU6) for m in edge.modules())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(edge(x), reference(x), rtol=1e-5, atol=1e-5)


def test_pretrained_weights_replace_the_head(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v2(num_classes=1000, width_mult=0.5)
    torch.save(source.state_dict(), tmp_path / "mbv2.pth")
    model = build_model("mobilenet_v2", 10, width=0.5)
    note = load_pretrained(model, "mobilenet_v2", str(tmp_path / "mbv2.pth"))
    assert "new classifier head (10 classes)" in note
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)


def test_pretrained_weights_that_do_not_fit(tmp_path):
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.5).state_dict(), tmp_path / "half.pth")
    with pytest.raises(EdgeCNNError, match="do not fit mobilenet_v2: .* in the file but"):
        load_pretrained(build_model("mobilenet_v2", 10), "mobilenet_v2", str(tmp_path / "half.pth"))
    with pytest.raises(EdgeCNNError, match="do not fit resnet18: missing"):
        load_pretrained(build_model("resnet18", 10), "resnet18", str(tmp_path / "half.pth"))
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(EdgeCNNError, match="cannot read weights"):
        load_pretrained(build_model("resnet18", 10), "resnet18", str(tmp_path / "junk.pth"))


def test_unknown_torchvision_weights_name():
    with pytest.raises(EdgeCNNError, match="neither a file nor torchvision weights .* IMAGENET1K_V1"):
        load_pretrained(build_model("resnet18", 10), "resnet18", "IMAGENET9K")
