"""Data sets for supernet training, search evaluation and INT8 calibration (see sources.load_data for the specs).

The loaders need torch and are imported on first use, so the torch-free spec checks (data.specs) work on a
deployment target without it.
"""

from hwbcnet.data.specs import DATA_KINDS, DATA_SPECS, parse_data_spec

__all__ = ["DATA_KINDS", "DATA_SPECS", "DataSplits", "ImageDataset", "load_data", "parse_data_spec",
           "stratified_split", "unlabeled_images"]

_LAZY = {"load_data": "sources", "unlabeled_images": "sources", "DataSplits": "splits", "ImageDataset": "splits",
         "stratified_split": "splits"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"hwbcnet.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'hwbcnet.data' has no attribute {name!r}")
