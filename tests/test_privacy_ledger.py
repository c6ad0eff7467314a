"""The site's privacy ledger: durable, verified, per unit, never silently reset or rolled back."""

import json
import logging
import math
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest

import fl_client.privacy_budget as privacy_budget
import fl_client.privacy_ledger as privacy_ledger
from fl_client.deletion_log import DELETION_LOG
from fl_client.privacy_accounting import epsilon_spent
from fl_client.privacy_budget import charge_round, lifetime_delta
from fl_client.privacy_ledger import (
    FORMAT,
    HEAD_FILE,
    LEDGER_FILE,
    Ledger,
    LedgerError,
    Release,
    now,
    read_ledger,
    unit_epsilons,
    unit_key,
    write_ledger,
)
from fl_client.site_policy import PolicyRefusal, RoundRequest, SitePolicy
from fl_client.site_secret import (
    KEYED_FILES,
    SecretError,
    create_site_secret,
    private_seed,
    site_key,
    site_secret,
)
from fl_protocol.hash_chain import head_path

SECRET = b"s" * 32


def release(run: str = "run-1", server_round: int = 1, sigma: float = 1.1) -> Release:
    return Release(
        run=run, server_round=server_round, num_rounds=3, noise_multiplier=sigma,
        sample_rate=0.1, steps=10, clip_norm=1.0, delta=1e-5, accountant="prv", units=2,
        rdp=0.25, time=now(),
    )


def charged(ledger: Ledger, rel: Release, units: list[str]) -> Ledger:
    """``ledger`` with ``rel`` recorded and charged to ``units`` (as charge_round does)."""
    for unit in units:
        key = unit_key(SECRET, unit)
        ledger.spend[key] = ledger.spend.get(key, 0.0) + rel.rdp
        ledger.alone[key] = ledger.alone.get(key, 0.0) + rel.rdp
    ledger.releases.append(rel)
    return ledger


@pytest.fixture
def state(tmp_path):
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    for run, server_round in (("a", 1), ("a", 2), ("b", 1)):
        write_ledger(tmp_path, charged(ledger, release(run, server_round), ["u1", "u2"]), SECRET)
    return tmp_path


def test_absent_ledger_means_nothing_spent(tmp_path):
    assert read_ledger(tmp_path, SECRET) is None


def test_releases_and_spend_accumulate_and_hold_no_identity(state):
    ledger = read_ledger(state, SECRET)
    assert [(r.run, r.server_round) for r in ledger.releases] == [("a", 1), ("a", 2), ("b", 1)]
    assert ledger.spend == {unit_key(SECRET, "u1"): 0.75, unit_key(SECRET, "u2"): 0.75}
    raw = (state / LEDGER_FILE).read_text()
    assert "u1" not in raw and "u2" not in raw
    assert not list(state.glob("*.tmp")) and not list(state.glob(".*.tmp"))


def test_unit_keys_depend_on_the_site_secret():
    assert unit_key(SECRET, "cust-1") != unit_key(b"t" * 32, "cust-1")
    assert unit_key(SECRET, "cust-1") != unit_key(SECRET, "cust-2")


def test_ledger_files_are_private(state):
    for name in (LEDGER_FILE, HEAD_FILE):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name


@pytest.mark.parametrize("invalid", [{"sample_rate": 0.0}, {"sample_rate": 1.5}, {"steps": 0},
                                     {"rdp": 0.0}, {"noise_multiplier": -1.0}])
def test_a_signed_but_impossible_release_is_refused(tmp_path, invalid):
    """The MAC proves who wrote a release, not that it makes sense: a bug that recorded an
    impossible release must stop the site, not undercount."""
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    bad = Release(**{**release().__dict__, **invalid})
    write_ledger(tmp_path, charged(ledger, bad, ["u1"]), SECRET)
    with pytest.raises(LedgerError, match="invalid release"):
        read_ledger(tmp_path, SECRET)


@pytest.mark.parametrize(
    "content",
    ["{not json", "", "[]",
     json.dumps({"format": "something-else", "releases": []}),
     json.dumps({"format": "fedintent-privacy-ledger/3"}),
     json.dumps({"format": "fedintent-privacy-ledger/3", "privacy_unit": "utterance",
                 "order": 4, "delta": 1e-5, "spend": {}, "releases": [{"run": "x"}]}),
     json.dumps({"format": "fedintent-privacy-ledger/3", "privacy_unit": "utterance",
                 "order": 4, "delta": 1e-5, "spend": {}, "releases": ["x"]})],
)
def test_corrupt_ledger_refuses_and_is_left_untouched(tmp_path, content):
    (tmp_path / LEDGER_FILE).write_text(content)
    with pytest.raises(LedgerError):
        read_ledger(tmp_path, SECRET)
    assert (tmp_path / LEDGER_FILE).read_text() == content


def test_a_ledger_nested_too_deep_or_unreadable_is_a_ledger_error(tmp_path):
    (tmp_path / LEDGER_FILE).write_text("[" * 100_000)
    with pytest.raises(LedgerError, match="corrupt"):
        read_ledger(tmp_path, SECRET)
    (tmp_path / LEDGER_FILE).unlink()
    (tmp_path / LEDGER_FILE).mkdir()
    with pytest.raises(LedgerError, match=f"{LEDGER_FILE}: privacy ledger is unreadable"):
        read_ledger(tmp_path, SECRET)


def test_an_unreadable_egress_log_stops_the_site(state):
    """The egress log shows whether the ledger was rolled back: unread, the site cannot tell."""
    (state / "egress.jsonl").mkdir()
    with pytest.raises(LedgerError, match="egress log is unreadable"):
        read_ledger(state, SECRET)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["releases"][0].update(noise_multiplier=50.0),  # looks cheaper: edited
        lambda d: d["releases"][1].update(rdp=0.01),
        lambda d: d["releases"].pop(0),                             # deleted first entry
        lambda d: d["releases"].pop(),                              # truncated
        lambda d: d["releases"].reverse(),                          # reordered
        lambda d: d["releases"].append(dict(d["releases"][0])),     # duplicated
        lambda d: d.update(releases=[]),                            # reset
        lambda d: d["spend"].update({k: 0.0 for k in d["spend"]}),  # spend zeroed
        lambda d: d["spend"].popitem(),                             # a unit forgotten
        lambda d: d.update(order=64.0),                             # another Rényi order
        lambda d: d.pop("mac"),
    ],
)
def test_tampered_ledger_is_refused(state, tamper):
    rewrite(state, tamper)
    with pytest.raises(LedgerError, match="the site does not train"):
        read_ledger(state, SECRET)


