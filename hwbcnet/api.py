"""The scriptable Python API behind the CLI: each function does one user-level job and returns plain data."""

from __future__ import annotations

from pathlib import Path


from hwbcnet.costs.flops import flops_cost, params_cost
from hwbcnet.space.space import WidthSpace


def describe_arch(space: WidthSpace, arch_text: str, device: str | None = None, lut_path: str | Path | None = None) -> dict:
    """Widths, channels, FLOPs and params of an arch; with `device`, its LUT-predicted latency too."""
    arch = space.parse_arch(arch_text)
    result = space.arch_to_json(arch)
    result["flops"] = int(round(flops_cost(space)(arch[None])[0]))
    result["params"] = int(round(params_cost(space)(arch[None])[0]))
    result["pinned"] = list(space.traced.pinned)  # channels kept at full width, with the reason
    result["untimed"] = list(space.traced.untimed)  # executed ops no latency cell covers
    if device is not None:
        from hwbcnet.costs.latency import latency_cost_for

        latency = latency_cost_for(space, device, lut_path)
        result["latency_ms"] = float(latency(arch[None])[0])
        result["device"] = device
    return result


def width_accuracy(supernet, data_spec: str, seed: int = 0, dist=None) -> list[dict]:
    """Validation accuracy of the full and the smallest width, per path (BN recalibrated per path)."""
    from hwbcnet.data import load_data
    from hwbcnet.training.scoring import EvalData, score_arch

    space = supernet.space
    eval_data = EvalData.from_splits(load_data(data_spec, space.resolution, seed=seed), seed=seed)
    if dist is not None:
        eval_data = eval_data.shard(dist)
    else:
        eval_data = eval_data.to(next(supernet.parameters()).device)
    reduce = dist.sum_counts if dist is not None else None
    rows = []
    for label, arch in (("full", space.full_arch()), ("min", space.min_arch())):
        rows.append({"width": label, "arch": space.format_arch(arch), **score_arch(supernet, arch, eval_data, reduce)})
    return rows


def width_accuracy_table(supernet, config, dist=None) -> list[dict]:
    from hwbcnet.reporting import console, table

    rows = width_accuracy(supernet, config.data, config.seed, dist)
    if dist is None or dist.rank == 0:
        paths = supernet.principle.paths
        console.print(table(f"{config.principle} supernet: validation accuracy (%)", ["width", *paths, "score"],
                            [[r["width"], *[r[p] for p in paths], r["score"]] for r in rows]))
    return rows
