import pytest
import torch

from hwbcnet.errors import HwbcnetError
from hwbcnet.training.checkpoint import load_checkpoint
from hwbcnet.training.trainer import TrainConfig, Trainer, load_supernet, train_supernet

QUICK = dict(model="resnet20", data="digits", resolution=16, width_mult=0.5, epochs=2, batch_size=32,
             max_steps_per_epoch=6)


@pytest.mark.timeout(300)
def test_bcnetv2_supernet_learns_digits(tmp_path):
    """A few epochs on real data: full width >= 90 %, smallest width >= 80 % validation accuracy (both paths avg)."""
    from hwbcnet.api import width_accuracy

    config = TrainConfig(model="resnet20", data="digits", principle="bcnetv2", resolution=16, epochs=8,
                         batch_size=32, lr=0.05)
    result = train_supernet(config, tmp_path, progress=False)
    rows = {r["width"]: r for r in width_accuracy(result.supernet, "digits")}
    assert rows["full"]["score"] >= 90.0, rows
    assert rows["min"]["score"] >= 80.0, rows
    assert set(rows["full"]) >= {"left", "right", "score"}


def test_loss_records_keep_the_lowest_losses(tmp_path):
    result = train_supernet(TrainConfig(principle="bcnet", loss_records=5, **QUICK), tmp_path, progress=False)
    losses = [loss for loss, _ in result.loss_records]
    assert len(losses) == 5 and losses == sorted(losses)
    assert all(len(arch) == result.space.num_vars for _, arch in result.loss_records)


class Killed(Exception):
    pass


@pytest.mark.parametrize("principle", ["bcnetv2", "ua"])
def test_resume_after_kill_mid_epoch(tmp_path, principle):
    config = TrainConfig(principle=principle, **{**QUICK, "epochs": 3})
    reference = train_supernet(config, tmp_path / "ref", progress=False)

    trainer = Trainer(config, tmp_path / "run")

    def kill(step):
        if step == trainer.steps_per_epoch + 2:  # in the middle of epoch 2
            raise Killed

    with pytest.raises(Killed):
        trainer.train(progress=False, on_step=kill)
    partial = load_checkpoint(tmp_path / "run" / "supernet.pt")
    assert partial["epoch"] == 1 and not partial["finished"]

    resumed = train_supernet(config, tmp_path / "run", resume=True, progress=False)
    final = load_checkpoint(resumed.checkpoint)
    assert final["finished"] and final["step"] == final["planned_steps"] == 3 * trainer.steps_per_epoch
    supernet, _ = load_supernet(resumed.checkpoint)  # loadable
    for name, tensor in reference.supernet.state_dict().items():
        torch.testing.assert_close(supernet.state_dict()[name], tensor, rtol=0, atol=0)
    assert final["loss_records"] == load_checkpoint(reference.checkpoint)["loss_records"]


def test_existing_checkpoint_is_not_overwritten_without_resume(tmp_path):
    config = TrainConfig(principle="bcnet", **{**QUICK, "epochs": 1})
    train_supernet(config, tmp_path, progress=False)
    before = (tmp_path / "supernet.pt").read_bytes()
    with pytest.raises(HwbcnetError, match="--resume"):
        train_supernet(config, tmp_path, progress=False)
    assert (tmp_path / "supernet.pt").read_bytes() == before


def test_resume_with_other_options_is_refused(tmp_path):
    train_supernet(TrainConfig(principle="bcnet", **{**QUICK, "epochs": 1}), tmp_path, progress=False)
    with pytest.raises(HwbcnetError, match="principle"):
        train_supernet(TrainConfig(principle="ua", **{**QUICK, "epochs": 1}), tmp_path, resume=True, progress=False)


def test_corrupt_checkpoint_is_refused(tmp_path):
    path = tmp_path / "supernet.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(HwbcnetError, match="unreadable checkpoint"):
        load_checkpoint(path)