def test_a_ledger_does_not_verify_under_another_site_secret(state):
    """And says that the secret may be the wrong one (found in review: another site's secret,
    restored from the wrong backup, read as an edited ledger, whose restore cannot help)."""
    with pytest.raises(LedgerError, match="release 1 does not verify.*site-secret is not the "
                                          "one that signed it"):
        read_ledger(state, b"t" * 32)


def test_a_rolled_back_ledger_is_refused(state, tmp_path_factory):
    backup = tmp_path_factory.mktemp("backup")
    shutil.copy(state / LEDGER_FILE, backup / LEDGER_FILE)
    ledger = read_ledger(state, SECRET)
    write_ledger(state, charged(ledger, release("c", 1), ["u1"]), SECRET)
    shutil.copy(backup / LEDGER_FILE, state / LEDGER_FILE)  # an older, genuine copy
    with pytest.raises(LedgerError, match="rolled back"):
        read_ledger(state, SECRET)


def test_a_deleted_ledger_is_refused(state):
    (state / LEDGER_FILE).unlink()
    with pytest.raises(LedgerError, match="deleted"):
        read_ledger(state, SECRET)


@pytest.mark.parametrize("epsilon", [1.5, None], ids=["dp", "no-dp"])  # null: infinite
def test_a_deleted_ledger_and_head_are_refused_when_the_egress_log_shows_releases(state,
                                                                                  epsilon):
    """A reply without DP was charged in the ledger too (found in review: training took such a
    site for one that had never released anything, and started every unit's spend again)."""
    (state / LEDGER_FILE).unlink()
    (state / HEAD_FILE).unlink()
    (state / "egress.jsonl").write_text(
        json.dumps({"verdict": "sent", "metrics": {"epsilon": epsilon}}) + "\n")
    with pytest.raises(LedgerError, match="deleted"):
        read_ledger(state, SECRET)


def test_a_head_naming_no_release_without_its_ledger_is_a_deleted_ledger(tmp_path):
    """A head is written only after a ledger, and a ledger with no release still records the
    deletion log's length (found in review: training read such a head as no ledger)."""
    (tmp_path / HEAD_FILE).write_text(json.dumps({"releases": 0, "version": 1, "mac": "ab"}))
    with pytest.raises(LedgerError, match="deleted"):
        read_ledger(tmp_path, SECRET)


def test_a_missing_head_is_refused(state):
    (state / HEAD_FILE).unlink()
    with pytest.raises(LedgerError, match="missing"):
        read_ledger(state, SECRET)


def without_own_noise_spends(state) -> None:
    """Rewrite the ledger without ``alone``, as every format before 7 was written."""
    ledger = read_ledger(state, SECRET)
    ledger.alone = {}
    write_ledger(state, ledger, SECRET)


def test_a_version_3_ledger_reads_as_one_without_aliases_and_aliases_are_macd(state):
    path = state / LEDGER_FILE
    without_own_noise_spends(state)
    document = json.loads(path.read_text())
    assert document["format"] == FORMAT and document["aliases"] == {}
    older = {k: v for k, v in document.items()
             if k not in ("aliases", "recorded", "alone", "deletion_log")} | {
        "format": "fedintent-privacy-ledger/3"}
    path.write_text(json.dumps(older))
    assert read_ledger(state, SECRET).aliases == {}
    ledger = read_ledger(state, SECRET)
    ledger.aliases["k"] = 0.25
    write_ledger(state, charged(ledger, release("c", 1), ["u1"]), SECRET)
    assert read_ledger(state, SECRET).aliases == {"k": 0.25}
    document = json.loads(path.read_text())
    for edited in ({**document, "aliases": {}}, {**document, "aliases": {"k": 0.0}},
                   {**{k: v for k, v in document.items()
                       if k not in ("aliases", "recorded", "alone", "deletion_log")},
                    "format": "fedintent-privacy-ledger/3"}):
        path.write_text(json.dumps(edited))
        with pytest.raises(LedgerError, match="edited"):
            read_ledger(state, SECRET)


def test_who_recorded_each_alias_is_macd_and_only_format_6_holds_it(state):
    """The carry-over counts each unit that recorded under a customer's names once; a
    recorder edited, removed or forged would merge or split units, so ``recorded`` is MACed,
    and a ledger relabelled as format 5 (which a release before it reads without it) is
    refused rather than read with its recorders dropped."""
    ledger = read_ledger(state, SECRET)
    ledger.recorded["name"] = {"unit-a": 0.5}
    write_ledger(state, charged(ledger, release("c", 1), ["u1"]), SECRET)
    assert read_ledger(state, SECRET).recorded == {"name": {"unit-a": 0.5}}
    path = state / LEDGER_FILE
    document = json.loads(path.read_text())
    for edited in ({**document, "recorded": {}},
                   {**document, "recorded": {"name": {"unit-b": 0.5}}},
                   {**document, "recorded": {"name": {"unit-a": 0.25}}},
                   {k: v for k, v in document.items() if k != "recorded"}):
        path.write_text(json.dumps(edited))
        with pytest.raises(LedgerError, match="edited"):
            read_ledger(state, SECRET)
    path.write_text(json.dumps({k: v for k, v in document.items() if k != "alone"}
                               | {"format": "fedintent-privacy-ledger/5"}))
    with pytest.raises(LedgerError, match="cannot hold who recorded its aliases"):
        read_ledger(state, SECRET)


