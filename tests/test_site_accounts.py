"""A site's commands run as another account, or given a path by an unset variable.

Found in review (a site administrator's walk through docs/SITE_GUIDE.md): ``forget`` or
``purge`` run through sudo rewrote the privacy ledger and the deletion log's head as root's, so
the site's own account could no longer read them and stopped, with a message saying to restore
a backup (which would have lost the erasure just recorded); ``init-site`` made the data folder
or the current one (``--state-dir ""``) a state folder, owner-only; a folder the account may
not search was a traceback; ``--retention-days 1e400`` overflowed to no retention limit.
"""

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedintent.cli import main
from fl_client.deletion_log import DELETION_LOG
from fl_client.privacy_ledger import HEAD_FILE, LEDGER_FILE, Ledger, Release, now, write_ledger
from fl_client.site_secret import SECRET_FILE, site_secret
from fl_protocol.file_owner import permission_denied
from fl_protocol.hash_chain import head_path

OTHER_UID = os.geteuid() + 4242


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def site(tmp_path, capsys) -> tuple[Path, Path]:
    """(data folder, state folder) of a site that has purged once and holds a ledger."""
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    when = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    (data / "train.jsonl").write_text("".join(
        json.dumps({"conversation_id": f"c{i}", "customer_id": f"cust-{i % 3}",
                    "text": f"I lost my card {i}", "label": "card_lost", "timestamp": when})
        + "\n" for i in range(6)))
    assert run(capsys, "init-site", "--state-dir", str(state))[0] == 0
    assert run(capsys, "purge", str(data), "--state-dir", str(state),
               "--retention-days", "30")[0] == 0
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    ledger.releases.append(Release(
        run="r", server_round=1, num_rounds=1, noise_multiplier=2.0, sample_rate=1.0, steps=1,
        clip_norm=1.0, delta=1e-5, accountant="rdp", units=6, rdp=0.5, time=now()))
    write_ledger(state, ledger, site_secret(state))
    return data, state


def snapshot(state: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(state.iterdir()) if path.is_file()}


@pytest.mark.parametrize("command", ["forget", "purge"])
def test_another_account_may_not_rewrite_the_sites_state(site, capsys, monkeypatch, command):
    """Refused before anything is read or written, naming the site's account and how to run
    as it: the files it would rewrite by rename would become the other account's."""
    data, state = site
    before = snapshot(state)
    monkeypatch.setattr(os, "geteuid", lambda: OTHER_UID)
    argv = (["forget", "--site", str(data), "--customer", "cust-1"] if command == "forget"
            else ["purge", str(data)])
    code, out, err = run(capsys, *argv, "--state-dir", str(state))
    assert (code, out) == (2, ""), out + err
    owner = (state / SECRET_FILE).stat().st_uid
    assert f"the site's state folder of uid {owner}" in err
    assert f"this command runs as uid {OTHER_UID}" in err and f"sudo -u '#{owner}'" in err
    assert snapshot(state) == before


def test_a_purge_in_a_state_folder_it_cannot_write_removes_nothing(site, capsys, monkeypatch):
    """Found in review: a purge in a folder mounted read-only removed the cached features,
    then failed to log it, naming a temporary file."""
    data, state = site
    before = snapshot(state)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: (
        False if Path(path) == state else access(path, mode, **kwargs)))
    code, out, err = run(capsys, "purge", str(data), "--state-dir", str(state),
                         "--retention-days", "30")
    assert (code, out) == (2, ""), out + err
    assert f"{state} is not writable by this account" in err and "nothing was removed" in err
    assert snapshot(state) == before


def denied_to_this_account(monkeypatch, method: str, denied: Path) -> None:
    """``Path.<method>`` of ``denied`` fails as for an account without the right to it (tests
    run as root, which a chmod does not stop)."""
    real = getattr(Path, method)

    def forbidden(self, *args, **kwargs):
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, forbidden)


