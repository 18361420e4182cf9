"""The data sets behind `--data`: digits (default), cifar10:<dir>, imagefolder:<dir>, synthetic[:N]."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hwbcnet.data.specs import DATA_SPECS, parse_data_spec, synthetic_size
from hwbcnet.data.splits import DataSplits, ImageDataset, stratified_split
from hwbcnet.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFile,
    PrepareTensor,
    SyntheticImage,
    Uint8Image,
)
from hwbcnet.errors import HwbcnetError

TRAIN_VAL_TEST = (0.70, 0.15, 0.15)
HELD_OUT_VAL = 0.10  # val carved from a training set that comes with its own test set (CIFAR-10: 5,000 of 50,000)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_SUFFIX_LIST = "/".join(sorted(IMAGE_SUFFIXES))
SYNTHETIC_CLASSES = 10


def load_data(spec: str = "digits", resolution: int = 32, seed: int = 0) -> DataSplits:
    """Load a data set by its `--data` spec. Splits are fixed (independent of `seed`); `seed` is the default seed
    of `DataSplits.loader` (batch order and training augmentation)."""
    if not isinstance(resolution, int) or resolution < 1:
        raise HwbcnetError(f"resolution {resolution!r}: expected a positive number of pixels such as 32 or 224")
    try:
        kind, argument = parse_data_spec(spec)
    except ValueError as exc:
        raise HwbcnetError(f"--data {spec!r}: {exc}") from None
    if kind == "digits":
        splits = _digits(resolution)
    elif kind == "synthetic":
        splits = _synthetic(synthetic_size(argument), resolution)
    elif kind == "cifar10":
        splits = _cifar10(Path(argument).expanduser(), resolution)
    else:
        splits = _image_folder(Path(argument).expanduser(), resolution)
    splits.seed = seed
    return splits


def _split_dataset(name, dataset, num_classes, resolution, source) -> DataSplits:
    """train/val/test carved with TRAIN_VAL_TEST fractions from one labelled set that needs no augmentation
    (flips or crops would change what a digit means; synthetic data is for speed)."""
    train_index, val_index, test_index = stratified_split(dataset.labels.numpy(), TRAIN_VAL_TEST)
    train = dataset.subset(train_index)
    return DataSplits(
        name=name,
        train=train,
        val=dataset.subset(val_index),
        test=dataset.subset(test_index),
        train_eval=train,
        num_classes=num_classes,
        resolution=resolution,
        source=source,
    )


# ----------------------------------------------------------------------------------------------------- digits
def _digits(resolution: int) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(bunch.target)
    images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    train_index, _, _ = stratified_split(labels.numpy(), TRAIN_VAL_TEST)
    train_images = images[torch.from_numpy(train_index)]
    images = (images - train_images.mean()) / train_images.std()  # one channel repeated, so one mean/std
    dataset = ImageDataset(images, labels, PrepareTensor())
    return _split_dataset(
        "digits", dataset, 10, resolution,
        "UCI ML hand-written digits (1,797 8x8 images), bundled with scikit-learn",
    )


# -------------------------------------------------------------------------------------------------- synthetic
def _synthetic(size: int, resolution: int) -> DataSplits:
    """Each class is a fixed smooth random pattern (4x4 upsampled) buried in per-pixel unit noise: cheap to make,
    learnable, and never held in memory."""
    patterns = torch.randn(SYNTHETIC_CLASSES, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    prototypes = F.interpolate(patterns, size=(resolution, resolution), mode="bilinear", align_corners=False)
    labels = torch.arange(size) % SYNTHETIC_CLASSES
    items = torch.stack([labels, torch.arange(size)], dim=1)  # (label, noise seed) per image
    dataset = ImageDataset(items, labels, SyntheticImage(prototypes))
    return _split_dataset(
        f"synthetic:{size}", dataset, SYNTHETIC_CLASSES, resolution,
        "synthetic class patterns plus Gaussian noise (for speed tests; accuracy means nothing)",
    )


# ---------------------------------------------------------------------------------------------------- cifar10
_CIFAR_HELP = (
    "expected the CIFAR-10 python batches (data_batch_1..5, test_batch) in {dir} or {dir}/cifar-10-batches-py; "
    "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it there"
)


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR-10 batches are pickles; allow only what they contain (dicts, lists, bytes, numpy arrays) so a
    tampered file cannot run code. Old files name numpy.core.*, numpy 2 writes numpy._core.*: map both."""

    _reconstruct = np.empty(0).__reduce__()[0]
    _scalar = np.float64(0).__reduce__()[0]
    ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return self.ALLOWED[(module, name)]


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except Exception as exc:  # any unpickling failure means the same thing to the user: a broken file
        raise HwbcnetError(
            f"{path}: not a readable CIFAR-10 batch ({exc.__class__.__name__}); re-extract the archive"
        ) from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise HwbcnetError(f"{path}: expected b'data' uint8 (N, 3072) and N b'labels'; re-extract the archive")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise HwbcnetError(f"{path}: labels outside 0..9; re-extract the archive")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar10(folder: Path, resolution: int) -> DataSplits:
    nested = folder / "cifar-10-batches-py"
    root = nested if (nested / "data_batch_1").exists() else folder
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise HwbcnetError(f"cifar10:{folder}: missing {', '.join(missing)}; " + _CIFAR_HELP.format(dir=folder))
    train = [_cifar_batch(root / name) for name in names[:5]]
    test_images, test_labels = _cifar_batch(root / "test_batch")
    train_images = torch.from_numpy(np.concatenate([images for images, _ in train]))
    train_labels = torch.from_numpy(np.concatenate([labels for _, labels in train]))
    augment = Uint8Image(resolution, CIFAR10_MEAN, CIFAR10_STD, crop_padding=4, flip=True)
    plain = Uint8Image(resolution, CIFAR10_MEAN, CIFAR10_STD)
    train_index, val_index = stratified_split(train_labels.numpy(), (1 - HELD_OUT_VAL, HELD_OUT_VAL))
    everything = ImageDataset(train_images, train_labels, augment)
    train = everything.subset(train_index)
    return DataSplits(
        name="cifar10",
        train=train,
        val=everything.subset(val_index).with_transform(plain),
        test=ImageDataset(torch.from_numpy(test_images), torch.from_numpy(test_labels), plain),
        train_eval=train.with_transform(plain),
        num_classes=10,
        resolution=resolution,
        source=f"CIFAR-10 python batches in {root}",
    )


