"""Datasets, fixed splits and seeded loaders.

Splits are drawn once with a fixed seed (SPLIT_SEED), never the user's, so the test set is the same in every run.
The user's seed only orders batches and drives training augmentation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from hwbcnet.errors import HwbcnetError

SPLIT_SEED = 20240611
SPLITS = ("train", "val", "test")


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Split sample indices into len(fractions) disjoint parts with the same class mix as `labels`.

    Per class, a permutation from numpy's legacy RandomState (its stream is frozen across numpy versions, so the
    split never changes) is cut at the rounded cumulative fractions. Returns sorted index arrays."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    rng = np.random.RandomState(seed)
    labels = np.asarray(labels)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, cuts)):
            part.append(chunk)
    return [np.sort(np.concatenate(part)) for part in parts]


class ImageDataset(Dataset):
    """`items[i]` (an image tensor, a file path, ...) turned into a (3, R, R) float tensor by `transform(item,
    generator)`, with label `labels[i]`. The dataset owns the generator its random augmentation draws from."""

    def __init__(self, items: Any, labels: torch.Tensor, transform: Callable, seed: int = 0):
        if len(items) != len(labels):
            raise ValueError(f"{len(items)} items but {len(labels)} labels")
        self.items = items
        self.labels = labels.long()
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.items[index], self.generator), int(self.labels[index])

    def subset(self, indices: np.ndarray) -> ImageDataset:
        index = torch.as_tensor(indices, dtype=torch.long)
        items = self.items[index] if isinstance(self.items, torch.Tensor) else [self.items[i] for i in indices]
        return ImageDataset(items, self.labels[index], self.transform)

    def with_transform(self, transform: Callable) -> ImageDataset:
        """Same images (shared, not copied) under another transform, e.g. the training images without augmentation."""
        view = copy.copy(self)
        view.transform = transform
        view.generator = torch.Generator().manual_seed(0)
        return view

    def reseeded(self, seed: int) -> ImageDataset:
        view = copy.copy(self)
        view.generator = torch.Generator().manual_seed(seed)
        return view


def _seed_worker(worker_id: int) -> None:
    # DataLoader gives each worker torch.initial_seed() = base seed (drawn from the loader's generator every
    # epoch) + worker id; reseeding the worker's copy of the dataset with it keeps workers and epochs distinct.
    info = get_worker_info()
    info.dataset.generator.manual_seed(torch.initial_seed() % 2**63)


@dataclass
class DataSplits:
    """train/val/test datasets yielding (float image (3, R, R), int label). Augmentation applies to `train` only."""

    name: str
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    train_eval: ImageDataset  # the training images with evaluation preprocessing (INT8 calibration, BN statistics)
    num_classes: int
    resolution: int
    in_channels: int = 3
    seed: int = 0
    source: str = ""  # where the images come from (attribution)

    def dataset(self, split: str) -> ImageDataset:
        if split not in SPLITS:
            raise HwbcnetError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def loader(
        self,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        sampler: Sampler | None = None,
        num_workers: int = 0,
    ) -> DataLoader:
        """A DataLoader whose batch order and augmentation are fixed by `seed` (default: the load_data seed).
        A `sampler` (e.g. DistributedSampler) replaces `shuffle`."""
        seed = self.seed if seed is None else seed
        order_seed, augment_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))
        return DataLoader(
            self.dataset(split).reseeded(augment_seed),
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(order_seed),
            worker_init_fn=_seed_worker if num_workers else None,
        )