@pytest.mark.parametrize("read", ["ledger head", "ledger", "site secret", "deletion log head"])
def test_a_file_this_account_may_not_read_is_not_damage(site, capsys, monkeypatch, read):
    """The message names the file, its owner and this account, and says to restore no backup
    (the advice it gave was to restore one, losing what was written since)."""
    data, state = site
    denied = {"ledger head": state / HEAD_FILE, "ledger": state / LEDGER_FILE,
              "site secret": state / SECRET_FILE,
              "deletion log head": head_path(state / DELETION_LOG)}[read]
    denied_to_this_account(monkeypatch, "read_text", denied)
    argv = (["privacy-report", str(state)] if read != "deletion log head"
            else ["purge", str(data), "--state-dir", str(state), "--retention-days", "30"])
    code, out, err = run(capsys, *argv)
    assert code == 2 and "Traceback" not in err, out + err
    owner = denied.stat().st_uid
    assert f"permission denied to this account (uid {os.geteuid()}) for {denied}" in err, err
    assert f"which belongs to uid {owner}" in err and "restore no backup" in err
    assert "restored from a backup" not in err and "restore it from" not in err


def test_a_folder_this_account_may_not_search_is_one_line_not_a_traceback(site, capsys,
                                                                           monkeypatch):
    """Found in review: ``privacy-report`` on a state folder owned by the site's account
    (0700) raised a PermissionError traceback, exit 1."""
    _, state = site

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", denied)
    code, out, err = run(capsys, "privacy-report", str(state))
    assert code == 2 and "Traceback" not in err, out + err
    assert err.startswith("fedintent privacy-report: error: permission denied to this account")
    assert "restore no backup" in err


def test_permission_messages_name_the_closed_folder_and_suit_the_command(tmp_path, capsys,
                                                                         monkeypatch):
    """Found in review: the owner of the folder above was named as the owner of a file that
    does not exist, and an operator's ``synth`` was told about SuperNodes and backups."""
    import data_synth

    closed = tmp_path / "closed"
    closed.mkdir()
    path_stat = Path.stat

    def search_denied(self, *args, **kwargs):
        if self.is_relative_to(closed) and self != closed:
            raise PermissionError(13, "Permission denied", str(self))
        return path_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", search_denied)
    message = permission_denied(closed / "data" / "labels.txt")
    monkeypatch.undo()
    assert message.startswith(f"permission denied to this account (uid {os.geteuid()}) for "
                              f"{closed / 'data' / 'labels.txt'} (the nearest folder above it "
                              f"this account can see, {closed}, is uid {closed.stat().st_uid}'s)")

    def refused(out, **kwargs):
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(data_synth, "write_sites", refused)
    code, out, err = run(capsys, "synth", "--out", str(tmp_path / "synth"))
    assert code == 2 and "permission denied to this account" in err, out + err
    assert "SuperNode" not in err and "backup" not in err
    assert "run the command as an account that may, or give this one access" in err


@pytest.mark.parametrize("command", [
    ["init-site", "--state-dir", ""],
    ["privacy-report", ""],
    ["purge", "", "--retention-days", "30"],
    ["forget", "--site", "", "--customer", "c1"],
])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(tmp_path, capsys,
                                                                   monkeypatch, command):
    """``--state-dir "$STATE_DIR"`` with the variable unset made the current folder a state
    folder, owner-only, with a site secret in it."""
    monkeypatch.chdir(tmp_path)
    mode = tmp_path.stat().st_mode
    code, out, err = run(capsys, *command)
    assert (code, out) == (2, ""), out + err
    assert "the path is empty (an unset variable?)" in err
    assert list(tmp_path.iterdir()) == [] and tmp_path.stat().st_mode == mode


@pytest.mark.parametrize("path", [" /srv/state", "state\n", "state "])
def test_a_path_with_white_space_around_it_is_refused(tmp_path, capsys, monkeypatch, path):
    """Found in review: ``--state-dir " /srv/state"`` (a stray space in a variable) made a new
    state folder, with its own secret, under a folder named " " in the current one."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "init-site", "--state-dir", path)
    assert (code, out) == (2, ""), out + err
    assert f"the path {path!r} begins or ends with white space" in err
    assert list(tmp_path.iterdir()) == []


def test_init_site_refuses_a_folder_that_holds_other_files(site, capsys):
    """The data folder given as the state folder: not made owner-only, no secret in it."""
    data, _ = site
    data.chmod(0o755)
    code, out, err = run(capsys, "init-site", "--state-dir", str(data))
    assert (code, out) == (2, ""), out + err
    assert f"{data} already holds other files (train.jsonl) and no site secret" in err
    assert not (data / SECRET_FILE).exists() and stat.S_IMODE(data.stat().st_mode) == 0o755


@pytest.mark.parametrize("inside", [[], ["lost+found"]])
def test_init_site_takes_an_empty_folder_or_a_fresh_volume(tmp_path, capsys, inside):
    state = tmp_path / "volume"
    state.mkdir()
    for name in inside:
        (state / name).mkdir()
    code, out, err = run(capsys, "init-site", "--state-dir", str(state))
    assert code == 0 and out.startswith(f"made the state folder {state}"), out + err
    assert (state / SECRET_FILE).exists()


def test_init_site_refuses_another_accounts_folder(tmp_path, capsys, monkeypatch):
    """Its secret would be this account's, which the site's could not read."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: OTHER_UID)
    code, out, err = run(capsys, "init-site", "--state-dir", str(state))
    assert (code, out) == (2, ""), out + err
    assert f"belongs to uid {state.stat().st_uid}, and this command runs as uid {OTHER_UID}" in err
    assert not (state / SECRET_FILE).exists()


