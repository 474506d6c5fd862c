"""An emulated Raspberry Pi OS userland (Debian bookworm arm64, Python 3.11) on an x86 machine, for functional runs.

qemu-user runs the guest's own Python with `-L VIEW`: every path the guest opens is tried under VIEW first and
falls through to the host's file system, so no root, chroot or binfmt registration is needed and the host's
model files and job folders are visible at their own paths. Two traps, both measured on qemu 7.2:
- onnxruntime and ai-edge-litert parse /proc/cpuinfo and segfault on the host's x86 one: each CPU model has a
  small view of the userland (symlinks into it) carrying a Pi-style /proc/cpuinfo;
- qemu's default `max` CPU gives wrong int8 results: every run names its CPU (cortex-a72 = Pi 4,
  cortex-a76 = Pi 5, which also has the dot-product instructions XNNPACK's int8 kernels pick up).

Emulated time is not latency (30-600× slower, and not in proportion): a run here says whether a model loads,
runs and answers on Arm as it does on x86, nothing about speed.

    userland = setup_userland()                   # ~/.cache/edgecnn/arm64-emu, built once (~30 s)
    userland.python("cortex-a72", ["-c", "import edgecnn.runtime"])
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgecnn import __version__
from edgecnn.atomic import write_json
from edgecnn.bench.jobs import THREAD_ENV, build_runner_bundle, run_job
from edgecnn.errors import EdgeCNNError, first_line, shorten

SUITE = "bookworm"  # Raspberry Pi OS (64-bit) is Debian bookworm arm64 with Python 3.11
GUEST_PYTHON = "usr/bin/python3.11"
GUEST_SITE = "usr/lib/python3/dist-packages"
DEBIAN_PACKAGES = ("python3.11", "libstdc++6", "base-files")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# pip picks the Arm wheels by these tags (ai-edge-litert publishes manylinux_2_27 only).
WHEEL_PLATFORMS = ("manylinux_2_35_aarch64", "manylinux_2_28_aarch64", "manylinux_2_27_aarch64",
                   "manylinux_2_17_aarch64", "manylinux2014_aarch64")  # bookworm has glibc 2.36; OpenVINO: 2.35
# Host paths the guest must see as the host's own: never shadow them with the userland's.
HOST_ONLY = {"proc", "dev", "sys", "tmp", "run", "home", "root", "mnt", "media"}
QEMU_NAMES = ("qemu-aarch64-static", "qemu-aarch64")
CORES = 4  # both Pis
MARKER = "userland.json"  # written last, removed first: its presence means the userland is complete


@dataclass(frozen=True)
class EmulatedCpu:
    """A qemu CPU model and the Pi whose /proc/cpuinfo its userland view shows."""

    qemu: str
    board: str
    part: str
    variant: str
    revision: str
    features: str
    board_revision: str

    def cpuinfo(self, cores: int = CORES) -> str:
        block = (f"BogoMIPS\t: 108.00\nFeatures\t: {self.features}\nCPU implementer\t: 0x41\n"
                 f"CPU architecture: 8\nCPU variant\t: {self.variant}\nCPU part\t: {self.part}\n"
                 f"CPU revision\t: {self.revision}\n")
        processors = "".join(f"processor\t: {i}\n{block}\n" for i in range(cores))
        return f"{processors}Revision\t: {self.board_revision}\nModel\t\t: {self.board}\n"


# As Raspberry Pi OS 64-bit prints them on a Pi 4 Model B and a Pi 5.
CPUS = {
    "cortex-a72": EmulatedCpu("cortex-a72", "Raspberry Pi 4 Model B Rev 1.4", "0xd08", "0x0", "3",
                              "fp asimd evtstrm crc32 cpuid", "c03114"),
    "cortex-a76": EmulatedCpu("cortex-a76", "Raspberry Pi 5 Model B Rev 1.0", "0xd0b", "0x4", "1",
                              "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                              "lrcpc dcpop asimddp", "d04170"),
}
DEFAULT_CPU = "cortex-a72"
PI_NAMES = {"cortex-a72": "Pi 4", "cortex-a76": "Pi 5"}


def default_folder() -> Path:
    cache = os.environ.get("EDGECNN_CACHE")
    if not cache:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgecnn"
    return Path(cache) / "arm64-emu"


def find_qemu() -> str:
    for name in QEMU_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise EdgeCNNError("qemu-user is not installed: the arm64 userland runs under qemu-aarch64 "
                       "(Debian/Ubuntu: apt-get install qemu-user-static)")


def parse_cpu(spec: str) -> str:
    """'arm64-emu' or 'arm64-emu:cortex-a76' → the qemu CPU model."""
    _, _, cpu = spec.partition(":")
    cpu = cpu or DEFAULT_CPU
    if cpu not in CPUS:
        raise EdgeCNNError(f"--device {spec}: unknown CPU '{cpu}'; use arm64-emu:cortex-a72 (Pi 4) or "
                           "arm64-emu:cortex-a76 (Pi 5)")
    return cpu


@dataclass
class Userland:
    folder: Path
    qemu: str

    @property
    def rootfs(self) -> Path:
        return self.folder / "rootfs"

    @property
    def record(self) -> dict:
        try:
            return json.loads((self.folder / MARKER).read_text())
        except (OSError, ValueError):
            raise EdgeCNNError(f"{self.folder / MARKER} is unreadable: rebuild the userland with "
                               "`edgecnn device setup arm64-emu --rebuild`") from None

    def view(self, cpu: str) -> Path:
        return self.folder / "views" / cpu

    def command(self, cpu: str, args: list[str]) -> list[str]:
        view = self.view(cpu)
        return [self.qemu, "-L", str(view), "-cpu", cpu, str(view / GUEST_PYTHON), *args]

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # The host's Python settings would point the guest at x86 packages.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
        return {**env, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}

    def python(self, cpu: str, args: list[str], timeout: float = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the guest's Python 3.11 on the emulated `cpu`."""
        return subprocess.run(self.command(cpu, args), capture_output=True, text=True, timeout=timeout,
                              env=self.environment(env))


