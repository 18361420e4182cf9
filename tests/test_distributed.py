"""Distributed training and scoring (torch.distributed, gloo on CPU): two ranks must reproduce one process.

Each multi-process run is a real process group: `torchrun` on the CLI, or torch.multiprocessing with the same
environment variables torchrun sets (so DistContext.from_environment is what connects them).

Why training matches one process only to float tolerance, not bit for bit: with the global batch split over two
ranks, the synced BatchNorm sums per-channel moments over each half and then across ranks (one process uses ATen's
one-pass batch statistics), DDP averages the two half-batch gradients (g0 + g1) / 2 where one process sums all
per-sample terms in one reduction, and the loss is a mean of two means. No dropout, no augmentation (synthetic data),
and the width draws come from one seeded sampler on every rank, so nothing else differs. Measured after 6 steps:
max |weight difference| 3.4e-7, loss records differ by 2e-7; the bounds below leave ~10x headroom.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from hwbcnet.data import load_data
from hwbcnet.search.evolution import EvolutionConfig
from hwbcnet.search.runner import load_search, run_search
from hwbcnet.training import trainer as trainer_module
from hwbcnet.training.checkpoint import load_checkpoint
from hwbcnet.training.scoring import EvalData, recalibrate_bn, score_arch
from hwbcnet.training.trainer import TrainConfig, Trainer, load_supernet, train_supernet

pytestmark = pytest.mark.timeout(180)

WORLD = 2
# lr / weight decay as the CLI's defaults, so the torchrun CLI run and the in-process runs share one config
CONFIG = dict(model="resnet20", data="synthetic:256", resolution=16, width_mult=0.5, epochs=2, batch_size=16,
              max_steps_per_epoch=3, lr=0.05, weight_decay=5e-4, seed=0)
CLI_ARGS = ["--model", "resnet20", "--data", "synthetic:256", "--resolution", "16", "--width-mult", "0.5",
            "--epochs", "2", "--batch-size", "16", "--max-steps-per-epoch", "3", "--lr", "0.05", "--seed", "0"]
WEIGHT_ATOL = 5e-6
LOSS_ATOL = 5e-6


# --------------------------------------------------------------------------------------- process-group harness
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, job, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from hwbcnet.training.distributed import DistContext

    with DistContext.from_environment() as dist:
        assert dist is not None and dist.world_size == WORLD and dist.rank == rank
        job(dist, *args)


def _launch(job, *args) -> None:
    """Run job(dist, *args) on WORLD ranks; a failing rank fails the test (the others are terminated)."""
    mp.start_processes(_rank_main, args=(_free_port(), job, args), nprocs=WORLD, start_method="spawn", daemon=True)


def _log_saves(dist, log_dir: Path) -> None:
    """Record which rank calls save_checkpoint (one line per call) in log_dir/rank<r>.saves."""
    save = trainer_module.save_checkpoint

    def logged(path, payload):
        with open(log_dir / f"rank{dist.rank}.saves", "a") as handle:
            handle.write(f"{payload['epoch']}\n")
        return save(path, payload)

    trainer_module.save_checkpoint = logged


class _Killed(Exception):
    pass


def _train_until_job(dist, out: Path, log_dir: Path, stop_at_step: int) -> None:
    """Train and stop mid-epoch-2 on every rank at the same step (in-memory progress past the epoch-1 checkpoint is
    lost, as with a kill)."""
    _log_saves(dist, log_dir)

    def stop(step):
        if step == stop_at_step:
            raise _Killed

    with pytest.raises(_Killed):
        Trainer(TrainConfig(**CONFIG), out, dist).train(progress=False, on_step=stop)


def _resume_job(dist, out: Path, log_dir: Path) -> None:
    _log_saves(dist, log_dir)
    train_supernet(TrainConfig(**CONFIG), out, resume=True, progress=False, dist=dist)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """One process, global batch 16: the reference."""
    out = tmp_path_factory.mktemp("single")
    train_supernet(TrainConfig(**CONFIG), out, progress=False)
    return load_checkpoint(out / "supernet.pt")


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """`torchrun --standalone --nproc_per_node=2 -m hwbcnet train ...`: batch 8 per rank, global batch 16."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "hwbcnet", "train", *CLI_ARGS, "--out", str(out)]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if a[name].dtype.is_floating_point:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)
        else:  # num_batches_tracked
            assert torch.equal(a[name], b[name]), name


