import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]

# The reliability suite's figures: each test adds what it tried to RELIABILITY[entry point]; with
# EDGECNN_RELIABILITY_JSON=FILE the session writes them there (benchmarks/reliability.py does).
RELIABILITY: dict[str, dict[str, int]] = {}

# Under pytest-xdist each worker's processes get an even share of the cores: two workers each running PyTorch (and
# the exports it starts) on every core spin against each other. Measured on the 2-core machine: two concurrent int8
# exports 50 s against 43 s with one thread each; in the whole suite the edge-model int8 exports 129-188 s against
# 60-72 s. A value already set is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, _share)


def record(entry: str, **counts: int) -> None:
    row = RELIABILITY.setdefault(entry, {})
    for key, value in counts.items():
        row[key] = row.get(key, 0) + value


def pytest_configure(config) -> None:
    """`--dist loadgroup` keeps an xdist_group on one worker by appending `@group` to its tests' ids, which
    pytest-xdist 3.8 does through an attribute pytest 9 no longer reads: each worker would then build the group's
    heavy fixtures, or wait for the other's. Stop with the reason instead of running twice as slowly."""
    if config.getoption("dist", "no") == "loadgroup" and pytest.version_tuple[0] >= 9:
        raise pytest.UsageError(f"pytest {pytest.__version__} with pytest-xdist ignores xdist_group: install the "
                                "pytest version pyproject.toml's dev extra names (pip install 'pytest<9')")


def pytest_sessionfinish(session) -> None:
    target = os.environ.get("EDGECNN_RELIABILITY_JSON")
    if target and RELIABILITY:
        Path(target).write_text(json.dumps(RELIABILITY, indent=2, sort_keys=True) + "\n")


def cli_outcome(*args) -> tuple[str, str]:
    """Run the `edgecnn` CLI in this process: ('ok' | 'clean error' | 'traceback', output). A clean error is an
    EdgeCNNError (one line, exit 2 from the real entry point) or click's usage error; anything else — another
    exception, or 'Traceback' in the output — is a crash the user would see."""
    from click.testing import CliRunner
    from edgecnn.cli import cli
    from edgecnn.errors import EdgeCNNError

    result = CliRunner().invoke(cli, [str(a) for a in args])
    output = result.output + (f"\n{type(result.exception).__name__}: {result.exception}" if result.exception else "")
    if "Traceback" in result.output:
        return "traceback", output
    if result.exception is None:
        return "ok", output
    if isinstance(result.exception, EdgeCNNError) or (isinstance(result.exception, SystemExit)
                                                       and result.exit_code == 2):
        return "clean error", output
    return "traceback", output


