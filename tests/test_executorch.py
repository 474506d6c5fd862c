"""ExecuTorch programs (.pte) as a fourth format: the .tflite's PT2E graph lowered to XNNPACK, verified (every
compute op delegated and int8, agreement with float), self-describing through its `edgecnn_card` method, read
by the runtime, `info`, `summary` and `bench`, and refused when damaged."""

import json

import numpy as np
import pytest
from conftest import assert_clean_error, assert_damage_refused, edgecnn, edgecnn_in_process, edgecnn_without, record
from edgecnn.errors import EdgeCNNError
from edgecnn.runtime import load
from edgecnn.runtime.modelfile import read_model_file
from torch import nn

pytest.importorskip("executorch", reason="ExecuTorch is an extra: pip install 'edgecnn[executorch]'")
pytestmark = pytest.mark.xdist_group("executorch")  # one worker builds the module's exports

FRAME = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def programs(digits_checkpoint, tmp_path_factory):
    """The digits checkpoint as int8 and float .pte files, with the export reports."""
    out = tmp_path_factory.mktemp("pte")
    for flags in (["--int8"], []):
        name = "int8" if flags else "float"
        result = edgecnn_in_process("export", digits_checkpoint, *flags, "--format", "executorch", "--out", out,
                                    "--json", out / f"{name}.json")
        assert result.returncode == 0, result.stderr
    report = json.loads((out / "int8.json").read_text())["artifacts"][0]
    return {"int8": out / "tinycnn_int8.pte", "float": out / "tinycnn.pte", "report": report}


def test_int8_program_is_fully_delegated_and_verified(programs):
    report = programs["report"]
    assert report["status"] == "ok" and report["format"] == "executorch"
    assert report["ops"]["float"] == 0 and report["ops"]["int8"] == report["ops"]["compute"] >= 6, report["ops"]
    assert report["agreement"] >= 0.97 and report["accuracy"] >= report["float_accuracy"] - 0.02
    assert report["layer_errors"] and all(row["sqnr_db"] > 0 for row in report["layer_errors"])
    model = read_model_file(programs["int8"])
    assert all(op.delegated for op in model.ops)
    assert {op.name for op in model.int8_ops} >= {"XNNConv2d", "XNNFullyConnected"}
    assert {op.name for op in read_model_file(programs["float"]).float_ops} >= {"XNNConv2d"}


def test_card_is_what_the_program_itself_returns(programs):
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(programs["int8"])).load_method("edgecnn_card")
    returned = bytes(method.execute([])[0].numpy()).decode()
    card = json.loads(returned.removeprefix("edgecnn-card:").removesuffix(":edgecnn-card-end").strip())
    shown = json.loads(edgecnn("info", programs["int8"], "--json", "-").stdout)
    assert card == shown["card"] and card["labels"] == [str(i) for i in range(10)]
    assert card["preprocess"]["layout"] == "NCHW" and card["quantization"]["int8"] is True


def test_runtime_answers_like_the_tflite_file(programs, digits_int8):
    from edgecnn.data import load_dataset

    test = load_dataset("digits").split("test")
    images = [test.image(i) for i in range(200)]
    program, tflite = load(programs["int8"], threads=1), load(digits_int8["tflite"])
    assert program.backend.name == "executorch"
    same = [program.predict(img).index == tflite.predict(img).index for img in images]
    assert np.mean(same) >= 0.97
    assert program.predict(FRAME).label in program.labels


def test_summary_counts_the_same_macs_as_onnx(programs, digits_int8):
    tables = [json.loads(edgecnn("summary", path, "--json", "-").stdout) for path in (programs["int8"],
                                                                                      digits_int8["onnx"])]
    assert tables[0]["macs"] == tables[1]["macs"] > 0
    convolutions = [r for r in tables[0]["layers"] if r["type"] == "Conv2d"]
    assert len(convolutions) == 4 and all(r["dtype"] == "int8" and r["kernel"] == [3, 3] for r in convolutions)


def test_an_op_xnnpack_does_not_take_is_named(tmp_path):
    from edgecnn.export.executorch import lower

    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).flatten(1).cumsum(1)

    path = tmp_path / "m.pte"
    lower(Cumulative().eval(), 8, path, 4096)
    left = [op for op in read_model_file(path).float_ops if not op.delegated]
    assert [op.name for op in left] == ["aten::cumsum.out"]


def test_a_card_larger_than_its_room_is_one_line(tmp_path):
    from edgecnn.export.executorch import lower
    from edgecnn.runtime.modelfile import embed_card

    path = tmp_path / "m.pte"
    lower(nn.Conv2d(3, 4, 3).eval(), 8, path, 256)
    before = path.read_bytes()
    with pytest.raises(EdgeCNNError, match="does not fit the 256 bytes"):
        embed_card(path, {"labels": ["x" * 300]})
    assert path.read_bytes() == before


def test_damaged_programs_are_refused(programs, tmp_path):
    damaged = tmp_path / "m.pte"
    damaged.write_bytes(programs["int8"].read_bytes())
    count = 12
    assert_damage_refused(damaged, damaged, count, seed=11)
    record("corrupted executorch artefacts", tried=count, refused=count)


def test_bench_measures_the_program(programs, digits_checkpoint, tmp_path):
    report = tmp_path / "bench.json"
    result = edgecnn("bench", programs["int8"], "--reference", digits_checkpoint, "--dataset", "digits",
                     "--eval-samples", "100", "--runs", "20", "--json", report)
    assert result.returncode == 0, result.stderr
    row = json.loads(report.read_text())["results"][0]
    assert row["format"] == "executorch" and row["backend"] == "executorch" and row["precision"] == "int8"
    assert row["agreement"] >= 0.95 and row["median_ms"] > 0


def test_missing_extra_is_one_line(digits_checkpoint, tmp_path):
    result = edgecnn_without("executorch", "export", digits_checkpoint, "--format", "executorch", "--out", tmp_path)
    assert_clean_error(result, "pip install 'edgecnn[executorch]'")
    assert not list(tmp_path.iterdir())
