"""Run the command line in-process, as a user would type it."""

from hwbcnet.cli import main


def run_cli(args, capsys):
    """(exit code, stdout, stderr) of `hwbcnet ARGS`; arguments may be paths or numbers."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err
