"""Property-based fuzzing of every command: bad option values and broken files end in one line and exit code 2,
without a traceback, and every file that existed before is byte-identical afterwards.

Options are fuzzed from their declared value types (tests/cli_walk.py reads them from the app), so a new option is
fuzzed as soon as it is declared; a new command needs a valid baseline in BASELINES (a test checks that every
command has one). Option values are refused while the command line is parsed: the command bodies are replaced by
stubs that fail the test if a bad value gets through. Files are refused by the API that reads them (real commands,
small artefacts made once per module).

Example counts come from the hypothesis profile (tests/conftest.py): `ci` by default, `--hypothesis-profile long`
for a local hunt.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cli_walk import commands, options
from hwbcnet.cli import app, main
from hwbcnet.cli_options import (ARCH, CALIB, DATA, DEVICE, MARGIN, MODEL, MODEL_KWARGS, MODULE_GLOB, Budget,
                                 Choice, ExistingDir, ExistingFile, Float, Int, OutputDir, OutputFile)
from hwbcnet.data.specs import parse_data_spec
from hwbcnet.space.space import arch_form

MODEL_ARGS = ["--model", "resnet20", "--resolution", "8", "--width-mult", "0.25", "--bins", "4", "--min-bins", "2",
              "--channel-divisor", "1"]  # the artefacts' space; the cpu profile's own divisor depends on the CPU

# A valid invocation per command that reaches the command body; {s} is the sandbox folder (also the working folder).
BASELINES = {
    "models": [],
    "devices": [],
    "info": ["--model", "resnet20"],
    "train": ["--model", "resnet20", "--out", "{s}/run"],
    "search": ["--checkpoint", "{s}/garbage.pt", "--out", "{s}/out/search.json", "--flops", "50%"],
    "extract": ["--search", "{s}/garbage.json", "--out", "{s}/out/subnet.pt"],
    "finetune": ["--subnet", "{s}/garbage.pt"],
    "bench cbm": [],
    "profile": ["--device", "cpu", "--model", "resnet20"],
    "lut calibrate": ["--device", "cpu", "--model", "resnet20"],
    "lut validate": ["--device", "cpu", "--model", "resnet20"],
    "lut show": ["--device", "cpu", "--model", "resnet20"],
    "export": ["--subnet", "{s}/garbage.pt", "--onnx", "{s}/out/model.onnx"],
    "verify": ["--device", "cpu", "--model", "{s}/garbage.onnx"],
    "quickstart": ["--out", "{s}/out/quickstart"],
}


# ------------------------------------------------------------------------------------------------------ harness
class ReachedCommand(BaseException):
    """A command body ran although an option value was bad (a BaseException: nothing on the way catches it)."""


@contextlib.contextmanager
def stubbed_commands():
    """Every command's body replaced by a stub with the same signature that raises ReachedCommand."""
    infos = [info for typer_app in _apps(app) for info in typer_app.registered_commands]
    saved = [info.callback for info in infos]

    def stub_for(function):
        @functools.wraps(function)
        def stub(**values):
            raise ReachedCommand(f"{function.__name__} ran with {values}")
        return stub

    for info in infos:
        info.callback = stub_for(info.callback)
    try:
        yield
    finally:
        for info, callback in zip(infos, saved):
            info.callback = callback


def _apps(typer_app):
    yield typer_app
    for group in typer_app.registered_groups:
        yield from _apps(group.typer_instance)