@pytest.mark.parametrize(("days", "error"), [
    ("1e400", "'1e400' is too large for a number; write inf for no limit"),
    ("1e-400", "'1e-400' is too small for a number: it would read as 0"),
    ("nan", "not a number: 'nan'"),
    ("ten", "not a number: 'ten'"),
    ("0", "--retention-days must be > 0 (inf: no limit), got 0.0"),  # every row expired
])
def test_retention_days_never_overflow_to_no_limit(site, capsys, days, error):
    data, state = site
    before = snapshot(state)
    code, out, err = run(capsys, "purge", str(data), "--state-dir", str(state),
                         "--retention-days", days)
    assert (code, out) == (2, "") and error in err, out + err
    assert snapshot(state) == before
    code, out, err = run(capsys, "purge", str(data), "--state-dir", str(state),
                         "--retention-days", "inf")
    assert code == 0 and "no retention limit" in out, out + err


@pytest.mark.parametrize("command", ["purge", "forget"])
def test_a_data_file_given_for_the_data_folder_is_named_as_a_file(site, capsys, command):
    data, state = site
    argv = (["purge", str(data / "train.jsonl"), "--retention-days", "30"] if command == "purge"
            else ["forget", "--site", str(data / "train.jsonl"), "--customer", "cust-1"])
    code, out, err = run(capsys, *argv, "--state-dir", str(state))
    assert (code, out) == (2, ""), out + err
    assert f"site data folder {data / 'train.jsonl'} is a file, not a folder" in err
    assert f"({data})" in err


def test_forget_records_the_erasure_when_the_data_folder_cannot_be_read(site, capsys,
                                                                        monkeypatch):
    """Found in review: a data folder this account may not read recorded no erasure, while the
    site's own account went on using the customer's rows. The request is recorded first, for
    every row of theirs whatever its date (found in review: the request's time plus a day left
    a row dated further ahead in use at a site without a retention limit), and the message
    says what was not done."""
    import fl_client.retention as retention
    from fl_client.retention import row_policy
    from fl_client.site_data import load_site, read_rows

    data, state = site
    entries = len((state / DELETION_LOG).read_text().splitlines())
    ahead = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    with open(data / "train.jsonl", "a") as f:
        f.write(json.dumps({"conversation_id": "c9", "customer_id": "cust-1", "timestamp": ahead,
                            "text": "I lost my card 9", "label": "card_lost"}) + "\n")

    def unreadable(site_dir, rejected):
        raise PermissionError(13, "Permission denied", str(site_dir / "train.jsonl"))

    monkeypatch.setattr(retention, "read_rows", unreadable)
    code, out, err = run(capsys, "forget", "--site", str(data), "--state-dir", str(state),
                         "--customer", "cust-1")
    monkeypatch.setattr(retention, "read_rows", read_rows)
    assert (code, out) == (2, ""), out + err
    assert ("the erasure is recorded (no run uses any row of this customer, whatever its date, "
            "from now on" in err)
    assert f"could not be read ({data / 'train.jsonl'}: Permission denied)" in err
    assert "run forget again once the folder can be read" in err
    log = (state / DELETION_LOG).read_text().splitlines()
    assert len(log) == entries + 1 and json.loads(log[-1])["event"] == "erasure"
    used = load_site(data, ["card_lost"], keep=row_policy(state, float("inf"))).train
    assert {"cust-0", "cust-2"} == set(used.customers), "cust-1's rows are no longer used"


