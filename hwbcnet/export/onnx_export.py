"""ONNX export of a pruned subnet, checked against PyTorch before the file is written.

The conversion is hwbcnet.supernet.onnx.torch_to_onnx, the one the LUT calibration uses, so the graph that is
verified is the graph that was calibrated.

Metadata (ModelProto.metadata_props, every value JSON-encoded, keys prefixed `hwbcnet.`): schema_version, version,
model, arch_code, arch (widths and channels per variable), space (build_space arguments), space_fingerprint,
flops, params, plus whatever the caller passes (device, predicted_latency_ms, source, accuracy, ...).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import atomic_write_bytes, file_sha256
from hwbcnet.supernet.onnx import IN_CHANNELS, INPUT_NAME, MIN_OPSET, OUTPUT_NAME, torch_to_onnx

FP32_TOLERANCE = 1e-4
COMPARE_IMAGES = 16
METADATA_PREFIX = "hwbcnet."
METADATA_SCHEMA_VERSION = 1
DIGITS_CLASSES = 10


@dataclass
class ExportReport:
    path: Path
    sha256: str
    opset: int
    input_shape: list  # "batch" marks the dynamic axis
    output_shape: list
    dynamic_batch: bool
    max_abs_diff: float  # ONNX Runtime vs PyTorch logits
    compared_images: int
    compared_on: str  # which images the comparison ran on
    metadata: dict = field(default_factory=dict)  # decoded hwbcnet metadata, as read_export_metadata returns it

    def to_json(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def export_onnx(model, space, arch, path, *, dynamic_batch: bool = False, opset: int = MIN_OPSET,
                metadata: dict | None = None, batch: int = 1) -> ExportReport:
    """Export the physically pruned `model` (e.g. from build_standalone or load_subnet) of `arch` to `path`.

    The ONNX graph is checked (onnx.checker, conv/linear weights with exactly the arch's channel counts) and run in
    ONNX Runtime against PyTorch; the file is written only if the largest logit difference is below 1e-4.
    `batch`: the fixed batch size, or the example batch when `dynamic_batch`. `metadata`: extra entries to record,
    e.g. {"device": "cpu", "predicted_latency_ms": 1.9}."""
    arch = space.validate(arch)
    if opset < MIN_OPSET:
        raise HwbcnetError(f"opset {opset}: hwbcnet exports opset {MIN_OPSET} or newer (TensorRT 10 and INT8 Q/DQ "
                           "need it)")
    if batch < 1:
        raise HwbcnetError(f"batch {batch}: must be at least 1")
    model = model.eval()
    onnx_model = torch_to_onnx(model, space.resolution, batch, dynamic_batch, opset)
    _check_channels(onnx_model, space, arch)
    for key, value in export_metadata(space, arch, metadata or {}).items():
        onnx_model.metadata_props.add(key=key, value=value)
    onnx_model.producer_name = "hwbcnet"
    onnx.checker.check_model(onnx_model, full_check=True)
    max_diff, images, compared_on = compare_with_torch(model, onnx_model, space, batch, dynamic_batch)
    if not max_diff < FP32_TOLERANCE:
        raise HwbcnetError(f"the ONNX model's logits differ from PyTorch's by up to {max_diff:.3g} (limit "
                           f"{FP32_TOLERANCE:g}); the export is wrong, {path} was not written; please report it")
    path = atomic_write_bytes(path, onnx_model.SerializeToString())
    return ExportReport(path=path, sha256=file_sha256(path), opset=opset, input_shape=_shape(onnx_model.graph.input[0]),
                        output_shape=_shape(onnx_model.graph.output[0]), dynamic_batch=dynamic_batch,
                        max_abs_diff=max_diff, compared_images=images, compared_on=compared_on,
                        metadata=read_export_metadata(onnx_model))


def expected_weight_channels(space, arch) -> dict[str, tuple[int, int]]:
    """(output, input per group) channels of every conv/linear weight of `arch`, by module name."""
    channels = space.arch_channels(space.validate(arch))[0]
    return {name: space.traced.params[f"{name}.weight"].shape_at(channels)[:2]
            for name, spec in space.traced.modules.items() if spec.kind in ("conv", "linear")}


def onnx_initializer_channels(onnx_model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Weight shapes of the Conv and Gemm nodes, keyed by module name (the initializer name without `.weight`)."""
    shapes = {init.name: tuple(int(d) for d in init.dims) for init in onnx_model.graph.initializer}
    weights = {}
    for node in onnx_model.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in shapes:
            weights[node.input[1].removesuffix(".weight")] = shapes[node.input[1]]
    return weights


def _check_channels(onnx_model: onnx.ModelProto, space, arch) -> None:
    found = onnx_initializer_channels(onnx_model)
    wrong = [f"{name}: {found.get(name, ('missing',))[:2]} instead of {want}"
             for name, want in expected_weight_channels(space, arch).items() if found.get(name, ())[:2] != want]
    if wrong:
        raise HwbcnetError(f"the model's weights do not have the channel counts of arch {space.format_arch(arch)} "
                           f"({'; '.join(wrong[:3])}); export the model that was built for this arch")


def export_metadata(space, arch, extra: dict) -> dict[str, str]:
    """The metadata_props entries (prefixed keys, JSON values) that describe an exported arch."""
    from hwbcnet import __version__
    from hwbcnet.costs.flops import flops_cost, params_cost

    described = space.arch_to_json(arch)
    entries = {
        "schema_version": METADATA_SCHEMA_VERSION,
        "version": __version__,
        "model": space.model,
        "arch_code": described["code"],
        "arch": described,
        "space": space.describe(),
        "space_fingerprint": space.fingerprint(),
        "flops": int(round(float(flops_cost(space)(arch[None])[0]))),
        "params": int(round(float(params_cost(space)(arch[None])[0]))),
    }
    clashes = sorted(set(extra) & set(entries))
    if clashes:
        raise HwbcnetError(f"export metadata keys {clashes} are set by hwbcnet itself; rename them")
    entries.update({key: value for key, value in extra.items() if value is not None})
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in entries.items()}