def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run(args: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `hwbcnet ARGS`, in this process. Warnings reach stderr as they would in a shell
    (pytest would otherwise collect them), every time: a warning printed above the error is a second line."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)  # hidden by Python's own defaults too
        warnings.showwarning = _print_warning
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def snapshot(*roots: Path) -> dict:
    return {str(p): p.read_bytes() if p.is_file() else "folder" for root in roots for p in sorted(root.rglob("*"))}


def assert_one_line_exit_2(args, root: Path, starts: str = "hwbcnet: error: ", new_files_allowed: bool = False,
                           also_watch: tuple[Path, ...] = ()):
    before = snapshot(root, *also_watch)
    code, err = run(args)
    assert code == 2, f"exit {code} for {args}: {err}"
    assert err.startswith(starts) and err.endswith("\n") and err.count("\n") == 1, f"{args}: {err!r}"
    assert "Traceback" not in err
    after = snapshot(root, *also_watch)
    changed = [name for name, content in before.items() if after.get(name) != content]
    assert not changed, f"{args} changed {changed}"
    assert new_files_allowed or after.keys() == before.keys(), f"{args} created {set(after) - set(before)}"
    return err


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A working folder with paths of every kind, none of them what an option wants in its content."""
    root = tmp_path_factory.mktemp("sandbox")
    for folder in ("folder", "folder.json", "folder.pt", "folder.onnx", "folder.png", "folder.toml"):
        (root / folder).mkdir()
    (root / "plain.txt").write_text("plain text\n")
    (root / "garbage.pt").write_bytes(b"garbage")
    (root / "garbage.json").write_text("{")
    (root / "garbage.onnx").write_bytes(b"\x00garbage")
    (root / "garbage.toml").write_text("name = [")
    (root / "alien.toml").write_text('title = "another tool"\n')
    (root / "models.py").write_text("def build():\n    raise AssertionError('never imported by a parse check')\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # default outputs (lut/..., runs/...) land here and are watched
        yield root


def command_args(command: str, root: Path, **override) -> list[str]:
    """The baseline of `command` with `override` ({"--opt": value}) replacing or adding options."""
    args = [a.replace("{s}", str(root)) for a in BASELINES[command]]
    for name, value in override.items():
        if name in args:
            index = args.index(name)
            del args[index:index + 2]
        args.append(f"{name}={value}")  # `=`: a value that starts with "-" stays a value
    return [*command.split(), *args]


# -------------------------------------------------------------------------------------------- value strategies
WHITESPACE = st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\xa0\u2028\u3000"), min_size=1, max_size=4)
GARBAGE = st.one_of(
    st.just(""), WHITESPACE, st.text(max_size=40),
    st.text(min_size=1, max_size=3).map(lambda s: s * 700),  # huge
    st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "-1", "-0", "1.5", "1e3",
                     "0x10", "1_000", "\u0663", "\uff13", "\u00b2", "-", "--", "=", "%", "ms", "null", "None", "[]",
                     "{}", "\x00", "a\x00b", "\udcff", "\u202e", "ﬁ", "😀", "'", '"', "\\"]),
)


def _int_ok(t: Int, text: str) -> bool:
    digits = text.strip()
    return bool(re.fullmatch(r"[+-]?[0-9]{1,40}", digits)) and (t.min <= int(digits) <= t.max or int(digits) in t.also)


def _float_ok(t: Float, text: str) -> bool:
    number = text.strip()
    if not re.fullmatch(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", number):
        return False
    value = float(number)
    return math.isfinite(value) and (t.min < value if t.min_open else t.min <= value) and \
        (value < t.max if t.max_open else value <= t.max)


def _accepted_by(check) -> callable:
    """For filtering generic garbage only: `check` accepts it (so it is not a bad value)."""
    def accepted(text):
        try:
            check(text)
            return True
        except Exception:
            return False
    return accepted


def bad_values(value_type, root: Path):
    """Strings the option of `value_type` must refuse. Targeted cases come first; generic garbage is filtered by
    the option's own syntax check only so that it never happens to be valid."""
    s = str(root)
    if isinstance(value_type, Int):
        t = value_type
        targeted = st.one_of(st.integers(max_value=t.min - 1), st.integers(min_value=t.max + 1)).filter(
            lambda n: n not in t.also).map(str)
        return st.one_of(targeted, st.floats().map(repr), GARBAGE.filter(lambda x: not _int_ok(t, x)))
    if isinstance(value_type, Float):
        t = value_type
        outside = st.one_of(st.floats(max_value=t.min, allow_nan=False), st.floats(min_value=t.max, allow_nan=False))
        return st.one_of(outside.map(repr), st.sampled_from(["nan", "inf", "-inf"]),
                         GARBAGE).filter(lambda x: not _float_ok(t, x))
    if isinstance(value_type, Choice):
        choices = value_type.choices
        near = st.sampled_from(choices).flatmap(lambda c: st.sampled_from([c.upper(), f" {c}", f"{c} ", c[:-1], c * 2]))
        return st.one_of(near, GARBAGE).filter(lambda x: x not in choices)
    if isinstance(value_type, Budget):
        cost = value_type.cost
        targeted = st.sampled_from(["0%", "0", "-5%", "100.5%", "150%", "-1M", "0ms", "1e999", "1e999ms", "1e-400ms",
                                    "50", "10 m s", "ms", "%", "nan%", "inf%", "10ms10ms", "5%%", "1e999%", "0.0%",
                                    "300Q", "10ms" if cost != "latency" else "300M"])
        return st.one_of(targeted, GARBAGE).filter(lambda x: not _accepted_by(value_type.parse)(x))
    if isinstance(value_type, (ExistingFile, OutputFile)):
        suffix = (value_type.suffixes or (".json",))[0]
        targeted = [f"{s}/folder{suffix}" if (root / f"folder{suffix}").is_dir() else f"{s}/folder", "", " ",
                    f"{s}/plain.txt/x{suffix}", f"{s}/{'x' * 300}{suffix}", f"{s}/nul\x00{suffix}", "/dev/null"]
        if isinstance(value_type, ExistingFile):
            targeted += [f"{s}/missing{suffix}", f"{s}/ünïcødé{suffix}", f"{s}/missing/x{suffix}"]
        if value_type.suffixes:
            targeted += [f"{s}/plain.txt", f"{s}/out/x.txt", f"{s}/out/x{suffix}.bak"]
        return st.sampled_from(targeted)
    if isinstance(value_type, (ExistingDir, OutputDir)):
        targeted = [f"{s}/plain.txt", f"{s}/plain.txt/sub", "", "\t", f"{s}/{'x' * 300}", f"{s}/nul\x00", "/dev/null"]
        if isinstance(value_type, ExistingDir):
            targeted += [f"{s}/missing"]
        return st.sampled_from(targeted)
    specific = {
        MODEL: (["RESNET20", "resnet20 ", "resnet", "torchvision:", "torchvision:res net", "torchvision:1x",
                 "timm:", "timm:a..b", "timm:-x", "pkg.:f", ".pkg:f", "pkg:1f", "pkg:class", ":f", "f:", "a:b:c",
                 f"{s}/missing.py:build", f"{s}/plain.txt:build", f"{s}/models.py:not-a-name", f"{s}/models.py:",
                 f"{s}/folder:build"], MODEL.parse),
        MODEL_KWARGS: (["{", "[1, 2]", "1", '"x"', "null", "true", '{"num_classes": 5}', "{'a': 1}", "{a: 1}"],
                       MODEL_KWARGS.parse),
        MARGIN: (["", "Auto", "-1%", "100%", "1", "nan", "inf%", "3 %%", "x%"], MARGIN.parse),
        MODULE_GLOB: (["", " ", "\t", " features.*", "features.* "], MODULE_GLOB.parse),
        ARCH: (["-1", "1,-2", "4.5", "1,,2", ",", "4,", ",4", "\uff14\uff14", "\u00b2", "a", "full width", "FULL",
                "4 4", f"{s}/missing.json", f"{s}/folder.json", "1e3"], arch_form),
        DATA: (["mnist", "digits:", "digits:x", "Digits", " digits", "synthetic:abc", "synthetic:-5", "synthetic:99",
                "synthetic:1e3", "synthetic:99999999999", "cifar10:", "cifar10", f"cifar10:{s}/missing",
                f"cifar10:{s}/plain.txt", "imagefolder:", f"imagefolder:{s}/missing"], parse_data_spec),
        DEVICE: (["tpu", "CPU", "cpu ", f"{s}/missing.toml", f"{s}/folder.toml", f"{s}/garbage.toml",
                  f"{s}/alien.toml", f"{s}/plain.txt"], DEVICE.parse),
        CALIB: (["mnist", f"{s}/missing", f"{s}/plain.txt", f"cifar10:{s}/missing", "synthetic:5"], CALIB.parse),
    }
    if value_type not in specific:
        raise AssertionError(f"bad_values() has no bad values for the option type {value_type!r} yet: add some")
    targeted, check = specific[value_type]
    return st.one_of(st.sampled_from(targeted), GARBAGE).filter(lambda x: not _accepted_by(check)(x))


# ------------------------------------------------------------------------------------------- option fuzzing
VALIDATED = [o for o in options(app) if o.value_type is not None]
FLAGS = [o for o in options(app) if o.is_flag]


def test_every_command_has_a_baseline_that_reaches_it(sandbox):
    assert set(BASELINES) == set(commands(app)), "add a valid invocation of the new command to BASELINES"
    with stubbed_commands():
        for command in BASELINES:
            with pytest.raises(ReachedCommand):
                main(command_args(command, sandbox))


@pytest.mark.parametrize("command", sorted({o.command for o in VALIDATED}))
@given(data=st.data())
def test_bad_option_values_are_refused_while_parsing(command, sandbox, data):
    option = data.draw(st.sampled_from([o for o in VALIDATED if o.command == command]), label="option")
    value = data.draw(bad_values(option.value_type, sandbox), label="value")
    with stubbed_commands():
        err = assert_one_line_exit_2(command_args(command, sandbox, **{option.name: value}), sandbox,
                                     starts=f"hwbcnet: error: {option.name}")
    assert len(err) < 600  # a huge value is cut in the message


@pytest.mark.parametrize("command", sorted({o.command for o in VALIDATED + FLAGS}))
@given(data=st.data())
def test_typer_value_errors_are_one_line(command, sandbox, data):
    """No value after an option, a value given to a flag, a required option left out."""
    valued = [o for o in VALIDATED if o.command == command]
    flags = [o for o in FLAGS if o.command == command]
    required = [o for o in valued if o.default is ... and o.name in BASELINES[command]]
    cases = [("no value", o) for o in valued] + [("flag value", o) for o in flags] + [("left out", o) for o in required]
    case, option = data.draw(st.sampled_from(cases), label="case")
    args = command_args(command, sandbox)
    if case == "no value":
        args.append(option.name)
        expected = f"hwbcnet: error: {option.name}: expected a value after it"
    elif case == "flag value":
        args.append(f"{option.name}={data.draw(GARBAGE.filter(bool), label='value')}")
        expected = f"hwbcnet: error: {option.name}: a flag takes no value"
    else:
        index = args.index(option.name)
        del args[index:index + 2]
        expected = f"hwbcnet: error: missing option {option.name}"
    with stubbed_commands():
        assert_one_line_exit_2(args, sandbox, starts=expected)


# ------------------------------------------------------------------------------------------- broken files
@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """Small valid files of every kind a command reads: checkpoint, search result, subnet, LUT, ONNX, profile."""
    from hwbcnet.export.onnx_export import export_onnx, load_export_source
    from hwbcnet.hardware.cells import enumerate_cells
    from hwbcnet.hardware.lut import Lut
    from hwbcnet.hardware.profiles import load_profile
    from hwbcnet.search.evolution import EvolutionConfig
    from hwbcnet.search.extract import extract_subnet
    from hwbcnet.search.runner import run_search
    from hwbcnet.training.trainer import TrainConfig, train_supernet

    root = tmp_path_factory.mktemp("artefacts")
    config = TrainConfig(model="resnet20", data="synthetic:200", principle="bcnetv2", bins=4, min_bins=2, resolution=8,
                         width_mult=0.25, epochs=1, batch_size=32, max_steps_per_epoch=2)
    trained = train_supernet(config, root, progress=False)
    evolution = EvolutionConfig(population=2, generations=1, top_k=1, mutations=1, crossovers=1)
    run_search(trained.checkpoint, root / "search.json", flops="100%", evolution=evolution, calibration_batches=1,
               progress=False)
    extract_subnet(root / "search.json", root / "subnet.pt", calibration_batches=1)
    source = load_export_source(root / "subnet.pt")
    export_onnx(source.model, source.space, source.arch, root / "model.onnx", metadata=source.metadata)
    profile = load_profile("cpu")
    lut = Lut.new(root / "lut.json", trained.space, profile, {"device": "test machine"})
    for index, cell in enumerate(enumerate_cells(trained.space)):
        lut.cells[lut.key(cell)] = {"median_ms": (index + 1) / 100, "stable": True}
    lut.save()
    (root / "arch.json").write_text(json.dumps({"arch": trained.space.arch_to_json(trained.space.min_arch())}))
    return root


def _json_type(value) -> str:
    kinds = {bool: "bool", int: "number", float: "number", str: "str", list: "list", dict: "dict"}
    return kinds.get(type(value), "null")


def _other_type(value):
    """A JSON value of another type than `value` (so a field keeps its name but not its meaning)."""
    kinds = {"null": st.none(), "bool": st.booleans(), "number": st.integers(-5, 5) | st.floats(allow_nan=False),
             "str": st.text(max_size=8), "list": st.lists(st.integers(), max_size=2),
             "dict": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)}
    return st.one_of([strategy for kind, strategy in kinds.items() if kind != _json_type(value)])


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3), max_leaves=8)


