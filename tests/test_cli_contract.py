"""The CLI contract: every option of every command is validated where it enters (hwbcnet/cli_options.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import pytest
import typer

from cli_walk import commands, options, unvalidated
from hwbcnet.cli import app, main
from hwbcnet.cli_options import Int, OutputFile, Text

COMMANDS = {"models", "info", "train", "search", "extract", "finetune", "bench cbm", "devices", "profile",
            "lut calibrate", "lut validate", "lut show", "export", "verify", "quickstart"}


def test_every_option_has_a_validator():
    assert COMMANDS <= set(commands(app))  # the walk sees the whole app (a vacuous pass would prove nothing)
    assert len([o for o in options(app) if o.value_type is not None]) > 80
    problems = unvalidated(app)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("option", [o for o in options(app) if o.value_type is not None and
                                    o.default not in (None, ...)], ids=lambda o: f"{o.command} {o.name}")
def test_defaults_lie_inside_their_declared_range(option):
    option.info.parser(option.default)


@pytest.fixture
def throwaway():
    """Registers commands on the real app for one test, as a developer adding a command would."""
    registered = list(app.registered_commands)
    yield app
    app.registered_commands[:] = registered


def test_an_unvalidated_option_fails_the_contract(throwaway):
    @throwaway.command("throwaway")
    def throwaway_command(
        count: int = typer.Option(3, "--count", help="Forgot its range."),
        plain: float = 0.5,  # typer makes this an unchecked --plain option
        size: int = Int(1, 9).option(3, "--size"),
        out: Annotated[Optional[Path], OutputFile(".json").option(None, "--out")] = None,
        verbose: bool = typer.Option(False, "--verbose"),
    ):
        """A throwaway command."""

    problems = unvalidated(throwaway)
    assert len(problems) == 2, problems
    count, plain = problems
    assert count.startswith("`hwbcnet throwaway --count` (parameter `count` of ") and "throwaway_command" in count
    assert 'Int(1, 100).option(3, "--count", help=...)' in count and "hwbcnet/cli_options.py" in count
    assert plain.startswith("`hwbcnet throwaway --plain`") and 'Float(0, 1).option(' in plain


def _glob(text: str) -> str:
    if not text.strip() or "/" in text:
        raise ValueError("expected a pattern of variable names such as blocks.*")
    return text


def test_a_validated_throwaway_command_passes_and_rejects_at_parse_time(throwaway, capsys):
    ran = []

    @throwaway.command("throwaway")
    def throwaway_command(size: int = Int(1, 9).option(3, "--size"),
                          fixed: Optional[List[str]] = Text(_glob, "GLOB").option(None, "--fixed"),
                          verbose: bool = typer.Option(False, "--verbose")):
        ran.append((size, fixed))

    assert unvalidated(throwaway) == []
    for args, message in [(["--size", "10"], "--size '10': expected an integer from 1 to 9"),
                          (["--fixed", "stem.*", "--fixed", "a/b"], "--fixed 'a/b': expected a pattern of variable "
                                                                    "names such as blocks.*")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["throwaway", *args])
        assert exit_info.value.code == 2 and capsys.readouterr().err == f"hwbcnet: error: {message}\n"
    assert not ran
    with pytest.raises(SystemExit):
        main(["throwaway", "--fixed", "stem.*", "--fixed", "blocks.*"])
    assert ran == [(3, ["stem.*", "blocks.*"])]
