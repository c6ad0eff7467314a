"""The site's secret: a random key that never leaves the site's state folder.

Two privacy mechanisms depend on something the server cannot know:

* DP noise, Poisson sampling and randomized rounding (``private_seed``): DP-SGD's, the DP
  evaluation's and distributed DP's. If the server could predict the noise a site adds, it
  could subtract it and the guarantee would be void; if it knew which examples each batch drew,
  the amplification by subsampling the accountant relies on would not hold. Every draw is
  seeded from the secret mixed with the run name, the round and the release's place in the
  site's ledger and with a fresh random nonce the ledger records (``release_nonce``): nothing
  the server knows determines the randomness, and no two releases share it, not a round asked
  twice, nor a round asked again after the state folder was restored from a backup (its ledger
  is shorter, so release numbers repeat; the nonces do not).
* The privacy ledger's MAC chain (``ledger_mac``), which makes an edited, reordered or
  truncated ledger detectable by anyone without the secret.

The draws themselves come from ChaCha20 keyed by the seed (``private_random``), a
cryptographically secure generator. Limit: whoever can read the state folder holds the secret,
so the MAC chain detects accidents and casual edits, not an administrator determined to rewrite
history.
"""

import hashlib
import hmac
import os
from pathlib import Path

from fl_protocol.durable_files import FileExistsRefusal, create_exclusive, sync_folder
from fl_protocol.file_owner import permission_denied

SECRET_FILE = "site-secret"
KEYED_FILES = ("privacy-ledger.json", "privacy-ledger.head", "deletions.jsonl",
               "deletions.jsonl.head")
"""Files the secret signs (the ledger, the deletion log, their heads): beside any of them, a
missing secret was lost, not never made, and a new one would only make them fail to verify."""


def holds_site_state(folder: Path) -> bool:
    """Whether ``folder`` is a site's state folder: it holds the site secret or a file the
    secret signs."""
    return any((Path(folder) / name).exists() for name in (SECRET_FILE, *KEYED_FILES))


class SecretError(RuntimeError):
    """The site secret is unreadable; the site must not train until it is restored."""


def site_secret(state_dir: Path) -> bytes:
    """The site's secret. Never made here: a state folder without one is either a new site's,
    which ``create_site_secret`` sets up once, on purpose, or one that was lost, moved or not
    mounted, where a new secret and an empty ledger would start every unit's spent budget
    again from zero (found in review: the ClientApp rebuilt a lost state folder silently)."""
    path = Path(state_dir) / SECRET_FILE
    if Path(state_dir).is_file():  # found in review: it was told to init-site the file
        raise SecretError(f"{state_dir} is a file, not a folder: give the site's state folder "
                          "(its --state-dir, as its node config names it)")
    if not path.exists():
        _refuse_a_lost_secret(state_dir)
        raise SecretError(
            f"{state_dir} holds no site secret. A new site makes its state folder once with "
            f"'fedintent init-site --state-dir {state_dir}' (the site container: INIT_STATE=1); "
            "a site that has run has lost its state folder, or it is not mounted: mount it or "
            "restore it from a backup (docs/SITE_GUIDE.md), or every unit's spent budget would "
            "start again from zero")
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except PermissionError as err:
        raise SecretError(f"{permission_denied(path)}; the site does not train until it can "
                          "read it") from err
    except (OSError, ValueError) as err:
        raise SecretError(f"{path}: site secret is unreadable ({err})") from err
    if len(secret) < 16:
        raise SecretError(f"{path}: site secret is too short or corrupt")
    return secret


def create_site_secret(state_dir: Path) -> bool:
    """Set up a new site's state folder: made owner-only (0700), with a new secret (0600);
    False when it holds a secret already (nothing changed; the folder is flushed again, as the
    run that made the secret may have failed to: found in review). Refused beside files the
    secret signed (``KEYED_FILES``): there the secret was lost, not never made. Called by
    ``fedintent init-site`` and for simulated sites only, never by a deployed site's ClientApp
    or its scheduled commands."""
    path = Path(state_dir) / SECRET_FILE
    if path.exists():
        sync_folder(Path(state_dir))
        return False
    _refuse_a_lost_secret(state_dir)
    Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    Path(state_dir).chmod(0o700)
    try:
        create_exclusive(path, os.urandom(32).hex().encode(), mode=0o600)
    except FileExistsRefusal:  # another process made it meanwhile
        return False
    return True


def _refuse_a_lost_secret(state_dir: Path) -> None:
    """``SecretError`` when the folder holds files the secret signed: a secret missing beside
    them was lost, and a new one would verify none of them."""
    signed = [name for name in KEYED_FILES if (Path(state_dir) / name).exists()]
    if signed:
        raise SecretError(f"{Path(state_dir) / SECRET_FILE} is missing, and "
                          f"{', '.join(signed)} beside it were signed with it: restore the "
                          "secret from your backup of the state folder (docs/SITE_GUIDE.md); "
                          "a new one would verify none of them")


def private_seed(state_dir: Path, *parts: str | int) -> int:
    """A 256-bit seed derived from the site secret and ``parts`` (run name, round, release):
    whole, the key of the release's ChaCha20 streams (``private_random``), so that no one can
    search the seeds."""
    digest = hashlib.sha256(site_secret(state_dir))
    for part in parts:
        digest.update(b"\0" + str(part).encode())
    return int.from_bytes(digest.digest(), "big")


def release_nonce() -> str:
    """Fresh randomness for one release's seed, recorded with the release: the one input a
    restored or copied state folder cannot draw again (tests that compare twin sites replace
    it with a constant)."""
    return os.urandom(16).hex()


def site_key(state_dir: Path) -> int:
    """A stable pseudonym for the site, so the server can tell its rounds apart across restarts.

    Derived from the secret (48 bits, exact as a float); it reveals nothing about the data, and
    no more about the site than its connection to the server already does.
    """
    digest = hashlib.sha256(site_secret(state_dir) + b"\0site-key").digest()
    return int.from_bytes(digest[:6], "big")


def ledger_mac(secret: bytes, previous_mac: str, entry_json: str) -> str:
    """MAC of one ledger entry, chained to the one before it."""
    return hmac.new(secret, f"{previous_mac}\n{entry_json}".encode(), hashlib.sha256).hexdigest()
