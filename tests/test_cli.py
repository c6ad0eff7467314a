"""The command line: bad input gives one line naming the problem and a non-zero exit."""

import subprocess
import sys

import pytest


def fedintent(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedintent.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epsilon", "-1"], "target-epsilon must be > 0"),
        (["--epsilon", "0"], "target-epsilon must be > 0"),
        (["--sites", "0"], "--sites must be >= 1"),
        (["--rounds", "0"], "num-rounds must be"),
        (["--delta", "2"], "delta must be in (0, 1)"),
        (["--data", "/no/such/folder"], "data folder not found: /no/such/folder"),
    ],
)
def test_bad_train_options_fail_in_one_line(tmp_path, args, message):
    result = fedintent("train", "--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_model_is_an_argparse_error(tmp_path):
    result = fedintent("train", "--model", "nope", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_more_sites_than_the_data_holds(tmp_path):
    data = tmp_path / "data"
    (data / "site-00").mkdir(parents=True)
    (data / "labels.txt").write_text("a\nb\n")
    result = fedintent("train", "--data", str(data), "--sites", "3",
                       "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert "holds only 1 sites" in result.stderr


def test_an_existing_run_is_never_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    result = fedintent("train", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert (out / "metrics.json").read_text() == "{}"


def test_help_documents_the_site_data_format():
    result = fedintent("--help")
    assert result.returncode == 0
    assert "train.jsonl" in result.stdout and "intent_turn" in result.stdout
