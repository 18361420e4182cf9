"""Validated command-line options: every option's value is checked where it enters, when the command line is parsed.

Convention (tests/test_cli_contract.py fails the suite for an option that does not follow it)
----------------------------------------------------------------------------------------------
* Declare every option through a value type from this module. `.option(...)` takes typer.Option's arguments and
  installs the type as the option's parser, so a validated option is one declaration:

      epochs: int = Int(1, 10_000).option(10, "--epochs", help="Training epochs.")
      out: Path = OutputDir().option(..., "--out", help="Output folder.")
      weights: Optional[Path] = ExistingFile(".pt", ".pth", ".safetensors").option(None, "--weights")
      fixed: Optional[List[str]] = Text(check_glob, "GLOB").option(None, "--fixed")  # repeatable

* Numbers: Int / Float with their range. Paths: ExistingFile / ExistingDir for what is read, OutputFile / OutputDir
  for what is written (an existing path of the other kind, or one below a file, is refused), optionally with the
  suffixes the format needs. Fixed words: Choice. Budgets: Budget("latency"). Anything else: Text(check, metavar),
  where `check(text)` returns the value or raises ValueError(what is allowed); MODEL, MODEL_KWARGS, MODULE_GLOB, MARGIN, ARCH, DATA, DEVICE and CALIB
  below are Texts over the API's own syntax checks, so the command line and the API accept the same strings.
  A new type needs bad values in tests/test_cli_fuzz.py (bad_values), which then fuzzes every option using it.
* bool flags take no value and need nothing.
* A bad value is one line naming the option, the value and what is allowed, with exit code 2:
      hwbcnet: error: --epochs '-1': expected an integer from 1 to 10000
  typer's own value errors (no value after an option, a value for a flag, a missing option) are one line too
  (hwbcnet.cli._OneLineValueErrors).
* Checks that need heavy work (tracing a model, reading a checkpoint) stay in the API, which raises HwbcnetError:
  parse-time checks cover the syntax, the range and the kind of path, nothing slower. Checks across options (one
  of --fp16/--int8) stay in the command.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

import typer

from hwbcnet.errors import HwbcnetError

SHOWN_CHARACTERS = 200  # of a bad value as quoted in the message


class InvalidValue(ValueError):
    """A reason that names the value itself (a file's content error): the message adds only the option."""


def shown(text: str) -> str:
    """The value as the message echoes it: quoted with escapes (one line, empty and blank values visible), cut."""
    quoted = repr(text)
    if len(quoted) > SHOWN_CHARACTERS:
        return f"{quoted[:SHOWN_CHARACTERS]}... ({len(text)} characters)"
    return quoted


class ValueType:
    """What an option accepts. `parse(text)` returns the value or raises ValueError saying what is allowed."""

    metavar = "TEXT"
    allowed = "expected a value"

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def describe(self) -> str | None:
        """The range for --help, or None."""
        return None

    def option(self, default: Any, *names: str, help: str | None = None, **kwargs: Any) -> Any:
        note = self.describe()
        if note:
            help = f"{help + ' ' if help else ''}Range: {note}."
        return typer.Option(default, *names, parser=OptionParser(self, names), metavar=self.metavar, help=help,
                            **kwargs)


class OptionParser:
    """The parser typer calls for one option: the value through its type; an error names the option."""

    def __init__(self, value_type: ValueType, names: tuple[str, ...]):
        self.value_type = value_type
        self.name = max(names, key=len)  # --model rather than -m

    def __call__(self, value: Any) -> Any:
        text = value if isinstance(value, str) else str(value)  # defaults arrive as Python values
        try:
            return self.value_type.parse(text)
        except InvalidValue as exc:
            raise HwbcnetError(f"{self.name}: {exc}") from None
        except ValueError as exc:
            raise HwbcnetError(f"{self.name} {shown(text)}: {exc or self.value_type.allowed}") from None


def either(words) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


# ------------------------------------------------------------------------------------------------------ numbers
class Int(ValueType):
    metavar = "INTEGER"

    def __init__(self, min: int, max: int, *, also: tuple[int, ...] = ()):
        self.min, self.max, self.also = min, max, tuple(also)
        self.allowed = f"expected {''.join(f'{v} or ' for v in self.also)}an integer from {min} to {max}"

    def describe(self) -> str:
        return f"{''.join(f'{v} or ' for v in self.also)}{self.min} to {self.max}"

    def parse(self, text: str) -> int:
        digits = text.strip()
        # length first: int() of thousands of digits is refused by Python itself, with its own message
        if len(digits) > 40 or not re.fullmatch(r"[+-]?[0-9]+", digits):
            raise ValueError(self.allowed)
        value = int(digits)
        if not (self.min <= value <= self.max or value in self.also):
            raise ValueError(self.allowed)
        return value


_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class Float(ValueType):
    metavar = "FLOAT"

    def __init__(self, min: float, max: float, *, min_open: bool = False, max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open
        self.allowed = f"expected a number in {self.describe()}"

    def describe(self) -> str:
        return f"{'(' if self.min_open else '['}{self.min:g}, {self.max:g}{')' if self.max_open else ']'}"

    def parse(self, text: str) -> float:
        number = text.strip()
        if len(number) > 40 or not _FLOAT.fullmatch(number):
            raise ValueError(self.allowed)
        value = float(number)
        above = value > self.min if self.min_open else value >= self.min
        below = value < self.max if self.max_open else value <= self.max
        if not (math.isfinite(value) and above and below):
            raise ValueError(self.allowed)
        return value


# -------------------------------------------------------------------------------------------------------- words
class Choice(ValueType):
    def __init__(self, *choices: str):
        self.choices = choices
        self.metavar = "|".join(choices)
        self.allowed = f"expected {either(choices)}"

    def parse(self, text: str) -> str:
        if text not in self.choices:
            raise ValueError(self.allowed)
        return text


class Text(ValueType):
    """A string checked by `check(text)`, which returns the value to use or raises ValueError(what is allowed)."""

    def __init__(self, check: Callable[[str], Any], metavar: str = "TEXT"):
        self.check, self.metavar = check, metavar

    def parse(self, text: str) -> Any:
        return self.check(text)


class Budget(ValueType):
    """A budget string of `cost` (flops, params, latency); `absolute` refuses percentages. The text is passed on."""

    metavar = "BUDGET"

    def __init__(self, cost: str, *, absolute: bool = False):
        self.cost, self.absolute = cost, absolute

    def parse(self, text: str) -> str:
        from hwbcnet.budgets import read_budget

        if self.absolute and text.strip().endswith("%"):
            raise ValueError("expected an absolute time such as 10ms or 800us, not a percentage")
        read_budget(self.cost, text)
        return text


# -------------------------------------------------------------------------------------------------------- paths
def path_kind(text: str) -> str:
    """"file", "folder", "other" (a device, a socket, ...) or "missing"; ValueError for text that is no path."""
    if not text.strip():
        raise ValueError("expected a path, not an empty or blank string")
    try:
        mode = Path(text).stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:
        raise ValueError(f"not usable as a path ({exc.strerror})") from None
    except ValueError:  # an embedded NUL character
        raise ValueError("not usable as a path (it holds a NUL character)") from None
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else "other"


def _check_suffix(text: str, suffixes: tuple[str, ...]) -> None:
    if suffixes and Path(text).suffix.lower() not in suffixes:
        raise ValueError(f"expected a file name ending in {either(suffixes)}")


def _check_writable_location(path: Path) -> None:
    """The nearest existing ancestor must be a writable folder (missing folders in between are created)."""
    for parent in path.parents:
        kind = path_kind(str(parent))
        if kind == "missing":
            continue
        if kind != "folder":
            raise ValueError(f"{str(parent)!r} is a file, so nothing can be created below it")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"folder {str(parent)!r} is not writable")
        return


class ExistingFile(ValueType):
    metavar = "FILE"

    def __init__(self, *suffixes: str):
        self.suffixes = suffixes

    def parse(self, text: str) -> Path:
        kind = path_kind(text)
        if kind != "file":
            raise ValueError({"missing": "file not found", "folder": "is a folder; expected a file",
                              "other": "is not a regular file"}[kind])
        _check_suffix(text, self.suffixes)
        return Path(text)


class ExistingDir(ValueType):
    metavar = "DIR"

    def parse(self, text: str) -> Path:
        kind = path_kind(text)
        if kind != "folder":
            raise ValueError({"missing": "folder not found", "file": "is a file; expected a folder",
                              "other": "is not a folder"}[kind])
        return Path(text)


class OutputFile(ValueType):
    """A file to write: new or an existing file (replaced atomically), never a folder or below a file."""

    metavar = "FILE"

    def __init__(self, *suffixes: str):
        self.suffixes = suffixes

    def parse(self, text: str) -> Path:
        kind = path_kind(text)
        if kind == "folder":
            raise ValueError("is a folder; expected a file path")
        if kind == "other":
            raise ValueError("exists and is not a regular file")
        _check_suffix(text, self.suffixes)
        _check_writable_location(Path(text))
        return Path(text)


class OutputDir(ValueType):
    """A folder to write into: new (created) or existing, never a file or below a file."""

    metavar = "DIR"

    def parse(self, text: str) -> Path:
        kind = path_kind(text)
        if kind in ("file", "other"):
            raise ValueError("is a file; expected a folder (created when missing)")
        _check_writable_location(Path(text))
        return Path(text)


# --------------------------------------------------------------------------------------- the API's own strings
def _model(text: str) -> str:
    from hwbcnet.space.models.sources import check_model_spec

    check_model_spec(text)
    location = text.rpartition(":")[0]
    if location.endswith(".py") and path_kind(os.path.expanduser(location)) != "file":
        raise ValueError(f"{location!r} is not a file; expected path/to/file.py:factory")
    return text


def _model_kwargs(text: str) -> str:
    from hwbcnet.space.models.sources import parse_model_kwargs

    parse_model_kwargs(text)
    return text


def _module_glob(text: str) -> str:
    if not text.strip() or text != text.strip():
        raise ValueError("expected a glob over module names such as 'features.0.*' (no surrounding spaces)")
    return text


def _margin(text: str) -> str:
    from hwbcnet.budgets import read_margin

    read_margin(text)
    return text


def _arch(text: str) -> str:
    from hwbcnet.space.space import arch_form

    arch_form(text)
    return text


def _data(text: str) -> str:
    from hwbcnet.data.specs import parse_data_spec

    parse_data_spec(text)
    return text


def _device(text: str) -> str:
    """A device profile (a shipped name, `jetson`/`gpu` for this machine's own, or a .toml path), loaded, since a
    profile is small and a broken one should stop the command before anything is traced or measured."""
    from hwbcnet.hardware.profiles import load_profile

    try:
        load_profile(text)
    except HwbcnetError as exc:  # names the device or the file
        raise InvalidValue(str(exc)) from None
    return text


def _calibration_images(text: str) -> str:
    from hwbcnet.data.specs import DATA_SPECS, parse_data_spec

    try:
        parse_data_spec(text)
    except ValueError:
        if path_kind(text) != "folder":
            raise ValueError(f"expected a data spec ({DATA_SPECS}) or a folder of images") from None
    return text


MODEL = Text(_model, "MODEL")
MODEL_KWARGS = Text(_model_kwargs, "JSON")
MODULE_GLOB = Text(_module_glob, "GLOB")
MARGIN = Text(_margin, "MARGIN")
ARCH = Text(_arch, "ARCH")
DATA = Text(_data, "SPEC")
DEVICE = Text(_device, "DEVICE")
CALIB = Text(_calibration_images, "SPEC|DIR")
