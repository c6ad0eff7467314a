"""Seeds for DP sampling and noise that only the site knows.

If the server could predict the Gaussian noise a site adds, it could subtract it and the
guarantee would be void; if it knew which examples each Poisson batch drew, the amplification
by subsampling the accountant relies on would not hold. So both generators are seeded from a
secret kept in the site's state folder (created once from ``os.urandom``), mixed with the run
name and round. The same site replays the same randomness (a resumed run reproduces), while
nothing the server knows determines it.

Limit: the generators are PyTorch's (Mersenne Twister), not a cryptographically secure RNG
(Opacus' ``secure_mode`` needs torchcsprng, which is not available here).
"""

import hashlib
import os
from pathlib import Path

SECRET_FILE = "site-secret"


def site_secret(state_dir: Path) -> bytes:
    """The site's secret, created with owner-only permissions on first use."""
    path = Path(state_dir) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces a secret another process created meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    secret = bytes.fromhex(path.read_text().strip())
    if len(secret) < 16:
        raise ValueError(f"{path}: site secret is too short or corrupt")
    return secret


def private_seed(state_dir: Path, *parts: str | int) -> int:
    """A 63-bit seed derived from the site secret and ``parts`` (run name, round, ...)."""
    digest = hashlib.sha256(site_secret(state_dir))
    for part in parts:
        digest.update(b"\0" + str(part).encode())
    return int.from_bytes(digest.digest()[:8], "big") >> 1
