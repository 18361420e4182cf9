"""A standalone model as ONNX: the one conversion every stage uses (LUT calibration and validation, export,
verification), so the graph that is timed is the graph that was calibrated.

Exporter: the TorchScript exporter (`dynamo=False`). It runs offline, takes 0.1-0.3 s per model and writes opset 17
exactly; the dynamo exporter (onnxscript) needs ~3 s, prints progress and writes opset 18 (its down-conversion to 17
fails on ReduceMean). BatchNorm is folded into the convolutions in PyTorch first (torch.fx `fuse`), so every
Conv/Gemm weight keeps its module's name (`blocks.0.conv1.0.weight`) and the graph is Conv(+bias) -> Relu/Clip -> Add:
the pattern ONNX Runtime and TensorRT fuse.
"""

from __future__ import annotations

import copy
import inspect
import io
import warnings

import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IN_CHANNELS = 3  # every zoo model takes RGB images (build_space traces them with a 3-channel input)
MIN_OPSET = 17


def torch_to_onnx(model, resolution: int, batch: int, dynamic_batch: bool, opset: int = MIN_OPSET) -> onnx.ModelProto:
    """ONNX of an eval-mode model with BatchNorm folded, weights named after their modules, input `input` and
    output `logits` (batch axis named "batch" when dynamic)."""
    import torch

    example = torch.zeros(batch, IN_CHANNELS, resolution, resolution)
    # `dynamo` exists from torch 2.5 on (and defaults to True from 2.9); older versions only have this exporter.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # TorchScript deprecation notices (of this exporter, and of torch.utils.mkldnn that fx's fuse imports);
        # the choice of exporter is explained above.
        warnings.simplefilter("ignore")
        from torch.fx.experimental.optimization import fuse

        # a folded copy (`model` keeps its BatchNorm layers); a traced model is not traced again: fx's default
        # tracer would open modules the channel tracer keeps whole (timm's untraceable ones)
        fused = fuse(model.eval(), no_trace=isinstance(model, torch.fx.GraphModule))
        _linears_on_rows(fused, example)
        # PRESERVE (the model is in eval mode) skips the exporter's own Conv+BatchNorm folding, which renames the
        # folded weights `onnx::Conv_N`; a BatchNorm fuse cannot fold (inside another module, such as timm's
        # BatchNormAct2d) stays a BatchNormalization node, which ONNX Runtime and TensorRT fold when they load it.
        torch.onnx.export(fused, (example,), buffer, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.PRESERVE, **legacy)
    return _undo_initializer_sharing(onnx.load_from_string(buffer.getvalue()))


def _linears_on_rows(graph_module, example) -> None:
    """A Linear on a tensor with more than two dims (ConvNeXt's channels-last MLP) exports as MatMul with a transposed
    copy of its weight under a generated name; run it on the (rows, features) view instead, which exports as Gemm
    on the weight itself (the module's name, as export checks read it, and the op a linear latency cell times)."""
    import operator

    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    graph = graph_module.graph
    linears = [node for node in graph.nodes
               if node.op == "call_module" and type(graph_module.get_submodule(node.target)) is torch.nn.Linear]
    if not linears:
        return
    ShapeProp(graph_module).propagate(example)
    changed = False
    for node in linears:
        x = node.args[0]
        meta = x.meta.get("tensor_meta") if isinstance(x, torch.fx.Node) else None
        if meta is None or len(meta.shape) <= 2:
            continue
        with graph.inserting_before(node):
            shape = graph.call_function(getattr, (x, "shape"))
            leading = graph.call_function(operator.getitem, (shape, slice(None, -1)))
            node.args = (graph.call_method("flatten", (x, 0, -2)),)
        with graph.inserting_after(node):
            restored = graph.call_method("unflatten", (node, 0, leading))
        node.replace_all_uses_with(restored, delete_user_cb=lambda user: user is not restored)
        changed = True
    if changed:
        graph_module.recompile()


def _undo_initializer_sharing(model: onnx.ModelProto) -> onnx.ModelProto:
    """The TorchScript exporter stores equal initializers once and feeds the copies through Identity nodes (an
    untrained model's folded biases are all zero); give every weight back its own named initializer."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    shared = [node for node in graph.node if node.op_type == "Identity" and node.input[0] in initializers]
    for node in shared:
        duplicate = copy.deepcopy(initializers[node.input[0]])
        duplicate.name = node.output[0]
        graph.initializer.append(duplicate)
        graph.node.remove(node)
    return model


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float16 inputs, outputs, weights and activations, as a strongly typed fp16 engine needs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(copy.deepcopy(model), keep_io_types=False)
    onnx.checker.check_model(converted)
    return converted
