"""The state folder's lock: a folder the site cannot write is named as such."""

import errno
import os

import pytest

from fedintent.cli import main
from fl_client.site_folders import LOCK_FILE, state_lock
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


def test_a_purge_on_a_read_only_state_folder_says_so(tmp_path, read_only, capsys):
    state, site = tmp_path / "st0", tmp_path / "site"
    create_site_secret(state)
    site.mkdir()
    assert main(["purge", str(site), "--state-dir", str(state), "--retention-days", "30"]) == 2
    err = capsys.readouterr().err
    assert f"the state folder {state} is read-only (Read-only file system)" in err
    assert LOCK_FILE not in err
