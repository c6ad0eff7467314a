"""Options that several commands share, with their checks and their help."""

from datetime import datetime
from pathlib import Path

from fedintent.commands import CliError

TUNED_HELP = "tuned for the epsilon, see docs/BENCHMARKS.md"
DEFAULT_OUT_ROOT = Path("fedintent-out")


def fresh_out_dir(requested: Path | None) -> Path:
    """The absolute output folder of a new run (default: a dated one), created; never one that
    already holds a run."""
    if requested is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        requested = DEFAULT_OUT_ROOT / f"run-{stamp}"
    out_dir = requested.resolve()
    if (out_dir / "metrics.json").exists():
        raise CliError(f"{out_dir} already holds a run (metrics.json); choose another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def parse_epsilons(text: str) -> list[float]:
    """``--epsilons`` of bench and audit-privacy: comma-separated numbers > 0, inf = no DP."""
    try:
        epsilons = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise CliError(f"--epsilons must be numbers or inf, got {text!r}") from None
    if not epsilons or any(not eps > 0 for eps in epsilons):
        raise CliError(f"--epsilons must be > 0 (inf = no DP), got {text!r}")
    return epsilons
