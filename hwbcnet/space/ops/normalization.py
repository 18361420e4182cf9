"""Norm layers: per-channel parameters that follow the channels they normalise.

BatchNorm (and subclasses such as timm's BatchNormAct2d, whose activation is recorded for the latency cell),
LayerNorm over the channel axis (channels-last ConvNeXt blocks, and LayerNorm2d subclasses that permute inside),
and GroupNorm, whose group size stays fixed while the number of groups follows the width (like grouped convs).
A norm over anything other than the channel axis pins its channels.
"""

from __future__ import annotations

from torch import fx, nn

from hwbcnet.space.ops import module_rule


def _channel_params(module: nn.Module, name: str, x, t) -> None:
    tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    for attr, tensor in tensors:
        if tensor is not None and tensor.dim() == 1 and tensor.shape[0] == x.size:
            t.param(f"{name}.{attr}", (x,))


@module_rule(nn.modules.batchnorm._NormBase)
def batchnorm(node: fx.Node, t) -> None:
    module, name = t.module(node), node.target
    x = t.channels(node.args[0])
    if x is None or x.axis != 1 or x.size != module.num_features:
        raise t.unsupported(node, "a norm over something other than the channel axis")
    t.set(node, x)
    t.add_member(x, name)
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):  # instance norms: statistics per sample
        t.pin(x, f"{name}: {type(module).__name__} is not sliced")
        t.category(node, "other")
        return
    t.module_spec(name, "batchnorm", x, x)
    _channel_params(module, name, x, t)
    act = getattr(module, "act", None)  # timm's BatchNormAct2d carries its activation
    t.category(node, "bn", act=act)


@module_rule(nn.LayerNorm)
def layernorm(node: fx.Node, t) -> None:
    module, name = t.module(node), node.target
    x = t.channels(node.args[0])
    over_channels = x is not None and tuple(module.normalized_shape) == (x.size,) and (
        x.axis == x.ndim - 1 or (x.axis == 1 and x.ndim == 4 and type(module) is not nn.LayerNorm))
    if not over_channels:
        if x is not None and t.is_free(x):
            t.pin(x, f"{name}: LayerNorm over {tuple(module.normalized_shape)}")
        t.fixed_like(node) if x is None else t.set(node, x)
        t.category(node, "other")
        return
    t.set(node, x)
    t.add_member(x, name)
    t.module_spec(name, "layernorm", x, x)
    _channel_params(module, name, x, t)
    t.category(node, "ln")


@module_rule(nn.GroupNorm)
def groupnorm(node: fx.Node, t) -> None:
    module, name = t.module(node), node.target
    x = t.channels(node.args[0])
    if x is None or x.axis != 1 or x.size != module.num_channels:
        raise t.unsupported(node, "GroupNorm must act on the channel axis")
    t.set(node, x)
    t.add_member(x, name)
    group_width = 0 if module.num_groups == 1 else module.num_channels // module.num_groups
    if group_width:
        t.require_divisor(x, group_width, node)
    t.module_spec(name, "groupnorm", x, x, group_width)
    _channel_params(module, name, x, t)
    t.category(node, "gn")