def open_userland(folder: Path | None = None) -> Userland:
    """The userland `edgecnn device setup arm64-emu` made, or a clear error saying how to make it."""
    qemu = find_qemu()
    folder = folder or default_folder()
    if not (folder / MARKER).is_file():
        raise EdgeCNNError(f"no arm64 userland in {folder}: run `edgecnn device setup arm64-emu` first")
    return Userland(folder, qemu)


def setup_userland(folder: Path | None = None, *, mirror: str = DEFAULT_MIRROR, from_tarball: Path | None = None,
                   save_tarball: Path | None = None, rebuild: bool = False,
                   log: Callable[[str], None] = print) -> Userland:
    """Build (or restore, or reuse) the userland, install this edgecnn into it, and check it runs on each CPU."""
    qemu = find_qemu()
    folder = folder or default_folder()
    userland = Userland(folder, qemu)
    if from_tarball is not None:
        log(f"restoring the userland from {from_tarball}")
        _restore(from_tarball, folder)
    elif rebuild or not (folder / MARKER).is_file():
        _build(folder, mirror, log)
    elif userland.record.get("wheels") != runtime_requirements():
        log("this host's runtime versions changed since the userland was built: building it again")
        _build(folder, mirror, log)
    else:
        log(f"reusing the userland in {folder}")
    _install_edgecnn(userland.rootfs / GUEST_SITE)
    for cpu in CPUS.values():
        _write_view(folder, cpu)
    for cpu in CPUS:
        facts = check_userland(userland, cpu)
        log(f"arm64-emu:{cpu} ({PI_NAMES[cpu]}): Python {facts['python']} {facts['arch']}, onnxruntime "
            f"{facts['onnxruntime']}, numpy {facts['numpy']}, no torch")
    if save_tarball is not None:
        log(f"saving the userland to {save_tarball}")
        _save(folder, save_tarball)
    return userland


