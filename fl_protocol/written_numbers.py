"""Numbers as a site's operator writes them: environment variables, node-config strings.

ASCII digits only, with a sign, a fraction and an exponent, or ``inf`` for no limit, written so.
Python's own ``float`` and ``int`` also read ``1_5`` as 15, other scripts' digits (an Arabic-Indic
eight as 8) and ``1e400`` as infinity, which for a budget means no DP at all (found in review).
Kept free of Flower and torch: the site's entrypoint reads every setting through it.
"""

import math
import re
from dataclasses import dataclass

_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                     r"|inf|infinity)", re.IGNORECASE | re.ASCII)
_WHOLE = re.compile(r"[+-]?[0-9]+", re.ASCII)


@dataclass(frozen=True)
class Span:
    """The values a number setting may take: from ``low`` to ``high``, each end included unless
    open. Named in the message for a number too large to read, so that ``inf`` is suggested
    only where the setting takes it (found in review: max-delta 1e400 was told to write inf,
    which it then refused)."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return (f"{'>' if self.low_open else '>='} {self.low:g}"
                    + (", not inf" if self.high_open else ""))
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


def too_large(name: str, shown: str, span: Span | None, negative: bool = False) -> str:
    """The message for a number ``shown`` (as written, or "" for a value too long to show) too
    large to read for the setting ``name``: write inf where its ``span`` takes it, else the
    span (none known: a key that is no number setting, refused as such later). ``negative``:
    one too far below zero, for which inf would be no fix (found in review)."""
    what = f"{name} {shown}" if shown else name
    if negative:
        return (f"{what} is too far below zero for a number"
                + (f"; {name} must be {span}" if span is not None else ""))
    if span is None:
        return f"{what} is too large for a number"
    if math.inf in span:
        return f"{what} is too large for a number; write inf for no limit"
    return f"{what} is too large for a number; {name} must be {span}"


def written_number(name: str, text: str, span: Span | None = None) -> float:
    """``text`` as a number, or ``ValueError`` naming the setting ``name`` (and, for a number
    too large to read, what ``span`` it must lie in)."""
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        raise ValueError(f"{name} must be a number, not {text!r}")
    value = float(stripped)
    if math.isinf(value) and stripped.lstrip("+-").lower() not in ("inf", "infinity"):
        raise ValueError(too_large(name, repr(stripped), span, negative=value < 0))
    if reads_as_zero(stripped, value):
        raise ValueError(f"{name} {stripped!r} is too small for a number: it would read as 0")
    return value


def is_written_number(text: str) -> bool:
    """Whether ``text`` is a number as ``written_number`` takes one (ASCII, ``inf`` spelled)."""
    return _NUMBER.fullmatch(text.strip()) is not None


def reads_as_zero(text: str, value: float) -> bool:
    """Whether ``value``, read from ``text``, is 0 where the number written is not: below a
    float's range ``1e-400`` reads as 0, which for a delta or a tolerated-sites count is a
    looser setting than written (found in review)."""
    return value == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]) is not None


def written_whole_number(name: str, text: str) -> int:
    """``text`` as a whole number, or ``ValueError`` naming the setting ``name``."""
    if not _WHOLE.fullmatch(text.strip()):
        raise ValueError(f"{name} must be a whole number, not {text!r}")
    return int(text.strip())
