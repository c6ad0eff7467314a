"""``--delete-from-data`` rewrites only the data file its rows were read from.

Found in review (an account that may rename files in the data folder, such as the exporter's):
between ``forget`` reading the customer's rows and removing their lines, a link to another file
was renamed over ``train.jsonl``, and the erasure deleted those line numbers from the file it
named: the site's privacy ledger, or, run as root, any file on the host. A second, narrower gap
between the checks of the file and its opening let a root-only file's content be copied into the
data folder. Each test here swaps the file in one of those gaps and checks that nothing outside
the data file is touched, while the erasure itself stays recorded.
"""

import errno
import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import fl_client.erase_lines as erase_lines
import fl_client.retention as retention
from fedintent.cli import main as fedintent
from fl_client.data_files import resolved
from fl_client.erase_lines import remove_lines
from fl_client.rows import SiteDataError
from fl_client.site_data import read_rows
from fl_client.site_secret import create_site_secret

pytestmark = pytest.mark.usefixtures("task_identity")

VICTIM = "".join(f"line {i} of a file outside the data folder\n" for i in range(1, 9))


def write_site(site_dir: Path) -> None:
    """Eight rows; the customer ``dana`` writes lines 1, 4 and 7."""
    site_dir.mkdir()
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    rows = [{"conversation_id": f"conv-{i}", "text": f"please refund order {i}",
             "label": "refund", "customer_id": "dana" if i % 3 == 0 else f"cust-{i}",
             "timestamp": yesterday} for i in range(8)]
    (site_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def site(tmp_path):
    """(site folder, its state folder, a file outside both that the attacker aims at)."""
    write_site(tmp_path / "site")
    create_site_secret(tmp_path / "state")
    victim = tmp_path / "elsewhere" / "config"
    victim.parent.mkdir()
    victim.write_text(VICTIM)
    return tmp_path / "site", tmp_path / "state", victim


def swap_in_link(data_file: Path, target: Path) -> None:
    """What the attacker does: rename a link to ``target`` over ``data_file``."""
    link = data_file.with_name("swap.tmp")
    link.symlink_to(target)
    os.replace(link, data_file)


def forget_dana(site_dir: Path, state_dir: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = fedintent(["forget", "--site", str(site_dir), "--customer", "dana", "--state-dir",
                      str(state_dir), "--retention-days", "inf", "--delete-from-data"])
    return code, capsys.readouterr().err


def test_a_link_renamed_over_the_data_file_after_the_read_is_not_followed(site, monkeypatch,
                                                                          capsys):
    """The swap between the read and the rewrite (while the erasure is logged and the feature
    store pruned), as the reviewer's inotify-driven attacker made it."""
    site_dir, state, victim = site
    prune = retention.prune

    def prune_then_swap(*args, **kwargs):
        pruned = prune(*args, **kwargs)
        swap_in_link(site_dir / "train.jsonl", victim)
        return pruned

    monkeypatch.setattr(retention, "prune", prune_then_swap)
    code, err = forget_dana(site_dir, state, capsys)
    assert code == 2 and "is not the file the rows were read from" in err, err
    assert victim.read_text() == VICTIM
    entries = [json.loads(line) for line in (state / "deletions.jsonl").read_text().splitlines()]
    assert [e["event"] for e in entries] == ["erasure", "erasure-done"]
    assert entries[-1]["delete_from_data"] == "failed"


def test_the_data_file_rewritten_in_place_after_the_read_is_left_alone(site, monkeypatch,
                                                                       capsys):
    """The exporter appending (or rewriting the file in place) after the read: the line
    numbers read may no longer be the customer's."""
    site_dir, state, _ = site
    prune = retention.prune

    def prune_then_append(*args, **kwargs):
        pruned = prune(*args, **kwargs)
        with open(site_dir / "train.jsonl", "a") as f:
            f.write(json.dumps({"text": "a new row", "label": "refund"}) + "\n")
        return pruned

    monkeypatch.setattr(retention, "prune", prune_then_append)
    code, err = forget_dana(site_dir, state, capsys)
    assert code == 2 and "is not the file the rows were read from, or it changed" in err, err
    before = (site_dir / "train.jsonl").read_text()
    assert before.count('"dana"') == 3 and "a new row" in before


def test_a_link_swapped_in_between_the_checks_and_the_open_is_refused(site, monkeypatch):
    """The narrower gap inside ``remove_lines``: the name resolved, then replaced by a link
    before it is opened; the file's content must not be copied to the data folder's name."""
    site_dir, _, victim = site
    data_file = site_dir / "train.jsonl"
    [rows, _] = read_rows(site_dir, [])
    dana = {row.line for row in rows if row.customer == "dana"}
    opened = os.open

    def swap_then_open(path, flags, *args, **kwargs):
        if str(path) == data_file.name and not data_file.is_symlink():
            swap_in_link(data_file, victim)
        return opened(path, flags, *args, **kwargs)

    monkeypatch.setattr(erase_lines.os, "open", swap_then_open)
    with pytest.raises(SiteDataError, match="replaced by a link since its rows were read"):
        remove_lines(data_file, dana, rows[0].stamp)
    monkeypatch.undo()
    assert victim.read_text() == VICTIM and data_file.is_symlink()


def test_another_file_renamed_over_the_data_file_is_refused(site):
    """A regular file (a hard link to another, a copy) in its place: not the file read."""
    site_dir, _, victim = site
    data_file = site_dir / "train.jsonl"
    [rows, _] = read_rows(site_dir, [])
    other = site_dir / "other.tmp"
    other.write_text(VICTIM)
    os.replace(other, data_file)
    with pytest.raises(SiteDataError, match="not the file the rows were read from"):
        remove_lines(data_file, {1, 4, 7}, rows[0].stamp)
    assert data_file.read_text() == VICTIM


def test_the_file_read_through_a_link_is_rewritten_and_the_link_kept(tmp_path, capsys):
    """The supported layout the checks must not break: the data folder's file a link to the
    exporter's; its target loses the customer's lines, the link stays."""
    write_site(tmp_path / "export")
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "train.jsonl").symlink_to(tmp_path / "export" / "train.jsonl")
    create_site_secret(tmp_path / "state")
    code, err = forget_dana(site_dir, tmp_path / "state", capsys)
    assert code == 0, err
    assert (site_dir / "train.jsonl").is_symlink()
    left = (tmp_path / "export" / "train.jsonl").read_text()
    assert '"dana"' not in left and left.count("\n") == 5


def test_a_folder_above_swapped_for_a_link_after_the_checks_cannot_redirect_the_rewrite(
        tmp_path, monkeypatch):
    """Found in review: the data file a link into a folder the exporter owns, that folder
    swapped for a link to another (as root, /etc) after the file was checked: the rewrite,
    made through the path, replaced the other folder's file. It is made in the folder the file
    was read in, whatever its path has become."""
    site, sub, elsewhere = tmp_path / "site", tmp_path / "site" / "sub", tmp_path / "elsewhere"
    sub.mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "victim.jsonl").write_text(VICTIM)
    (sub / "victim.jsonl").write_text("".join(
        json.dumps({"text": f"refund {i}", "label": "refund",
                    "customer_id": "dana" if i % 2 else "x"}) + "\n" for i in range(4)))
    (site / "train.jsonl").symlink_to("sub/victim.jsonl")
    [rows, _] = read_rows(site, [])
    kept_lines = erase_lines._kept_lines

    def checked_then_swapped(*args, **kwargs):
        kept = kept_lines(*args, **kwargs)
        os.rename(sub, site / "sub.old")
        (site / "sub").symlink_to(elsewhere)
        return kept

    monkeypatch.setattr(erase_lines, "_kept_lines", checked_then_swapped)
    remove_lines(site / "train.jsonl", {row.line for row in rows if row.customer == "dana"},
                 rows[0].stamp)
    assert (elsewhere / "victim.jsonl").read_text() == VICTIM
    assert '"dana"' not in (site / "sub.old" / "victim.jsonl").read_text()