CHECK = """
import json, platform, sys
import numpy, cv2, onnxruntime, ai_edge_litert.interpreter
import edgecnn.runtime
print(json.dumps({"arch": platform.machine(), "python": platform.python_version(), "torch": "torch" in sys.modules,
                  "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}))
"""


def check_userland(userland: Userland, cpu: str) -> dict:
    """Import the runtime and both backends in the guest; refuse a userland where that fails or pulls torch."""
    try:
        done = userland.python(cpu, ["-c", CHECK], timeout=300)
    except subprocess.TimeoutExpired:
        raise EdgeCNNError(f"the arm64 userland did not answer within 300 s on {cpu}") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise EdgeCNNError(f"the arm64 userland cannot run edgecnn.runtime on {cpu}: {shorten(tail)}; "
                           "rebuild it with `edgecnn device setup arm64-emu --rebuild`")
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    if facts["arch"] != "aarch64" or facts["torch"]:
        raise EdgeCNNError(f"the arm64 userland is not what it should be on {cpu}: {facts}")
    return facts


def _build(folder: Path, mirror: str, log: Callable[[str], None]) -> None:
    if not shutil.which("mmdebstrap"):
        raise EdgeCNNError("building the arm64 userland needs mmdebstrap (apt-get install mmdebstrap); or restore "
                           "a saved one with --from-tarball FILE")
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    try:
        rootfs = work / "rootfs"
        log(f"extracting Debian {SUITE} arm64 ({', '.join(DEBIAN_PACKAGES)}) from {mirror}")
        # `extract` unpacks the packages without running their (arm64) maintainer scripts: no emulation and
        # no root needed to build, and Python needs none of what those scripts do.
        _run(["mmdebstrap", "--variant=extract", "--architectures=arm64", f"--include={','.join(DEBIAN_PACKAGES)}",
              "--skip=check/empty", "--quiet", SUITE, str(rootfs), mirror], "mmdebstrap")
        requirements = runtime_requirements()
        log(f"installing the Arm wheels: {' '.join(requirements)}")
        platforms = [f"--platform={p}" for p in WHEEL_PLATFORMS]
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
              "--target", str(rootfs / GUEST_SITE), *platforms, "--only-binary=:all:", "--python-version=3.11",
              "--implementation=cp", "--abi=cp311", *requirements], "pip")
        record = {"suite": SUITE, "arch": "arm64", "python": "3.11", "mirror": mirror,
                  "packages": list(DEBIAN_PACKAGES), "wheels": requirements}
        (folder / MARKER).unlink(missing_ok=True)
        if (folder / "rootfs").exists():
            shutil.rmtree(folder / "rootfs")
        rootfs.rename(folder / "rootfs")
        write_json(folder / MARKER, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Extras whose runtime is torch-free and has aarch64 wheels: installed in the userland when this host has them.
# ExecuTorch's Python runtime needs torch, which a Pi userland without torch is meant to prove unnecessary.
ARM_EXTRAS = ("openvino",)


def runtime_requirements() -> list[str]:
    """edgecnn's runtime dependencies (and the ARM_EXTRAS this host has), pinned to the versions this host runs,
    so Arm and x86 compare like for like."""
    try:
        declared = metadata.requires("edgecnn") or []
    except metadata.PackageNotFoundError:
        raise EdgeCNNError("edgecnn is not installed as a package (its dependency list is unknown): "
                           "pip install edgecnn, or pip install -e . in a checkout") from None
    wanted = []
    for line in declared:
        spec, _, marker = line.partition(";")
        extra = re.search(r"extra == ['\"]([\w-]+)['\"]", marker)
        name = re.match(r"\s*([A-Za-z0-9._-]+)", spec).group(1)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        if extra:
            if extra.group(1) in ARM_EXTRAS and version is not None:
                wanted.append(f"{name}=={version}")
            continue
        wanted.append(f"{name}=={version}" if version else spec.strip())
    return wanted


def _install_edgecnn(site: Path) -> None:
    """This edgecnn's own files (pure Python), so the guest runs the version the host runs."""
    package = Path(__file__).resolve().parents[1]
    target = site / "edgecnn"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for old in site.glob("edgecnn-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"edgecnn-{__version__}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: edgecnn\nVersion: {__version__}\n")


def _write_view(folder: Path, cpu: EmulatedCpu) -> None:
    """views/<cpu>/: the userland's top-level folders as symlinks, plus this CPU's /proc/cpuinfo."""
    view = folder / "views" / cpu.qemu
    if view.exists():
        shutil.rmtree(view)
    (view / "proc").mkdir(parents=True)
    for entry in (folder / "rootfs").iterdir():
        if entry.name not in HOST_ONLY:
            (view / entry.name).symlink_to(Path("..", "..", "rootfs", entry.name))
    (view / "proc" / "cpuinfo").write_text(cpu.cpuinfo())


def _save(folder: Path, tarball: Path) -> None:
    from edgecnn.atomic import atomic_path

    with atomic_path(tarball) as tmp, tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        tar.add(folder / "rootfs", "rootfs")
        tar.add(folder / MARKER, MARKER)


def _restore(tarball: Path, folder: Path) -> None:
    if not tarball.is_file():
        raise EdgeCNNError(f"--from-tarball {tarball}: no such file")
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".restore-", dir=folder))
    try:
        try:
            with tarfile.open(tarball) as tar:
                names = tar.getnames()
                if MARKER not in names or "rootfs" not in names:
                    raise EdgeCNNError(f"{tarball}: not a userland saved by edgecnn (no rootfs/ and userland.json)")
                # The `tar` filter (Python ≥ 3.11.4 / 3.10.12) refuses members outside `work`.
                tar.extractall(work, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
        except (tarfile.TarError, OSError) as e:
            raise EdgeCNNError(f"{tarball}: cannot unpack the userland: {first_line(e)}") from None
        for name in (MARKER, "rootfs"):
            old = folder / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        (work / "rootfs").rename(folder / "rootfs")
        (work / MARKER).rename(folder / MARKER)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("WARNING")]
        raise EdgeCNNError(f"{what} failed building the arm64 userland: {shorten((lines or ['no message'])[-1])}")


