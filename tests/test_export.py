import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hwbcnet.costs.flops import flops_cost, params_cost
from hwbcnet.errors import HwbcnetError
from hwbcnet.export import onnx_export
from hwbcnet.export.onnx_export import (
    export_onnx,
    load_export_source,
    onnx_initializer_channels,
    read_export_metadata,
)
from hwbcnet.fileio import file_sha256
from hwbcnet.space import MODELS, build_space
from hwbcnet.supernet.extract import build_standalone

# Small enough to export every model in about a second each.
SPACE_ARGS = {"resnet50": {"resolution": 64, "width_mult": 0.25}}


def trained_like(space, arch, seed=0):
    """A standalone model whose BatchNorm layers are not the identity, so folding them is really tested."""
    torch.manual_seed(seed)
    model = build_standalone(space, arch)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def run_onnx(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": images})[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_every_model_has_the_arch_channels(name, tmp_path):
    space = build_space(name, **SPACE_ARGS.get(name, {}))
    arch = space.random_archs(np.random.default_rng(sorted(MODELS).index(name)), 1)[0]
    model = trained_like(space, arch)
    report = export_onnx(model, space, arch, tmp_path / "model.onnx",
                         metadata={"device": "cpu", "predicted_latency_ms": 1.25})

    assert report.max_abs_diff < 1e-4
    assert report.compared_on == "digits test split" and report.compared_images == 16
    assert report.sha256 == file_sha256(tmp_path / "model.onnx")
    onnx_model = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(onnx_model, full_check=True)
    assert onnx_model.opset_import[0].version == 17
    assert [v.name for v in onnx_model.graph.input] == ["input"]
    assert [v.name for v in onnx_model.graph.output] == ["logits"]
    assert report.input_shape == [1, 3, space.resolution, space.resolution] and report.output_shape == [1, 10]
    ops = {node.op_type for node in onnx_model.graph.node}
    assert not ops & {"BatchNormalization", "Identity"}  # folded into the convolutions, no shared initializers

    # Every conv/linear weight is physically pruned to the arch's channel counts.
    channels = space.arch_channels(arch)[0]
    weights = onnx_initializer_channels(onnx_model)
    parameterised = {n: spec for n, spec in space.traced.modules.items() if spec.kind in ("conv", "linear")}
    assert set(weights) == set(parameterised)
    for module_name, spec in parameterised.items():
        out_channels, in_channels = weights[module_name][:2]
        assert out_channels == spec.out_layout.size_at(channels), module_name
        if spec.group_width:
            assert in_channels == spec.group_width
        else:
            assert in_channels == spec.in_layout.size_at(channels), module_name

    metadata = read_export_metadata(onnx_model)
    assert metadata["arch_code"] == space.format_arch(arch)
    assert metadata["arch"] == space.arch_to_json(arch)
    assert metadata["space"] == space.describe() and metadata["space_fingerprint"] == space.fingerprint()
    assert metadata["flops"] == int(round(flops_cost(space)(arch[None])[0]))
    assert metadata["params"] == int(round(params_cost(space)(arch[None])[0]))
    assert metadata["device"] == "cpu" and metadata["predicted_latency_ms"] == 1.25
    assert report.metadata == metadata


def test_dynamic_batch_runs_batch_3(tmp_path):
    space = build_space("resnet20")
    arch = space.parse_arch("4,5,6,7,8,3,2,8,6,5,4,3")
    model = trained_like(space, arch)
    report = export_onnx(model, space, arch, tmp_path / "dyn.onnx", dynamic_batch=True)
    assert report.input_shape == ["batch", 3, 32, 32] and report.output_shape == ["batch", 10]
    images = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    logits = run_onnx(tmp_path / "dyn.onnx", images)
    assert logits.shape == (3, 10)
    assert np.abs(logits - expected).max() < 1e-4


def test_fixed_batch_and_random_inputs_for_other_classes(tmp_path):
    space = build_space("cbm-resnet", num_classes=7)
    arch = space.parse_arch("1234123")
    report = export_onnx(trained_like(space, arch), space, arch, tmp_path / "b3.onnx", batch=3)
    assert report.input_shape == [3, 3, 32, 32] and report.output_shape == [3, 7]
    assert report.compared_on == "random N(0, 1) images" and report.compared_images == 18  # 16 rounded up to 3s


def test_model_of_another_arch_is_refused(tmp_path):
    space = build_space("cbm-resnet")
    model = trained_like(space, space.parse_arch("2222222"))
    with pytest.raises(HwbcnetError, match="channel counts of arch 1111111"):
        export_onnx(model, space, space.parse_arch("1111111"), tmp_path / "wrong.onnx")
    assert not (tmp_path / "wrong.onnx").exists()


def test_mismatch_with_pytorch_writes_nothing(tmp_path, monkeypatch):
    space = build_space("cbm-resnet")
    arch = space.parse_arch("2222222")
    monkeypatch.setattr(onnx_export, "compare_with_torch", lambda *args: (2e-4, 16, "digits test split"))
    with pytest.raises(HwbcnetError, match="differ from PyTorch's by up to 0.0002"):
        export_onnx(trained_like(space, arch), space, arch, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_bad_arguments(tmp_path):
    space = build_space("cbm-resnet")
    arch = space.parse_arch("2222222")
    model = trained_like(space, arch)
    with pytest.raises(HwbcnetError, match="opset 13"):
        export_onnx(model, space, arch, tmp_path / "m.onnx", opset=13)
    with pytest.raises(HwbcnetError, match=r"\['flops'\] are set by hwbcnet"):
        export_onnx(model, space, arch, tmp_path / "m.onnx", metadata={"flops": 1})


def test_foreign_onnx_has_no_metadata(tmp_path):
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "relu.onnx")
    assert read_export_metadata(tmp_path / "relu.onnx") == {}
    with pytest.raises(HwbcnetError, match="ONNX file not found"):
        read_export_metadata(tmp_path / "missing.onnx")


def test_export_from_a_subnet_file_records_its_provenance(tmp_path):
    from hwbcnet.search.extract import save_subnet

    space = build_space("cbm-mobilenet")
    arch = space.parse_arch("1234321")
    model = trained_like(space, arch)
    save_subnet(tmp_path / "subnet.pt", {
        "space": space.describe(), "arch": space.arch_to_json(arch), "path": "left", "state_dict": model.state_dict(),
        "data": "digits", "accuracy": {"val": 90.0, "test": 89.5}, "costs": {"flops": 1, "params": 2, "latency_ms": 0.75},
        "device": "cpu",
    })
    source = load_export_source(tmp_path / "subnet.pt")
    assert (source.arch == arch).all() and source.space.fingerprint() == space.fingerprint()
    assert source.metadata == {"source": str(tmp_path / "subnet.pt"), "source_sha256": file_sha256(tmp_path / "subnet.pt"),
                               "supernet_path": "left", "data": "digits", "accuracy": {"val": 90.0, "test": 89.5},
                               "device": "cpu", "predicted_latency_ms": 0.75}
    report = export_onnx(source.model, source.space, source.arch, tmp_path / "model.onnx", metadata=source.metadata)
    assert report.max_abs_diff < 1e-4
    assert report.metadata["accuracy"] == {"val": 90.0, "test": 89.5}
    images = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    assert np.abs(run_onnx(tmp_path / "model.onnx", images) - expected).max() < 1e-4


def test_export_from_a_search_result_extracts_the_better_path(tmp_path):
    from hwbcnet.fileio import atomic_write_json
    from hwbcnet.supernet.supernet import SuperNet
    from hwbcnet.training.checkpoint import save_checkpoint

    space = build_space("resnet20", width_mult=0.25)
    arch = space.parse_arch("4,5,6,7,8,3,2,8,6,5,4,3")
    torch.manual_seed(0)
    supernet = SuperNet(space, "bcnetv2")
    checkpoint = save_checkpoint(tmp_path / "supernet.pt", {
        "config": {"principle": "bcnetv2", "seed": 0}, "space": space.describe(),
        "space_fingerprint": space.fingerprint(), "state_dict": supernet.state_dict()})
    atomic_write_json(tmp_path / "search.json", {
        "kind": "hwbcnet.search", "schema_version": 1, "arch": space.arch_to_json(arch), "space": space.describe(),
        "checkpoint": {"path": str(checkpoint), "sha256": file_sha256(checkpoint)}, "paths": {"left": 50.0, "right": 60.0},
        "data": "digits", "costs": {"flops": 1, "params": 2, "latency_ms": 0.5}, "device": "cpu"})
    source = load_export_source(tmp_path / "search.json")
    assert source.metadata["supernet_path"] == "right"  # the path that scored higher
    assert source.metadata["source"] == str(tmp_path / "search.json") and source.metadata["predicted_latency_ms"] == 0.5
    assert set(source.metadata["accuracy"]) == {"val", "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.json", "supernet.pt"]  # no subnet file left behind
    report = export_onnx(source.model, source.space, source.arch, tmp_path / "model.onnx", metadata=source.metadata)
    assert report.max_abs_diff < 1e-4 and report.metadata["arch_code"] == "456783286543"