def test_a_file_replaced_after_the_new_version_was_written_is_left_alone(site, monkeypatch):
    """The last look before the rename: the exporter's file renamed over the name while the
    new version was written is kept, and no temporary file is left."""
    site_dir, _, _ = site
    data_file = site_dir / "train.jsonl"
    [rows, _] = read_rows(site_dir, [])
    replace = erase_lines.replace_in_folder

    def replaced_meanwhile(folder, name, data, mode, owner, still, attributes):
        newer = site_dir / "newer.tmp"
        newer.write_text(VICTIM)
        os.replace(newer, data_file)
        return replace(folder, name, data, mode, owner, still, attributes)

    monkeypatch.setattr(erase_lines, "replace_in_folder", replaced_meanwhile)
    with pytest.raises(SiteDataError, match="changed while its new version was written"):
        remove_lines(data_file, {1, 4, 7}, rows[0].stamp)
    assert data_file.read_text() == VICTIM and sorted(os.listdir(site_dir)) == ["train.jsonl"]


def test_a_file_rewritten_in_place_with_its_time_set_back_is_refused(site):
    """Found in review: the same size written in place, the modification time reset: the
    change time still moves."""
    site_dir, _, _ = site
    data_file = site_dir / "train.jsonl"
    [rows, _] = read_rows(site_dir, [])
    before = data_file.stat()
    data_file.write_text(data_file.read_text().replace("dana", "erin"))
    os.utime(data_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(SiteDataError, match="not the file the rows were read from"):
        remove_lines(data_file, {1, 4, 7}, rows[0].stamp)
    assert data_file.read_text().count("erin") == 3


def test_a_fifo_swapped_in_for_the_data_file_is_refused_without_waiting(site, monkeypatch):
    """Found in review: a FIFO renamed over train.jsonl made forget wait for a writer for good,
    holding the state lock; so did a loader, swapped between listing the file and opening it
    (the listing stood in for: it already skips what is not a file)."""
    site_dir, _, _ = site
    [rows, _] = read_rows(site_dir, [])
    data_file = site_dir / "train.jsonl"
    fifo = site_dir / "fifo.tmp"
    os.mkfifo(fifo)
    os.replace(fifo, data_file)
    is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda path: path == data_file or is_file(path))
    def waited(*_):
        raise TimeoutError("waited on the FIFO")

    signal.signal(signal.SIGALRM, waited)  # a regression hangs: fail instead
    signal.alarm(60)
    try:
        with pytest.raises(SiteDataError, match="not the file the rows were read from"):
            remove_lines(data_file, {1}, rows[0].stamp)
        rejected = []
        assert read_rows(site_dir, rejected) == ([], [])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    assert [str(row) for row in rejected] == [
        "train.jsonl: unreadable file (not a regular file (a FIFO, socket or device?))"]


