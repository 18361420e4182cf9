"""The syntax of `--data` specs, without torch (the command line checks them on machines that have none)."""

from __future__ import annotations

import re
from pathlib import Path

DATA_KINDS = ("digits", "synthetic", "cifar10", "imagefolder")
DATA_SPECS = "digits, synthetic[:N], cifar10:<dir> or imagefolder:<dir>"
SYNTHETIC_DEFAULT_SIZE = 5000
SYNTHETIC_MIN_SIZE = 100
SYNTHETIC_MAX_SIZE = 10_000_000


def parse_data_spec(spec: str) -> tuple[str, str]:
    """(kind, argument) of a `--data` spec, checked as far as that is cheap: the syntax, the synthetic size and that
    a data folder exists. A ValueError says what is allowed; the files inside are checked when they are read."""
    kind, colon, argument = spec.partition(":")
    if kind == "digits" and not colon:
        return kind, argument
    if kind == "synthetic":
        if colon:
            synthetic_size(argument)
        return kind, argument
    if kind in ("cifar10", "imagefolder") and argument:
        try:
            is_folder = Path(argument).expanduser().is_dir()
        except (OSError, ValueError):  # too long, NUL byte
            is_folder = False
        if not is_folder:
            raise ValueError(f"{argument!r} is not a folder; expected {DATA_SPECS}")
        return kind, argument
    raise ValueError(f"expected {DATA_SPECS}")


def synthetic_size(argument: str) -> int:
    if not argument:
        return SYNTHETIC_DEFAULT_SIZE
    if not re.fullmatch(r"[0-9]+", argument) or not SYNTHETIC_MIN_SIZE <= int(argument) <= SYNTHETIC_MAX_SIZE:
        raise ValueError(f"expected synthetic:N with N from {SYNTHETIC_MIN_SIZE} to {SYNTHETIC_MAX_SIZE:,} images in "
                         "total")
    return int(argument)