def test_own_noise_spends_are_macd_and_only_format_7_holds_them(state):
    """A unit's own-noise spend is what max-epsilon-alone holds it to; edited or removed it
    would let the site's own noise cost the unit more than the bound, so it is MACed, never
    below the spend, and a ledger relabelled as format 6 (which the release before it reads
    without it) is refused rather than read with it dropped."""
    key = unit_key(SECRET, "u1")
    ledger = read_ledger(state, SECRET)
    assert ledger.alone == ledger.spend  # local releases: the site's noise is all the noise
    ledger.alone[key] += 0.5
    write_ledger(state, ledger, SECRET)
    assert read_ledger(state, SECRET).alone[key] == ledger.spend[key] + 0.5
    path = state / LEDGER_FILE
    document = json.loads(path.read_text())
    moved = {other: spend for other, spend in document["alone"].items() if other != key}
    for edited in ({**document, "alone": {}}, {**document, "alone": moved},
                   {**document, "alone": {**document["alone"], key: 0.75}},
                   {k: v for k, v in document.items() if k != "alone"}):
        path.write_text(json.dumps(edited))
        with pytest.raises(LedgerError, match="edited"):
            read_ledger(state, SECRET)
    path.write_text(json.dumps(document | {"format": "fedintent-privacy-ledger/6"}))
    with pytest.raises(LedgerError, match="cannot hold its units' own-noise spends"):
        read_ledger(state, SECRET)
    path.write_text(json.dumps(document))
    ledger = read_ledger(state, SECRET)
    ledger.alone[key] = ledger.spend[key] / 2  # below its spend, with a MAC that verifies
    write_ledger(state, ledger, SECRET)
    with pytest.raises(LedgerError, match="own-noise spend is below its spend"):
        read_ledger(state, SECRET)


def test_a_ledger_from_before_format_7_starts_each_unit_alone_from_the_bound_it_used(state):
    """Format 6 kept no own-noise spend: each unit starts from its spend plus what every
    distributed release added without the other sites' shares, the bound it stated."""
    without_own_noise_spends(state)
    ledger = read_ledger(state, SECRET)
    ledger.releases.append(replace(release("d", 1), privacy_model="distributed", sample_rate=1.0,
                                   rdp=0.25, rdp_alone=2.25, skellam_mu=100.0,
                                   skellam_mu_share=12.5, l1=1.0, l2=1.0))
    ledger.alone = {}
    write_ledger(state, ledger, SECRET)
    ledger = read_ledger(state, SECRET)
    assert ledger.alone == {key: spend + 2.0 for key, spend in ledger.spend.items()}


def test_the_recorded_deletion_log_length_is_macd(state):
    ledger = read_ledger(state, SECRET)
    ledger.deletion_log = {"entries": 4, "hash": "ab" * 32}
    write_ledger(state, charged(ledger, release("c", 1), ["u1"]), SECRET)
    assert read_ledger(state, SECRET).deletion_log == {"entries": 4, "hash": "ab" * 32}
    path = state / LEDGER_FILE
    document = json.loads(path.read_text())
    for edited in ({"entries": 2, "hash": "ab" * 32}, {}):
        path.write_text(json.dumps(document | {"deletion_log": edited}))
        with pytest.raises(LedgerError, match="edited"):
            read_ledger(state, SECRET)
    path.write_text(json.dumps(document | {"deletion_log": {"entries": "4", "hash": "x"}}))
    with pytest.raises(LedgerError, match="corrupt"):
        read_ledger(state, SECRET)


def test_a_crash_between_ledger_and_head_writes_is_accepted(state):
    head = (state / HEAD_FILE).read_bytes()
    ledger = read_ledger(state, SECRET)
    write_ledger(state, charged(ledger, release("c", 1), ["u1"]), SECRET)
    (state / HEAD_FILE).write_bytes(head)  # as if the process died before the head was written
    assert len(read_ledger(state, SECRET).releases) == 4


@pytest.mark.parametrize("signed", KEYED_FILES)
def test_a_lost_secret_is_not_made_again_beside_what_it_signed(tmp_path, signed):
    """Found in review: a deleted secret was silently made anew, and the site then reported
    its ledger edited; the new secret also hid the cause and changed the site's key."""
    (tmp_path / signed).write_text("{}")
    for read_or_create in (site_secret, create_site_secret):
        with pytest.raises(SecretError, match=f"missing, and {signed}"):
            read_or_create(tmp_path)
    assert not (tmp_path / "site-secret").exists()


def test_the_signed_files_are_the_ledgers_and_the_deletion_logs():
    assert set(KEYED_FILES) == {LEDGER_FILE, HEAD_FILE, DELETION_LOG,
                                head_path(Path(DELETION_LOG)).name}


def test_site_secret_is_created_once_private_and_checked(tmp_path):
    with pytest.raises(SecretError, match="holds no site secret.*fedintent init-site"):
        site_secret(tmp_path)  # never made on reading: a lost state folder must not be remade
    assert create_site_secret(tmp_path) and not create_site_secret(tmp_path)
    first = site_secret(tmp_path)
    assert site_secret(tmp_path) == first and len(first) == 32
    assert (tmp_path / "site-secret").stat().st_mode & 0o777 == 0o600
    (tmp_path / "site-secret").write_text("ab" * 16)  # 16 bytes: the shortest taken
    assert site_secret(tmp_path) == b"\xab" * 16
    for short in ("ab" * 15, "zz"):
        (tmp_path / "site-secret").write_text(short)
        with pytest.raises(SecretError):
            site_secret(tmp_path)


def rewrite(state, edit) -> None:
    """Edit the ledger document in place (what a careless script or an attacker would do)."""
    document = json.loads((state / LEDGER_FILE).read_text())
    edit(document)
    (state / LEDGER_FILE).write_text(json.dumps(document))


def test_a_ledger_of_another_format_is_refused(state):
    for found, said in (("fedintent-privacy-ledger/2", "is older than this release reads"),
                        ("fedintent-privacy-ledger/9", "written by a newer fedintent release"),
                        ("fedintent-privacy-ledger/\u0666", "not a fedintent privacy ledger"),
                        ("fedintent-privacy-ledger/05", "not a fedintent privacy ledger"),
                        ("another-ledger/9", "not a fedintent privacy ledger")):
        rewrite(state, lambda doc, found=found: doc.update(format=found))
        with pytest.raises(LedgerError, match=said):
            read_ledger(state, SECRET)


