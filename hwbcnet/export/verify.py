"""`hwbcnet verify`: time an exported model end to end on a device and hold it against the LUT's prediction and a
latency budget.

The model is timed exactly as LUT calibration times whole subnets: the device profile's backend, settings and
model timing policy (hardware/profiler.measure_model); for a TensorRT profile, or any fp16 one, the ONNX is first
put in the profile's precision and batch (export/tensorrt_export.prepare_onnx) and built with the shared engine
builder. A TensorRT engine file is timed as it is (no rebuild), after checking that it was built with this
TensorRT for this GPU. The prediction comes from the arch and space recorded in the ONNX metadata (for an engine:
its `<engine>.json`) and the device's LUT (calibrated T = a + b * sum of cells when the LUT has a calibration),
or, without a LUT or torch here, from the prediction recorded at export time for the same device.

The machine's load, sampled before timing, is held against the load the LUT recorded when it was calibrated: the
cores other processes keep busy (hwbcnet.hardware.machine.busy_cores) where the calibration recorded them, else
the 1-minute load average (also what a LUT without a calibration recorded when its cells were measured). When the
two differ by more than LOAD_TOLERANCE the measurement is not comparable with the prediction, and verify says so.

Load does not show everything that changes a device's speed: a shared VM's neighbours, a throttled CPU or Jetson. So
verify also re-times a few of the subnets the LUT's calibration was fitted on (those nearest the model's predicted
latency), interleaved with the model's own passes, and compares them with what the calibration measured. Their
median ratio is the device's speed now relative to then; off by more than SPEED_TOLERANCE, the measurement is
flagged as not comparable, with the model's latency scaled back to the calibrated speed beside it. On a 2-core VM
whose speed moved 25 % within a minute, this is what tells a model that missed its budget from a device that was
slower for a while (docs/benchmarks.md, "Budget hit after export").
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

from hwbcnet.budgets import parse_budget
from hwbcnet.errors import HwbcnetError
from hwbcnet.export.onnx_export import load_onnx, read_export_metadata
from hwbcnet.export.tensorrt_export import fixed_batch, is_engine, prepare_onnx, read_engine

LOAD_TOLERANCE = 0.5  # busy cores (or runnable tasks): half a core of other work
# The median of interleaved rounds repeats within ~1-5 % on a quiet 1-thread CPU: a larger shift is the device's.
SPEED_TOLERANCE = 0.05
SPEED_REFERENCES = 3  # calibration subnets re-timed with the model


def verify(model_path: str | Path, profile, *, budget_ms: float | str | None = None,
           lut_path: str | Path | None = None, strict: bool = False, repeats: int = 3,
           speed_check: int = SPEED_REFERENCES, backend=None) -> dict:
    """Measure the model at `model_path` (an exported ONNX file or a TensorRT engine) on device `profile` (a
    Profile or a profile name/path).

    `budget_ms`: milliseconds, or a time string such as "10ms". `repeats`: timing passes; the result is the pass
    with the median median, since one pass on a shared machine can be 10 % off (docs/benchmarks.md, "Budget hit
    after export"). `speed_check`: calibration subnets of the LUT re-timed between the passes (0: none). Returns
    measured_ms (median), rounds_ms (each pass's median), p10_ms, p90_ms, predicted_ms (None when no prediction is
    possible; `predicted_note` says where it came from or why not), error_pct = 100 (predicted - measured) /
    measured, budget_ms, within_budget (None without a budget), `failed`: True when `strict` and the measurement is
    over budget (the CLI exits 1 then), the load check (compare_load) and the speed check (device_speed)."""
    from hwbcnet.hardware.backends import get_backend
    from hwbcnet.hardware.machine import machine_conditions
    from hwbcnet.hardware.profiler import measure_model
    from hwbcnet.hardware.profiles import Profile, load_profile

    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    budget = _budget_ms(budget_ms)
    model_path = Path(model_path)
    load_now = machine_conditions()  # before timing: our own work must not count as load
    engine = is_engine(model_path)
    if engine:
        if profile.backend != "tensorrt":
            raise HwbcnetError(f"{model_path} is a TensorRT engine but device {profile.name} runs on "
                               f"{profile.backend}; pass a tensorrt device (e.g. --device gpu or --device jetson)")
        plan, sidecar = read_engine(model_path)
        backend = backend or get_backend(profile.backend)
        environment = backend.environment(profile)
        mismatch = _engine_mismatch(model_path, sidecar, profile, environment)
        metadata = (sidecar or {}).get("metadata") or {}
        lut_file = _lut_file(metadata, profile, lut_path)
        predicted, note = (None, mismatch) if mismatch else predict_latency(metadata, profile, lut_path)
        references, speed_note = [], "an engine is timed as it is; the speed check re-times ONNX subnets"
        measures = [lambda: backend.measure_plan(plan, profile, profile.model_timing)]
    else:
        model = load_onnx(model_path)
        metadata = read_export_metadata(model)
        if profile.backend == "tensorrt" or profile.precision != "fp32":
            model = prepare_onnx(model, profile.precision, batch=profile.batch)
        elif fixed_batch(model) not in (None, profile.batch):
            raise HwbcnetError(f"{model_path} has a fixed batch of {fixed_batch(model)} but device {profile.name} "
                               f"times batch {profile.batch}; export with --batch {profile.batch} or --dynamic-batch")
        backend = backend or get_backend(profile.backend)
        environment = backend.environment(profile)
        serialized = model.SerializeToString()
        lut_file = _lut_file(metadata, profile, lut_path)
        predicted, note = predict_latency(metadata, profile, lut_path)
        references, speed_note = speed_references(metadata, profile, lut_file, predicted, speed_check)
        measures = [lambda onnx_bytes=onnx_bytes: measure_model(onnx_bytes, profile, backend)
                    for onnx_bytes in [serialized] + [reference["onnx"] for reference in references]]
    passes = _interleaved_passes(measures, repeats)
    stats, rounds_ms = _median_pass(passes[0])
    load = compare_load(load_now, lut_file)
    speed = device_speed(references, passes[1:], stats.median, speed_note)
    within = None if budget is None else stats.median <= budget
    return {
        "model_path": str(model_path),
        "model_kind": "engine" if engine else "onnx",
        "model": metadata.get("model"),
        "arch_code": metadata.get("arch_code"),
        "device": profile.name,
        "device_name": environment.get("device"),
        "settings": profile.settings(),
        "measured_ms": stats.median,
        "rounds_ms": rounds_ms,
        "p10_ms": stats.p10,
        "p90_ms": stats.p90,
        "iqr_rel": stats.iqr_rel,
        "samples": stats.n,
        "stable": stats.stable,
        "predicted_ms": predicted,
        "predicted_note": note,
        "error_pct": None if predicted is None else 100.0 * (predicted - stats.median) / stats.median,
        "budget_ms": budget,
        "within_budget": within,
        "strict": strict,
        "failed": bool(strict and within is False),
        **load,
        **speed,
    }


def _interleaved_passes(measures: list, repeats: int) -> list[list]:
    """`repeats` timing passes of each of `measures` (callables returning TimingStats), interleaved: every round
    runs each once, in a shuffled order, so that a slow spell of the machine is shared rather than landing on one
    model. Returns each callable's passes."""
    if repeats < 1:
        raise HwbcnetError(f"--repeats {repeats}: must be at least 1")
    order, passes = list(range(len(measures))), [[] for _ in measures]
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for index in order:
            passes[index].append(measures[index]())
    return passes


def _median_pass(passes: list):
    """The pass with the median median, and every pass's median (sorted)."""
    passes = sorted(passes, key=lambda stats: stats.median)
    return passes[(len(passes) - 1) // 2], [stats.median for stats in passes]


def speed_references(metadata: dict, profile, lut_file: Path | None, predicted_ms: float | None,
                     count: int) -> tuple[list, str]:
    """Up to `count` subnets from the points `lut_file`'s calibration was fitted on, nearest the model's
    predicted latency and other than the model itself, as [{arch, calibrated_ms, onnx}], and a note saying which,
    or why there are none."""
    if count <= 0:
        return [], "off"
    if profile.backend == "tensorrt":
        return [], ("not run on TensorRT (each re-timed subnet would be an engine build): lock the clocks before "
                    "timing (nvidia-smi -lgc, or jetson_clocks on a Jetson)")
    if predicted_ms is None or lut_file is None or not lut_file.is_file():
        return [], "no LUT calibration to compare the device's speed with"
    try:  # rebuilding the calibration subnets needs torch
        from hwbcnet.costs.calibration import subnet_onnx
        from hwbcnet.hardware.lut import Lut
        from hwbcnet.space import space_from_description
    except ImportError:
        return [], "torch is not installed here to rebuild the LUT's calibration subnets"
    try:
        space = space_from_description(metadata["space"])
    except HwbcnetError as exc:
        return [], f"the model's width space cannot be rebuilt here: {exc}"
    own_arch = space.format_arch(space.arch_from_json(metadata["arch"]))
    calibration = Lut.load(lut_file, space=space, profile=profile).calibration or {}
    points = [point for point in calibration.get("fitted_on") or [] if point["arch"] != own_arch]
    if not points:
        return [], f"{lut_file} has no calibration to compare the device's speed with (`hwbcnet lut calibrate`)"
    nearest = sorted(points, key=lambda point: abs(math.log(point["measured_ms"] / predicted_ms)))[:count]
    references = [{"arch": point["arch"], "calibrated_ms": float(point["measured_ms"]),
                   "onnx": subnet_onnx(space, profile, space.parse_arch(point["arch"]))} for point in nearest]
    return references, f"{len(references)} calibration subnet(s) of {lut_file}"


def device_speed(references: list, reference_passes: list, measured_ms: float, note: str) -> dict:
    """{speed_ratio, speed_comparable, speed_warning, speed_note, speed_references, measured_at_calibrated_speed_ms}:
    the re-timed calibration subnets' median ratio now / at calibration, i.e. how much slower (> 1) or faster the
    device runs than when the LUT was calibrated, and the model's latency divided by it."""
    rows = [{"arch": reference["arch"], "calibrated_ms": reference["calibrated_ms"],
             "now_ms": statistics.median(stats.median for stats in passes)}
            for reference, passes in zip(references, reference_passes)]
    result = {"speed_ratio": None, "speed_comparable": None, "speed_warning": None, "speed_note": note,
              "speed_references": rows, "measured_at_calibrated_speed_ms": None}
    if not rows:
        return result
    ratio = statistics.median(row["now_ms"] / row["calibrated_ms"] for row in rows)
    comparable = abs(ratio - 1.0) <= SPEED_TOLERANCE
    result.update(speed_ratio=ratio, speed_comparable=comparable, measured_at_calibrated_speed_ms=measured_ms / ratio)
    if not comparable:
        pairs = ", ".join(f"{row['calibrated_ms']:.3f} -> {row['now_ms']:.3f}" for row in rows)
        result["speed_warning"] = (
            f"the device runs {100 * abs(ratio - 1):.0f} % {'slower' if ratio > 1 else 'faster'} than when its LUT "
            f"was calibrated ({len(rows)} calibration subnet(s) re-timed with the model: {pairs} ms): this "
            f"measurement is not comparable with the prediction (at the calibrated speed the model would take "
            f"{measured_ms / ratio:.3f} ms); verify again once the device is back at that speed, or recalibrate "
            "(`hwbcnet lut calibrate`) if this is its speed from now on")
    return result


def _lut_file(metadata: dict, profile, lut_path) -> Path | None:
    """The LUT the prediction comes from, for its recorded load; None where it cannot be named (no metadata, or no
    torch here to name the model's source)."""
    import json

    from hwbcnet.hardware.lut import lut_path as default_lut_path

    if lut_path:
        return Path(lut_path)
    space = metadata.get("space") if metadata else None
    if not space:
        return None
    try:
        from hwbcnet.space.models.sources import ModelSource
    except ImportError:
        return None
    slug = ModelSource(space["model"], json.dumps(space.get("model_kwargs") or {}, sort_keys=True)).slug
    return default_lut_path(profile.name, slug, space["resolution"], profile.batch)


def compare_load(now: dict, lut_file: Path | None) -> dict:
    """{load_now, load_lut, load_comparable, load_warning}: the machine's load now (machine_conditions) against the
    load recorded in the LUT, at its calibration if it has one, else when its cells were measured."""
    import json

    recorded, when = {}, None
    if lut_file is not None and Path(lut_file).is_file():
        try:
            data = json.loads(Path(lut_file).read_text())
        except (OSError, ValueError):
            data = {}
        provenance = (data.get("calibration") or {}).get("provenance") or {}
        recorded = {key: provenance[key] for key in ("load_average", "busy_cores") if provenance.get(key) is not None}
        when = "calibrated"
        if not recorded:
            recorded = {"load_average": ((data.get("provenance") or {}).get("clock_state") or {}).get("load_average")}
            when = "profiled"
    result = {"load_now": now, "load_lut": recorded or None, "load_comparable": None, "load_warning": None}
    if now.get("busy_cores") is not None and recorded.get("busy_cores") is not None:
        then_value, now_value, what = recorded["busy_cores"], now["busy_cores"], "cores busy with other work"
    elif now.get("load_average") and recorded.get("load_average"):
        then_value, now_value, what = recorded["load_average"][0], now["load_average"][0], "1-minute load average"
    else:
        return result
    comparable = abs(now_value - then_value) <= LOAD_TOLERANCE
    result["load_comparable"] = comparable
    if not comparable:
        busier = "busier" if now_value > then_value else "quieter"
        result["load_warning"] = (f"the machine is {busier} than when the LUT was {when} ({what}: {now_value:.2f} "
                                  f"now, {then_value:.2f} then): this measurement is not comparable with the "
                                  "prediction; verify again under the LUT's conditions, or recalibrate "
                                  "(`hwbcnet lut calibrate`) under these")
    return result


def _engine_mismatch(path: Path, sidecar: dict | None, profile, environment: dict) -> str | None:
    """Refuse an engine built with another TensorRT or for another GPU (it would not deserialize); say why the LUT
    prediction does not apply when the engine's precision or batch differ from the device profile's."""
    if sidecar is None:
        return f"{path} has no {path.name}.json (not built by hwbcnet): nothing to predict from"
    here = (environment.get("runtime_versions", {}).get("tensorrt"), environment.get("compute_capability"))
    built = (sidecar.get("tensorrt_version"), sidecar.get("compute_capability"))
    if here != built:
        raise HwbcnetError(
            f"{path} was built with TensorRT {built[0]} for {sidecar.get('gpu')} (compute {built[1]}), but this "
            f"machine has TensorRT {here[0]} and {environment.get('device')} (compute {here[1]}); rebuild it here: "
            f"hwbcnet export --from-onnx {sidecar.get('onnx', {}).get('path', '<model.onnx>')} --trt --device "
            f"{profile.name}")
    if (sidecar.get("precision"), sidecar.get("batch")) != (profile.precision, profile.batch):
        return (f"the engine is {sidecar.get('precision')} at batch {sidecar.get('batch')}, device {profile.name}'s "
                f"LUT is {profile.precision} at batch {profile.batch}: no comparable prediction")
    return None


def _budget_ms(budget: float | str | None) -> float | None:
    if budget is None:
        return None
    if isinstance(budget, str):
        parsed = parse_budget("latency", budget, option="--budget")
        if parsed.value is None:
            raise HwbcnetError(f"--budget {budget!r}: verify needs an absolute time such as 10ms, not a percentage")
        return parsed.value
    if not 0 < budget < math.inf:
        raise HwbcnetError(f"--budget {budget}: the budget must be positive and finite")
    return float(budget)


def predict_latency(metadata: dict, profile, lut_path: str | Path | None = None) -> tuple[float | None, str]:
    """(LUT-predicted latency in ms or None, where it came from or why there is none)."""
    from hwbcnet.hardware.lut import Lut
    from hwbcnet.hardware.lut import lut_path as default_lut_path

    if not metadata:
        return None, "the model has no hwbcnet metadata (export it with `hwbcnet export`)"
    recorded = (float(metadata["predicted_latency_ms"]) if metadata.get("device") == profile.name
                and metadata.get("predicted_latency_ms") is not None else None)
    try:  # the space and the predictor over its layers need torch
        from hwbcnet.costs.latency import LatencyCost
        from hwbcnet.space import space_from_description
    except ImportError:  # a deployment machine without torch cannot rebuild the width space
        if recorded is not None:
            return recorded, "recorded at export time (torch is not installed here to read the LUT)"
        return None, "torch is not installed here, and the model records no prediction for this device"
    try:
        space = space_from_description(metadata["space"])
    except HwbcnetError as exc:  # e.g. a timm model on a board without timm
        if recorded is not None:
            return recorded, f"recorded at export time (the model cannot be rebuilt here: {exc})"
        raise
    if space.fingerprint() != metadata.get("space_fingerprint"):
        return None, f"the {space.model} definition changed since this model was exported; re-export it"
    arch = space.arch_from_json(metadata["arch"])
    path = Path(lut_path) if lut_path else default_lut_path(profile.name, space.slug, space.resolution, profile.batch)
    if path.is_file():
        cost = LatencyCost(space, Lut.load(path, space=space, profile=profile))
        kind = "calibrated" if cost.calibrated else "uncalibrated sum of cells"
        return float(cost(arch[None])[0]), f"LUT {path} ({kind})"
    if lut_path:
        raise HwbcnetError(f"{path}: LUT not found")
    if recorded is not None:
        return recorded, f"recorded at export time (no LUT at {path})"
    return None, (f"no LUT at {path}; build it with `hwbcnet profile --device {profile.name} --model {space.model}"
                  f" --resolution {space.resolution}`")