def read_export_metadata(onnx_model: onnx.ModelProto | str | Path) -> dict:
    """The hwbcnet metadata of an exported model, decoded (empty for an ONNX file hwbcnet did not write)."""
    if not isinstance(onnx_model, onnx.ModelProto):
        onnx_model = load_onnx(onnx_model, load_external_data=False)
    entries = {prop.key[len(METADATA_PREFIX):]: prop.value for prop in onnx_model.metadata_props
               if prop.key.startswith(METADATA_PREFIX)}
    if not entries:
        return {}
    try:
        decoded = {key: json.loads(value) for key, value in entries.items()}
    except json.JSONDecodeError:
        raise HwbcnetError("the ONNX file's hwbcnet metadata is not valid JSON; re-export the model") from None
    if decoded.get("schema_version") != METADATA_SCHEMA_VERSION:
        raise HwbcnetError(f"the ONNX file's hwbcnet metadata has schema version {decoded.get('schema_version')!r}; "
                           f"this hwbcnet reads version {METADATA_SCHEMA_VERSION}: re-export the model")
    return decoded


def load_onnx(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise HwbcnetError(f"{path}: ONNX file not found; create it with `hwbcnet export --onnx {path}`")
    try:
        return onnx.load(path, load_external_data=load_external_data)
    except Exception as exc:  # protobuf raises DecodeError, onnx its own types
        raise HwbcnetError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None


def comparison_images(space, count: int) -> tuple[np.ndarray, str]:
    """`count` real images (the digits test split) when the model classifies digits, otherwise seeded N(0, 1)
    noise; float32 (count, 3, R, R)."""
    if space.num_classes == DIGITS_CLASSES:
        from hwbcnet.data import load_data

        test = load_data("digits", space.resolution).test
        images = np.stack([test[i % len(test)][0].numpy() for i in range(count)]).astype(np.float32)
        return images, "digits test split"
    rng = np.random.default_rng(0)
    shape = (count, IN_CHANNELS, space.resolution, space.resolution)
    return rng.standard_normal(shape).astype(np.float32), "random N(0, 1) images"


def compare_with_torch(model, onnx_model: onnx.ModelProto, space, batch: int,
                       dynamic_batch: bool) -> tuple[float, int, str]:
    """(max |logits difference|, images compared, which images) of ONNX Runtime (CPU, all graph optimisations, as
    deployed) against the PyTorch model. A fixed-batch model runs in chunks of its batch size."""
    import onnxruntime as ort
    import torch

    chunk = COMPARE_IMAGES if dynamic_batch else batch
    count = -(-COMPARE_IMAGES // chunk) * chunk
    images, compared_on = comparison_images(space, count)
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + chunk]})[0]
                              for i in range(0, count, chunk)])
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    return float(np.abs(outputs - reference).max()), count, compared_on


def _shape(value: onnx.ValueInfoProto) -> list:
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]


# ---------------------------------------------------------------------------------------------------- sources


@dataclass
class ExportSource:
    """A model ready to export: the pruned model, its space and arch, and what to record about where it came from."""

    model: object
    space: object
    arch: np.ndarray
    metadata: dict


def default_onnx_path(source_path: str | Path) -> Path:
    """Where `hwbcnet export` writes the ONNX of a search result or subnet without --onnx: next to it, same name
    (runs/r20/search.json -> runs/r20/search.onnx), so the exports of several sources in one folder stay apart."""
    return Path(source_path).with_suffix(".onnx")


def load_export_source(path: str | Path) -> ExportSource:
    """A search result (search.json: the chosen arch is extracted from its supernet exactly as `hwbcnet extract`
    does, without writing a subnet file) or an extracted/fine-tuned subnet (subnet.pt)."""
    import tempfile

    from hwbcnet.search.extract import extract_subnet, load_subnet

    path = Path(path)
    if not path.is_file():
        raise HwbcnetError(f"{path}: not found; pass a search result (DIR/search.json) or a subnet (DIR/subnet.pt)")
    if path.suffix == ".json":
        with tempfile.TemporaryDirectory(prefix="hwbcnet-export-") as folder:
            extract_subnet(path, Path(folder) / "subnet.pt")
            model, space, arch, payload = load_subnet(Path(folder) / "subnet.pt")
    else:
        model, space, arch, payload = load_subnet(path)
    costs = payload.get("costs") or {}
    metadata = {"source": str(path), "source_sha256": file_sha256(path), "supernet_path": payload.get("path"),
                "data": payload.get("data"), "accuracy": payload.get("accuracy"), "device": payload.get("device"),
                "predicted_latency_ms": costs.get("latency_ms")}
    return ExportSource(model, space, arch, {key: value for key, value in metadata.items() if value is not None})