def test_a_version_4_ledger_with_a_rewrite_count_reads_and_is_written_as_the_current_one(state):
    """Releases from ceb9819 wrote ``version`` (covered by the MAC) under format 4; the format
    moved to 5 so that a release which cannot verify it names a newer format instead."""
    ledger = read_ledger(state, SECRET)
    ledger.deletion_log = {"entries": 1, "hash": "cd" * 32}
    ledger.alone = {}
    write_ledger(state, ledger, SECRET)
    document = json.loads((state / LEDGER_FILE).read_text())
    assert document["format"] == FORMAT
    assert document["version"] != len(document["releases"])
    rewrite(state, lambda doc: doc.update(format="fedintent-privacy-ledger/4")
            or doc.pop("recorded") or doc.pop("alone"))  # as format 4 wrote it
    ledger = read_ledger(state, SECRET)
    assert ledger.version == document["version"]
    write_ledger(state, charged(ledger, release("c", 1), ["u1"]), SECRET)
    assert json.loads((state / LEDGER_FILE).read_text())["format"] == FORMAT
    assert read_ledger(state, SECRET).version == document["version"] + 1


def test_a_release_with_a_field_the_mac_does_not_cover_is_refused(state):
    rewrite(state, lambda doc: doc["releases"][0].update(note="CANARY"))
    with pytest.raises(LedgerError, match="corrupt"):
        read_ledger(state, SECRET)


def test_a_non_private_release_reads_back_as_an_unlimited_spend(tmp_path):
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    open_release = Release(**{**release().__dict__, "noise_multiplier": 0.0, "rdp": math.inf})
    write_ledger(tmp_path, charged(ledger, open_release, ["u1"]), SECRET)
    assert read_ledger(tmp_path, SECRET).spend == {unit_key(SECRET, "u1"): math.inf}


def one_release_ledger(tmp_path):
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    write_ledger(tmp_path, charged(ledger, release(), ["u1"]), SECRET)
    return tmp_path


def test_a_ledger_deleted_after_its_first_release_is_refused(tmp_path):
    state = one_release_ledger(tmp_path)
    (state / LEDGER_FILE).unlink()
    with pytest.raises(LedgerError, match="deleted"):
        read_ledger(state, SECRET)


def test_without_a_head_only_a_first_release_is_accepted(tmp_path):
    """A crash between the first ledger write and its head leaves one release and no head;
    with two releases and no head, the ledger may be a rolled-back copy."""
    state = one_release_ledger(tmp_path)
    (state / HEAD_FILE).unlink()
    assert len(read_ledger(state, SECRET).releases) == 1
    write_ledger(state, charged(read_ledger(state, SECRET), release("b"), ["u1"]), SECRET)
    (state / HEAD_FILE).unlink()
    with pytest.raises(LedgerError, match="missing"):
        read_ledger(state, SECRET)


def test_a_head_two_releases_behind_is_refused(tmp_path):
    state = one_release_ledger(tmp_path)
    old_head = (state / HEAD_FILE).read_bytes()
    for run in ("b", "c"):
        write_ledger(state, charged(read_ledger(state, SECRET), release(run), ["u1"]), SECRET)
    (state / HEAD_FILE).write_bytes(old_head)
    with pytest.raises(LedgerError, match="older than the ledger"):
        read_ledger(state, SECRET)


@pytest.mark.parametrize("head", ['{"releases": "3", "mac": "x"}', '{"releases": 3}', "[3]"])
def test_a_malformed_head_is_refused(state, head):
    (state / HEAD_FILE).write_text(head)
    with pytest.raises(LedgerError, match="unreadable ledger head"):
        read_ledger(state, SECRET)


def test_a_too_short_secret_is_refused(tmp_path):
    (tmp_path / "site-secret").write_text("ab" * 8)  # 8 bytes: guessable
    with pytest.raises(SecretError, match="too short"):
        site_secret(tmp_path)


def test_private_seeds_are_fresh_per_run_round_and_release_and_replayable(tmp_path):
    """Noise and sampling seeds: every run, round and release draws afresh (the accountant
    composes independent noise; a round released twice must not repeat its noise), the same
    parts give the same seed, and another site's seeds differ."""
    site, other = tmp_path / "a", tmp_path / "b"
    create_site_secret(site)
    create_site_secret(other)
    seeds = {private_seed(site, run, rnd, release) for run in ("r", "s") for rnd in (1, 2, 3)
             for release in (1, 2)}
    assert len(seeds) == 12 and all(0 <= seed < 2**256 for seed in seeds)
    assert max(seeds) >= 2**200  # the whole digest: no seed space small enough to search
    assert private_seed(site, "r", 2, 1) == private_seed(site, "r", 2, 1)
    assert private_seed(other, "r", 2, 1) != private_seed(site, "r", 2, 1)


def test_site_keys_are_stable_per_site_and_fit_a_float_exactly(tmp_path):
    create_site_secret(tmp_path / "a")
    create_site_secret(tmp_path / "b")
    first, second = site_key(tmp_path / "a"), site_key(tmp_path / "b")
    assert first == site_key(tmp_path / "a") and first != second
    assert all(0 < key < 2**48 and float(key) == key for key in (first, second))


def distributed(**likely) -> Release:
    return Release(**{**release().__dict__, "accountant": "rdp", "privacy_model": "distributed",
                      "skellam_mu": 4e9, "skellam_mu_share": 5e8, "l1": 1.4e6, "l2": 8367.0,
                      "rdp_alone": 2.0, **likely})


def test_a_distributed_release_keeps_its_likely_sensitivity_under_the_mac(tmp_path):
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    likely = {"likely_l1": 1.41e6, "likely_l2": 8205.3, "rounding_failure": math.exp(-200)}
    write_ledger(tmp_path, charged(ledger, distributed(**likely), ["u1"]), SECRET)
    [back] = read_ledger(tmp_path, SECRET).releases
    assert (back.likely_l1, back.likely_l2, back.rounding_failure) == tuple(likely.values())
    rewrite(tmp_path, lambda doc: doc["releases"][0].update(likely_l2=1.0))  # looks cheaper
    with pytest.raises(LedgerError, match="the site does not train"):
        read_ledger(tmp_path, SECRET)