def broken_json(valid: dict, required: list[str], typed: list[str]):
    """`valid` truncated, replaced by another JSON value, without one of its `required` keys or with one of its
    `typed` keys holding a value of another type; or bytes that are no JSON."""
    text = json.dumps(valid, indent=1)
    end = text.rindex("}")
    truncated = st.integers(0, end - 1).map(lambda cut: text[:cut].encode())
    alien = JSON_VALUES.map(lambda value: json.dumps(value).encode())
    missing = st.sampled_from(required).map(
        lambda key: json.dumps({k: v for k, v in valid.items() if k != key}).encode())
    retyped = st.sampled_from(typed).flatmap(
        lambda key: _other_type(valid[key]).map(lambda value: json.dumps({**valid, key: value}).encode()))
    return st.one_of(truncated, alien, missing, retyped, st.binary(max_size=64), st.just(b"\xff\xfe{\"kind\": 1}"))


def broken_torch_file(path: Path, required: list[str], typed: list[str]):
    """The torch file at `path` broken as broken_json breaks JSON, plus other pickles and JSON in its place."""
    data = path.read_bytes()
    valid = torch.load(path, weights_only=True)

    def saved(obj) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    truncated = st.integers(0, len(data) - 1).map(lambda cut: data[:cut])
    alien = st.one_of(JSON_VALUES.map(saved), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                      st.just(saved(torch.zeros(3))), st.just(saved({**valid, "kind": "hwbcnet.other"})))
    missing = st.sampled_from(required).map(lambda key: saved({k: v for k, v in valid.items() if k != key}))
    retyped = st.sampled_from(typed).flatmap(
        lambda key: _other_type(valid[key]).map(lambda value: saved({**valid, key: value})))
    return st.one_of(truncated, alien, missing, retyped, st.binary(max_size=64))


