"""Artefact integrity: a corrupted edgecnn file is refused by runtime.load, `edgecnn info` and `edgecnn bench`,
every time; a file from another tool still loads, marked unverified."""

import hashlib
import json
import random
import subprocess

import numpy as np
import onnx
import pytest
from conftest import assert_clean_error, cli_outcome, edgecnn, edgecnn_in_process, record
from corruption import corruptions
from edgecnn.errors import EdgeCNNError
from edgecnn.runtime import load
from edgecnn.runtime.integrity import HASH_KEY, PLACEHOLDER, content_digest, seal
from edgecnn.runtime.modelfile import CARD_KEY, read_model_file

pytestmark = pytest.mark.reliability

CORRUPTIONS_PER_FORMAT = 100  # × 2 formats: 200 corrupted files, each given to three entry points
SEEDS = {"tflite": 1, "onnx": 2}
FRAME = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_every_corrupted_copy_is_refused(digits_int8, tmp_path, fmt):
    data = digits_int8[fmt].read_bytes()
    damaged = tmp_path / f"model.{fmt}"
    # Copies the bare runtime loads and runs without an error: a figure for the reliability table (what the check
    # is for), not an assertion: it describes LiteRT and onnxruntime, and falls as they get stricter.
    silent = 0
    for kind, copy in corruptions(data, CORRUPTIONS_PER_FORMAT, seed=SEEDS[fmt]):
        damaged.write_bytes(copy)
        with pytest.raises(EdgeCNNError, match=str(damaged)):
            load(damaged)
        for verb in ("info", "bench"):
            outcome, output = cli_outcome(verb, damaged)
            assert outcome == "clean error" and str(damaged) in output, (kind, output)
        try:  # without the check: it runs, or it is refused with an EdgeCNNError; never a crash
            load(damaged, verify=False).predict(FRAME)
            silent += kind != "truncated"
        except EdgeCNNError:
            pass
    record(f"corrupted {fmt} artefacts", tried=CORRUPTIONS_PER_FORMAT, refused=CORRUPTIONS_PER_FORMAT,
           ran_silently_without_the_check=silent)


def test_refusal_is_one_line_naming_the_file_and_the_way_out(digits_int8, tmp_path):
    damaged = tmp_path / "m_int8.tflite"
    kind, copy = next(corruptions(digits_int8["tflite"].read_bytes(), 1, seed=3))
    damaged.write_bytes(copy)
    for verb in ("info", "bench", "summary"):
        assert_clean_error(edgecnn(verb, damaged), str(damaged), "corrupted", "--no-verify")
    shown = edgecnn("info", damaged, "--no-verify")
    assert shown.returncode == 0 and "not checked (--no-verify)" in shown.stdout
    assert edgecnn("summary", damaged, "--no-verify").returncode == 0
    intact = edgecnn("info", digits_int8["onnx"])
    assert intact.returncode == 0 and "verified: content hash matches" in intact.stdout


def test_every_byte_of_the_hash_entry_is_covered(digits_int8, tmp_path):
    """A flip inside the entry itself (key, quotes, digits) is refused too, not taken for a foreign file."""
    data = digits_int8["onnx"].read_bytes()
    at = data.index(HASH_KEY.encode()) - 1
    damaged = tmp_path / "m.onnx"
    for i in range(at, at + len(HASH_KEY) + 4 + 64 + 2):
        for bit in (0, 5):
            copy = bytearray(data)
            copy[i] ^= 1 << bit
            damaged.write_bytes(copy)
            with pytest.raises(EdgeCNNError, match="corrupted"):
                read_model_file(damaged)
    record("corrupted onnx artefacts (hash entry)", tried=2 * (len(HASH_KEY) + 70), refused=2 * (len(HASH_KEY) + 70))


def _without_card(src, dst):
    model = onnx.load(src)
    kept = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, dst)