def test_a_distributed_release_recorded_before_likely_sensitivities_reads_its_sure_ones(tmp_path):
    """A ledger written before the likely sensitivities existed has no such fields; it verifies
    unchanged and its releases count the sensitivities that hold whatever the draws."""
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    write_ledger(tmp_path, charged(ledger, distributed(), ["u1"]), SECRET)
    [record] = json.loads((tmp_path / LEDGER_FILE).read_text())["releases"]
    assert not {"likely_l1", "likely_l2", "rounding_failure"} & set(record)
    [back] = read_ledger(tmp_path, SECRET).releases
    assert (back.likely_l1, back.likely_l2, back.rounding_failure) == (1.4e6, 8367.0, 0.0)
    for failure in (0.5, 0.0):  # 0: the fields a release without failure is stored without
        rewrite(tmp_path, lambda doc, f=failure: doc["releases"][0].update(
            likely_l2=1.0, likely_l1=1.0, rounding_failure=f))
        with pytest.raises(LedgerError, match="the site does not train"):
            read_ledger(tmp_path, SECRET)


def test_rounds_charged_at_once_are_both_recorded(tmp_path, monkeypatch):
    """Two runs at one site charge at once (a SuperNode may run two apps side by side). Were the
    ledger read by the second before the first had written it, the last writer would erase the
    other's release and spend. While run-a writes, run-b is started and given up to 2 s to read:
    under the state folder's lock it cannot read until run-a is done, so both are recorded."""
    create_site_secret(tmp_path)  # the site's state folder, set up (``fedintent init-site``)
    policy = SitePolicy(max_epsilon=10.0, max_delta=1e-5, privacy_unit=None)
    units = [f"u{i}" for i in range(40)]
    b_read, errors = threading.Event(), []

    def charge(run: str) -> None:
        try:
            charge_round(tmp_path, units, RoundRequest(
                run_name=run, server_round=1, num_rounds=3, target_epsilon=4.0, delta=1e-5,
                accountant="rdp", privacy_unit="utterance", clip_norm=1.0, batch_size=4096,
                local_epochs=1), policy)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    other = threading.Thread(target=charge, args=("run-b",), name="run-b")

    def reading(state_dir, secret):
        if threading.current_thread() is other:
            b_read.set()
        return read_ledger(state_dir, secret)

    def writing(state_dir, ledger, secret):
        if threading.current_thread() is not other and not other.is_alive():
            other.start()
            b_read.wait(timeout=2)
        write_ledger(state_dir, ledger, secret)

    monkeypatch.setattr(privacy_budget, "read_ledger", reading)
    monkeypatch.setattr(privacy_budget, "write_ledger", writing)
    charge("run-a")
    other.join()
    assert not errors
    ledger = read_ledger(tmp_path, site_secret(tmp_path))
    assert sorted(r.run for r in ledger.releases) == ["run-a", "run-b"]
    assert set(ledger.spend.values()) == {2 * ledger.releases[0].rdp}


def train_request(delta: float, target_epsilon: float = 4.0, run: str = "run-1") -> RoundRequest:
    return RoundRequest(run_name=run, server_round=1, num_rounds=1, target_epsilon=target_epsilon,
                        delta=delta, accountant="rdp", privacy_unit="utterance", clip_norm=1.0,
                        batch_size=100_000, local_epochs=1)


@pytest.mark.parametrize("policy", [
    SitePolicy(max_epsilon=1.5, max_delta=1e-5, privacy_unit=None),
    SitePolicy(max_epsilon=8.0, max_delta=1e-5, privacy_unit=None, max_epsilon_alone=1.5)],
    ids=["max-epsilon", "max-epsilon-alone"])
def test_a_ledger_whose_renyi_order_is_from_11_up_verifies_round_after_round(tmp_path, policy):
    """Found in review: the orders from 11 up were ints, MACed as ``18`` and read back as
    ``18.0``, so a site whose small budget fixed one (max-epsilon 1.5, or max-epsilon-alone 1.5
    where that fixes the order) trained one round and then stopped for good."""
    create_site_secret(tmp_path)
    for run in ("run-1", "run-2"):
        charge_round(tmp_path, [f"u{i}" for i in range(50)],
                     train_request(1e-5, 0.5, run), policy)
    ledger = read_ledger(tmp_path, site_secret(tmp_path))
    assert ledger.order >= 11 and len(ledger.releases) == 2


def test_a_ledger_written_with_an_int_order_still_verifies(tmp_path):
    """Such a ledger, written before every order was a float, keeps the order as it was MACed."""
    write_ledger(tmp_path, charged(Ledger(privacy_unit="utterance", order=13, delta=1e-5),
                                   release(), ["u1"]), SECRET)
    assert '"order": 13,' in (tmp_path / LEDGER_FILE).read_text()
    assert read_ledger(tmp_path, SECRET).order == 13


@pytest.mark.parametrize("count", [20_000, 10_000])
def test_a_site_that_outgrows_its_ledgers_delta_states_its_guarantees_at_its_own(tmp_path,
                                                                                count):
    """A ledger begun by a DP evaluation (delta 1e-5, whatever the site's size) or on a small
    site keeps the delta it began with; on a site of 20,000 units that delta is not small next
    to 1 / units, nor on one of 10,000, where it is the limit 1 / (10 x units) itself (found
    by the mutation run: no test held that edge). The next training round lowers it to the
    site's own, and every unit's lifetime epsilon is stated there, within max-epsilon."""
    create_site_secret(tmp_path)  # the site's state folder, set up (``fedintent init-site``)
    policy = SitePolicy(max_epsilon=8.0, max_delta=1e-5, privacy_unit=None)
    charge_round(tmp_path, [f"t{i}" for i in range(50)], train_request(1e-5, 1.0, "eval"),
                 policy, empty_ok=True)
    units = [f"u{i}" for i in range(count)]
    own = lifetime_delta(policy, len(units))
    assert own == 1e-6
    charge = charge_round(tmp_path, units, train_request(own), policy, lifetime_delta=own)
    book = read_ledger(tmp_path, site_secret(tmp_path))
    assert book.delta == own == charge.delta_all_runs
    assert charge.epsilon_all_runs == pytest.approx(max(unit_epsilons(book)))
    assert max(unit_epsilons(book)) <= 8.0
    smaller = charge_round(tmp_path, units[:10], train_request(own, run="run-2"), policy,
                           lifetime_delta=lifetime_delta(policy, 10))  # never raised
    assert read_ledger(tmp_path, site_secret(tmp_path)).delta == own
    assert smaller.delta_all_runs == own  # what the reply says the -all-runs figures are at


