"""The ssh bench target against a real OpenSSH server on 127.0.0.1, started here with its own keys."""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import assert_clean_error, edgecnn, free_port, record

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not shutil.which("ssh") or not shutil.which(SSHD),
                                reason="OpenSSH server/client not installed (apt-get install openssh-server)")


def _keygen(path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """(ssh config file for the client, port): a real sshd that accepts one client key; host key pinned."""
    d = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(d / "host_key")
    (d / "authorized_keys").write_text(_keygen(d / "client_key") + "\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n")
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (d / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {d / 'client_key'}\n  UserKnownHostsFile {d / 'known_hosts'}\n"
        "  StrictHostKeyChecking yes\n  IdentitiesOnly yes\n")
    subprocess.run(["mkdir", "-p", "/run/sshd"], check=True)
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    yield d / "ssh_config", port
    server.terminate()
    server.wait(timeout=10)


def _url(port: int) -> str:
    return f"ssh://{getpass.getuser()}@127.0.0.1:{port}"


def test_bench_over_ssh_matches_local(sshd, digits_int8, tmp_path):
    config, port = sshd
    common = ("--dataset", "digits", "--eval-samples", "100", "--runs", "20")
    models = [digits_int8[fmt] for fmt in ("tflite", "onnx", "openvino")]  # the .xml goes with its .bin
    remote = edgecnn("bench", *models, *common, "--device", _url(port),
                     "--ssh-config", config, "--remote-python", sys.executable, "--json", tmp_path / "remote.json")
    assert remote.returncode == 0, remote.stderr + remote.stdout
    local = edgecnn("bench", *models, *common, "--json", tmp_path / "local.json")
    assert local.returncode == 0, local.stderr
    remote_rows = json.loads((tmp_path / "remote.json").read_text())["results"]
    local_rows = json.loads((tmp_path / "local.json").read_text())["results"]
    device = json.loads((tmp_path / "remote.json").read_text())["machine"]
    for field, source in (("board", "/proc/device-tree/model"), ("throttled", None),
                          ("governor", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")):
        present = shutil.which("vcgencmd") is not None if source is None else os.path.exists(source)
        assert (field in device) == present, device  # this host is no Pi: absent, not guessed
    for r, here in zip(remote_rows, local_rows, strict=True):
        assert r["device"] == _url(port) and r["status"] == "ok" and r["runs"] >= 20
        assert r["backend"] == here["backend"] and r["accuracy"] == here["accuracy"] and r["accuracy"] > 0.85
    listing = subprocess.run(["ssh", "-F", str(config), "-p", str(port), "127.0.0.1",
                              "ls -d /tmp/edgecnn-bench.* 2>/dev/null | wc -l"], capture_output=True, text=True)
    assert listing.returncode == 0 and listing.stdout.strip() == "0", listing  # the device's folder was removed


def test_unknown_host_key_is_refused(sshd, digits_int8, tmp_path):
    config, port = sshd
    (tmp_path / "empty_known_hosts").write_text("")
    strict = tmp_path / "ssh_config"
    strict.write_text(config.read_text().replace(str(config.parent / "known_hosts"),
                                                 str(tmp_path / "empty_known_hosts")))
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", _url(port), "--ssh-config", strict),
                       "ssh failed", "Host key verification failed")


@pytest.mark.reliability  # an injected fault (see test_faults.py)
def test_unreachable_and_hanging_hosts_fail_cleanly(digits_int8):
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", f"ssh://127.0.0.1:{free_port()}",
                               "--ssh-insecure"), "ssh failed", "refused")
    silent = socket.socket()  # accepts the TCP connection, never says a word: a hung device
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    threading.Thread(target=lambda: [silent.accept() for _ in range(4)], daemon=True).start()
    started = time.time()
    result = edgecnn("bench", digits_int8["tflite"], "--device", f"ssh://127.0.0.1:{silent.getsockname()[1]}",
                     "--ssh-insecure", "--timeout", "30", timeout=120)
    assert_clean_error(result, "127.0.0.1")
    assert time.time() - started < 60
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", "ssh://"), "expected ssh://")
    record("faults: ssh target refuses or hangs", injected=2, hangs=0)
