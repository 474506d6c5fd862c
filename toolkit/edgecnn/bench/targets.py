"""Where a measurement runs: this machine (CPU or CUDA) or a device over ssh. Each target runs one job in a
fresh process and returns the runner's result dict.

A target is a context manager (set up / clean up the device) with `run(variant, job) -> dict`, a `name` for
the rows' device column and a `device_kind` the harness checks models against.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from edgecnn.bench.adb import ADBTarget
from edgecnn.bench.arm64_emu import Arm64EmuTarget
from edgecnn.bench.jobs import THREAD_ENV, build_runner_bundle, parse_result, run_job
from edgecnn.errors import EdgeCNNError, closest, shorten
from edgecnn.runtime.formats import model_files


class LocalTarget:
    """This machine: `cpu` or `cuda` (PyTorch on the GPU)."""

    def __init__(self, kind: str = "cpu", timeout: float = 900):
        self.name = self.device_kind = kind
        self.timeout = timeout
        self._folder: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> LocalTarget:
        if self.device_kind == "cuda":
            _require_cuda()
        self._folder = tempfile.TemporaryDirectory(prefix="edgecnn-jobs-")
        return self

    def __exit__(self, *exc) -> None:
        self._folder.cleanup()

    def run(self, variant, job: dict) -> dict:
        env = {**os.environ, **{k: str(variant.threads) for k in THREAD_ENV}}
        return run_job([sys.executable, "-m", variant.runner], job, Path(self._folder.name), env, self.timeout,
                       variant.model.name)


def _require_cuda() -> None:
    try:
        import torch
    except ImportError:
        raise EdgeCNNError("--device cuda needs PyTorch: pip install 'edgecnn[train]'") from None
    if not torch.cuda.is_available():
        raise EdgeCNNError("--device cuda: no CUDA GPU is visible to PyTorch on this machine "
                           "(torch.cuda.is_available() is False); use --device cpu")


class SSHTarget:
    """A device reached with OpenSSH: the model, the inputs and the runner bundle are copied to a temporary
    folder there, each job runs as `python3 runner.pyz JOB.json`, the folder is removed at the end.

    Host keys are checked as the user's ssh does unless `insecure` is set; ssh never prompts (BatchMode)."""

    device_kind = "ssh"

    def __init__(self, url: str, python: str = "python3", key: Path | None = None, config: Path | None = None,
                 insecure: bool = False, timeout: float = 900, connect_timeout: int = 10):
        parts = urlsplit(url)
        # urlsplit drops tabs and newlines silently, so the whole text is checked, not just its parts.
        if any(c.isspace() or not c.isprintable() for c in url) or any(
                part and part.startswith("-") for part in (parts.username, parts.hostname)):
            raise EdgeCNNError(f"--device {url!r}: a user or host may not start with '-' or hold spaces or "
                               "control characters")
        if parts.scheme != "ssh" or not parts.hostname:
            raise EdgeCNNError(f"--device {url}: expected ssh://[user@]host[:port]")
        try:
            port = parts.port
        except ValueError:
            raise EdgeCNNError(f"--device {url}: the port is not a number") from None
        self.host = f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname
        self.name = url
        self.python, self.timeout = python, timeout
        self.options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
                        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"]
        if port:
            self.options += ["-p", str(port)]
        if key:
            self.options += ["-i", str(key)]
        if config:
            self.options = ["-F", str(config), *self.options]
        if insecure:
            self.options += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                             "-o", "LogLevel=ERROR"]
        self.remote_dir = ""
        self._copied: dict[str, str] = {}
        self._local: tempfile.TemporaryDirectory | None = None

    def ssh(self, *command: str, stdin=None, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run `command` (each word quoted for the remote shell) on the device."""
        remote = shlex.join(command)
        try:
            # `--` ends ssh's options: whatever the destination says, ssh reads it as a host, never an option.
            done = subprocess.run(["ssh", *self.options, "--", self.host, remote], stdin=stdin, capture_output=True,
                                  text=stdin is None, timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            raise EdgeCNNError(f"{self.name}: no answer within {timeout or self.timeout:.0f} s") from None
        except FileNotFoundError:
            raise EdgeCNNError("the ssh client is not installed (apt-get install openssh-client)") from None
        if done.returncode == 255:
            err = done.stderr if isinstance(done.stderr, str) else done.stderr.decode(errors="replace")
            raise EdgeCNNError(f"{self.name}: ssh failed: {(err.strip().splitlines() or ['no message'])[-1]}")
        return done

    def __enter__(self) -> SSHTarget:
        done = self.ssh("mktemp", "-d", "/tmp/edgecnn-bench.XXXXXX", timeout=60)
        if done.returncode != 0 or not done.stdout.strip():
            raise EdgeCNNError(f"{self.name}: cannot create a working folder: {shorten(done.stderr, 200)}")
        self.remote_dir = done.stdout.strip().splitlines()[-1]
        self._local = tempfile.TemporaryDirectory(prefix="edgecnn-ssh-")
        try:
            self.bundle = self.copy(build_runner_bundle(Path(self._local.name) / "runner.pyz"))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.remote_dir:
                self.ssh("rm", "-rf", self.remote_dir, timeout=60)
        except EdgeCNNError:
            pass  # the device went away: nothing more to clean
        finally:
            self._local.cleanup()

    def copy(self, local: Path, name: str | None = None) -> str:
        """Copy a file to the device's working folder once; returns its remote path."""
        if str(local) in self._copied:
            return self._copied[str(local)]
        remote = f"{self.remote_dir}/{name or f'{len(self._copied)}-{local.name}'}"
        with open(local, "rb") as f:
            done = self.ssh("sh", "-c", 'cat > "$1"', "sh", remote, stdin=f)
        if done.returncode != 0:
            message = shorten(done.stderr.decode(errors="replace"), 200)
            raise EdgeCNNError(f"{self.name}: copying {local.name} failed: {message}")
        self._copied[str(local)] = remote
        return remote

    def copy_model(self, model: Path) -> str:
        """Copy every file of a model (an OpenVINO .xml and its .bin) under one prefix; the entry's remote path."""
        prefix = len(self._copied)
        return [self.copy(f, f"{prefix}-{f.name}") for f in model_files(model)][0]

    def run(self, variant, job: dict) -> dict:
        job = {**job, "model": self.copy_model(variant.model)}
        if job.get("inputs"):
            job["inputs"] = self.copy(Path(job["inputs"]))
        job_file = Path(self._local.name) / "job.json"
        job_file.write_text(json.dumps(job))
        remote_job = self.copy(job_file, f"job-{len(self._copied)}.json")
        self._copied.pop(str(job_file))  # the next job reuses the local name with new content
        try:  # `timeout` on the device too: killing the local ssh client would leave the runner running there
            done = self.ssh("timeout", str(int(self.timeout)), "env", *(f"{k}={variant.threads}" for k in THREAD_ENV),
                            self.python, self.bundle, remote_job, timeout=self.timeout + 30)
        except EdgeCNNError as e:
            return {"ok": False, "error": str(e)}
        return parse_result(done.stdout, done.stderr, done.returncode, variant.model.name)


def make_target(device: str = "cpu", *, python: str = "python3", key: Path | None = None,
                config: Path | None = None, insecure: bool = False, benchmark_model: Path | None = None,
                cores: str | None = None, timeout: float = 900):
    """The target named by --device: cpu (this machine; `local` is the same), cuda, ssh://[user@]host[:port],
    adb[:SERIAL] or arm64-emu[:CPU]."""
    if device in ("cpu", "local", "cuda"):
        return LocalTarget("cuda" if device == "cuda" else "cpu", timeout)
    if device.startswith("ssh://"):
        return SSHTarget(device, python, key, config, insecure, timeout)
    if device == "arm64-emu" or device.startswith("arm64-emu:"):
        return Arm64EmuTarget(device, timeout)
    if device == "adb" or device.startswith("adb:"):
        return ADBTarget(device, benchmark_model, cores, timeout)
    known = ("cpu", "cuda", "adb", "arm64-emu")
    raise EdgeCNNError(f"unknown --device '{device}'{closest(device, known)}; use cpu, "
                       "cuda, ssh://[user@]host[:port], adb[:SERIAL] or arm64-emu[:cortex-a72|cortex-a76]")