@pytest.mark.parametrize("test_units", [300, 600])
def test_the_lifetime_delta_a_site_reports_does_not_depend_on_its_test_split(tmp_path,
                                                                           test_units):
    """Found in review: sized to every unit the ledger had charged (for a site whose data
    rolls over), the lifetime delta counted the test units of DP evaluations too, and each
    training reply's delta-all-runs told the server on which side of a power of ten the test
    split's size lay: 1e-5 beside 300 test units, 1e-6 beside 600, for 9,500 training units.
    It follows the training units in the data now."""
    create_site_secret(tmp_path)  # the site's state folder, set up (``fedintent init-site``)
    policy = SitePolicy(max_epsilon=8.0, max_delta=1e-5, privacy_unit=None)
    evaluation = replace(train_request(1e-5, 1.0, "run-a (evaluation)"),
                         batch_size=test_units)
    charge_round(tmp_path, [f"e{i}" for i in range(test_units)], evaluation, policy,
                 empty_ok=True, evaluation=True, begin_delta=1e-5)
    units = [f"t{i}" for i in range(9_500)]
    charge = charge_round(tmp_path, units, train_request(1e-5, 2.0, "run-a"), policy,
                          lifetime_delta=lifetime_delta(policy, len(units)))
    assert charge.delta_all_runs == 1e-5


def test_a_run_asking_a_tiny_delta_does_not_fix_the_ledgers(tmp_path):
    """Found in review: a new ledger began at the first run's delta, which a server may set as
    low as 1e-10; its lifetime budget, fixed there for good, was a sixth of the site's own, and
    every later run needed noise far above its plan. A training round begins the ledger at the
    site's own delta for its units; the run's guarantee is still stated at the run's."""
    create_site_secret(tmp_path)
    policy = SitePolicy(max_epsilon=8.0, max_delta=1e-5, privacy_unit=None)
    units = [f"u{i}" for i in range(50)]
    own = lifetime_delta(policy, len(units))
    hostile = charge_round(tmp_path, units, train_request(1e-10, run="tiny"), policy,
                           lifetime_delta=own)
    book = read_ledger(tmp_path, site_secret(tmp_path))
    assert (book.delta, book.order) == (own, privacy_budget.ledger_order(policy, own))
    assert hostile.epsilon_this_run <= 4.0  # at the run's own delta, 1e-10
    create_site_secret(tmp_path / "fresh")
    later, fresh = (charge_round(state, units, train_request(own, run="later"), policy,
                                 lifetime_delta=own) for state in (tmp_path, tmp_path / "fresh"))
    assert later.noise_multiplier == fresh.noise_multiplier


@pytest.mark.parametrize("count,max_delta,own", [(50, 1e-5, 1e-5), (10_000, 1e-5, 1e-6),
                                                 (50, 1e-7, 1e-7)])
def test_a_training_round_begins_the_ledger_at_the_sites_own_delta_for_its_units(
        tmp_path, count, max_delta, own):
    """Whatever delta the run asks for (here the floor, 1e-10), the ledger begins at the site's
    own for its units (``lifetime_delta``: smaller for a larger site, and never above
    max-delta), and the run's epsilon is still the run's accountant's at the run's delta."""
    create_site_secret(tmp_path)
    policy = SitePolicy(max_epsilon=8.0, max_delta=max_delta, privacy_unit=None)
    units = [f"u{i}" for i in range(count)]
    assert lifetime_delta(policy, count) == own
    charge = charge_round(tmp_path, units, train_request(1e-10, run="tiny"), policy,
                          lifetime_delta=own)
    assert read_ledger(tmp_path, site_secret(tmp_path)).delta == own
    assert charge.epsilon_this_run == pytest.approx(epsilon_spent(
        [(charge.noise_multiplier, charge.sample_rate, charge.steps)], 1e-10, "rdp"), rel=1e-9)


def test_a_unit_trained_without_dp_does_not_hold_the_delta_back(tmp_path):
    """Found in review: a unit's infinite own-noise spend (a round without DP, which only a
    site whose max-epsilon is inf takes) kept a ledger with distributed releases at its first
    delta for good; its infinite spend already did not count."""
    create_site_secret(tmp_path)  # the site's state folder, set up (``fedintent init-site``)
    policy = SitePolicy(max_epsilon=math.inf, max_delta=1e-5, privacy_unit=None,
                        max_epsilon_alone=1e9)
    charge_round(tmp_path, ["t0"], train_request(1e-5, math.inf, "no-dp"), policy)
    charge_round(tmp_path, ["d0"], replace(train_request(1e-5, run="sum"),
                                           privacy_model="distributed", cohort_size=10,
                                           tolerated_sites=2, plan_delta=1e-5),
                 policy, dimension=1000)
    units = [f"u{i}" for i in range(20_000)]
    own = lifetime_delta(policy, len(units))
    charge_round(tmp_path, units, train_request(own), policy, lifetime_delta=own)
    assert read_ledger(tmp_path, site_secret(tmp_path)).delta == own == 1e-6


def test_a_local_only_site_tightens_its_delta_whatever_its_max_epsilon_alone(tmp_path):
    """Found in review: max-epsilon-alone, a distributed-DP bound, kept a site that never made
    a distributed release at its first delta once a unit's spend passed it."""
    create_site_secret(tmp_path)  # the site's state folder, set up (``fedintent init-site``)
    policy = SitePolicy(max_epsilon=20.0, max_delta=0.5, privacy_unit=None,
                        max_epsilon_alone=8.0)
    units = [f"u{i}" for i in range(100)]
    charge_round(tmp_path, units, train_request(2e-3, 12.0), policy)
    charge_round(tmp_path, units + ["new"], train_request(1e-5, run="run-2"), policy,
                 lifetime_delta=1e-5)
    book = read_ledger(tmp_path, site_secret(tmp_path))
    assert book.delta == 1e-5 and 8.0 < max(unit_epsilons(book)) <= 20.0


