"""Following a run through its ``metrics.json``, and reading how it ended.

``flwr run`` exits 0 even when a run failed (with ``--stream`` too), and a ServerApp that stops
on purpose still finishes without an error. A run completed only when both agree: the SuperLink
reports ``finished:completed`` and the ServerApp recorded ``status: completed``.
"""

import json
from collections.abc import Callable
from pathlib import Path

from fl_server.run_record import way_on

COMPLETED = "finished:completed"


class RunFailedError(RuntimeError):
    """The run did not complete; the message says why."""


def report_new_rounds(metrics_path: Path, seen: int, on_round: Callable[[dict], None],
                      resumes: int = 0) -> int:
    """Call ``on_round`` for each round numbered above ``seen``; return the last one reported.

    ``resumes``: report nothing until the record holds that many ``resumes`` entries, the last
    being this resume's. Until the ServerApp has written it, the record still holds the rounds
    the resume drops (those after its checkpoint), which it trains again (found in review: a
    dropped round was printed as if just trained, and the round trained again never was).
    ``metrics.json`` may be missing or being replaced: then nothing is reported this time.
    """
    doc = recorded_outcome(metrics_path)
    try:
        rounds = doc["rounds"]
        resumed = len(doc.get("resumes", []))
    except (KeyError, TypeError, AttributeError):
        return seen
    if resumed < resumes:
        return seen
    for entry in rounds:
        if entry["round"] > seen:
            on_round(entry)
            seen = entry["round"]
    return seen


def completed_run_metrics(metrics_path: Path, status: str) -> dict:
    """The run record of a run that ended with SuperLink status ``status``, if it completed.

    Raises :class:`RunFailedError` with the ServerApp's recorded error, else the status.
    """
    if not metrics_path.exists():
        raise RunFailedError(f"the run ended {status} and wrote no {metrics_path} (the "
                             f"ServerApp writes it on the SuperLink's machine)")
    metrics = recorded_outcome(metrics_path)
    if metrics is None:  # found in review: a damaged record was a traceback
        raise RunFailedError(f"the run ended {status}, and {metrics_path} cannot be read as a "
                             "run record")
    if metrics.get("status") == "running":  # the ServerApp's process ended before it could say
        raise RunFailedError(
            f"the run failed: the server process ended ({status}) without recording how the run "
            f"ended; {metrics_path} still says running; {way_on(metrics_path.parent)}")
    if status != COMPLETED or metrics.get("status") != "completed":
        reason = metrics.get("error") or f"run status {status}"
        raise RunFailedError(f"the run failed: {reason}")
    return metrics


def recorded_outcome(metrics_path: Path) -> dict | None:
    """The run record in ``metrics_path`` as it is now; ``None`` if it is missing or unreadable
    (a run interrupted before its ServerApp wrote it, which leaves nothing to resume)."""
    try:
        doc = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def resume_recorded(metrics_path: Path, run_id: int | str) -> bool:
    """Whether Flower run ``run_id`` wrote the record in ``metrics_path`` as a resume: an entry
    of its own in ``resumes``, or the failure before round 1 it marked there
    (``failed_start_run_id``). Found in review: a resume whose ServerApp ended before it wrote
    anything (another ServerApp held the folder, its bundle did not install) reported the record
    of the run it meant to resume, or of the resume that held the folder, as its own."""
    doc = recorded_outcome(metrics_path) or {}
    resumed = doc.get("resumes")
    return str(doc.get("failed_start_run_id")) == str(run_id) or (
        isinstance(resumed, list) and any(
            isinstance(entry, dict) and str(entry.get("run_id")) == str(run_id)
            for entry in resumed))
