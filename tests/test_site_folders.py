"""Where a site's data and state are, and the state folder's lock: a folder the site cannot
write is named as such."""

import errno
import fcntl
import os

import pytest
from flwr.app import Context, RecordDict
from test_site_privacy import simulation_engine, train_message  # noqa: F401 (a fixture)

from fedintent.cli import main
from fl_client.rows import SiteDataError
from fl_client.site_folders import LOCK_FILE, STATE_FOLDER, site_folders, state_lock
from fl_client.site_secret import create_site_secret


@pytest.fixture
def read_only(monkeypatch):
    """Opening the state lock fails as on a folder mounted read-only (tests run as root, which
    a chmod does not stop)."""
    real_open = os.open

    def open_on_a_read_only_mount(path, flags, *args, **kwargs):
        if os.fspath(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_on_a_read_only_mount)


def test_a_read_only_state_folder_is_named_not_its_lock_file(tmp_path, read_only):
    state = tmp_path / "st0"
    state.mkdir()
    with pytest.raises(OSError) as raised, state_lock(state):
        pass
    assert raised.value.errno == errno.EROFS
    assert str(raised.value).endswith(f"the state folder {state} is read-only "
                                      "(Read-only file system)")
    assert LOCK_FILE not in str(raised.value)


def test_a_state_folder_this_account_may_not_write_is_no_read_only_one(tmp_path, monkeypatch):
    def refused(path, flags, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(PermissionError) as raised, state_lock(tmp_path):
        pass
    assert "read-only" not in str(raised.value)


def test_the_state_lock_never_makes_a_state_folder(tmp_path):
    """One lost or not mounted would come back empty, every unit's budget unspent."""
    with pytest.raises(FileNotFoundError), state_lock(tmp_path / "not-mounted"):
        pass
    assert not (tmp_path / "not-mounted").exists()


def test_a_purge_on_a_read_only_state_folder_says_so(tmp_path, read_only, capsys):
    state, site = tmp_path / "st0", tmp_path / "site"
    create_site_secret(state)
    site.mkdir()
    assert main(["purge", str(site), "--state-dir", str(state), "--retention-days", "30"]) == 2
    err = capsys.readouterr().err
    assert f"the state folder {state} is read-only (Read-only file system)" in err
    assert LOCK_FILE not in err


@pytest.mark.usefixtures("task_identity")
def test_a_deployed_site_that_names_no_state_folder_keeps_it_inside_its_data_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    create_site_secret(data / STATE_FOLDER)
    context = Context(run_id=1, node_id=7, node_config={"data-path": str(data)},
                      state=RecordDict(), run_config={})
    assert site_folders(train_message(), context) == (data, data / STATE_FOLDER)


@pytest.mark.usefixtures("task_identity", "simulation_engine")
def test_a_simulated_site_is_its_partitions_folder_and_no_partition_beyond_them(tmp_path):
    """Its state, where the run names no state folder, beside the site folders."""
    (tmp_path / "sim" / "site-0").mkdir(parents=True)
    message = train_message()
    message.content["config"]["sim-data-dir"] = str(tmp_path / "sim")

    def simulated(partition: int) -> Context:
        return Context(run_id=1, node_id=7, node_config={"partition-id": partition,
                                                         "num-partitions": 1},
                       state=RecordDict(), run_config={})

    assert site_folders(message, simulated(0)) == (
        tmp_path / "sim" / "site-0", tmp_path / "sim" / STATE_FOLDER / "site-0")
    with pytest.raises(SiteDataError, match=f"simulated site 1 has no folder: {tmp_path / 'sim'} "
                                            "holds 1 sites"):
        site_folders(message, simulated(1))


def test_the_state_lock_is_held_until_its_holder_is_done(tmp_path):
    def free() -> bool:
        fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    with state_lock(tmp_path):
        assert not free()
    assert free()