def test_a_device_linked_in_for_the_data_file_is_never_opened(site, monkeypatch):
    """Found in review: the type check came after the open, so a device named as a data file
    (a link to it, as only root may make one the site follows) had its driver opened, which for
    some devices acts (a tape rewinds). Only an ``O_PATH`` descriptor, which opens nothing, is
    made of anything that is not a regular file."""
    site_dir, _, _ = site
    [rows, _] = read_rows(site_dir, [])
    data_file = site_dir / "train.jsonl"
    swap_in_link(data_file, Path("/dev/null"))
    opened = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        opened.append((os.fspath(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    is_file = Path.is_file  # the listing stood in for, as for the FIFO above
    monkeypatch.setattr(Path, "is_file", lambda path: path == data_file or is_file(path))
    with pytest.raises(SiteDataError, match="not the file the rows were read from"):
        remove_lines(data_file, {1}, rows[0].stamp)
    rejected = []
    assert read_rows(site_dir, rejected) == ([], [])
    monkeypatch.undo()
    assert [str(row) for row in rejected] == [
        "train.jsonl: unreadable file (not a regular file (a FIFO, socket or device?))"]
    named = [flags for path, flags in opened if Path(path).name in ("train.jsonl", "null")]
    assert named and all(flags & os.O_PATH for flags in named)


@pytest.mark.parametrize("planted", ["the data folder's link", "a link further on"])
def test_a_link_another_account_planted_to_a_file_not_its_own_is_not_followed(tmp_path,
                                                                             planted):
    """Found in review: run as root, a link the exporter made to a file of root's (another
    site's data) had that file rewritten; so did a link in the exporter's own folder, which
    root's supported link to the exporter's file points into. A file reached through a link of
    another account than root's, this one's or the file's owner's is neither read nor
    rewritten."""
    other = os.geteuid() + 4242
    write_site(tmp_path / "other-site")  # root's
    exports = tmp_path / "exports"  # the exporter's folder
    exports.mkdir()
    (exports / "train.jsonl").symlink_to(tmp_path / "other-site" / "train.jsonl")
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    link = site_dir / "train.jsonl"
    link.symlink_to(exports / "train.jsonl")
    [rows, _] = read_rows(site_dir, [])  # read before the link was the exporter's
    dana = {row.line for row in rows if row.customer == "dana"}
    os.lchown(link if planted == "the data folder's link" else exports / "train.jsonl", other, -1)
    culprit = link if planted == "the data folder's link" else exports / "train.jsonl"
    message = f"{link} is reached through {culprit}, a link of uid {other}, to a file of uid 0"
    with pytest.raises(SiteDataError, match=message):
        remove_lines(link, dana, rows[0].stamp)
    assert (tmp_path / "other-site" / "train.jsonl").read_text().count('"dana"') == 3
    rejected = []
    assert read_rows(site_dir, rejected) == ([], [])
    assert [str(row) for row in rejected] == [f"train.jsonl: not read: {message}, which that "
                                              "account could not use itself"]
    os.lchown(culprit, os.geteuid(), -1)
    remove_lines(link, dana, rows[0].stamp)
    assert '"dana"' not in (tmp_path / "other-site" / "train.jsonl").read_text()


def test_a_purge_that_cannot_open_a_data_file_says_why_and_nothing_about_erasures(
        site, monkeypatch, capsys):
    """Found in review: any failure was said to be a read-only mount, and a purge's refusal
    said that an erasure stays recorded."""
    site_dir, state, _ = site
    lines = (site_dir / "train.jsonl").read_text().splitlines()  # all expired: removed
    old = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    (site_dir / "train.jsonl").write_text("".join(
        json.dumps(json.loads(line) | {"timestamp": old}) + "\n" for line in lines))
    opened = os.open

    def denied(path, flags, *args, **kwargs):
        if str(path) == "train.jsonl":
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, flags, *args, **kwargs)

    monkeypatch.setattr(erase_lines.os, "open", denied)
    capsys.readouterr()
    code = fedintent(["purge", str(site_dir), "--state-dir", str(state), "--retention-days", "30",
                      "--delete-from-data"])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert code == 2 and "cannot remove rows from" in err and "Permission denied" in err, err
    assert "read-only" not in err and "erasure" not in err
    assert "rows to remove are left" in err and "then run this again" in err  # found in review


def test_resolving_a_path_names_every_link_on_the_way_as_the_kernel_follows_them(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "file.jsonl").write_text("{}\n")
    (tmp_path / "up").symlink_to("a/b/../b")  # relative, with ..
    (tmp_path / "a" / "link.jsonl").symlink_to("../up/file.jsonl")  # a chain through a folder
    (tmp_path / "abs.jsonl").symlink_to(tmp_path / "a" / "link.jsonl")
    real, links = resolved(tmp_path / "abs.jsonl")
    assert real == (tmp_path / "abs.jsonl").resolve() == tmp_path / "a" / "b" / "file.jsonl"
    assert [link for link, _ in links] == [tmp_path / "abs.jsonl", tmp_path / "a" / "link.jsonl",
                                           tmp_path / "up"]
    assert {owner for _, owner in links} == {os.geteuid()}
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        resolved(tmp_path / "loop")


@pytest.mark.parametrize(("owner", "mode", "refused"), [
    ("this account's, in its group", 0o644, None),
    ("this account's, another group", 0o644, "belongs to uid"),
    ("another account's, in this group", 0o664, "belongs to uid"),
    ("this account's, in its group", 0o555, r"is read-only \(mode 555\)"),
])
def test_an_account_other_than_root_rewrites_only_a_writable_file_it_can_keep_as_it_was(
        site, monkeypatch, owner, mode, refused):
    """As another account than root, a rewritten file becomes that account's and its group's:
    only a file already so is rewritten (found by the mutation run: every test's file was
    another account's, which passes whichever half of the check is dropped); and no read-only
    file, whatever other bits it has."""
    site_dir, _, _ = site
    data_file = site_dir / "train.jsonl"
    account = os.geteuid() + 4242
    uid = account if owner.startswith("this") else account + 1
    gid = account if owner.endswith("its group") or owner.endswith("this group") else account + 1
    os.chown(data_file, uid, gid)
    data_file.chmod(mode)
    [rows, _] = read_rows(site_dir, [])
    monkeypatch.setattr(os, "geteuid", lambda: account)
    monkeypatch.setattr(os, "getegid", lambda: account)
    monkeypatch.setattr(os, "getgroups", lambda: [account])
    if refused is None:
        remove_lines(data_file, {1, 4, 7}, rows[0].stamp)
        monkeypatch.undo()
        assert '"dana"' not in data_file.read_text()
        assert (data_file.stat().st_uid, data_file.stat().st_gid) == (uid, gid)
    else:
        with pytest.raises(SiteDataError, match=refused):
            remove_lines(data_file, {1, 4, 7}, rows[0].stamp)
        monkeypatch.undo()
        assert data_file.read_text().count('"dana"') == 3


def test_a_site_run_as_another_account_than_root_reads_through_anyones_links(tmp_path,
                                                                            monkeypatch):
    """Only root's reads are bounded by no permission: as another account, a link made by a
    third one (an administrator's) is read through, as before."""
    write_site(tmp_path / "export")
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    link = site_dir / "train.jsonl"
    link.symlink_to(tmp_path / "export" / "train.jsonl")
    os.lchown(link, os.geteuid() + 4242, -1)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4343)
    rejected = []
    [rows, _] = read_rows(site_dir, rejected)
    assert len(rows) == 8 and rejected == []


def test_the_rewrite_keeps_the_files_extended_attributes(site):
    """Found in review: the rewrite dropped the file's extended attributes, an ACL among them
    (through which a site may read the exporter's file). Shown with a user attribute."""
    site_dir, _, _ = site
    data_file = site_dir / "train.jsonl"
    try:
        os.setxattr(data_file, "user.exported-by", b"crm-nightly")
    except OSError:
        pytest.skip("this file system keeps no user attributes")
    [rows, _] = read_rows(site_dir, [])
    remove_lines(data_file, {1, 4, 7}, rows[0].stamp)
    assert '"dana"' not in data_file.read_text()
    assert os.getxattr(data_file, "user.exported-by") == b"crm-nightly"


def test_a_file_system_without_extended_attributes_still_has_the_rows_removed(site,
                                                                            monkeypatch):
    """Some data folders sit on file systems that keep no extended attributes (``ENOTSUP``
    from listing them): the erasure still removes the rows there, with none to keep. Found by
    stop 65's mutation pass: no test listed attributes that could not be listed."""
    site_dir, _, _ = site
    data_file = site_dir / "train.jsonl"
    [rows, _] = read_rows(site_dir, [])

    def not_supported(*args: object) -> list[str]:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "listxattr", not_supported)
    remove_lines(data_file, {1, 4, 7}, rows[0].stamp)
    monkeypatch.undo()
    kept = data_file.read_text()
    assert '"dana"' not in kept and len(kept.splitlines()) == 5


