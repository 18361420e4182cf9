"""Supernet training.

Per step (BCNet/BCNetV2): draw widths (fresh uniform draw, then its exact complement), forward the left and right
paths on the same batch, backpropagate each loss x 0.5, take one SGD step, and record the path-averaged loss with
its arch. The ``ua`` baseline trains as AutoSlim does instead: the sandwich rule (full, minimum and two random widths
on the left path) with in-place distillation from the full width's predictions.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hwbcnet.data import load_data
from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import file_sha256
from hwbcnet.space.models.sources import parse_model_source
from hwbcnet.space.space import WidthSpace, build_space, space_from_description
from hwbcnet.supernet.principles import LEFT, get_principle
from hwbcnet.supernet.supernet import SuperNet
from hwbcnet.supernet.weights import load_weights
from hwbcnet.training.checkpoint import load_checkpoint, save_checkpoint
from hwbcnet.training.distributed import single_process_sampler
from hwbcnet.training.sampler import ComplementarySampler, LossRecords


@dataclass
class TrainConfig:
    model: str  # a model spec (hwbcnet/space/models/sources.py)
    data: str = "digits"
    principle: str = "bcnetv2"
    bins: int | None = None
    min_bins: int | None = None  # default: the model's m for bcnetv2, 1 for ua/bcnet
    resolution: int | None = None
    width_mult: float = 1.0
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    loss_records: int = 100
    ua_random_widths: int = 2
    max_steps_per_epoch: int | None = None  # cap for quick runs and tests
    model_kwargs: dict = field(default_factory=dict)  # --model-kwargs of the model's factory
    fixed: tuple[str, ...] = ()  # --fixed globs: modules kept at full width
    channel_divisor: int = 1
    weights: str | None = None  # --weights: a state_dict that initialises the supernet

    def resolved_space(self, num_classes: int) -> WidthSpace:
        min_bins = self.min_bins
        if min_bins is None and self.principle in ("ua", "bcnet"):
            min_bins = 1
        return build_space(self.model, bins=self.bins, min_bins=min_bins, resolution=self.resolution,
                           width_mult=self.width_mult, num_classes=num_classes, model_kwargs=self.model_kwargs,
                           fixed=self.fixed, channel_divisor=self.channel_divisor)

    def input_resolution(self) -> int:
        return self.resolution or parse_model_source(self.model, self.model_kwargs).defaults()[0]


@dataclass
class TrainResult:
    checkpoint: Path
    space: WidthSpace
    supernet: SuperNet
    history: list[dict] = field(default_factory=list)
    loss_records: list = field(default_factory=list)


_DEFAULTS = {"model_kwargs": {}, "fixed": (), "channel_divisor": 1, "weights": None}


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


def space_from_checkpoint(payload: dict) -> WidthSpace:
    return space_from_description(payload["space"])


def load_supernet(path: str | Path) -> tuple[SuperNet, dict]:
    """The trained supernet of a checkpoint and the checkpoint's metadata (weights are loaded, eval mode)."""
    payload = load_checkpoint(path)
    space = space_from_checkpoint(payload)
    if space.fingerprint() != payload.get("space_fingerprint"):
        raise HwbcnetError(f"{path}: the model definition changed since this checkpoint was trained")
    supernet = SuperNet(space, payload["config"]["principle"])
    supernet.load_state_dict(payload["state_dict"])
    return supernet.eval(), payload


