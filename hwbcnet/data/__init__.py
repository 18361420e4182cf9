"""Data sets for supernet training, search evaluation and INT8 calibration (see sources.load_data for the specs)."""

from hwbcnet.data.sources import DATA_KINDS, load_data, unlabeled_images
from hwbcnet.data.splits import DataSplits, ImageDataset, stratified_split

__all__ = ["DATA_KINDS", "DataSplits", "ImageDataset", "load_data", "stratified_split", "unlabeled_images"]
