import os
import pickle

import numpy as np
import pytest
import torch

from hwbcnet.data import load_data, stratified_split, unlabeled_images
from hwbcnet.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from hwbcnet.errors import HwbcnetError


def _indices(dataset) -> set:
    """Identity of the samples in a split: the raw rows they were cut from."""
    return {tuple(row.flatten().tolist()) for row in dataset.items}


def test_stratified_split_is_disjoint_complete_and_balanced():
    labels = np.repeat(np.arange(4), 20)
    train, val, test = stratified_split(labels, (0.7, 0.15, 0.15))
    assert (len(train), len(val), len(test)) == (56, 12, 12)  # per class 14 / 3 / 3
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(80))
    assert np.bincount(labels[val]).tolist() == [3, 3, 3, 3]
    again = stratified_split(labels, (0.7, 0.15, 0.15))
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))


def test_digits_splits_are_fixed_disjoint_and_normalized():
    data = load_data("digits", resolution=16, seed=0)
    assert (data.name, data.num_classes, data.in_channels, data.resolution) == ("digits", 10, 3, 16)
    assert (len(data.train), len(data.val), len(data.test)) == (1258, 270, 269)
    assert "scikit-learn" in data.source
    image, label = data.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and isinstance(label, int)
    assert torch.equal(image[0], image[2])  # grey replicated to three channels
    train = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert abs(float(train.mean())) < 1e-5 and abs(float(train.std()) - 1.0) < 1e-3  # train-split statistics
    assert not _indices(data.train) & _indices(data.test) and not _indices(data.val) & _indices(data.test)

    other_seed = load_data("digits", resolution=16, seed=123)
    assert torch.equal(other_seed.test.items, data.test.items) and torch.equal(other_seed.test.labels, data.test.labels)


def test_loader_order_follows_the_seed():
    data = load_data("digits", resolution=8)
    first = [labels.tolist() for _, labels in data.loader("train", 64, shuffle=True, seed=3)]
    again = [labels.tolist() for _, labels in data.loader("train", 64, shuffle=True, seed=3)]
    other = [labels.tolist() for _, labels in data.loader("train", 64, shuffle=True, seed=4)]
    assert first == again and first != other
    batches = list(data.loader("train", 64, shuffle=True, seed=3, drop_last=True))
    assert len(batches) == 1258 // 64 and batches[0][0].shape == (64, 3, 8, 8)
    with pytest.raises(HwbcnetError, match="unknown split"):
        data.loader("training", 8)


def test_synthetic_is_deterministic_and_sized():
    data = load_data("synthetic:200", resolution=12)
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (140, 30, 30, 10)
    assert torch.equal(data.test[5][0], load_data("synthetic:200", resolution=12, seed=9).test[5][0])
    assert data.train[0][0].shape == (3, 12, 12)


def _write_cifar(root, per_batch=20, test_size=10):
    """A miniature CIFAR-10 in the real on-disk format: pickled dicts of b'data' uint8 (N, 3072), b'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)
    batches = {}
    for name, size in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test_size)]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [i % 10 for i in range(size)],
            b"data": rng.randint(0, 256, size=(size, 3072)).astype(np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(size)],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
        batches[name] = batch
    return batches


def test_cifar10_folder_loads_in_the_real_format(tmp_path):
    batches = _write_cifar(tmp_path)
    for spec in (f"cifar10:{tmp_path}", f"cifar10:{tmp_path / 'cifar-10-batches-py'}"):
        data = load_data(spec, resolution=32)
        assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (90, 10, 10, 10)
    image, label = data.test[3]
    raw = torch.from_numpy(batches["test_batch"][b"data"][3].reshape(3, 32, 32)).float() / 255  # R, G, B planes
    expected = (raw - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    assert label == 3 and torch.allclose(image, expected, atol=1e-6)
    assert np.bincount(data.val.labels.numpy()).tolist() == [1] * 10

    # training images are augmented (crop + flip) and replayed exactly for the same loader seed
    first = next(iter(data.loader("train", 90, seed=1)))[0]
    assert torch.equal(first, next(iter(data.loader("train", 90, seed=1)))[0])
    plain = torch.stack([data.train_eval[i][0] for i in range(90)])
    assert not torch.equal(first, plain)
    assert load_data(f"cifar10:{tmp_path}", resolution=16).train[0][0].shape == (3, 16, 16)


def test_cifar10_errors(tmp_path):
    with pytest.raises(HwbcnetError, match="data_batch_1"):
        load_data(f"cifar10:{tmp_path}", 32)
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(HwbcnetError, match="data_batch_2: not a readable CIFAR-10 batch"):
        load_data(f"cifar10:{tmp_path}", 32)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(HwbcnetError, match="uint8 \\(N, 3072\\)"):
        load_data(f"cifar10:{tmp_path}", 32)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as handle:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"evil": os.getcwd}, handle)
    with pytest.raises(HwbcnetError, match="not a readable"):  # only arrays, dicts and lists may be unpickled
        load_data(f"cifar10:{tmp_path}", 32)


def _write_image_folder(root, classes=("cat", "dog"), train_per_class=10, val_per_class=2):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.randint(0, 256, size=(12 + i, 20, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_loads(tmp_path):
    _write_image_folder(tmp_path)
    data = load_data(f"imagefolder:{tmp_path}", resolution=8)
    # val: 10 % of train per class; test: the held-out val/ folder
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (18, 2, 4, 2)
    assert sorted(data.test.labels.tolist()) == [0, 0, 1, 1]
    image, _ = data.test[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert torch.equal(data.val[0][0], data.val[0][0])  # evaluation preprocessing is deterministic
    assert next(iter(data.loader("train", 4, shuffle=True, seed=0)))[0].shape == (4, 3, 8, 8)
    assert len(unlabeled_images(tmp_path / "val", 8)) == 4


def test_image_folder_without_held_out_folder_carves_test(tmp_path):
    _write_image_folder(tmp_path, train_per_class=20, val_per_class=0)
    for name in ("cat", "dog"):
        (tmp_path / "val" / name).rmdir()
    (tmp_path / "val").rmdir()
    data = load_data(f"imagefolder:{tmp_path}", resolution=8)
    assert (len(data.train), len(data.val), len(data.test)) == (28, 6, 6)


def test_image_folder_errors(tmp_path):
    with pytest.raises(HwbcnetError, match="train/<class>"):
        load_data(f"imagefolder:{tmp_path}", 8)
    (tmp_path / "train" / "empty").mkdir(parents=True)
    with pytest.raises(HwbcnetError, match="no .*images; remove the empty class folder"):
        load_data(f"imagefolder:{tmp_path}", 8)
    (tmp_path / "train" / "empty" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(HwbcnetError, match="too few images"):
        load_data(f"imagefolder:{tmp_path}", 8)
    with pytest.raises(HwbcnetError, match="broken.jpg: cannot read this image"):
        unlabeled_images(tmp_path, 8)[0]
    with pytest.raises(HwbcnetError, match="folder of"):
        unlabeled_images(tmp_path / "missing", 8)


@pytest.mark.parametrize("spec", ["mnist", "cifar10", "digits:extra", "synthetic:5", "synthetic:abc", "imagefolder:"])
def test_bad_specs(spec):
    with pytest.raises(HwbcnetError):
        load_data(spec, 32)


def test_bad_resolution():
    with pytest.raises(HwbcnetError, match="resolution"):
        load_data("digits", 0)