PROFILE_VALUES = {  # values each key of a profile must refuse
    "name": ["1", "true", '"../x"', '""', '"a b"', "[1]"], "backend": ['"tflite"', "1"], "precision": ['"int4"', "16"],
    "batch": ["0", "-1", '"1"', "true", "1.5", "inf"], "threads": ["0", '"2"', "false", "nan"],
    "resolution": ["4", "-1", '"32"', "true", "[32]"],
}
PROFILE_TABLES = {
    "onnxruntime": {"optimization_level": ['"max"', "1"], "allow_spinning": ['"false"', "1"]},
    "timing": {"branches": ["[1]", "[0, 4]", '"1,4"', "[true, 4]", "[]", "4"], "passes": ["0", '"2"']},
    "timing.cell": {"repeats": ["10", '"50"', "-1", "inf", "nan", "1.5"], "warmup_ms": ['"5"', "-1", "nan"],
                    "stability_threshold": ["0", "1.5", '"x"']},
}


def broken_profile(valid_text: str):
    body = valid_text.split("\n[")[0]  # the top-level keys
    required_end = valid_text.index("batch = 1") + len("batch = 1")
    truncated = st.integers(0, required_end - 1).map(lambda cut: valid_text[:cut])
    top = st.sampled_from(sorted(PROFILE_VALUES)).flatmap(lambda key: st.sampled_from(PROFILE_VALUES[key]).map(
        lambda value: re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", body) if re.search(rf"(?m)^{key} = ", body)
        else f"{body}\n{key} = {value}\n"))
    table = st.sampled_from(sorted(PROFILE_TABLES)).flatmap(lambda table: st.sampled_from(sorted(PROFILE_TABLES[table]))
        .flatmap(lambda key: st.sampled_from(PROFILE_TABLES[table][key]).map(
            lambda value: f"{body}\n[{table}]\n{key} = {value}\n")))
    not_a_table = st.sampled_from(["onnxruntime", "tensorrt", "jetson", "timing"]).map(
        lambda key: f"{body}\n{key} = 3\n")
    keys = st.from_regex(r"[a-z_]{1,8}", fullmatch=True).filter(lambda k: k not in ("name", "backend", "precision",
                                                                                   "batch"))
    alien = st.dictionaries(keys, st.integers() | st.text(alphabet="abc ", max_size=5), max_size=4).map(
        lambda d: "".join(f"{k} = {json.dumps(v)}\n" for k, v in d.items()))
    return st.one_of(truncated, top, table, not_a_table, alien, st.binary(max_size=64).map(
        lambda b: b.decode("latin-1")), st.just('{"name": "json"}'))


