"""torch.distributed support: `torchrun --nproc_per_node=N -m hwbcnet train|search ...`.

Training wraps the supernet in DistributedDataParallel (NCCL on GPUs, gloo on CPU), shards each global batch with a
DistributedSampler, synchronises BatchNorm batch statistics across ranks, and keeps the width draws identical on every
rank (same sampler seed). Scoring shards BN-calibration and validation batches and all-reduces the statistics and
the correct/total counts, so the scores equal a single process's.

Under NCCL every rank works on `cuda:LOCAL_RANK`: the supernet, its batches and the small all-reduced tensors (loss,
counts) live there. Rank 0 alone reads and writes the training checkpoint and broadcasts what it read, so `--out`
needs to exist on rank 0's node only; `search` loads the checkpoint on every rank (a shared file system or a copy).
See docs/distributed.md.
"""

from __future__ import annotations

import gc
import inspect
import os
import weakref
from dataclasses import dataclass, field

import torch
import torch.distributed as torch_dist
from torch.utils.data import DistributedSampler

from hwbcnet.supernet.dynamic import is_sliced_batchnorm


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    owns_group: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where model, batches, reductions live
    _synced: weakref.WeakSet = field(default_factory=weakref.WeakSet, repr=False)

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
        device = torch.device("cpu")
        if backend == "nccl":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank, device=device)

    def __enter__(self) -> "DistContext":
        return self

    def __exit__(self, *exc) -> None:
        if self.owns_group and torch_dist.is_initialized():
            # Nothing may outlive the group holding a reference to it: a gloo group destroyed at interpreter exit
            # instead of here aborts the process ("terminate called without an active exception") once a peer has
            # gone. The synced BNs of a supernet still in use and an unreachable DDP wrapper are such references.
            for module in list(self._synced):
                self.sync_batchnorm(module, enabled=False)
            gc.collect()
            torch_dist.destroy_process_group()

    def sync_batchnorm(self, module: torch.nn.Module, enabled: bool = True) -> None:
        for bn in module.modules():
            if is_sliced_batchnorm(bn):
                bn.__dict__["process_group"] = torch_dist.group.WORLD if enabled else None
        if enabled:
            self._synced.add(module)
        else:
            self._synced.discard(module)

    def wrap(self, supernet: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        supernet.to(self.device)
        self.sync_batchnorm(supernet)
        # BN statistics are synchronised in the forward pass already, so the buffers need no sync before each
        # forward (torch >= 2.12 spells that forward_sync_buffers=False and deprecates broadcast_buffers).
        options = inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync = {"forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers": False}
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(supernet, device_ids=device_ids, **no_buffer_sync)

    def sampler(self, dataset, seed: int) -> DistributedSampler:
        return DistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed, drop_last=True)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (on this rank's device; empty when the batch has fewer
        items than there are ranks)."""
        return batch.tensor_split(self.world_size)[self.rank].to(self.device)

    def mean(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return float(tensor) / self.world_size

    def sum_counts(self, correct: int, total: int) -> tuple[int, int]:
        tensor = torch.tensor([correct, total], dtype=torch.int64, device=self.device)
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