def test_attributes_that_cannot_be_read_stop_the_rewrite_with_the_file_as_it_was(site,
                                                                                monkeypatch):
    """Any other error listing the attributes (an I/O error) is raised as itself before the
    file is touched: rewriting it then would silently drop an ACL the site reads it through.
    (Mutants: the error kinds check reversed, its ``raise`` removed.)"""
    site_dir, _, _ = site
    data_file = site_dir / "train.jsonl"
    before = data_file.read_bytes()
    [rows, _] = read_rows(site_dir, [])

    def io_error(*args: object) -> list[str]:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "listxattr", io_error)
    with pytest.raises(OSError) as raised:
        remove_lines(data_file, {1, 4, 7}, rows[0].stamp)
    monkeypatch.undo()
    assert raised.value.errno == errno.EIO
    assert data_file.read_bytes() == before and sorted(os.listdir(site_dir)) == ["train.jsonl"]


def test_a_site_run_as_root_rewrites_the_exporters_file_and_keeps_it_the_exporters(site):
    """Root keeps any owner, so a site run as root (the container's default) removes the rows
    from a data file another account exports and gives the file back to that account, which
    can append to it again. Found by stop 65's mutation pass: every test of a file owned by
    someone else pretended to be another account than root (``geteuid() != 0`` as ``!= 1``
    survived, refusing root)."""
    if os.geteuid() != 0:
        pytest.skip("only root can give the data file to another account")
    site_dir, _, _ = site
    data_file = site_dir / "train.jsonl"
    exporter = 4242
    os.chown(data_file, exporter, exporter)
    data_file.chmod(0o640)
    [rows, _] = read_rows(site_dir, [])
    remove_lines(data_file, {1, 4, 7}, rows[0].stamp)
    assert '"dana"' not in data_file.read_text() and len(data_file.read_text().splitlines()) == 5
    info = data_file.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (exporter, exporter, 0o640)
