"""The command line: JSON outputs and one-line errors with exit code 2 for bad input."""

import json
import subprocess
import sys

import pytest

from hwbcnet.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_info_json_full_width(capsys):
    code, out, _ = run_cli(["info", "--model", "cbm-resnet", "--arch", "4432214", "--json"], capsys)
    assert code in (0, None)
    data = json.loads(out)
    assert data["flops"] == 794495488 and data["params"] == 6208394 and data["code"] == "4432214"


@pytest.mark.parametrize("args,needle", [
    (["info", "--model", "nope"], "unknown model"),
    (["info", "--model", "cbm-resnet", "--arch", "44322"], "7 width variables"),
    (["info", "--model", "cbm-resnet", "--arch", "4432219"], "outside 1..4"),
    (["train", "--model", "resnet20", "--data", "mnist", "--out", "{tmp}/x"], "digits"),
    (["train", "--model", "resnet20", "--supernet", "fair", "--out", "{tmp}/x"], "ua, bcnet or bcnetv2"),
    (["search", "--checkpoint", "{tmp}/missing.pt", "--flops", "50%", "--out", "{tmp}/s.json"], "not found"),
    (["search", "--checkpoint", "{tmp}/corrupt.pt", "--flops", "50%", "--out", "{tmp}/s.json"], "unreadable"),
    (["bench", "cbm", "--space", "resnet", "--flops", "5M"], "unsatisfiable"),
    (["bench", "cbm", "--space", "vgg"], "resnet or mobilenet"),
    (["bench", "cbm", "--flops", "fifty"], "--flops"),
])
def test_bad_input_is_one_line_with_exit_code_2(args, needle, capsys, tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    code, _, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert code == 2
    assert err.startswith("hwbcnet: error: ") and err.count("\n") == 1 and needle in err, err


def test_python_dash_m_entry_point_and_usage_error():
    result = subprocess.run([sys.executable, "-m", "hwbcnet", "info", "--model", "cbm-resnet", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and json.loads(result.stdout)["flops"] == 1436226560  # the benchmark's 4444444
    result = subprocess.run([sys.executable, "-m", "hwbcnet", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_bench_cbm_json(capsys):
    code, out, _ = run_cli(["bench", "cbm", "--space", "mobilenet", "--queries", "100", "--seeds", "2", "--json"], capsys)
    assert code in (0, None)
    methods = json.loads(out)["methods"]
    assert {"regret_mean", "acc_mean", "rank_mean"} <= set(methods["random"])


@pytest.mark.parametrize("args,message", [
    (["search", "--checkpoint", "{tmp}/supernet.pt", "--flops", "50%", "--generations", "-1", "--out", "{tmp}/s.json"],
     "--generations '-1': expected an integer from 1 to 10000"),
    (["train", "--model", "resnet20", "--out", "{tmp}/file"],
     "--out '{tmp}/file': is a file; expected a folder (created when missing)"),
    (["train", "--model", "resnet20", "--epochs", "-1", "--out", "{tmp}/run"],
     "--epochs '-1': expected an integer from 1 to 10000"),
    (["info", "--model", "resnet20", "--arch", ""],
     "--arch '': expected a digit code such as 4432214, a comma list such as 8,6,8, full, min or an arch .json file"),
])
def test_the_commands_of_issue_12_are_refused_as_typed(args, message, tmp_path):
    """Once a traceback, an exception, a silent -1 epochs run and an empty arch taken as the full width."""
    (tmp_path / "supernet.pt").write_bytes(b"not read: the bad option is refused first")
    (tmp_path / "file").write_text("a user's file\n")
    result = subprocess.run([sys.executable, "-m", "hwbcnet", *[a.replace("{tmp}", str(tmp_path)) for a in args]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"hwbcnet: error: {message.replace('{tmp}', str(tmp_path))}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "supernet.pt"]
    assert (tmp_path / "file").read_text() == "a user's file\n"
