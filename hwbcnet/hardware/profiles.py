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


def _timing(section: dict, where: str, default: TimingPolicy) -> TimingPolicy:
    unknown = set(section) - _TIMING_KEYS
    if unknown:
        raise HwbcnetError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_TIMING_KEYS)}")
    return TimingPolicy(**{**asdict(default), **section})


def _parse(data: dict, source: str) -> Profile:
    missing = [key for key in ("name", "backend", "precision", "batch") if key not in data]
    if missing:
        raise HwbcnetError(f"{source}: device profile is missing {', '.join(missing)}")
    if data["backend"] not in BACKENDS:
        raise HwbcnetError(f"{source}: backend {data['backend']!r} is not one of {', '.join(BACKENDS)}")
    if data["precision"] not in PRECISIONS:
        raise HwbcnetError(f"{source}: precision {data['precision']!r} is not one of {', '.join(PRECISIONS)}")
    ort = data.get("onnxruntime", {})
    trt = data.get("tensorrt", {})
    jetson = data.get("jetson", {})
    timing = data.get("timing", {})
    level = ort.get("optimization_level", "all")
    if level not in ORT_LEVELS:
        raise HwbcnetError(f"{source}: onnxruntime.optimization_level {level!r} is not one of {', '.join(ORT_LEVELS)}")
    branches = tuple(int(k) for k in timing.get("branches", (1, 4)))
    if len(set(branches)) < 2 or min(branches) < 1:
        raise HwbcnetError(f"{source}: timing.branches {list(branches)} needs at least two distinct counts >= 1")
    if data["batch"] < 1 or data.get("threads", 1) < 1 or timing.get("passes", 2) < 1:
        raise HwbcnetError(f"{source}: batch, threads and timing.passes must be >= 1")
    divisor = data.get("channel_divisor", 1)
    if divisor == "auto":
        from hwbcnet.hardware.backends.onnxruntime import nchwc_block_size

        divisor = nchwc_block_size()
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise HwbcnetError(f"{source}: channel_divisor = {divisor!r}: expected a whole number >= 1 (1: any width) "
                           "or \"auto\"")
    base = Profile(name="", description="", backend="onnxruntime", precision="fp32", batch=1, threads=1)
    return Profile(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        backend=data["backend"],
        precision=data["precision"],
        batch=int(data["batch"]),
        threads=int(data.get("threads", 1)),
        resolution=data.get("resolution"),
        optimization_level=level,
        allow_spinning=bool(ort.get("allow_spinning", True)),
        cuda_graphs=bool(trt.get("cuda_graphs", False)),
        workspace_mb=int(trt.get("workspace_mb", 1024)),
        min_sample_ms=float(trt.get("min_sample_ms", 0.05)),
        power_mode=jetson.get("power_mode"),
        locked_clocks=bool(jetson.get("locked_clocks", False)),
        channel_divisor=divisor,
        passes=int(timing.get("passes", 2)),
        branches=tuple(sorted(set(branches))),
        cell_timing=_timing(timing.get("cell", {}), f"{source} [timing.cell]", base.cell_timing),
        model_timing=_timing(timing.get("model", {}), f"{source} [timing.model]", base.model_timing),
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
    if text.endswith(".toml") or Path(text).exists():
        path = Path(text)
        if not path.is_file():
            raise HwbcnetError(f"device profile {path}: file not found")
        return _load_file(path)
    raise HwbcnetError(f"unknown device {text!r}; known devices: {', '.join(sorted(shipped))}, or "
                       f"{' / '.join(MACHINE_ALIASES)} for this machine's own (or pass the path of your own .toml)")


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
    try:
        return _parse(data, str(path))
    except (TypeError, ValueError) as exc:
        raise HwbcnetError(f"device profile {path}: bad value ({exc})") from None
