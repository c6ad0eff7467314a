"""Numbers as a site's operator writes them: environment variables, node-config strings.

ASCII digits only, with a sign, a fraction and an exponent, or ``inf`` for no limit, written so.
Python's own ``float`` and ``int`` also read ``1_5`` as 15, other scripts' digits (an Arabic-Indic
eight as 8) and ``1e400`` as infinity, which for a budget means no DP at all (found in review).
Kept free of Flower and torch: the site's entrypoint reads every setting through it.
"""

import math
import re

_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                     r"|inf|infinity)", re.IGNORECASE | re.ASCII)
_WHOLE = re.compile(r"[+-]?[0-9]+", re.ASCII)


def written_number(name: str, text: str) -> float:
    """``text`` as a number, or ``ValueError`` naming the setting ``name``."""
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        raise ValueError(f"{name} must be a number, not {text!r}")
    value = float(stripped)
    if math.isinf(value) and stripped.lstrip("+-").lower() not in ("inf", "infinity"):
        raise ValueError(f"{name} {stripped!r} is too large for a number; write inf for no limit")
    return value


def written_whole_number(name: str, text: str) -> int:
    """``text`` as a whole number, or ``ValueError`` naming the setting ``name``."""
    if not _WHOLE.fullmatch(text.strip()):
        raise ValueError(f"{name} must be a whole number, not {text!r}")
    return int(text.strip())
