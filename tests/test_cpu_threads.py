"""A site's torch runs as many threads as its container's CPU quota allows, set by
``fedintent-supernode`` before Flower starts its ClientApps (fl_client/cpu_threads.py)."""

import os

import pytest

import fl_client.cpu_threads as cpu_threads
import fl_client.supernode as supernode
from fl_client.cpu_threads import limit_threads_to_quota, quota_cpus
from fl_client.site_secret import create_site_secret


@pytest.mark.parametrize("line,cpus", [
    ("200000 100000\n", 2),
    ("150000 100000\n", 2),  # a part of a CPU rounds up
    ("50000 100000\n", 1),
    ("max 100000\n", None),  # no quota
    ("", None),
    ("200000\n", None),
    ("0 100000\n", None),
    ("-1 100000\n", None),
    ("200000 0\n", None),
    ("abc def\n", None),
])
def test_the_quota_is_read_as_whole_cpus(tmp_path, line, cpus):
    (tmp_path / "cpu.max").write_text(line)
    assert quota_cpus(tmp_path / "cpu.max") == cpus


def test_no_cgroup_file_is_no_quota(tmp_path):
    assert quota_cpus(tmp_path / "missing") is None


@pytest.fixture
def quota(tmp_path, monkeypatch):
    """``quota(line)``: the process's cgroup quota as that ``cpu.max`` line."""
    path = tmp_path / "cpu.max"
    monkeypatch.setattr(cpu_threads, "CGROUP_CPU_MAX", path)
    return path.write_text


def test_a_quota_sets_the_threads_and_a_sites_own_setting_is_kept(quota):
    quota("100000 100000\n")
    environ = {}
    limit_threads_to_quota(environ)
    assert environ == {"OMP_NUM_THREADS": "1"}
    environ = {"OMP_NUM_THREADS": "3"}
    limit_threads_to_quota(environ)
    assert environ == {"OMP_NUM_THREADS": "3"}
    quota("max 100000\n")
    environ = {}
    limit_threads_to_quota(environ)
    assert environ == {}


def test_never_more_threads_than_the_cores_the_process_may_run_on(quota):
    quota(f"{100000 * (len(os.sched_getaffinity(0)) + 8)} 100000\n")
    environ = {}
    limit_threads_to_quota(environ)
    assert environ == {"OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))}


def test_the_site_supernode_sets_the_threads_before_flower_starts(quota, monkeypatch, tmp_path):
    quota("100000 100000\n")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))  # no app installed there
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "lost my card", "label": "a"}\n')
    create_site_secret(tmp_path / "data" / ".fedintent-state")
    monkeypatch.setattr("sys.argv", ["fedintent-supernode", "--node-config",
                                     f"data-path='{tmp_path / 'data'}'"])
    seen = []
    monkeypatch.setattr(supernode, "flower_supernode",
                        lambda: seen.append(os.environ.get("OMP_NUM_THREADS")) or 0)
    for name in ("refuse_redirects", "refuse_foreign_bundles", "bind_runs_to_their_bundles"):
        monkeypatch.setattr(supernode, name, lambda: None)
    with pytest.raises(SystemExit) as exited:
        supernode.main()
    assert exited.value.code == 0 and seen == ["1"]
