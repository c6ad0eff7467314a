"""End to end: `fedintent train` runs a real Flower simulation on 127.0.0.1.

These tests start a SuperLink, the simulation engine and one SuperNode per site through the CLI,
exactly as a user would, and check what the user gets: progress, metrics, model, privacy spend,
exit code, and no process left behind.
"""

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from data_synth import write_sites


def processes_started_by(tag: str) -> list[str]:
    """Live processes (not zombies) whose environment carries this test's tag.

    Every process fedintent starts inherits the environment, so this finds the SuperLink,
    SuperExec, simulation and Ray processes of one test, and nothing of another test running
    on the same machine.
    """
    marker = f"FEDINTENT_TEST_TAG={tag}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            found.append(f"{proc.name}: {cmdline[:120].decode(errors='replace')}")
    return found


def train(*args: str, cwd: Path, tag: str = "") -> subprocess.CompletedProcess:
    env = os.environ | {"FEDINTENT_TEST_TAG": tag or uuid.uuid4().hex}
    return subprocess.run(
        [sys.executable, "-m", "fedintent.cli", "train", *args],
        capture_output=True, text=True, timeout=900, cwd=cwd, env=env,
    )


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("sites") / "data"
    write_sites(data, n_sites=3, seed=7, size=240)
    return data


@pytest.mark.parametrize("epsilon", ["3", "inf"])
def test_federated_training_end_to_end(sites, tmp_path, epsilon):
    tag = uuid.uuid4().hex
    out = tmp_path / "out"
    result = train("--data", str(sites), "--rounds", "3", "--epsilon", epsilon,
                   "--state-dir", str(tmp_path / "state"), "--out", str(out), cwd=tmp_path,
                   tag=tag)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not processes_started_by(tag), "processes left behind"

    for r in (1, 2, 3):
        assert f"round   {r}/3  sites trained 3/3" in result.stdout
    assert "final accuracy" in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    labels = metrics["labels"]
    chance = 1 / len(labels)
    assert len(metrics["rounds"]) == 3
    assert (out / "model" / "model.safetensors").is_file()
    config = json.loads((out / "model" / "config.json").read_text())
    assert list(config["id2label"].values()) == labels  # the Hugging Face export

    final = metrics["final"]
    assert len(final["sites"]) == 3
    if epsilon == "inf":
        assert final["accuracy"] > 0.5, final
        assert all(site["epsilon"] is None for site in final["sites"].values())
        return

    assert final["accuracy"] > 4 * chance, final
    target = float(epsilon)
    per_site_history: dict[str, list[float]] = {}
    for entry in metrics["rounds"]:
        for node, site in entry["sites"].items():
            assert 0 < site["epsilon"] <= target
            assert site["delta"] == pytest.approx(1e-5)  # the per-site default
            per_site_history.setdefault(node, []).append(site["epsilon"])
    for history in per_site_history.values():
        assert len(history) == 3
        assert history[0] < history[1] < history[2], history
        assert history[2] > 0.9 * target  # the plan spends the budget, not a fraction of it
    assert math.isclose(final["max_epsilon"], max(h[-1] for h in per_site_history.values()))
    ledgers = list((tmp_path / "state").glob("site-*/privacy-ledger-*.json"))
    assert len(ledgers) == 3
    assert all(len(json.loads(p.read_text())["releases"]) == 3 for p in ledgers)


def test_a_run_where_no_site_can_train_exits_non_zero(tmp_path):
    data = tmp_path / "data"
    for name in ("site-00", "site-01"):
        (data / name).mkdir(parents=True)
        (data / name / "train.csv").write_text("text,label\nhello,not_in_taxonomy\n")
    (data / "labels.txt").write_text("a\nb\n")
    tag = uuid.uuid4().hex
    result = train("--data", str(data), "--rounds", "2", "--out", str(tmp_path / "out"),
                   cwd=tmp_path, tag=tag)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no valid training rows" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["status"] == "failed"
    assert not processes_started_by(tag), "processes left behind"


def test_a_site_without_valid_rows_declines_and_the_run_goes_on(tmp_path):
    data = tmp_path / "data"
    write_sites(data, n_sites=2, seed=3, size=60)
    broken = data / "site-02"
    broken.mkdir()
    (broken / "train.jsonl").write_text('{"text": "hello", "label": "no_such_intent"}\n{oops\n')
    (broken / "test.jsonl").write_text("")
    result = train("--data", str(data), "--rounds", "1", "--epsilon", "inf",
                   "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sites trained 2/3" in result.stdout
    assert "no valid training rows" in result.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    [failure] = metrics["rounds"][0]["failures"]
    assert "site-02: no valid training rows" in failure["reason"]
