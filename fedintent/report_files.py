"""What the benchmark and the privacy audit write into their output folders, the same way.

An output folder holds one experiment: its spec file (``bench.json``, ``audit.json``) is written
first, and a re-run with other data or options is refused instead of mixing results
(``claim_folder``). Results are strict JSON with infinity as ``"inf"`` (an epsilon without DP),
and figures are PNG bytes; both written atomically.
"""

import io
import json
import math
from collections.abc import Callable
from pathlib import Path

from fl_protocol.durable_files import json_safe, write_json_atomic


class FolderClaimed(ValueError):
    """The output folder holds another experiment (or an unreadable spec file)."""


def epsilon_label(epsilon: float) -> str:
    """An epsilon as folder names, JSON keys and tables show it: ``8``, ``0.5``, ``inf``."""
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def write_report_json(path: Path, document: object) -> None:
    """``document`` as strict JSON, infinity as ``"inf"``, atomically."""
    write_json_atomic(path, document, infinity="inf")


def claim_folder(
    spec_path: Path, spec: dict, merge: Callable[[dict, dict], dict | None], conflict: str
) -> dict:
    """Write ``spec`` to ``spec_path`` unless the folder holds another experiment; return what
    was written (JSON-safe: infinities as ``"inf"``).

    ``merge(existing, spec)`` returns the spec to keep when the existing one is compatible (say,
    the same data with more epsilons), or ``None`` to refuse with ``conflict``.
    """
    wanted = json.loads(json.dumps(json_safe(spec, infinity="inf"), default=str))
    if spec_path.exists():
        try:
            existing = json.loads(spec_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise FolderClaimed(f"{spec_path}: unreadable ({err})") from err
        wanted = merge(existing, wanted)
        if wanted is None:
            raise FolderClaimed(conflict)
    write_report_json(spec_path, wanted)
    return wanted


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (to be written atomically), then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
