"""The options of a typer app as registered (commands, sub-apps, parameters), for the CLI contract and fuzz tests."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from typer.models import ParameterInfo

from hwbcnet.cli_options import OptionParser, ValueType


@dataclass
class CliOption:
    command: str  # "lut show"
    name: str  # "--lut" (the longest of its names)
    parameter: str  # the Python parameter
    annotation: Any  # without Optional[...]
    info: ParameterInfo | None  # None when the parameter has a plain default (typer makes an unchecked option)
    callback: Callable

    @property
    def is_flag(self) -> bool:
        return self.annotation is bool

    @property
    def value_type(self) -> ValueType | None:
        parser = getattr(self.info, "parser", None)
        return parser.value_type if isinstance(parser, OptionParser) else None

    @property
    def default(self) -> Any:
        return getattr(self.info, "default", None)


def commands(app: typer.Typer, prefix: tuple[str, ...] = ()) -> dict[str, Callable]:
    """'lut show' -> its function, for every command of `app` and its sub-apps."""
    found = {}
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.lower().replace("_", "-")
        found[" ".join((*prefix, name))] = info.callback
    for group in app.registered_groups:
        found.update(commands(group.typer_instance, (*prefix, group.name)))
    return found


def _without_optional(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return args[0]
    return annotation


def options(app: typer.Typer) -> list[CliOption]:
    found = []
    for command, callback in commands(app).items():
        hints = typing.get_type_hints(callback, include_extras=True)
        for parameter in inspect.signature(callback).parameters.values():
            annotation = hints.get(parameter.name, Any)
            info = parameter.default if isinstance(parameter.default, ParameterInfo) else None
            if typing.get_origin(annotation) is Annotated:
                annotation, *metadata = typing.get_args(annotation)
                info = next((m for m in metadata if isinstance(m, ParameterInfo)), info)
            decls = [d for d in (getattr(info, "param_decls", None) or ()) if d.startswith("-")]
            name = max(decls, key=len) if decls else "--" + parameter.name.replace("_", "-")
            found.append(CliOption(command, name, parameter.name, _without_optional(annotation), info, callback))
    return found


def _example(option: CliOption) -> str:
    kind = option.annotation
    if kind is int:
        return f"Int(1, 100).option({option.default!r}, \"{option.name}\", help=...)"
    if kind is float:
        return f"Float(0, 1).option({option.default!r}, \"{option.name}\", help=...)"
    if isinstance(kind, type) and issubclass(kind, Path):
        return f"ExistingFile(\".json\").option(..., \"{option.name}\", help=...)"
    return f"Choice(\"a\", \"b\").option(..., \"{option.name}\", help=...)  # or Text(check, \"METAVAR\"), Budget(...)"


def unvalidated(app: typer.Typer, program: str = "hwbcnet") -> list[str]:
    """One message per option that is neither a bool flag nor declared through a value type of cli_options."""
    problems = []
    for option in options(app):
        if option.is_flag or option.value_type is not None:
            continue
        where = f"{option.callback.__module__}.{option.callback.__qualname__}"
        problems.append(
            f"`{program} {option.command} {option.name}` (parameter `{option.parameter}` of {where}) is not validated. "
            f"Declare it through a value type of hwbcnet/cli_options.py, e.g. "
            f"`{option.parameter}: {getattr(option.annotation, '__name__', 'str')} = {_example(option)}`: "
            f"Int/Float for numbers, ExistingFile/ExistingDir/OutputFile/OutputDir for paths, Choice, Budget or "
            f"Text(check) for strings; bool flags need nothing. "
            f"The convention is at the top of hwbcnet/cli_options.py.")
    return problems