def edgecnn(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run the real `edgecnn` command in a child process (exit codes and stderr as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "edgecnn", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )


def edgecnn_in_process(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`edgecnn ARGS` through its real entry point (`main`) in this process: the exit code, stdout and stderr that
    `edgecnn()` gives, without a new interpreter's start-up. Importing torch, litert-torch and onnx and warming up
    torch.export cost every child process ~8 s (a tinycnn int8 export of both formats: 12.8 s in a child process,
    4.5 s here). For the runs a test builds on; bad input stays with `edgecnn()`, where what native libraries print
    on stderr counts against the one-line error too, and a crash ends a child, not the test run."""
    import torch
    from edgecnn.cli import main

    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8") for _ in range(2))  # main() reconfigures stdout
    argv, threads = sys.argv, torch.get_num_threads()  # train sets the thread count for its process
    sys.argv, code = ["edgecnn", *map(str, args)], 0
    try:
        with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    out.flush()
    err.flush()
    return subprocess.CompletedProcess(["edgecnn", *map(str, args)], code, out.buffer.getvalue().decode(),
                                       err.buffer.getvalue().decode())


def assert_damage_refused(entry: Path, target: Path, count: int, seed: int) -> None:
    """`count` corrupted copies of `target` (one file of the model at `entry`), each refused by runtime.load, info
    and bench with a clean error naming `entry`."""
    from corruption import corruptions
    from edgecnn.errors import EdgeCNNError
    from edgecnn.runtime import load

    for kind, copy in corruptions(target.read_bytes(), count, seed=seed):
        target.write_bytes(copy)
        with pytest.raises(EdgeCNNError, match=str(entry)):
            load(entry)
        for verb in ("info", "bench"):
            outcome, output = cli_outcome(verb, entry)
            assert outcome == "clean error", (kind, output)


def edgecnn_without(package: str, *args: str):
    """The `edgecnn` CLI in a child process where `package` cannot be imported, as on a machine without it."""
    code = (f"import sys; sys.modules[{package!r}] = None; import importlib.util as u; "
            f"u.find_spec = (lambda f: lambda name, *a: None if name == {package!r} else f(name, *a))(u.find_spec); "
            "from edgecnn.cli import main; sys.argv = ['edgecnn', *sys.argv[1:]]; main()")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (for the sshd and RTSP servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_clean_error(result, *fragments: str) -> None:
    """A bad input: non-zero exit, one line on stderr mentioning `fragments`, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def build_once(tmp_path_factory, name: str, make: Callable[[Path], Path]) -> Path:
    """make(folder) → a path inside folder, run once per test run even with pytest-xdist: the first worker to
    need it builds it under a file lock, the others wait and reuse it. Session fixtures would otherwise train
    and export the same models once per worker."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    folder = root / f"shared-{name}"
    with FileLock(f"{folder}.lock"):
        done, failed = folder / ".built", folder / ".failed"
        if failed.is_file():  # another worker tried: fail as it did instead of spending minutes again
            pytest.fail(f"building {name} failed in another worker: {failed.read_text()}")
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                done.write_text(str(make(folder).relative_to(folder)))
            except BaseException as e:
                failed.write_text(f"{type(e).__name__}: {e}"[:2000])
                raise
    return folder / done.read_text()


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory) -> Path:
    """tinycnn trained 3 epochs on digits at 32 px: the issue's own acceptance run."""
    def make(out: Path) -> Path:
        result = edgecnn_in_process("train", "--model", "tinycnn", "--dataset", "digits", "--epochs", "3",
                                    "--img-size", "32", "--out", out)
        assert result.returncode == 0, result.stderr
        return out / "best.pt"

    return build_once(tmp_path_factory, "digits", make)


def train_quietly(out: Path, name: str, model: str, width: float = 1.0, epochs: int = 6, lr: float = 0.1,
                  img_size: int = 32) -> Path:
    """Train `model` on digits into `out` through the Python API (no subprocess start-up); return best.pt."""
    import io

    from edgecnn.recipe import DataConfig, ModelConfig, Recipe, TrainConfig
    from edgecnn.train import train
    from rich.console import Console

    recipe = Recipe(name=name, data=DataConfig(img_size=img_size), model=ModelConfig(model, width),
                    train=TrainConfig(epochs=epochs, lr=lr, warmup_epochs=1))
    return train(recipe, out, console=Console(file=io.StringIO())).best_path


# (model, width, learning rate): each trains on digits at 32 px in ~15 s.
MODELS = {
    "resnet8": ("resnet8", 1.0, 0.1),
    "mobilenet_v2": ("mobilenet_v2", 0.5, 0.02),
    "mobilenet_v3_small_edge": ("mobilenet_v3_small_edge", 0.5, 0.1),
}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """trained(name) → best.pt of that model trained on digits (once per test run)."""
    def get(name):
        model, width, lr = MODELS[name]
        return build_once(tmp_path_factory, name, lambda out: train_quietly(out, name, model, width, lr=lr))

    return get


@pytest.fixture(scope="session")
def digits_int8(digits_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The digits checkpoint exported to verified int8 files, one per format: {'tflite': path, 'onnx': path,
    'openvino': path of the .xml}; the export's JSON report is report.json beside them."""
    def make(out: Path) -> Path:
        result = edgecnn_in_process("export", digits_checkpoint, "--int8", "--format", "tflite,onnx,openvino", "--out",
                                    out, "--json", out / "report.json")
        assert result.returncode == 0, result.stderr
        return out

    out = build_once(tmp_path_factory, "digits-int8", make)
    return {"tflite": out / "tinycnn_int8.tflite", "onnx": out / "tinycnn_int8.onnx",
            "openvino": out / "tinycnn_int8.xml"}


@pytest.fixture(scope="session")
def digits_float(digits_checkpoint, tmp_path_factory) -> Path:
    """The folder of the digits checkpoint's float exports (tinycnn.tflite, .onnx, .xml + .bin) and the export's
    JSON report (report.json). Tests that change a file copy it first."""
    def make(out: Path) -> Path:
        result = edgecnn_in_process("export", digits_checkpoint, "--format", "tflite,onnx,openvino", "--out", out,
                                    "--json", out / "report.json")
        assert result.returncode == 0, result.stderr
        return out

    return build_once(tmp_path_factory, "digits-float", make)


TEACHER = ROOT.parent / "shared" / "assets" / "ssdlite_person"
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


@pytest.fixture(scope="session")
def teacher(tmp_path_factory) -> dict[str, Path]:
    """The real SSDLite person detector in ../shared, adopted (fp32 and int8 .tflite), as a user would."""
    if not TEACHER.is_dir():
        pytest.skip(f"the person detector is not here ({TEACHER}: ../shared is absent)")

    def make(out: Path) -> Path:
        (out / "person.txt").write_text("person\n")
        for precision in ("fp32", "int8"):
            result = edgecnn_in_process("adopt", TEACHER / f"ssdlite_person_{precision}.tflite", "--task", "detect",
                                        "--labels", out / "person.txt", "--anchors", TEACHER / "anchors.npy",
                                        "--input-range", "-1,1", "--out", out / f"teacher_{precision}.tflite")
            assert result.returncode == 0, result.stderr
        return out

    folder = build_once(tmp_path_factory, "teacher", make)
    return {"fp32": folder / "teacher_fp32.tflite", "int8": folder / "teacher_int8.tflite",
            "labels": folder / "person.txt"}


def video_frame(path: Path, index: int):
    import cv2

    if not path.is_file():
        pytest.skip(f"{path} is not here (Debian's opencv-doc)")
    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    capture.release()
    assert ok, f"{path}: no frame {index}"
    return frame
