"""Convolutions and linear layers: the modules that start channel sources.

Grouped convolutions keep their *group width* (channels per group) and let the number of groups follow the width,
as RegNet defines its blocks and as a depthwise conv (group width 1) always does: slicing whole groups keeps every
output channel connected to the same input channels at every width. The variable's widths are then multiples of
the group width. (Keeping torchvision ResNeXt's fixed cardinality instead would reconnect channels to other groups
at every width.) A grouped conv whose input and output channel counts differ pins both at full width.
"""

from __future__ import annotations

import math

from torch import fx, nn

from hwbcnet.space.ops import module_rule


def _extra_params(module: nn.Module, out_channels: int, skip: set[str]):
    """Other tensors of a conv/linear subclass (e.g. the gain of timm's ScaledStdConv2d) whose first dim is the
    output channels."""
    tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    for name, tensor in tensors:
        if name not in skip and tensor is not None and tensor.dim() >= 1 and tensor.shape[0] == out_channels:
            yield name, tensor


@module_rule(nn.Conv2d)
def conv2d(node: fx.Node, t) -> None:
    module, name = t.module(node), node.target
    x = t.channels(node.args[0])
    if x is None or x.axis != 1 or x.ndim != 4:
        raise t.unsupported(node, "expected an NCHW input")
    pinned = t.is_pinned_module(name, module)
    kh, kw = module.kernel_size
    out_h, out_w = t.shape(node)[2:4]
    if module.groups == 1:
        y = t.new_channels(node, module.out_channels, producer=name, fixed=pinned)
        weight_in, group_width = x, 0
        t.macs(y, x, kh * kw * out_h * out_w)
    elif module.in_channels == module.out_channels and all(s.repeat == 1 for s in x.segs):
        group_width = module.in_channels // module.groups
        y, weight_in = x, group_width  # output channels are the input channels, a whole group per group width
        t.require_divisor(x, group_width, node)
        t.add_member(x, name)
        if pinned:
            t.pin(x, f"{name} is pinned")
        t.macs(y, None, group_width * kh * kw * out_h * out_w)
    else:
        t.pin(x, f"{name}: grouped conv with {module.in_channels} input and {module.out_channels} output channels")
        y = t.new_channels(node, module.out_channels, fixed=True)
        weight_in, group_width = module.in_channels // module.groups, 0
        t.macs(y, None, weight_in * kh * kw * out_h * out_w)
    t.set(node, y)
    t.module_spec(name, "conv", x, y, group_width)
    t.param(f"{name}.weight", (y, weight_in, kh, kw))
    if module.bias is not None:
        t.param(f"{name}.bias", (y,))
    for extra, tensor in _extra_params(module, module.out_channels, {"weight", "bias"}):
        t.param(f"{name}.{extra}", (y, *tensor.shape[1:]))
    t.category(node, "conv", group_width=group_width)


@module_rule(nn.Linear)
def linear(node: fx.Node, t) -> None:
    module, name = t.module(node), node.target
    x = t.channels(node.args[0])
    if x is None or x.axis != x.ndim - 1:
        raise t.unsupported(node, "a linear layer must act on the channel axis")
    y = t.new_channels(node, module.out_features, axis=x.axis, producer=name, fixed=t.is_pinned_module(name, module))
    t.set(node, y)
    positions = math.prod(t.shape(node)[1:-1])  # a channels-last linear (ConvNeXt) runs once per pixel
    t.macs(y, x, positions)
    t.module_spec(name, "linear", x, y)
    t.param(f"{name}.weight", (y, x))
    if module.bias is not None:
        t.param(f"{name}.bias", (y,))
    for extra, tensor in _extra_params(module, module.out_features, {"weight", "bias"}):
        t.param(f"{name}.{extra}", (y, *tensor.shape[1:]))
    t.category(node, "linear")
