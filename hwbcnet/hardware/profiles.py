"""Device profiles: how latency is measured on one target (backend, precision, batch, threads, timing policy).

A profile is a TOML file. The shipped ones live in `hwbcnet/resources/profiles/` (copies of `profiles/` in the
repository); `load_profile` takes either such a name (`cpu`, `gpu`, `jetson-orin-nano`, ...), one of the names
`jetson` and `gpu` that stand for this machine's own profile (see `resolve_machine_profile`), or the path of a
user's own `.toml` written in the same format:

    name = "my-board"            # also the LUT folder: lut/<name>/...
    description = "..."
    backend = "onnxruntime"      # onnxruntime (CPU) | onnxruntime-cuda (CUDA execution provider) | tensorrt
    precision = "fp32"           # fp32 | fp16
    batch = 1
    threads = 1                  # ONNX Runtime intra-op threads
    resolution = 224             # optional: overrides the model's input resolution
    channel_divisor = 8          # channel counts this device runs best at a multiple of (width-space default);
                                 # "auto": ONNX Runtime's NCHWc block on this CPU (16 with AVX-512, 8 with AVX2)
    [onnxruntime]  optimization_level = "all", allow_spinning = true
    [tensorrt]     cuda_graphs = false, workspace_mb = 1024, min_sample_ms = 0.05
    [jetson]       power_mode = "MAXN", locked_clocks = true     (expected state, checked and recorded)
    [timing]       passes = 2, branches = [1, 4]
    [timing.cell]  warmup_runs, warmup_ms, repeats, min_time_ms, stability_threshold, max_remeasure
    [timing.model] the same keys, for end-to-end timing of whole models

Everything that changes a measured number (backend, precision, batch, threads, optimisation level, CUDA graphs)
is part of `settings()`, which a LUT file records and checks on load.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.nvidia import XAVIER_UNSUPPORTED, detect_jetson, jetson_profile_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib

BACKENDS = ("onnxruntime", "onnxruntime-cuda", "tensorrt")
ORT_BACKENDS = ("onnxruntime", "onnxruntime-cuda")
# Names that stand for this machine's own profile rather than a file.
MACHINE_ALIASES = ("jetson", "gpu")
PRECISIONS = ("fp32", "fp16")
ORT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class TimingPolicy:
    """How one model is timed: warm-up (both a run count and a duration must be reached), then at least `repeats`
    samples and at least `min_time_ms` of them; if IQR/median exceeds `stability_threshold` the measurement is
    repeated up to `max_remeasure` more times and the most stable attempt kept."""

    warmup_runs: int = 10
    warmup_ms: float = 5.0
    repeats: int = 50
    min_time_ms: float = 5.0
    stability_threshold: float = 0.05
    max_remeasure: int = 2

    def __post_init__(self) -> None:
        if self.repeats < 50:
            raise HwbcnetError(f"timing repeats = {self.repeats}: at least 50 samples per measurement are required")
        if self.warmup_runs < 1 or self.warmup_ms < 0 or self.min_time_ms < 0 or self.max_remeasure < 0:
            raise HwbcnetError("timing: warmup_runs must be >= 1 and warmup_ms, min_time_ms, max_remeasure >= 0")
        if not 0 < self.stability_threshold < 1:
            raise HwbcnetError(f"timing stability_threshold = {self.stability_threshold}: expected a fraction in (0, 1)")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    backend: str
    precision: str
    batch: int
    threads: int
    resolution: int | None = None
    optimization_level: str = "all"
    allow_spinning: bool = True
    cuda_graphs: bool = False
    workspace_mb: int = 1024
    min_sample_ms: float = 0.05
    power_mode: str | None = None
    locked_clocks: bool = False
    passes: int = 2
    branches: tuple[int, ...] = (1, 4)
    cell_timing: TimingPolicy = field(default_factory=TimingPolicy)
    model_timing: TimingPolicy = field(default_factory=lambda: TimingPolicy(warmup_ms=200.0, min_time_ms=200.0))
    # Channel counts the device runs best at a multiple of (fp16 tensor cores want 8); the default divisor of
    # width spaces searched for it. Not a measurement setting: it does not enter settings().
    channel_divisor: int = 1
    resolved_from: str | None = None  # "jetson" or "gpu" when the profile was picked for this machine
    source: str = ""

    def settings(self) -> dict:
        """What a measured number depends on; a LUT is only valid under identical settings."""
        settings = {"backend": self.backend, "precision": self.precision, "batch": self.batch}
        if self.backend in ORT_BACKENDS:
            settings.update(threads=self.threads, optimization_level=self.optimization_level)
        else:
            settings.update(cuda_graphs=self.cuda_graphs)
        return settings

    def settings_tag(self) -> str:
        """The settings as a short string, appended to every cell key of a LUT (e.g. `b1 fp32 ort-t1-all`)."""
        if self.backend in ORT_BACKENDS:
            prefix = "ort" if self.backend == "onnxruntime" else "ortcuda"
            backend = f"{prefix}-t{self.threads}-{self.optimization_level}"
        else:
            backend = "trt-graphs" if self.cuda_graphs else "trt"
        return f"b{self.batch} {self.precision} {backend}"

    def to_json(self) -> dict:
        data = asdict(self)
        data["branches"] = list(self.branches)
        return data


_TIMING_KEYS = {f for f in TimingPolicy.__dataclass_fields__}
_TIMING_COUNTS = {"warmup_runs", "repeats", "max_remeasure"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # the LUT folder: lut/<name>/


class _Fields:
    """Typed reads of one TOML table: a missing key gives the default, a wrong type or range names the key."""

    def __init__(self, data, where: str, source: str):
        if not isinstance(data, dict):
            raise HwbcnetError(f"{source}: [{where}] must be a table")
        self.data, self.where, self.source = data, where, source

    def fail(self, key: str, expected: str):
        prefix = f"{self.where}." if self.where else ""
        raise HwbcnetError(f"{self.source}: {prefix}{key} = {self.data[key]!r}: expected {expected}")

    def table(self, key: str) -> "_Fields":
        return _Fields(self.data.get(key, {}), f"{self.where}.{key}" if self.where else key, self.source)

    def integer(self, key: str, default, minimum: int):
        value = self.data.get(key, default)
        if key in self.data and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            self.fail(key, f"an integer >= {minimum}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value < math.inf:
            self.fail(key, f"a finite number >= {minimum}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "true or false")
        return value

    def text(self, key: str, default, choices=None):
        value = self.data.get(key, default)
        if key in self.data and (not isinstance(value, str) or (choices and value not in choices)):
            self.fail(key, f"one of {', '.join(choices)}" if choices else "a string")
        return value


def _timing(fields: _Fields, default: TimingPolicy) -> TimingPolicy:
    unknown = set(fields.data) - _TIMING_KEYS
    if unknown:
        raise HwbcnetError(f"{fields.source} [{fields.where}]: unknown keys {sorted(unknown)}; "
                           f"allowed: {sorted(_TIMING_KEYS)}")
    values = asdict(default)
    for key in fields.data:
        values[key] = fields.integer(key, None, 0) if key in _TIMING_COUNTS else fields.number(key, 0.0)
    return TimingPolicy(**values)


def _parse(data: dict, source: str) -> Profile:
    missing = [key for key in ("name", "backend", "precision", "batch") if key not in data]
    if missing:
        raise HwbcnetError(f"{source}: device profile is missing {', '.join(missing)}")
    top = _Fields(data, "", source)
    if not isinstance(data["name"], str) or not _NAME.fullmatch(data["name"]):
        top.fail("name", "a name of letters, digits, '.', '_' and '-' (it names the LUT folder)")
    if data["backend"] not in BACKENDS:
        raise HwbcnetError(f"{source}: backend {data['backend']!r} is not one of {', '.join(BACKENDS)}")
    if data["precision"] not in PRECISIONS:
        raise HwbcnetError(f"{source}: precision {data['precision']!r} is not one of {', '.join(PRECISIONS)}")
    ort, trt, jetson, timing = (top.table(key) for key in ("onnxruntime", "tensorrt", "jetson", "timing"))
    level = ort.text("optimization_level", "all", ORT_LEVELS)
    branches = timing.data.get("branches", [1, 4])
    if not isinstance(branches, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in branches):
        timing.fail("branches", "a list of integers such as [1, 4]")
    if len(set(branches)) < 2 or min(branches) < 1:
        raise HwbcnetError(f"{source}: timing.branches {list(branches)} needs at least two distinct counts >= 1")
    divisor = data.get("channel_divisor", 1)
    if divisor == "auto":
        from hwbcnet.hardware.backends.onnxruntime import nchwc_block_size

        divisor = nchwc_block_size()
    if isinstance(divisor, bool) or not isinstance(divisor, int) or not 1 <= divisor <= 1024:
        top.fail("channel_divisor", "a whole number from 1 (any width) to 1024, or \"auto\"")
    base = Profile(name="", description="", backend="onnxruntime", precision="fp32", batch=1, threads=1)
    return Profile(
        name=data["name"],
        description=top.text("description", ""),
        backend=data["backend"],
        precision=data["precision"],
        batch=top.integer("batch", 1, 1),
        threads=top.integer("threads", 1, 1),
        resolution=top.integer("resolution", None, 8),
        optimization_level=level,
        allow_spinning=ort.flag("allow_spinning", True),
        cuda_graphs=trt.flag("cuda_graphs", False),
        workspace_mb=trt.integer("workspace_mb", 1024, 1),
        min_sample_ms=trt.number("min_sample_ms", 0.05),
        power_mode=jetson.text("power_mode", None),
        locked_clocks=jetson.flag("locked_clocks", False),
        channel_divisor=divisor,
        passes=timing.integer("passes", 2, 1),
        branches=tuple(sorted(set(branches))),
        cell_timing=_timing(timing.table("cell"), base.cell_timing),
        model_timing=_timing(timing.table("model"), base.model_timing),
        source=source,
    )


def _shipped() -> dict[str, Path]:
    folder = resources.files("hwbcnet") / "resources" / "profiles"
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml")}


# Profiles that once shipped, and why they no longer do.
RETIRED = {"jetson-xavier-nx": XAVIER_UNSUPPORTED}


def list_profiles() -> list[Profile]:
    """The shipped profiles, sorted by name."""
    return [_load_file(path) for _, path in sorted(_shipped().items())]


def jetson_profile_names() -> list[str]:
    return sorted(name for name in _shipped() if name.startswith("jetson-"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (`cpu`), this machine's own (`jetson`, `gpu`) or a user's TOML file by path
    (`boards/my.toml`)."""
    text = str(name_or_path)
    shipped = _shipped()
    if text in MACHINE_ALIASES:
        return resolve_machine_profile(text)
    if text in RETIRED:
        raise HwbcnetError(RETIRED[text])
    if text in shipped:
        return _load_file(shipped[text])
    try:
        is_file = Path(text).is_file()
    except (OSError, ValueError):  # a name too long or with a NUL byte is no file either
        is_file = False
    if not is_file:
        quoted = repr(text) if len(repr(text)) <= 80 else f"{repr(text)[:60]}... ({len(text)} characters)"
        what = f"device profile {quoted}: file not found" if text.endswith(".toml") else f"unknown device {quoted}"
        raise HwbcnetError(f"{what}; known devices: {', '.join(sorted(shipped))}, or {' / '.join(MACHINE_ALIASES)} for "
                           "this machine's own (or pass the path of your own .toml)")
    return _load_file(Path(text))


def resolve_machine_profile(alias: str) -> Profile:
    """`jetson` and `gpu`: on a Jetson, the shipped profile of its module (read from the device tree, or from
    /sys/devices/soc0 inside containers); elsewhere `gpu` is the discrete-GPU profile and `jetson` an error that
    lists the Jetson profiles (pass one by name to use a Jetson's LUT on another machine)."""
    jetson = detect_jetson()
    if jetson is None:
        if alias == "gpu":
            return _load_file(_shipped()["gpu"])
        raise HwbcnetError("device 'jetson': this machine is not a Jetson (no Jetson in /proc/device-tree/model, "
                           "/sys/devices/soc0 or /etc/nv_tegra_release); to use a Jetson's LUT here pass its profile "
                           f"by name: {', '.join(jetson_profile_names())}")
    name = jetson_profile_name(jetson, jetson_profile_names())
    return replace(_load_file(_shipped()[name]), resolved_from=alias)


def _load_file(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HwbcnetError(f"device profile {path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise HwbcnetError(f"device profile {path}: cannot be read ({exc.strerror})") from None
    try:
        return _parse(data, str(path))
    except (TypeError, ValueError) as exc:
        raise HwbcnetError(f"device profile {path}: bad value ({exc})") from None
