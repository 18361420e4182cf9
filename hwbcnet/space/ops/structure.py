"""Ops that move, combine or reduce channels without weights: pooling and reductions, reshapes and permutes,
concatenation, splits and channel indexing, padding and resizing.

A reshape either keeps the channel axis (squeeze, unsqueeze, flattening the spatial dims), flattens it with the
dims after it (a CxHxW map into a linear layer: each channel repeats H*W times), or mixes channels with other dims
(channel shuffle's (N, g, C/g, H, W) view): then the channels are pinned at full width. A concatenation along
channels keeps its operands' segments in order. A split is exact when its parts fall on segment boundaries (and,
for `chunk`, the parts are tied to equal sizes); splits with constant sizes pin their channels.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from hwbcnet.space.ops import function_rule, method_rule, module_rule
from hwbcnet.space.tracing import Channels, Seg, _SegmentMismatch

# ------------------------------------------------------------------------------------------------------ pooling

_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCTIONS = (F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.adaptive_max_pool2d)


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


@module_rule(*_POOL_MODULES)
@function_rule(*_POOL_FUNCTIONS)
def pool(node: fx.Node, t) -> None:
    x = t.channels(node.args[0])
    if x is None:
        t.fixed_like(node)
        return
    t.set(node, x)
    in_shape, out_shape = t.shape(node.args[0]), t.shape(node)
    name = type(t.module(node)).__name__ if node.op == "call_module" else node.target.__name__
    kind = "max" if "max" in name.lower() else "avg"
    global_pool = len(out_shape) == 4 and out_shape[2] == out_shape[3] == 1
    if "adaptive" in name.lower():
        if not global_pool:
            t.category(node, "other")  # an adaptive pool to a grid (VGG's 7x7): cheap, not timed
            return
        kernel = stride = tuple(in_shape[2:4])
        padding = (0, 0)
    elif node.op == "call_module":
        module = t.module(node)
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride or module.kernel_size)
        padding = _pair(module.padding)
    else:
        arguments = list(node.args[1:]) + [None] * 3
        kernel = _pair(node.kwargs.get("kernel_size", arguments[0]))
        stride = _pair(node.kwargs.get("stride", arguments[1]) or kernel)
        padding = _pair(node.kwargs.get("padding", arguments[2]) or 0)
    t.category(node, "pool", pool=kind, kernel=kernel, stride=stride, padding=padding, global_pool=global_pool)


def _reduce_dims(node: fx.Node, ndim: int) -> tuple[list[int], bool]:
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keepdim = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
    if dims is None:
        return list(range(ndim)), keepdim
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(d % ndim for d in dims), keepdim


@function_rule(torch.mean, torch.sum, torch.amax, torch.amin, torch.max, torch.min, torch.std, torch.var)
@method_rule("mean", "sum", "amax", "amin", "max", "min", "std", "var")
def reduction(node: fx.Node, t) -> None:
    x = t.channels(node.args[0])
    if x is None or not isinstance(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None),
                                   (int, tuple, list)):
        t.fixed_like(node)  # a full reduction, or max of two tensors, or no channel information
        return
    dims, keepdim = _reduce_dims(node, x.ndim)
    if x.axis in dims:
        t.fixed_like(node)  # reduced over channels (e.g. CBAM's channel pooling): width-agnostic
        return
    axis = x.axis if keepdim else x.axis - sum(d < x.axis for d in dims)
    out_shape = t.shape(node)
    if out_shape is None:  # max/min with dim return (values, indices)
        t.fixed_like(node)
        return
    t.set(node, x.with_axis(axis, len(out_shape)))
    spatial = [d for d in range(x.ndim) if d != x.axis and d != 0]
    if node.target in (torch.mean, "mean") and set(spatial) <= set(dims) and x.ndim == 4:
        in_shape = t.shape(node.args[0])
        t.category(node, "pool", pool="avg", kernel=tuple(in_shape[2:4]), stride=tuple(in_shape[2:4]),
                   padding=(0, 0), global_pool=True)


# ------------------------------------------------------------------------------------------------------ reshapes


def _reshaped(x: Channels, in_shape, out_shape) -> Channels | None:
    """The channel information after a reshape, or None when the reshape mixes channels with other dims."""
    before, after = math.prod(in_shape[:x.axis]), math.prod(in_shape[x.axis + 1:])
    channels = in_shape[x.axis]
    for b in range(len(out_shape)):
        if math.prod(out_shape[:b]) != before:
            continue
        if out_shape[b] == channels and math.prod(out_shape[b + 1:]) == after:
            return Channels(b, x.segs, len(out_shape))
        if out_shape[b] == channels * after and math.prod(out_shape[b + 1:]) == 1 and after > 1:
            return Channels(b, tuple(Seg(s.src, s.channels, s.repeat * after) for s in x.segs), len(out_shape))
    return None


def _literal_channel_arg(node: fx.Node, axis: int) -> bool:
    """Whether view/reshape spells the channel-carrying output dim as a literal (it breaks at other widths)."""
    args = list(node.args[1:])
    if node.op == "call_function":  # torch.reshape(x, shape)
        args = list(node.kwargs.get("shape", args[0] if args else ()))
    elif len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    if axis >= len(args):
        return False
    value = args[axis]
    return isinstance(value, int) and value != -1


@module_rule(nn.Flatten, nn.Unflatten)
@function_rule(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze)
@method_rule("view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as")
def reshape(node: fx.Node, t) -> None:
    x = t.channels(node.args[0])
    if x is None:
        t.fixed_like(node)
        return
    result = _reshaped(x, t.shape(node.args[0]), t.shape(node))
    spelled = node.target in ("view", "reshape", torch.reshape)
    literal = result is not None and spelled and t.is_free(x) and _literal_channel_arg(node, result.axis)
    t.category(node, "nop")
    if result is None or literal:
        t.pin(x, f"{node.name}: reshapes channels to {tuple(t.shape(node))}" + (" with a literal size" if literal
                                                                                else ""))
        if result is None:
            t.fixed_like(node)
            return
    t.set(node, result)


@method_rule("expand", "expand_as", "repeat")
def expand(node: fx.Node, t) -> None:
    x = t.channels(node.args[0])
    in_shape, out_shape = t.shape(node.args[0]), t.shape(node)
    if x is None:
        t.fixed_like(node)
        return
    if len(out_shape) == len(in_shape) and out_shape[x.axis] == in_shape[x.axis]:
        t.set(node, x)
    else:
        t.pin(x, f"{node.name}: repeats channels")
        t.fixed_like(node)
    t.category(node, "nop")


@function_rule(torch.permute, torch.transpose, torch.swapaxes, torch.movedim)
@method_rule("permute", "transpose", "swapaxes", "movedim", "t")
def permute(node: fx.Node, t) -> None:
    x = t.channels(node.args[0])
    if x is None:
        t.fixed_like(node)
        return
    ndim = x.ndim
    target = node.target if isinstance(node.target, str) else node.target.__name__
    args = [a for a in node.args[1:]]
    if target == "permute":
        order = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        order = [int(d) % ndim for d in order]
    elif target in ("transpose", "swapaxes", "t"):
        d0, d1 = (int(args[0]) % ndim, int(args[1]) % ndim) if args else (0, 1)
        order = list(range(ndim))
        order[d0], order[d1] = order[d1], order[d0]
        if ndim == 5 and {d0, d1} == {1, 2}:  # channel shuffle: (N, g, C/g, H, W) -> (N, C/g, g, H, W)
            in_shape = t.shape(node.args[0])
            t.category(node, "shuffle", groups=in_shape[1], channels=in_shape[1] * in_shape[2],
                       hw=tuple(in_shape[3:5]))
    else:  # movedim
        source, destination = int(args[0]) % ndim, int(args[1]) % ndim
        order = list(range(ndim))
        order.insert(destination, order.pop(source))
    t.set(node, x.with_axis(order.index(x.axis), ndim))
    t.categories.setdefault(node, ("nop", {}))


# ------------------------------------------------------------------------------------------ concat, split, index


@function_rule(torch.cat, torch.concat, torch.concatenate)
def concat(node: fx.Node, t) -> None:
    operands = node.args[0] if node.args else node.kwargs["tensors"]
    infos = [t.channels(a) for a in operands]
    ndim = len(t.shape(node))
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) % ndim
    if any(info is None for info in infos):
        if any(t.is_free(info) for info in infos if info is not None):
            raise t.unsupported(node, "concatenates tensors without channel information")
        t.fixed_like(node)
        return
    if all(info.axis == dim for info in infos):
        t.set(node, Channels(dim, tuple(s for info in infos for s in info.segs), ndim))
        t.category(node, "concat", parts=len(infos))
        return
    first = infos[0]
    try:  # concatenated along another dim: the channels of every operand are the same channels
        for other in infos[1:]:
            if other.axis != first.axis:
                raise _SegmentMismatch()
            t.union(first, other, node.name)
    except _SegmentMismatch:
        for info in infos:
            t.pin(info, f"{node.name}: concatenates tensors with different channels along dim {dim}")
    t.set(node, first)
    t.category(node, "nop")


def _boundaries(x: Channels) -> list[int]:
    edges, position = [0], 0
    for s in x.segs:
        position += s.channels * s.repeat
        edges.append(position)
    return edges


def _parts(x: Channels, sizes: list[int]) -> list[tuple[Seg, ...]] | None:
    """The segments of each part when every part boundary is a segment boundary."""
    edges = _boundaries(x)
    parts, start = [], 0
    for size in sizes:
        stop = start + size
        if start not in edges or stop not in edges:
            return None
        parts.append(x.segs[edges.index(start):edges.index(stop)])
        start = stop
    return parts


@function_rule(torch.split, torch.chunk, torch.tensor_split, torch.unbind)
@method_rule("split", "chunk", "tensor_split", "unbind")
def split(node: fx.Node, t) -> None:
    x = t.channels(node.args[0])
    meta = node.meta.get("tensor_meta")
    if x is None or not isinstance(meta, (tuple, list)):
        t.fixed_like(node)
        return
    target = node.target if isinstance(node.target, str) else node.target.__name__
    dim_position = 1 if target == "unbind" else 2
    dim = node.kwargs.get("dim", node.args[dim_position] if len(node.args) > dim_position else 0) % x.ndim
    shapes = [tuple(item.shape) for item in meta]
    t.category(node, "nop")
    if dim != x.axis:  # split along another dim: every part keeps the channels
        t.set(node, tuple(x.with_axis(x.axis - (len(shape) < x.ndim and dim < x.axis), len(shape))
                          for shape in shapes))
        return
    parts = None if target == "unbind" else _parts(x, [shape[dim] for shape in shapes])
    if parts is not None and target == "chunk":  # chunk(n) halves whatever width it gets: tie the parts
        try:
            for other in parts[1:]:
                t.union(Channels(dim, parts[0], x.ndim), Channels(dim, other, x.ndim), node.name)
        except _SegmentMismatch:
            parts = None
    elif parts is not None and t.is_free(x):  # constant split sizes only hold at full width
        parts = None
    if parts is None:
        t.pin(x, f"{node.name}: {'unbinds' if target == 'unbind' else 'splits'} channels at fixed positions")
        t.fixed_like(node)
        return
    t.set(node, tuple(Channels(dim, tuple(p), x.ndim) for p in parts))


def _index_items(index, ndim: int) -> list:
    items = list(index) if isinstance(index, tuple) else [index]
    if any(item is Ellipsis for item in items):
        position = items.index(Ellipsis)
        explicit = sum(item is not None and item is not Ellipsis for item in items)
        items[position:position + 1] = [slice(None)] * (ndim - explicit)
    return items


@function_rule(operator.getitem)
def getitem(node: fx.Node, t) -> None:
    source, index = node.args[0], node.args[1]
    value = t.info.get(source) if isinstance(source, fx.Node) else None
    if isinstance(value, tuple):  # an element of a split
        t.set(node, value[index] if isinstance(index, int) and value[index] is not None else None)
        if t.info.get(node) is None:
            t.fixed_like(node)
        t.category(node, "nop")
        return
    x = t.channels(source)
    if x is None:
        if t.shape(node) is not None:
            t.fixed_like(node)
        return
    in_shape = t.shape(source)
    dim, out_dim, axis, item = 0, 0, None, slice(None)
    for entry in _index_items(index, x.ndim):
        if entry is None:
            out_dim += 1
            continue
        if dim == x.axis:
            item, axis = entry, (None if isinstance(entry, int) else out_dim)
        if not isinstance(entry, (int, slice)):  # tensor indexing
            t.pin(x, f"{node.name}: indexes channels with a tensor")
            t.fixed_like(node)
            return
        out_dim += 0 if isinstance(entry, int) else 1
        dim += 1
    if dim <= x.axis:  # the channel axis is not indexed
        axis, item = out_dim + (x.axis - dim), slice(None)
    ndim = len(t.shape(node))
    if axis is None:  # one channel selected: a fixed single-channel tensor
        t.fixed_like(node)
        return
    start, stop, step = item.indices(in_shape[x.axis])
    if step == 1 and start == 0 and stop == in_shape[x.axis]:
        t.set(node, x.with_axis(axis, ndim))
        t.category(node, "nop")
        return
    parts = _parts(x, [start, stop - start]) if step == 1 else None
    if parts is not None and all(not t.sources.is_free(s.src) for s in parts[0]):
        t.set(node, Channels(axis, parts[1], ndim))
        return
    t.pin(x, f"{node.name}: selects channels {start}:{stop}")
    t.fixed_like(node)


# ------------------------------------------------------------------------------------------------ spatial ops


@module_rule(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d,
             nn.ReflectionPad2d, nn.ReplicationPad2d)
@function_rule(F.interpolate, F.upsample)
def spatial(node: fx.Node, t) -> None:
    x = t.channels(node.args[0])
    if x is None:
        t.fixed_like(node)
    else:
        t.set(node, x)
    t.category(node, "nop")


@function_rule(F.pad)
def pad(node: fx.Node, t) -> None:
    x = t.channels(node.args[0])
    padding = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad", ())
    if x is None:
        t.fixed_like(node)
        return
    if len(padding) > 2 * (x.ndim - 1 - x.axis):  # pads the channel axis itself
        t.pin(x, f"{node.name}: pads channels")
        t.fixed_like(node)
        return
    t.set(node, x)
    t.category(node, "nop")


@module_rule(nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle)
def mixing_module(node: fx.Node, t) -> None:
    x = t.channels(node.args[0])
    if x is not None:
        t.pin(x, f"{node.target}: {type(t.module(node)).__name__} mixes channels")
    t.fixed_like(node)
    t.category(node, "other")