def test_files_from_other_tools_load_unverified(digits_int8, tmp_path):
    foreign = tmp_path / "foreign.onnx"
    _without_card(digits_int8["onnx"], foreign)
    classifier = load(foreign, img_size=32)
    assert classifier.integrity.verified is False and "unverified" in classifier.notes[0]
    assert classifier.predict(FRAME).label
    shown = edgecnn("info", foreign)
    assert shown.returncode == 0 and "unverified: no edgecnn content hash" in shown.stdout


def test_a_card_without_its_hash_is_refused(digits_int8, tmp_path):
    """A card whose hash entry was lost is damage, not a foreign file."""
    model = onnx.load(digits_int8["onnx"])
    card = next(p for p in model.metadata_props if p.key == CARD_KEY)
    card.value = card.value.replace(f'"{HASH_KEY}"', '"something_else"')
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(EdgeCNNError, match=f"no intact {HASH_KEY}"):
        load(tmp_path / "m.onnx")


def test_files_exported_before_sealing_load_unverified(digits_int8, tmp_path):
    """Card version 1 (before content hashes) is an old file, not a damaged one; version 2 without a hash is."""
    model = onnx.load(digits_int8["onnx"])
    card = next(p for p in model.metadata_props if p.key == CARD_KEY)
    fields = json.loads(card.value)
    del fields[HASH_KEY]
    card.value = json.dumps({**fields, "card_version": 1})
    onnx.save(model, tmp_path / "old.onnx")
    old = load(tmp_path / "old.onnx")
    assert not old.integrity.verified and "card version 1" in old.integrity.detail
    assert old.predict(FRAME).label
    card.value = json.dumps(fields)  # version 2, hash entry gone
    onnx.save(model, tmp_path / "damaged.onnx")
    with pytest.raises(EdgeCNNError, match="corrupted"):
        load(tmp_path / "damaged.onnx")


def test_seal_and_check_round_trip():
    card = f'{{"card_version": 2, "{HASH_KEY}": "{PLACEHOLDER}"}}'.encode()
    data = b"header" + card + b"weights" * 10
    sealed = seal(data)
    stored, actual = content_digest(sealed)
    assert len(sealed) == len(data) and stored == actual == hashlib.sha256(data).hexdigest()


def test_export_sha256_sidecar(digits_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = edgecnn_in_process("export", digits_checkpoint, "--format", "tflite", "--eval-samples", "20", "--sha256",
                                "--out", out)
    assert result.returncode == 0, result.stderr
    model, sidecar = out / "tinycnn.tflite", out / "tinycnn.tflite.sha256"
    assert subprocess.run(["sha256sum", "-c", sidecar.name], cwd=out, capture_output=True).returncode == 0
    assert "sha256 matches tinycnn.tflite.sha256" in load(model).integrity.detail
    sidecar.write_text("0" * 64 + "  tinycnn.tflite\n")  # the file and its checksum disagree: one of them is bad
    assert_clean_error(edgecnn("info", model), "differs from tinycnn.tflite.sha256")
    again = edgecnn_in_process("export", digits_checkpoint, "--format", "tflite", "--eval-samples", "20", "--out", out)
    assert again.returncode == 0 and not sidecar.exists()  # a stale sidecar never outlives the file it described
    assert load(model).integrity.verified


def test_bench_runner_checks_the_copy_it_loads(digits_int8, tmp_path):
    """The harness verifies the file; the measuring process (here or on a device) checks that its copy is that
    file before loading it."""
    from edgecnn.bench.runner import check_copy

    copy = tmp_path / "copy.tflite"
    data = bytearray(digits_int8["tflite"].read_bytes())
    expected = hashlib.sha256(data).hexdigest()
    data[random.Random(0).randrange(len(data))] ^= 0x10
    copy.write_bytes(data)
    with pytest.raises(RuntimeError, match="corrupted on this device"):
        check_copy(str(copy), expected)
    check_copy(str(digits_int8["tflite"]), expected)