# ------------------------------------------------------------------------------------------------- training
def test_torchrun_training_equals_single_process(single_run, torchrun_run):
    out, stdout = torchrun_run
    assert sorted(p.name for p in out.iterdir()) == ["supernet.pt"]  # atomic write: no temporary files left
    distributed = load_checkpoint(out / "supernet.pt")
    assert distributed["step"] == single_run["step"] == 6 and distributed["finished"]
    _assert_same_weights(distributed["state_dict"], single_run["state_dict"], WEIGHT_ATOL)
    # the all-reduced loss records: same archs in the same order, losses of the global batch
    assert [arch for _, arch in distributed["loss_records"]] == [arch for _, arch in single_run["loss_records"]]
    np.testing.assert_allclose([loss for loss, _ in distributed["loss_records"]],
                               [loss for loss, _ in single_run["loss_records"]], rtol=0, atol=LOSS_ATOL)
    np.testing.assert_allclose([h["loss"] for h in distributed["history"]], [h["loss"] for h in single_run["history"]],
                               rtol=0, atol=LOSS_ATOL)
    # the optimizer state (momentum buffers) carries over to a resume, so it must agree too
    for index, state in single_run["optimizer"]["state"].items():
        torch.testing.assert_close(distributed["optimizer"]["state"][index]["momentum_buffer"],
                                   state["momentum_buffer"], rtol=0, atol=WEIGHT_ATOL)
    assert stdout.count("checkpoint:") == 1  # rank 0 alone reports (and prints the width-accuracy table)
    assert stdout.count("bcnetv2 supernet:") == 1


def test_distributed_resume_equals_uninterrupted_run(tmp_path, torchrun_run, single_run):
    out, log_dir, one_process = tmp_path / "run", tmp_path / "log", tmp_path / "one-process"
    log_dir.mkdir()
    steps_per_epoch = CONFIG["max_steps_per_epoch"]
    _launch(_train_until_job, out, log_dir, steps_per_epoch + 1)
    assert load_checkpoint(out / "supernet.pt")["epoch"] == 1
    shutil.copytree(out, one_process)
    _launch(_resume_job, out, log_dir)
    # only rank 0 wrote: epoch 1 in the killed run, epoch 2 after resuming
    assert sorted(p.name for p in log_dir.iterdir()) == ["rank0.saves"]
    assert (log_dir / "rank0.saves").read_text().split() == ["1", "2"]
    assert sorted(p.name for p in out.iterdir()) == ["supernet.pt"]
    resumed = load_checkpoint(out / "supernet.pt")
    uninterrupted = load_checkpoint(torchrun_run[0] / "supernet.pt")
    assert resumed["step"] == uninterrupted["step"] and resumed["finished"]
    # same ranks and operations; a float tolerance because gloo's reduction order is not promised across launches
    _assert_same_weights(resumed["state_dict"], uninterrupted["state_dict"], atol=1e-6)
    assert [arch for _, arch in resumed["loss_records"]] == [arch for _, arch in uninterrupted["loss_records"]]
    np.testing.assert_allclose([loss for loss, _ in resumed["loss_records"]],
                               [loss for loss, _ in uninterrupted["loss_records"]], rtol=0, atol=1e-6)
    # the data order does not depend on the number of ranks: one process may finish what two started
    train_supernet(TrainConfig(**CONFIG), one_process, resume=True, progress=False)
    _assert_same_weights(load_checkpoint(one_process / "supernet.pt")["state_dict"], single_run["state_dict"],
                         WEIGHT_ATOL)


# -------------------------------------------------------------------------------------------------- scoring
def _eval_data(space) -> EvalData:
    """Calibration batches of 50, 50, 50, 29 (the last one splits unevenly, 15/14) and the validation split plus a
    one-image batch that leaves rank 1 an empty share."""
    data = EvalData.from_splits(load_data(CONFIG["data"], space.resolution, seed=0), batch_size=50,
                                calibration_batches=4, seed=0)
    images, labels = data.validation[0]
    return EvalData(data.calibration, data.validation + [(images[:1], labels[:1])])


