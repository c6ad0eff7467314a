"""Checks of a deployment script's environment settings, before it starts anything.

A misspelled setting (``SUPERLINK_HOTS``) or one set but empty (``SUPERLINK_HOST=`` from an
unset variable in a unit or compose file) had fallen back to the default without a word: a
SuperLink listening on every interface, or keeping its state in memory (found in review).
``deploy/superlink_checks.py`` (for ``deploy/superlink.sh``) uses these;
``deploy/site-entrypoint.sh`` takes ``near_miss`` for the site's policy settings (its empty
settings and control characters it checks itself: ``INIT_STATE`` may be empty there).
"""

import difflib
import re
from collections.abc import Collection, Mapping

NEAR_MISS_CUTOFF = 0.85
"""How alike (difflib's ratio, in upper case) a name must be to a setting to be taken for a
misspelling of it: MAX_EPSILION and SUPERLINK_HOTS are, SUPERLINK_SERVICE_HOST is not."""

SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://", re.IGNORECASE)
"""The value Kubernetes gives ``NAME_PORT`` for a Service named ``name`` in the namespace: its
variable is not a setting, whatever its name."""


class SettingRefused(ValueError):
    """An environment variable a script refuses to start with; the message names it."""


def near_miss(name: str, settings: Collection[str], prefixed: Collection[str]) -> str | None:
    """The setting that ``name`` looks like but is not: one within ``NEAR_MISS_CUTOFF`` in any
    case, or one of ``prefixed`` after a prefix (``FEDINTENT_SUPERLINK_HOST``); None for a
    setting itself and for other software's variables. Only distinctive settings belong in
    ``prefixed``: OpenSSL reads ``SSL_CERT_DIR``, and other tools set their own ``*_PORT``."""
    if name in settings:
        return None
    upper = name.upper()
    close = difflib.get_close_matches(upper, list(settings), n=1, cutoff=NEAR_MISS_CUTOFF)
    return close[0] if close else next(
        (setting for setting in prefixed if upper.endswith(f"_{setting}")), None)


def check_names(environ: Mapping[str, str], settings: Collection[str],
                prefixed: Collection[str], script: str) -> None:
    """Refuse a variable that looks like one of ``settings`` but is none, naming the setting
    meant, and a setting set but empty (blank)."""
    for name in sorted(environ):
        meant = None if SERVICE_LINK.match(environ[name]) else near_miss(name, settings,
                                                                          prefixed)
        if meant:
            raise SettingRefused(f"{name} is not a setting of {script} (did you mean {meant}?)")
    for name in settings:
        if name in environ and not environ[name].strip():
            raise SettingRefused(f"{name} is set but empty; give it a value, or unset it for "
                                 "the default")


def host_and_port(text: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` address, or None: a bare host, a scheme or path, a
    space or control character, or a port that is not a whole number in [1, 65535] in ASCII
    digits (``"²".isdigit()`` is true, and ``int`` then raised) had each passed one check or
    another, and Flower refused the connection only when used (found in review)."""
    host, _, port = text.rpartition(":")
    if (not host or "/" in host or any(c.isspace() or not c.isprintable() for c in text)
            or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)):
        return None
    return host, int(port)


def port_setting(environ: Mapping[str, str], name: str) -> int:
    """``environ[name]`` as a TCP port: a whole number in [1, 65535], in ASCII digits (a larger
    one had bound the port modulo 65536, and a word failed after the SuperLink had started)."""
    value = environ[name]
    if value.isascii() and value.isdigit() and 1 <= int(value) <= 65535:
        return int(value)
    hint = (f" (a Kubernetes service link: set {name} to a port, or enableServiceLinks: false)"
            if SERVICE_LINK.match(value) else "")
    raise SettingRefused(f"{name} must be a port in [1, 65535], got {value!r}{hint}")
