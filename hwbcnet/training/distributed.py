"""torch.distributed support: `torchrun --nproc_per_node=N -m hwbcnet train|search ...`.

Training wraps the supernet in DistributedDataParallel (NCCL on GPUs, gloo on CPU), shards each global batch with a
DistributedSampler, synchronises BatchNorm batch statistics across ranks, and keeps the width draws identical on every
rank (same sampler seed). Scoring shards BN-calibration and validation batches and all-reduces the statistics and
the correct/total counts, so the scores equal a single process's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.utils.data import DistributedSampler

from hwbcnet.supernet.dynamic import DynamicBatchNorm2d


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    owns_group: bool = True

    @classmethod
    def from_environment(cls) -> "DistContext | _NoDist":
        """A context when launched by torchrun (WORLD_SIZE > 1), else a no-op one that yields None."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return _NoDist()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank)

    def __enter__(self) -> "DistContext":
        return self

    def __exit__(self, *exc) -> None:
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def sync_batchnorm(self, module: torch.nn.Module, enabled: bool = True) -> None:
        for bn in module.modules():
            if isinstance(bn, DynamicBatchNorm2d):
                bn.__dict__["process_group"] = torch_dist.group.WORLD if enabled else None

    def wrap(self, supernet: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        self.sync_batchnorm(supernet)
        # BN statistics are synchronised in the forward pass already; no buffer broadcast needed.
        return DistributedDataParallel(supernet, broadcast_buffers=False)

    def sampler(self, dataset, seed: int) -> DistributedSampler:
        return DistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed, drop_last=True)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch."""
        return batch.tensor_split(self.world_size)[self.rank]

    def mean(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64)
        torch_dist.all_reduce(tensor)
        return float(tensor) / self.world_size

    def sum_counts(self, correct: int, total: int) -> tuple[int, int]:
        tensor = torch.tensor([correct, total], dtype=torch.int64)
        torch_dist.all_reduce(tensor)
        return int(tensor[0]), int(tensor[1])

    def barrier(self) -> None:
        torch_dist.barrier()

    def broadcast_object(self, obj):
        holder = [obj]
        torch_dist.broadcast_object_list(holder, src=0)
        return holder[0]


class _NoDist:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def single_process_sampler(dataset, seed: int) -> DistributedSampler:
    """The same shuffling a one-rank DistributedSampler gives, so a single process sees exactly the union of what N
    ranks see at every step (the basis of the distributed-equivalence test)."""
    return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True)
