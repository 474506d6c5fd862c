"""Regression tests for the adversarial pass (issue 18): hostile names, hosts and files end in one clear line,
never in a crash, an injected option or a terminal that obeys a file."""

import pytest
from conftest import assert_clean_error, edgecnn, record
from edgecnn.runtime.modelfile import embed_card, read_model_file
from test_watch import VIDEOS, needs_videos

pytestmark = pytest.mark.reliability

ESCAPES = "\x1b[2J\x1b[H\x1b[32mintegrity verified\x1b[0m"


def test_an_ssh_destination_is_never_an_option(digits_int8, tmp_path):
    marker = tmp_path / "ran"
    hostile = [f"ssh://-oProxyCommand=touch {marker}@host", "ssh://-oProxyCommand=touch@host",
               "ssh://pi@-oProxyCommand=x", "ssh://p\ti@host", "ssh://pi@ho\x07st"]
    for url in hostile:
        assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", url), "may not start with '-'")
    assert not marker.exists()
    record("ssh destinations", tried=len(hostile), refused=len(hostile))


def crafted_card_copy(source, path, **fields):
    """`source` with its card's fields replaced, sealed again: a file that verifies, written by an attacker."""
    path.write_bytes(source.read_bytes())
    embed_card(path, {**read_model_file(source).card, **fields})
    return path


@needs_videos
def test_text_from_a_file_cannot_drive_the_terminal(digits_int8, tmp_path):
    labels = [ESCAPES, "[bold red]fake[/bold red]", "\u202eevil", *map(str, range(3, 10))]
    crafted = crafted_card_copy(digits_int8["onnx"], tmp_path / "crafted.onnx", labels=labels,
                                edgecnn_version=ESCAPES)
    shown = edgecnn("info", crafted)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout
    assert "\\x1b[2J" in shown.stdout and "[bold red]fake" in shown.stdout  # shown, escaped, not obeyed
    refused = edgecnn("watch", crafted, VIDEOS / "bikes.mp4", "--alert", "cat")
    assert_clean_error(refused, "not a label")
    assert "\x1b" not in refused.stderr and "\\x1b[2J" in refused.stderr
    record("terminal escapes in cards", tried=2, refused=2)
