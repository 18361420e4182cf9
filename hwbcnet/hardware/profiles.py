"""Device profiles: how latency is measured on one target (backend, precision, batch, threads, timing policy).

A profile is a TOML file. The shipped ones live in `hwbcnet/resources/profiles/` (copies of `profiles/` in the
repository); `load_profile` takes either such a name (`cpu`, `gpu`, `jetson-orin-nano`, ...) or the path of a
user's own `.toml` written in the same format:

    name = "my-board"            # also the LUT folder: lut/<name>/...
    description = "..."
    backend = "onnxruntime"      # or "tensorrt"
    precision = "fp32"           # fp32 | fp16
    batch = 1
    threads = 1                  # ONNX Runtime intra-op threads
    resolution = 224             # optional: overrides the model's input resolution
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
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from hwbcnet.errors import HwbcnetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib

BACKENDS = ("onnxruntime", "tensorrt")
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
    source: str = ""

    def settings(self) -> dict:
        """What a measured number depends on; a LUT is only valid under identical settings."""
        settings = {"backend": self.backend, "precision": self.precision, "batch": self.batch}
        if self.backend == "onnxruntime":
            settings.update(threads=self.threads, optimization_level=self.optimization_level)
        else:
            settings.update(cuda_graphs=self.cuda_graphs)
        return settings

    def settings_tag(self) -> str:
        """The settings as a short string, appended to every cell key of a LUT (e.g. `b1 fp32 ort-t1-all`)."""
        if self.backend == "onnxruntime":
            backend = f"ort-t{self.threads}-{self.optimization_level}"
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
        passes=timing.integer("passes", 2, 1),
        branches=tuple(sorted(set(branches))),
        cell_timing=_timing(timing.table("cell"), base.cell_timing),
        model_timing=_timing(timing.table("model"), base.model_timing),
        source=source,
    )


def _shipped() -> dict[str, Path]:
    folder = resources.files("hwbcnet") / "resources" / "profiles"
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml")}


def list_profiles() -> list[Profile]:
    """The shipped profiles, sorted by name."""
    return [load_profile(name) for name in sorted(_shipped())]


def profile_file(name_or_path: str | Path) -> Path:
    """The TOML file of a shipped profile name (`cpu`) or of a user's profile path; a ValueError says what is
    accepted otherwise."""
    text = str(name_or_path)
    shipped = _shipped()
    if text in shipped:
        return shipped[text]
    try:
        is_file = Path(text).is_file()
    except (OSError, ValueError):  # a name too long or with a NUL byte is no file either
        is_file = False
    if not is_file:
        raise ValueError(f"{'no such file' if text.endswith('.toml') else 'unknown device'}; known devices: "
                         f"{', '.join(sorted(shipped))}, or the path of your own .toml profile")
    return Path(text)


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (`cpu`) or a user's TOML file by path (`boards/my.toml`)."""
    try:
        path = profile_file(name_or_path)
    except ValueError as exc:
        raise HwbcnetError(f"device {str(name_or_path)!r}: {exc}") from None
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