def broken_onnx(data: bytes):
    # cuts inside the graph (most of the file): a protobuf cut between two fields could still parse
    return st.one_of(st.integers(len(data) // 4, 3 * len(data) // 4).map(lambda cut: data[:cut]),
                     st.binary(min_size=1, max_size=64), st.just(b""), st.just(json.dumps({"kind": "x"}).encode()))


def _targets():
    from hwbcnet.hardware import lut
    from hwbcnet.search import extract, runner
    from hwbcnet.training import checkpoint

    def keys(module):  # (required, typed): a file without an optional field is still valid
        required = ["kind", "schema_version", *module._FIELDS]
        return required, required + list(getattr(module, "_OPTIONAL", {}))

    lut_keys, search_keys, subnet_keys, checkpoint_keys = keys(lut), keys(runner), keys(extract), keys(checkpoint)
    return {  # name: (the file's suffix, its strategy from the artefacts folder, the command with {f} for it)
        "search --checkpoint": (".pt", lambda a: broken_torch_file(a / "supernet.pt", *checkpoint_keys),
                                ["search", "--checkpoint", "{f}", "--out", "{o}/s.json", "--flops", "100%",
                                 "--population", "2", "--generations", "1", "--bn-batches", "1"]),
        "extract --search": (".json", lambda a: broken_json(json.loads((a / "search.json").read_text()), *search_keys),
                             ["extract", "--search", "{f}", "--out", "{o}/subnet.pt"]),
        "finetune --subnet": (".pt", lambda a: broken_torch_file(a / "subnet.pt", *subnet_keys),
                              ["finetune", "--subnet", "{f}", "--epochs", "1"]),
        "export --subnet": (".pt", lambda a: broken_torch_file(a / "subnet.pt", *subnet_keys),
                            ["export", "--subnet", "{f}", "--onnx", "{o}/m.onnx"]),
        "info --lut": (".json", lambda a: broken_json(json.loads((a / "lut.json").read_text()), *lut_keys),
                       ["info", *MODEL_ARGS, "--device", "cpu", "--lut", "{f}"]),
        "lut show --lut": (".json", lambda a: broken_json(json.loads((a / "lut.json").read_text()), *lut_keys),
                           ["lut", "show", "--device", "cpu", *MODEL_ARGS, "--lut", "{f}", "--heatmap", "{o}/h.png"]),
        "info --arch": (".json", lambda a: st.one_of(broken_json({"widths": {"stem.0": 2}, "code": "2222"},
                                                                 ["widths", "code"], ["widths"]),
                                                     JSON_VALUES.map(lambda v: json.dumps({"arch": v}).encode())),
                        ["info", *MODEL_ARGS, "--arch", "{f}"]),
        "info --device": (".toml", lambda a: broken_profile(Path(__file__).parents[1].joinpath(
                              "hwbcnet/resources/profiles/cpu.toml").read_text()).map(str.encode),
                          ["info", *MODEL_ARGS, "--device", "{f}", "--lut", "{a}/lut.json"]),
        "verify --model": (".onnx", lambda a: broken_onnx((a / "model.onnx").read_bytes()),
                           ["verify", "--device", "cpu", "--model", "{f}"]),
    }


TARGETS = _targets()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default outputs (lut/..., heat maps) land here and are watched
    return tmp_path


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_valid_files_pass(target, artefacts, workdir):
    """The control: with the intact file each target command succeeds, so a failure below is the file's."""
    suffix, _, command = TARGETS[target]
    valid = {".pt": "supernet.pt" if "checkpoint" in target else "subnet.pt", ".json": "search.json",
             ".onnx": "model.onnx", ".toml": None}[suffix]
    valid = {"info --lut": "lut.json", "lut show --lut": "lut.json", "info --arch": "arch.json"}.get(target, valid)
    path = Path(__file__).parents[1] / "hwbcnet/resources/profiles/cpu.toml" if valid is None else artefacts / valid
    copy = workdir / f"input{suffix}"
    copy.write_bytes(path.read_bytes())
    code, err = run([a.replace("{f}", str(copy)).replace("{o}", str(workdir)).replace("{a}", str(artefacts))
                     for a in command])
    assert code == 0, err


@pytest.mark.parametrize("target", sorted(TARGETS))
@given(data=st.data())
def test_broken_files_are_refused_in_one_line(target, artefacts, tmp_path_factory, data):
    suffix, strategy, command = TARGETS[target]
    content = data.draw(strategy(artefacts), label="content")
    root = tmp_path_factory.mktemp("broken")
    (root / f"input{suffix}").write_bytes(content)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        args = [a.replace("{f}", str(root / f"input{suffix}")).replace("{o}", str(root)).replace("{a}", str(artefacts))
                for a in command]
        assert_one_line_exit_2(args, root, new_files_allowed=True, also_watch=(artefacts,))