def test_a_ledger_whose_spends_do_not_fit_the_lower_delta_keeps_its_own_and_says_so(
        tmp_path, caplog):
    """Lowering the delta shrinks the Rényi budget; a unit already past the smaller one would
    be stated above max-epsilon, so the ledger keeps its delta and the site's log says why."""
    create_site_secret(tmp_path)  # the site's state folder, set up (``fedintent init-site``)
    caplog.set_level(logging.WARNING, logger="flwr")
    policy = SitePolicy(max_epsilon=8.0, max_delta=0.5, privacy_unit=None)
    units = [f"u{i}" for i in range(100)]
    charge_round(tmp_path, units, train_request(2e-3, 7.9), policy)  # near the budget at 2e-3
    kept = charge_round(tmp_path, units + ["new"], train_request(1e-5, run="run-2"), policy,
                        lifetime_delta=1e-5)
    book = read_ledger(tmp_path, site_secret(tmp_path))
    assert book.delta == 2e-3 == kept.delta_all_runs
    assert max(unit_epsilons(book)) <= 8.0
    assert "some unit has spent more than max-epsilon 8 allows at delta 1e-05" in caplog.text


def test_two_failed_head_writes_in_a_row_leave_the_ledger_readable(state, monkeypatch):
    """Found in review: a charge whose head write failed (a full disk) left the head one release
    behind, accepted; a second one left it two behind, and the site stopped for good with a
    message that blamed an edited ledger. The head is brought up before each write now."""
    write = privacy_ledger.write_bytes_atomic

    def disk_full(path, data, mode=0o644):
        if path.name == HEAD_FILE:
            raise OSError(28, "No space left on device", str(path))
        write(path, data, mode)

    for run in ("c", "d"):
        monkeypatch.setattr(privacy_ledger, "write_bytes_atomic", disk_full)
        with pytest.raises(OSError):
            write_ledger(state, charged(read_ledger(state, SECRET), release(run), ["u1"]), SECRET)
        monkeypatch.setattr(privacy_ledger, "write_bytes_atomic", write)
        read_ledger(state, SECRET)
    write_ledger(state, charged(read_ledger(state, SECRET), release("e"), ["u1"]), SECRET)
    # c's head failed after its ledger was written: kept, so counted; d's failed before it
    assert [r.run for r in read_ledger(state, SECRET).releases] == ["a", "a", "b", "c", "e"]


def test_a_ledger_rewritten_without_a_release_is_still_versioned_against_its_head(state):
    """A write that adds no release (the deletion log's new length after an erasure) moves the
    version: the copy from before it, restored with or without its head, is refused, and a
    version edited out or down no longer verifies."""
    before = {name: (state / name).read_bytes() for name in (LEDGER_FILE, HEAD_FILE)}
    ledger = read_ledger(state, SECRET)
    ledger.deletion_log = {"entries": 7, "hash": "cd" * 32}
    write_ledger(state, ledger, SECRET)
    assert read_ledger(state, SECRET).version == 4 and len(ledger.releases) == 3
    after = (state / LEDGER_FILE).read_bytes()
    (state / LEDGER_FILE).write_bytes(before[LEDGER_FILE])
    with pytest.raises(LedgerError, match="rolled back"):
        read_ledger(state, SECRET)
    for edit in (lambda doc: doc.pop("version"), lambda doc: doc.update(version=3)):
        (state / LEDGER_FILE).write_bytes(after)
        rewrite(state, edit)
        with pytest.raises(LedgerError, match="edited"):
            read_ledger(state, SECRET)
    (state / LEDGER_FILE).write_bytes(after)
    rewrite(state, lambda doc: doc.update(version=2))  # fewer writes than releases
    with pytest.raises(LedgerError, match="corrupt"):
        read_ledger(state, SECRET)


PLAN = {"target_epsilon": 4.0, "batch_size": 64, "local_epochs": 1, "tolerated_sites": 2,
        "plan_delta": 1e-5}


def test_a_release_keeps_its_runs_plan_under_the_mac(tmp_path):
    """What a run's later rounds are held to (``privacy_budget``: a round asking for another
    target-epsilon, batch size, local epochs or tolerated sites is declined) cannot be edited
    to let a larger target through."""
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    write_ledger(tmp_path, charged(ledger, replace(release(), **PLAN), ["u1"]), SECRET)
    [record] = json.loads((tmp_path / LEDGER_FILE).read_text())["releases"]
    assert {key: record[key] for key in PLAN} == PLAN
    [back] = read_ledger(tmp_path, SECRET).releases
    assert {key: getattr(back, key) for key in PLAN} == PLAN
    for edit in ({"target_epsilon": 20.0}, {"batch_size": 0}):
        rewrite(tmp_path, lambda doc, e=edit: doc["releases"][0].update(e))
        with pytest.raises(LedgerError, match="the site does not train"):
            read_ledger(tmp_path, SECRET)
    rewrite(tmp_path, lambda doc: doc["releases"][0].pop("tolerated_sites"))
    with pytest.raises(LedgerError, match="the site does not train"):
        read_ledger(tmp_path, SECRET)