def default_device() -> torch.device:
    """One process: the first GPU when there is one (torchrun gives each rank its own instead)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _lr_at(step: int, total: int, base: float) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * step / max(total, 1)))


class Trainer:
    def __init__(self, config: TrainConfig, out_dir: str | Path, dist=None):
        self.config = config
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / "supernet.pt"
        self.dist = dist  # hwbcnet.training.distributed.DistContext or None
        self.device = dist.device if dist is not None else default_device()
        self.data = load_data(config.data, config.input_resolution(), seed=config.seed)
        self.space = config.resolved_space(self.data.num_classes)
        self.principle = get_principle(config.principle)
        # Seeded here, not earlier: tracing a model (once per process, then cached) draws from the global RNG, and
        # the initial weights must not depend on what the process traced before (every rank must start equal).
        torch.manual_seed(config.seed)
        self.supernet = SuperNet(self.space, self.principle,
                                 weights=load_weights(config.weights) if config.weights else None)
        self.weights_sha256 = file_sha256(config.weights) if config.weights else None
        if dist is not None:
            self.model = dist.wrap(self.supernet)  # moves it to the rank's device
        else:
            self.model = self.supernet.to(self.device)
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay, nesterov=True)
        self.sampler = ComplementarySampler(self.space, self.principle, config.seed + 1)
        self.records = LossRecords(config.loss_records)
        self.epoch = self.step = 0
        self.history: list[dict] = []
        world = dist.world_size if dist is not None else 1
        per_rank_batch = config.batch_size // world
        if per_rank_batch * world != config.batch_size:
            raise HwbcnetError(f"--batch-size {config.batch_size} must be divisible by the {world} processes")
        self.per_rank_batch = per_rank_batch
        batches = len(self.data.train) // config.batch_size  # drop_last: every rank does the same number of steps
        if batches == 0:
            raise HwbcnetError(f"the training split ({len(self.data.train)} images) is smaller than one batch")
        self.steps_per_epoch = min(batches, config.max_steps_per_epoch or batches)
        self.planned_steps = self.steps_per_epoch * config.epochs

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.rank == 0

    def _from_main(self, read: Callable[[], object]):
        """`read()` on rank 0, its result (or its HwbcnetError) on every rank: only rank 0 is sure to see --out
        (several nodes need no shared file system), and every rank must take the same branch."""
        try:
            value, error = (read(), None) if self.is_main else (None, None)
        except HwbcnetError as exc:
            value, error = None, str(exc)
        if self.dist is not None:
            value, error = self.dist.broadcast_object((value, error))
        if error is not None:
            raise HwbcnetError(error)
        return value

    def checkpoint_exists(self) -> bool:
        return self._from_main(self.checkpoint_path.exists)

    def resume(self) -> bool:
        payload = self._from_main(lambda: load_checkpoint(self.checkpoint_path) if self.checkpoint_path.exists()
                                  else None)
        if payload is None:
            return False
        saved = payload["config"]
        for key in ("model", "principle", "data", "bins", "min_bins", "resolution", "width_mult", "batch_size", "seed",
                    "model_kwargs", "fixed", "channel_divisor", "weights"):
            if _comparable(saved.get(key, _DEFAULTS.get(key))) != _comparable(asdict(self.config).get(key)):
                raise HwbcnetError(f"{self.checkpoint_path}: was trained with {key}={saved.get(key)!r}, not "
                                   f"{asdict(self.config).get(key)!r}; use another --out or the same options")
        self.supernet.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.sampler.load_state_dict(payload["sampler"])
        self.records = LossRecords(self.config.loss_records, payload["loss_records"])
        self.epoch, self.step, self.history = payload["epoch"], payload["step"], list(payload["history"])
        return True

    def _payload(self) -> dict:
        return {"config": asdict(self.config), "space": self.space.describe(), "weights_sha256": self.weights_sha256,
                "space_fingerprint": self.space.fingerprint(), "epoch": self.epoch, "step": self.step,
                "planned_steps": self.planned_steps, "state_dict": self.supernet.state_dict(),
                "optimizer": self.optimizer.state_dict(), "sampler": self.sampler.state_dict(),
                "loss_records": self.records.to_list(), "history": self.history,
                "finished": self.step >= self.planned_steps}

    def save(self) -> None:
        if self.is_main:
            save_checkpoint(self.checkpoint_path, self._payload())
        if self.dist is not None:
            self.dist.barrier()

    def _train_step_bc(self, images, labels) -> tuple[float, np.ndarray]:
        arch = self.sampler.next()
        losses = []
        for path in self.principle.paths:
            self.supernet.activate(arch, path)
            loss = F.cross_entropy(self.model(images), labels)
            (0.5 * loss).backward()
            losses.append(loss.detach())
        return float(torch.stack(losses).mean()), arch

    def _train_step_ua(self, images, labels) -> tuple[float, np.ndarray]:
        """AutoSlim's sandwich rule with in-place distillation; the recorded loss is the random widths' CE."""
        self.supernet.activate(self.space.full_arch(), LEFT)
        logits = self.model(images)
        F.cross_entropy(logits, labels).backward()
        soft_targets = logits.detach().softmax(1)
        archs = [self.space.min_arch()] + [self.sampler.uniform() for _ in range(self.config.ua_random_widths)]
        recorded = []
        for arch in archs:
            self.supernet.activate(arch, LEFT)
            logits = self.model(images)
            (-(soft_targets * logits.log_softmax(1)).sum(1).mean()).backward()
            recorded.append(float(F.cross_entropy(logits.detach(), labels)))
        return recorded[-1], archs[-1]

    def train(self, progress: bool = True, on_step: Callable[[int], None] | None = None) -> TrainResult:
        cfg = self.config
        step_fn = self._train_step_ua if self.principle.name == "ua" else self._train_step_bc
        columns = [TextColumn("[bold]epoch {task.fields[epoch]}/" + str(cfg.epochs)), BarColumn(),
                   MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
                   TextColumn("{task.fields[ips]:.0f} img/s"), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, disable=not (progress and self.is_main), transient=False) as bar:
            task = bar.add_task("train", total=self.planned_steps, completed=self.step, epoch=self.epoch + 1,
                                loss=float("nan"), ips=0.0)
            while self.epoch < cfg.epochs:
                self.supernet.train()
                loader = self._epoch_loader()
                started, seen, loss_sum = time.perf_counter(), 0, 0.0
                for batch_index, (images, labels) in enumerate(loader):
                    if batch_index >= self.steps_per_epoch:
                        break
                    images, labels = images.to(self.device), labels.to(self.device)
                    for group in self.optimizer.param_groups:
                        group["lr"] = _lr_at(self.step, self.planned_steps, cfg.lr)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss, arch = step_fn(images, labels)
                    self.optimizer.step()
                    if self.dist is not None:
                        loss = self.dist.mean(loss)
                    self.records.add(loss, arch)
                    self.step += 1
                    seen += len(images) * (self.dist.world_size if self.dist else 1)
                    loss_sum += loss
                    elapsed = time.perf_counter() - started
                    bar.update(task, advance=1, loss=loss, ips=seen / max(elapsed, 1e-9), epoch=self.epoch + 1)
                    if on_step is not None:
                        on_step(self.step)
                self.epoch += 1
                self.history.append({"epoch": self.epoch, "loss": loss_sum / max(self.steps_per_epoch, 1),
                                     "images_per_s": seen / max(time.perf_counter() - started, 1e-9),
                                     "seconds": time.perf_counter() - started})
                self.save()
        return TrainResult(self.checkpoint_path, self.space, self.supernet, self.history, self.records.to_list())

    def _epoch_loader(self):
        seed = self.config.seed * 1000 + self.epoch  # the same order on resume
        # One shuffling for one process and N ranks alike: rank r's batch t is a share of the single-process batch t.
        sampler = (self.dist.sampler(self.data.train, seed) if self.dist is not None
                   else single_process_sampler(self.data.train, seed))
        return self.data.loader("train", self.per_rank_batch, seed=seed, drop_last=True, sampler=sampler)


def train_supernet(config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
                   dist=None) -> TrainResult:
    """Train (or, with `resume`, continue) a supernet; the checkpoint is DIR/supernet.pt."""
    trainer = Trainer(config, out_dir, dist)
    if not resume and trainer.checkpoint_exists():
        raise HwbcnetError(f"{trainer.checkpoint_path} exists; pass --resume to continue it or choose another --out")
    if resume:
        trainer.resume()
    return trainer.train(progress=progress)
