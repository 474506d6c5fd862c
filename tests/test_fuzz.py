"""Fuzzing: generated model files, recipes and option values into every entry point a user (or a damaged disk)
can reach. The property is the same everywhere: a clean result or one clean error — never another exception, a
traceback or a hang. Hypothesis runs derandomized with fixed example counts, so CI tries the same inputs each time;
the counts go to the reliability figures (benchmarks/reliability.py).
"""

import contextlib
import json
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import cli_outcome, record
from edgecnn.errors import EdgeCNNError
from edgecnn.recipe import Recipe, load_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.reliability

HANG_SECONDS = 20  # one input may take this long before it counts as a hang


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def no_hang(what: str):
    """Fail (as a hang) when the block takes longer than HANG_SECONDS."""
    def expired(*_):
        raise TimeoutError(f"hang: {what} took over {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def signal_handlers_kept():
    """`watch` installs SIGINT/SIGTERM handlers for its own stop; put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def run_cli(entry: str, *args) -> str:
    """One generated input through the CLI in this process; asserts it ends cleanly, records it, returns the
    outcome ('ok' or 'clean error')."""
    with no_hang(f"{entry} {args}"), signal_handlers_kept():
        outcome, output = cli_outcome(*args)
    record(entry, tried=1, **{outcome.replace(" ", "_"): 1})
    assert outcome != "traceback", output
    return outcome


# --- model files ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def artefacts(digits_int8) -> dict[str, bytes]:
    return {fmt: digits_int8[fmt].read_bytes() for fmt in ("tflite", "onnx")}  # single-file formats


def damaged_model_files(artefacts: dict[str, bytes]):
    """(suffix, bytes): random bytes, a real artefact cut short, with flipped bits, with a run overwritten, or
    under the other format's (or a wrong) extension."""
    real = st.sampled_from(sorted(artefacts)).map(lambda fmt: (fmt, artefacts[fmt]))
    suffix = st.sampled_from([".tflite", ".onnx"])

    def truncated(draw_fmt, cut):
        fmt, data = draw_fmt
        return f".{fmt}", data[: int(cut * (len(data) - 1))]

    def flipped(draw_fmt, bits):
        fmt, data = draw_fmt
        b = bytearray(data)
        for position in bits:
            b[position % len(b)] ^= 1 << (position % 8)
        return f".{fmt}", bytes(b)

    def overwritten(draw_fmt, start, junk):
        fmt, data = draw_fmt
        at = int(start * (len(data) - len(junk)))
        return f".{fmt}", data[:at] + junk + data[at + len(junk):]

    def renamed(draw_fmt, wrong):
        fmt, data = draw_fmt
        return wrong if wrong != f".{fmt}" else ".txt", data

    return st.one_of(
        st.tuples(suffix, st.binary(max_size=2048)),
        st.tuples(suffix, st.sampled_from([b"TFL3", b"\x00\x00\x00\x00TFL3", b"\x08\x07\x12\x00", b""])
                  .flatmap(lambda head: st.binary(max_size=512).map(lambda tail: head + tail))),
        st.builds(truncated, real, st.floats(0, 1, exclude_max=True)),
        st.builds(flipped, real, st.lists(st.integers(0, 2**31), min_size=1, max_size=8)),
        st.builds(overwritten, real, st.floats(0, 1), st.binary(min_size=1, max_size=64)),
        st.builds(renamed, real, st.sampled_from([".tflite", ".onnx", ".pt", ".tflite.bak", ""])),
    )


def test_damaged_model_files_into_info_bench_load_and_watch(artefacts, tmp_path_factory):
    from edgecnn.runtime import load

    folder = tmp_path_factory.mktemp("fuzz-models")
    missing_video = folder / "no-such-video.mp4"

    @fuzz(150)
    @given(damaged_model_files(artefacts))
    def check(case):
        suffix, data = case
        if any(data == real for real in artefacts.values()) and suffix in (".tflite", ".onnx"):
            return  # an intact file under its own name: not damage
        path = folder / f"model{suffix}"
        path.write_bytes(data)
        run_cli("info", "info", path)
        run_cli("bench", "bench", path, "--runs", "1", "--warmup", "0")
        run_cli("watch", "watch", path, missing_video, "--max-frames", "1")
        with no_hang(f"runtime.load {path}"):
            try:
                load(path)
                outcome = "ok"
            except EdgeCNNError:
                outcome = "clean_error"
        record("runtime.load", tried=1, **{outcome: 1})

    check()


MUTATION_CHILD = textwrap.dedent("""
    import json, random, sys
    from pathlib import Path
    import numpy as np
    from click.testing import CliRunner
    from edgecnn.cli import cli
    from edgecnn.errors import EdgeCNNError
    from edgecnn.runtime import load
    sys.path.insert(0, sys.argv[4])
    from corruption import KINDS, corrupt

    source, first, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    data, frame = source.read_bytes(), np.zeros((40, 40, 3), np.uint8)
    target = source.with_name("mutant" + source.suffix)
    for i in range(first, count):
        rng = random.Random(i)
        target.write_bytes(corrupt(data, rng, KINDS[i % len(KINDS)]))
        print(json.dumps({"start": i}), flush=True)  # if the process dies now, the parent knows which input
        try:
            load(target, verify=False).predict(frame)
            outcome = "ran"
        except EdgeCNNError:
            outcome = "clean_error"
        except Exception as e:
            outcome = f"exception {type(e).__name__}: {e}"
        shown = CliRunner().invoke(cli, ["info", "--no-verify", str(target)])
        if not (shown.exception is None or isinstance(shown.exception, EdgeCNNError)) or "Traceback" in shown.output:
            outcome = f"info: {type(shown.exception).__name__}: {shown.exception}"
        print(json.dumps({"done": i, "outcome": outcome}), flush=True)
""")


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_corrupted_files_with_no_verify_never_crash_the_runtime(digits_int8, tmp_path, fmt):
    """--no-verify hands damaged bytes to the runtimes' C++ parsers (and a damaged card to `info`). A mutation
    loop in a child process (so a segfault is counted, not fatal): every input must run or give a clean error in
    runtime.load + predict and in `info --no-verify`; none may kill the process."""
    from conftest import ROOT

    copy = tmp_path / f"model.{fmt}"
    copy.write_bytes(digits_int8[fmt].read_bytes())
    count, first, outcomes, crashes = 300, 0, {}, []
    while first < count:
        child = subprocess.run([sys.executable, "-c", MUTATION_CHILD, str(copy), str(first), str(count),
                                str(ROOT / "tests")], capture_output=True, text=True, timeout=600)
        lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
        for line in lines:
            if "done" in line:
                outcomes[line["done"]] = line["outcome"]
        if child.returncode == 0:
            break
        crashed_at = lines[-1]["start"] if lines and "start" in lines[-1] else first
        crashes.append((crashed_at, child.returncode))
        first = crashed_at + 1
    bad = {i: o for i, o in outcomes.items() if o not in ("ran", "clean_error")}
    record(f"runtime.load + info, --no-verify ({fmt} mutations)", tried=count, crashes=len(crashes),
           tracebacks=len(bad), ran=sum(o == "ran" for o in outcomes.values()),
           clean_error=sum(o == "clean_error" for o in outcomes.values()))
    assert not crashes and not bad, (crashes, bad)
    assert len(outcomes) == count


# --- recipes -------------------------------------------------------------------------------------------------

SECTIONS = {"name": None, "seed": None, "data": ["dataset", "img_size", "batch_size", "augment", "workers", "mean",
                                                  "std", "crop"],
            "model": ["name", "width", "weights"],
            "train": ["epochs", "optimizer", "lr", "momentum", "warmup_epochs", "label_smoothing", "freeze",
                      "unfreeze", "backbone_lr", "device", "amp"],
            "prune": ["ratio", "steps", "round_to", "finetune_epochs"],
            "quantize": ["method", "calib_samples", "target", "max_accuracy_drop", "epochs"],
            "export": ["formats", "eval_samples", "allow_float_ops"]}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["digits", "tinycnn", "sgd", "tflite", "backbone", "qat",
                                                          ".nan", "-.inf", "0x10", "1e400", "~", "yes"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
known_keys = st.sampled_from([(s, k) for s, keys in SECTIONS.items() for k in (keys or [None])])


@st.composite
def recipe_documents(draw) -> dict:
    """Mostly-valid recipes: real sections and keys with values of any type, plus unknown keys now and then."""
    doc: dict = {}
    for section, key in draw(st.lists(known_keys, max_size=8)):
        if key is None:
            doc[section] = draw(values)
        else:
            sub = doc.setdefault(section, {})
            if isinstance(sub, dict):
                sub[key] = draw(values)
    if draw(st.booleans()):
        doc[draw(st.text(max_size=10))] = draw(values)
    return doc


YAML_ODDITIES = [
    "data: &a {dataset: digits}\nmodel: *a\n", "data:\n\tdataset: digits\n", "data: {dataset: digits}\ndata: {}\n",
    "!!python/object/apply:os.system ['true']\n", "train: !!binary aGVsbG8=\n", "? [a, b]\n: c\n",
    "---\nname: a\n---\nname: b\n", "\ufeffname: bom\n", "[" * 2000, "{" * 50 + "}" * 50, "train: {epochs: 1e3}\n",
    "name: x\x00y\n", "%YAML 9.9\n---\nname: a\n", "data: {dataset: 'imagefolder:/nonexistent'}\n",
    "model: {name: mobilenet_v2, weights: /nonexistent.pth}\n", "a: " + "[x, " * 300 + "]" * 300 + "\n",
]


def test_generated_recipes_load_or_fail_cleanly(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-recipes")

    def check(text: str | bytes) -> None:
        path = folder / "recipe.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        with no_hang("load_recipe"):
            try:
                recipe = load_recipe(path)
                outcome = "ok"
            except EdgeCNNError:
                outcome = "clean_error"
        record("recipes", tried=1, **{outcome: 1})
        if outcome == "ok":  # an accepted recipe is a usable one
            assert isinstance(recipe, Recipe) and recipe.train.lr > 0 and recipe.train.epochs > 0

    @fuzz(250)
    @given(recipe_documents())
    def structured(doc):
        check(yaml.safe_dump(doc, allow_unicode=True))

    @fuzz(100)
    @given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
    def raw(text):
        check(text)

    structured()
    raw()
    for oddity in YAML_ODDITIES:
        check(oddity)


# --- CLI option values ---------------------------------------------------------------------------------------

option_text = st.one_of(st.text(max_size=24), st.integers(-10**12, 10**12).map(str),
                        st.floats(allow_nan=True).map(str),
                        st.sampled_from(["", "0", "-1", "1,2,x", "1,,2", "nan", "inf", "1e999", "0.5", "1,2,3,4",
                                         ",", "ssh://", "adb:", "cuda", "ssh://u@h:99999", "-3,4,-5,6", "tflite,"]))


def test_generated_option_values_fail_cleanly(digits_int8, tmp_path_factory):
    """Every option of the verbs that take free values, with generated values. The model or data they point
    at is missing (or the video is), so a set of valid values ends in a clean 'not found' instead of minutes
    of work."""
    folder = tmp_path_factory.mktemp("fuzz-options")
    missing = {"model": folder / "none.tflite", "checkpoint": folder / "none.pt", "video": folder / "none.mp4"}
    verbs = {
        "bench": (["bench", missing["model"]], ["--threads", "--runs", "--warmup", "--min-seconds", "--batch-size",
                                                 "--rounds", "--eval-samples", "--input-shape", "--device", "--timeout",
                                                 "--int8-target", "--max-accuracy-drop"]),
        "watch": (["watch", digits_int8["tflite"], missing["video"]],
                  ["--threads", "--img-size", "--mean", "--std", "--every", "--max-fps", "--roi", "--max-frames",
                   "--alert", "--threshold", "--min-frames", "--give-up-after"]),
        "export": (["export", missing["checkpoint"]], ["--format", "--target", "--width", "--img-size",
                                                        "--calib-samples", "--eval-samples", "--max-accuracy-drop"]),
        "train": (["train", "--out", folder / "train"], ["--model", "--dataset", "--epochs", "--img-size",
                                                          "--batch-size", "--lr", "--width", "--augment",
                                                          "--warmup-epochs", "--label-smoothing", "--device"]),
        "info": (["info"], []),
    }

    @fuzz(400)
    @given(st.sampled_from(sorted(verbs)).flatmap(
        lambda verb: st.tuples(st.just(verb), st.lists(st.tuples(st.sampled_from(verbs[verb][1] or ["--json"]),
                                                                  option_text), min_size=1, max_size=4))))
    def check(case):
        verb, options = case
        base, _ = verbs[verb]
        if verb == "train":
            options = [*options, ("--model", "no_such_model")] if "--model" not in dict(options) else options
            options = [*options, ("--dataset", "digits")] if "--dataset" not in dict(options) else options
        args = [*base, *(v for pair in options for v in (pair if verb != "info" else (pair[1],)))]
        run_cli(f"cli options: {verb}", *args)

    check()