def test_forget_records_the_erasure_when_the_data_folders_parent_cannot_be_searched(
        site, capsys, monkeypatch):
    """Found in review: with a folder above the data folder closed to the site's account, the
    check that the data folder is a folder failed before anything was recorded, and the message
    said nothing was damaged. (Root may search every folder: the check's failure is stood in.)"""
    import fl_client.site_data as site_data

    data, state = site
    entries = len((state / DELETION_LOG).read_text().splitlines())

    def closed(site_dir):
        raise PermissionError(13, "Permission denied", str(site_dir))

    monkeypatch.setattr(site_data, "check_site_folder", closed)
    code, out, err = run(capsys, "forget", "--site", str(data), "--state-dir", str(state),
                         "--customer", "cust-1")
    assert (code, out) == (2, ""), out + err
    assert "the erasure is recorded" in err and f"({data}: Permission denied)" in err
    log = (state / DELETION_LOG).read_text().splitlines()
    assert len(log) == entries + 1 and json.loads(log[-1])["event"] == "erasure"


@pytest.mark.parametrize("command", ["purge", "forget"])
def test_a_ledger_that_cannot_record_the_deletion_is_said(site, capsys, command):
    """Found in review: forget did not say when the privacy ledger could not record the
    deletion log's new length (the site then does not train until it reads again)."""
    data, state = site
    (state / LEDGER_FILE).write_text("{}")
    argv = (["purge", str(data), "--retention-days", "30"] if command == "purge"
            else ["forget", "--site", str(data), "--customer", "cust-1"])
    code, out, err = run(capsys, *argv, "--state-dir", str(state))
    assert code == 2 and "logged: entry" in out, out + err
    assert "could not record the deletion log's new length" in err, err
    assert "not a fedintent privacy ledger" in err
    # restored from a backup, the folder's log would lack this erasure (found in review)
    assert ("run this forget again" in err) == (command == "forget")


def test_deleting_from_data_keeps_each_files_owner_or_refuses(site, capsys, monkeypatch):
    """Found in review: ``--delete-from-data`` left the rewritten data file owned by the
    account that ran it, so the exporter that owns it could no longer append. Root keeps the
    owner; another account refuses a file it could not keep the owner of, and a read-only file
    (someone made it so); the erasure itself is recorded either way."""
    data, state = site
    train = data / "train.jsonl"
    os.chown(train, OTHER_UID, OTHER_UID)
    code, out, err = run(capsys, "forget", "--site", str(data), "--state-dir", str(state),
                         "--customer", "cust-1", "--delete-from-data")
    assert code == 0 and "removed from the data folder: 2 rows" in out, out + err
    assert (train.stat().st_uid, train.stat().st_gid) == (OTHER_UID, OTHER_UID)

    owner = os.geteuid()
    os.chown(train, owner, os.getegid())
    train.chmod(0o444)
    code, out, err = run(capsys, "forget", "--site", str(data), "--state-dir", str(state),
                         "--customer", "cust-2", "--delete-from-data")
    assert code == 2 and f"{train} is read-only (mode 444)" in err, out + err
    assert "cust-2" in train.read_text()

    train.chmod(0o644)
    os.chown(train, OTHER_UID, OTHER_UID)
    secret_owner = (state / SECRET_FILE).stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: secret_owner + 1 if secret_owner == 0
                        else secret_owner)
    if secret_owner == 0:  # as root (CI): play the site's account, owner of its state too
        for path in [state, *state.iterdir()]:
            os.chown(path, 1, 1)
    code, out, err = run(capsys, "forget", "--site", str(data), "--state-dir", str(state),
                         "--customer", "cust-2", "--delete-from-data")
    assert code == 2 and f"{train} belongs to uid {OTHER_UID}" in err, out + err
    assert "delete the rows at the source, or make the site's account the file's owner" in err
    assert "cust-2" in train.read_text()


def test_forget_in_a_state_folder_no_site_trained_with_says_it_may_be_the_wrong_one(site,
                                                                                    capsys):
    """Found in review: forget into another, initialised state folder (a host with two sites,
    a stale copy) recorded the erasure there and exited 0, while the site kept using the rows."""
    data, state = site
    other = state.parent / "other-state"
    assert run(capsys, "init-site", "--state-dir", str(other))[0] == 0
    code, out, err = run(capsys, "forget", "--site", str(data), "--customer", "cust-1",
                         "--state-dir", str(other))
    assert code == 0 and "erasure recorded: 2 rows" in out
    assert f"warning: {other} holds no privacy ledger, so no site has trained with it" in err
    code, out, err = run(capsys, "forget", "--site", str(data), "--customer", "cust-1",
                         "--state-dir", str(state))
    assert code == 0 and "holds no spend of theirs" in out and "warning" not in err
