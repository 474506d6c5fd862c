"""How one measurement runs in a fresh process: a job file in, one result line out. Every target (this machine,
a device over ssh or adb, the emulated Pi) runs the same runner; a remote one gets it as a zipapp bundle."""

from __future__ import annotations

import json
import signal
import subprocess
import zipfile
from pathlib import Path

from edgecnn.bench.runner import RESULT_PREFIX
from edgecnn.errors import shorten
from edgecnn.runtime.formats import FORMATS

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def parse_result(stdout: str, stderr: str, returncode: int, what: str) -> dict:
    """The runner's result line, or a failure result that says why there is none (a crash, a signal)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else -returncode
        return {"ok": False, "error": f"the runtime crashed running {what} ({name})"}
    tail = shorten((stderr.strip().splitlines() or ["no output"])[-1])
    return {"ok": False, "error": f"the runner gave no result for {what} (exit {returncode}): {tail}"}


def run_job(command: list[str], job: dict, folder: Path, env: dict[str, str], timeout: float, what: str) -> dict:
    """`command JOB.json` in a child process on this machine; the runner's result, or why there is none."""
    job_file = folder / "job.json"
    job_file.write_text(json.dumps(job))
    try:
        done = subprocess.run([*command, str(job_file)], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no result within {timeout:.0f} s"}
    return parse_result(done.stdout, done.stderr, done.returncode, what)


# The modules the device needs, and nothing that imports torch or OpenCV: package __init__ files are
# replaced by empty ones so importing edgecnn.runtime.backends does not pull in the classifier.
BUNDLE_MODULES = ("__init__.py", "errors.py", "native.py", "runtime/backends.py", "runtime/modelfile.py",
                  "runtime/integrity.py", "runtime/decoding.py", "runtime/formats/__init__.py",
                  *(f"runtime/formats/{name}.py" for name in FORMATS), "bench/machine.py", "bench/runner.py")
BUNDLE_MAIN = "import sys\n\nfrom edgecnn.bench.runner import main\n\nsys.exit(main())\n"


def build_runner_bundle(path: Path) -> Path:
    """A zipapp (`python3 runner.pyz JOB.json`) with the runner and the backends it needs."""
    package = Path(__file__).resolve().parents[1]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for module in BUNDLE_MODULES:
            z.write(package / module, f"edgecnn/{module}")
        for sub in ("runtime", "bench"):
            z.writestr(f"edgecnn/{sub}/__init__.py", "")
        z.writestr("__main__.py", BUNDLE_MAIN)
    return path