class Arm64EmuTarget:
    """`--device arm64-emu[:cortex-a72|cortex-a76]`: each job runs in the emulated userland with the runner
    bundle of this edgecnn (the same code the ssh target sends to a real Pi). Functional only: the harness
    compares the outputs with x86 and never reports the emulated times."""

    device_kind = "arm64-emu"
    emulated = True

    def __init__(self, spec: str, timeout: float = 900, folder: Path | None = None):
        self.cpu = parse_cpu(spec)
        self.name = f"arm64-emu:{self.cpu}"
        self.timeout = timeout
        self.folder = folder
        self.userland: Userland | None = None
        self._work: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Arm64EmuTarget:
        self.userland = open_userland(self.folder)
        self._work = tempfile.TemporaryDirectory(prefix="edgecnn-arm64-")
        self.bundle = build_runner_bundle(Path(self._work.name) / "runner.pyz")
        return self

    def __exit__(self, *exc) -> None:
        self._work.cleanup()

    def run(self, variant, job: dict) -> dict:
        env = self.userland.environment({k: str(variant.threads) for k in THREAD_ENV})
        return run_job(self.userland.command(self.cpu, [str(self.bundle)]), job, Path(self._work.name), env,
                       self.timeout, variant.model.name)

    def guest_machine(self, machine: dict) -> dict:
        """The header for emulated rows: what the guest saw of its CPU, without the host's facts that fall
        through the userland view (its clock, governor, temperature and core count are not a Pi's)."""
        host_facts = ("governor", "max_mhz", "mhz", "temperature_c", "throttled", "cores_usable", "board")
        guest = {k: v for k, v in machine.items() if k not in host_facts}
        guest["cores"] = CORES
        guest["emulation"] = (f"qemu-user {self.cpu} ({PI_NAMES[self.cpu]} userland, Debian {SUITE} arm64): "
                              "functional only, times are not latency")
        return guest