def _fixed_archs(space) -> list[np.ndarray]:
    return [space.full_arch(), space.min_arch(), space.random_archs(np.random.default_rng(3), 1)[0]]


def _scores_and_statistics(supernet, eval_data, reduce) -> list[dict]:
    """Per fixed arch: score_arch's result and, per path, the recalibrated BN running statistics."""
    results = []
    for arch in _fixed_archs(supernet.space):
        statistics = {}
        for path in supernet.principle.paths:
            supernet.activate(arch, path)
            recalibrate_bn(supernet, eval_data.calibration)
            statistics[path] = {name: value.clone() for name, value in supernet.state_dict().items()
                                if "running_" in name}
        results.append({"score": score_arch(supernet, arch, eval_data, reduce), "statistics": statistics})
    return results


def _score_job(dist, checkpoint: Path, out: Path) -> None:
    supernet, _ = load_supernet(checkpoint)
    dist.sync_batchnorm(supernet)
    results = _scores_and_statistics(supernet, _eval_data(supernet.space).shard(dist), dist.sum_counts)
    torch.save(results, out / f"scores-rank{dist.rank}.pt")
    search = EvolutionConfig(population=4, generations=2, top_k=2, mutations=2, crossovers=2)
    run_search(checkpoint, out / "search.json", flops="60%", evolution=search, seed=0, calibration_batches=3,
               progress=False, dist=dist)


def test_distributed_scoring_equals_single_process(tmp_path, single_run):
    checkpoint = tmp_path / "supernet.pt"
    torch.save(single_run, checkpoint)
    distributed_dir, single_dir = tmp_path / "distributed", tmp_path / "single"
    distributed_dir.mkdir()
    _launch(_score_job, checkpoint, distributed_dir)

    supernet, _ = load_supernet(checkpoint)
    expected = _scores_and_statistics(supernet, _eval_data(supernet.space), reduce=None)
    for rank in range(WORLD):  # every rank holds the all-reduced result
        got = torch.load(distributed_dir / f"scores-rank{rank}.pt", weights_only=True)
        assert len(got) == len(expected)
        for mine, reference in zip(got, expected):
            assert mine["score"] == reference["score"]  # accuracies from summed integer counts: exact
            for path, buffers in reference["statistics"].items():
                for name, value in buffers.items():
                    torch.testing.assert_close(mine["statistics"][path][name], value, rtol=1e-5, atol=1e-6,
                                               msg=f"{path} {name}")

    single = run_search(checkpoint, single_dir / "search.json", flops="60%", progress=False, seed=0,
                        calibration_batches=3,
                        evolution=EvolutionConfig(population=4, generations=2, top_k=2, mutations=2, crossovers=2))
    distributed = load_search(distributed_dir / "search.json")
    assert distributed["arch"] == single["arch"] and distributed["score"] == single["score"]
    assert distributed["top"] == single["top"] and distributed["history"] == single["history"]
    assert not [p.name for p in distributed_dir.iterdir() if p.name.endswith(".tmp")]



def test_leaving_the_context_releases_the_group(tmp_path, single_run):
    """A supernet that outlives the context must not keep the process group alive: a gloo group destroyed at
    interpreter exit instead aborted rank 1 of `torchrun ... train` now and then (SIGABRT after rank 0 had gone)."""
    import torch.distributed as torch_dist

    from hwbcnet.supernet.dynamic import is_sliced_batchnorm
    from hwbcnet.training.distributed import DistContext

    torch.save(single_run, tmp_path / "supernet.pt")
    supernet, _ = load_supernet(tmp_path / "supernet.pt")
    batchnorms = [m for m in supernet.modules() if is_sliced_batchnorm(m)]
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    with DistContext(rank=0, world_size=1, local_rank=0) as dist:
        dist.sync_batchnorm(supernet)
        assert batchnorms and all(bn.process_group is torch_dist.group.WORLD for bn in batchnorms)
    assert not torch_dist.is_initialized()
    assert all(bn.process_group is None for bn in batchnorms)