# ------------------------------------------------------------------------------------------------ imagefolder
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _class_folder(folder: Path, classes: list[str] | None) -> tuple[list[str], list[Path], torch.Tensor]:
    """<folder>/<class>/**/<image>. With `classes` given (the training classes), every class here must be one of
    them; labels follow their order."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not found:
        raise HwbcnetError(f"{folder}: expected one sub-folder per class holding {_SUFFIX_LIST} images")
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise HwbcnetError(f"{folder}: classes {', '.join(unknown[:5])} do not exist in the training folder")
    paths, labels = [], []
    for name in found:
        files = _image_files(folder / name)
        if not files:
            raise HwbcnetError(f"{folder / name}: no {_SUFFIX_LIST} images; remove the empty class folder")
        paths += files
        labels += [classes.index(name)] * len(files)
    return classes, paths, torch.tensor(labels)


def _image_folder(folder: Path, resolution: int) -> DataSplits:
    """ImageNet layout. val is carved from train; the labelled held-out folder (<dir>/test, else <dir>/val)
    is the test split; without one, test is carved from train as well."""
    if not (folder / "train").is_dir():
        raise HwbcnetError(
            f"imagefolder:{folder}: expected {folder}/train/<class>/*.jpg|png (and optionally {folder}/val/<class>/...)"
        )
    classes, paths, labels = _class_folder(folder / "train", None)
    augment, plain = ImageFile(resolution, augment=True), ImageFile(resolution)
    everything = ImageDataset(paths, labels, augment)
    held_out = next((folder / name for name in ("test", "val") if (folder / name).is_dir()), None)
    if held_out is None:
        train_index, val_index, test_index = stratified_split(labels.numpy(), TRAIN_VAL_TEST)
        test = everything.subset(test_index).with_transform(plain)
    else:
        train_index, val_index = stratified_split(labels.numpy(), (1 - HELD_OUT_VAL, HELD_OUT_VAL))
        _, test_paths, test_labels = _class_folder(held_out, classes)
        test = ImageDataset(test_paths, test_labels, plain)
    if len(val_index) == 0 or len(test) == 0:
        raise HwbcnetError(f"imagefolder:{folder}: too few images to hold out validation/test images; add images per class")
    train = everything.subset(train_index)
    return DataSplits(
        name=f"imagefolder:{folder.name}",
        train=train,
        val=everything.subset(val_index).with_transform(plain),
        test=test,
        train_eval=train.with_transform(plain),
        num_classes=len(classes),
        resolution=resolution,
        source=f"image folder {folder}",
    )


def unlabeled_images(folder: str | Path, resolution: int) -> ImageDataset:
    """Every image under `folder` (any depth, label 0), with imagefolder evaluation preprocessing: the source of
    INT8 calibration batches when the user points at a plain folder of images."""
    folder = Path(folder).expanduser()
    files = _image_files(folder) if folder.is_dir() else []
    if not files:
        raise HwbcnetError(f"{folder}: expected a folder of {_SUFFIX_LIST} images or a data spec ({DATA_SPECS})")
    return ImageDataset(files, torch.zeros(len(files), dtype=torch.long), ImageFile(resolution, IMAGENET_MEAN, IMAGENET_STD))