def test_a_run_whose_releases_predate_its_plan_is_held_to_what_they_record(tmp_path):
    """A release written before the plan was recorded verifies unchanged; its run's later
    rounds are held to its clip norm and accountant, not to a plan it never recorded."""
    create_site_secret(tmp_path)
    secret = site_secret(tmp_path)
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    earlier = replace(release("run-a"), accountant="rdp", num_rounds=3)
    write_ledger(tmp_path, charged(ledger, earlier, ["u1"]), secret)
    assert "batch_size" not in json.loads((tmp_path / LEDGER_FILE).read_text())["releases"][0]
    policy = SitePolicy(max_epsilon=10.0, max_delta=1e-5, privacy_unit=None)
    asked = replace(train_request(1e-5, run="run-a"), server_round=2, num_rounds=3,
                    batch_size=64, target_epsilon=5.0)
    with pytest.raises(PolicyRefusal, match=r"\(clip-norm 1 -> 2\)"):
        charge_round(tmp_path, ["u1", "u2"], replace(asked, clip_norm=2.0), policy)
    charge_round(tmp_path, ["u1", "u2"], asked, policy)
    with pytest.raises(PolicyRefusal, match=r"\(target-epsilon 5 -> 6\)"):
        charge_round(tmp_path, ["u1", "u2"], replace(asked, server_round=3, target_epsilon=6.0),
                     policy)


def test_the_plan_holds_a_run_to_the_delta_it_asked_for_not_to_the_sites_own(tmp_path):
    """Found in review: the run's delta was not held, so a server that went on with a run at
    a larger delta had its later rounds planned with less noise. What is held is the delta the
    run asked for: the site's own may be lowered as it grows."""
    create_site_secret(tmp_path)
    policy = SitePolicy(max_epsilon=10.0, max_delta=1e-5, privacy_unit=None)
    asked = replace(train_request(1e-12, run="run-a"), num_rounds=4, plan_delta=1e-12)
    charge_round(tmp_path, ["u1", "u2"], asked, policy)
    with pytest.raises(PolicyRefusal, match=r"\(delta \(as the run asked for it\) 1e-12 -> "
                                            r"1e-05\)"):
        charge_round(tmp_path, ["u1", "u2"], replace(asked, server_round=2, delta=1e-5,
                                                     plan_delta=1e-5), policy)
    charge_round(tmp_path, ["u1", "u2"], replace(asked, server_round=2, delta=1e-13), policy)
    assert len(read_ledger(tmp_path, site_secret(tmp_path)).releases) == 2


def test_neither_a_dp_evaluation_nor_a_distributed_round_is_refused_for_what_the_site_sets(
        tmp_path):
    """What the plan must not hold: a DP evaluation's batch (its test split, which grows) and
    epsilon (the site's own), and a distributed round's accountant (a distributed release is
    recorded in Rényi DP whatever the run asks). Training holds the same batch change."""
    create_site_secret(tmp_path)
    policy = SitePolicy(max_epsilon=10.0, max_delta=1e-5, privacy_unit=None,
                        max_epsilon_alone=1e9)
    evaluation = replace(train_request(1e-5, 8.0, "run-a (evaluation)"), num_rounds=4,
                         batch_size=10)
    charge_round(tmp_path, ["u1"], evaluation, policy, empty_ok=True, evaluation=True)
    grown = replace(evaluation, server_round=2, batch_size=12, target_epsilon=6.0)
    charge_round(tmp_path, ["u1", "u2"], grown, policy, empty_ok=True, evaluation=True)
    with pytest.raises(PolicyRefusal, match="batch-size 10 or 12 -> 12"):
        charge_round(tmp_path, ["u1", "u2"], replace(grown, server_round=3), policy,
                     empty_ok=True)
    summed = replace(train_request(1e-5, run="sum"), accountant="prv", num_rounds=3,
                     privacy_model="distributed", cohort_size=10, tolerated_sites=2,
                     plan_delta=1e-5)
    for server_round in (1, 2):
        charge_round(tmp_path, ["d0", "d1"], replace(summed, server_round=server_round),
                     policy, dimension=1000)
    assert [r.accountant for r in read_ledger(tmp_path, site_secret(tmp_path)).releases
            if r.run == "sum"] == ["rdp", "rdp"]


@pytest.mark.parametrize("change,problem", [
    (lambda doc: doc.update(releases=["a release"]), "release is a str, not an object"),
    (lambda doc: doc["releases"][0].update(note="added"), r"release with fields \[.*'note'"),
    (lambda doc: doc["releases"][0].pop("units"), "release with fields"),
], ids=["not an object", "a field too many", "a field missing"])
def test_a_release_record_of_no_known_form_is_named_so(state, change, problem):
    """Found by mutation (stop 63): without the form check such a record still failed, but as
    the dataclass's own error, which names no release and no field set."""
    rewrite(state, change)
    with pytest.raises(LedgerError, match=problem):
        read_ledger(state, SECRET)


@pytest.mark.parametrize("batch_size", [0, -64, True, 64.0, "64"])
def test_a_release_whose_plan_has_no_batch_size_is_named_so(tmp_path, batch_size):
    """Found by mutation (stop 63): a recorded plan's batch size is a whole number above 0, or
    the release is refused as having none (it failed its MAC without the check, unnamed); a
    batch of 1 is a plan."""
    planned = replace(release(), **PLAN)
    write_ledger(tmp_path, charged(Ledger(privacy_unit="utterance", order=8.0, delta=1e-5),
                                   planned, ["u1"]), SECRET)
    rewrite(tmp_path, lambda doc: doc["releases"][0].update(batch_size=batch_size))
    with pytest.raises(LedgerError, match="release with a plan of no batch size"):
        read_ledger(tmp_path, SECRET)
    write_ledger(tmp_path / "one", charged(Ledger(privacy_unit="utterance", order=8.0,
                                                  delta=1e-5), replace(planned, batch_size=1),
                                           ["u1"]), SECRET)
    assert read_ledger(tmp_path / "one", SECRET).releases[0].batch_size == 1


@pytest.mark.parametrize("nonce", ["", 7, None])
def test_a_release_whose_nonce_is_empty_or_not_text_is_named_so(tmp_path, nonce):
    """Found by mutation (stop 63): a recorded nonce is non-empty text, or the release is
    refused as having an empty one (it failed its MAC without the check, unnamed)."""
    write_ledger(tmp_path, charged(Ledger(privacy_unit="utterance", order=8.0, delta=1e-5),
                                   replace(release(), nonce="a1b2"), ["u1"]), SECRET)
    rewrite(tmp_path, lambda doc: doc["releases"][0].update(nonce=nonce))
    with pytest.raises(LedgerError, match="release with an empty nonce"):
        read_ledger(tmp_path, SECRET)
