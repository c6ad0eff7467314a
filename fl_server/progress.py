"""A run's progress as log lines, from its record (``metrics.json``).

One wording wherever a run is followed: the ServerApp logs these lines (what ``flwr run .``
shows), and fedintent's launchers print them (``fedintent train``, ``fedintent deploy-run``).
"""

from collections.abc import Mapping


def format_epsilon(value: float | None) -> str:
    """An epsilon as printed; ``None`` (JSON's stand-in for infinity) is ``inf``."""
    return "inf" if value is None else f"{value:.3f}"


def format_accuracy(value: float | None) -> str:
    """An accuracy as printed; ``n/a`` before any site has evaluated."""
    return "n/a" if value is None else f"{value:.4f}"


def at_ledger_delta(site: dict) -> str:
    """The delta a site's lifetime figures are at (its ledger's), where it is not the run's
    (found in review: "epsilon 9.98 per utterance at delta 1e-10 (lifetime 7.07 of budget 8)"
    read as 7.07 at 1e-10, where it is at least 9.98; the 7.07 was at 1e-5), or that it was
    not reported (a reply recorded before 4b919f8, in a resumed run)."""
    ledger_delta = site.get("delta_all_runs")
    if ledger_delta is None:  # None as well where the lifetime figure is inf: no delta to name
        return "" if site.get("epsilon_all_runs") is None else " at its ledger's unreported delta"
    return "" if ledger_delta == site.get("delta") else f" at delta {ledger_delta:g}"


def site_label(key: str, names: Mapping[str, str]) -> str:
    """A site as the record names it (pseudonym or node id), with its folder's name where the
    operator of a simulation knows it (``names``)."""
    return f"{key} ({names[key]})" if key in names else key


def round_lines(entry: dict, num_rounds: int, names: Mapping[str, str] | None = None) -> list[str]:
    """One line for a round of ``metrics.json``, then one per site that did not train, one per
    site that did not evaluate for another reason than it did not train (a site whose policy
    sends no evaluation), and one when a secure round released no sum."""
    trained = entry.get("sites_trained", 0)
    asked = trained + entry.get("sites_failed", 0)
    upload = entry.get("upload_bytes_per_site")
    upload_text = "" if upload is None else f"  upload {upload / 1e3:.1f} kB/site"
    alone = entry.get("max_epsilon_alone", entry.get("max_epsilon"))
    alone_text = ("" if alone == entry.get("max_epsilon")
                  else f" (alone {format_epsilon(alone)})")
    # no site trained, no epsilon: "inf" would read as training without DP
    epsilon = format_epsilon(entry["max_epsilon"]) if "max_epsilon" in entry else "n/a"
    lines = [
        f"round {entry['round']:>3}/{num_rounds}  sites trained {trained}/{asked}  "
        f"{_evaluation_text(entry, names)}  "
        f"max epsilon {epsilon}{alone_text}{upload_text}"
    ]
    lines += [f"  site {_failed_site(failure, names)} did not train: {failure['reason']}"
              for failure in entry.get("failures", [])]
    not_trained = {(failure["node_id"], failure["reason"]) for failure in entry.get("failures", [])}
    lines += [f"  site {_failed_site(failure, names)} did not evaluate: "
              f"{failure['reason']}" for failure in entry.get("evaluation_failures", [])
              if (failure["node_id"], failure["reason"]) not in not_trained]
    secure = entry.get("secure_aggregation") or {}
    if secure.get("halted") or secure.get("dropped"):
        lines.append(f"  no sum released, the model stays as it was: "
                     f"{secure.get('halted') or secure.get('dropped')}")
    return lines


def _failed_site(failure: dict, names: Mapping[str, str] | None) -> str:
    """The site a failure came from: its pseudonym where the run knows it, else its node id."""
    return site_label(failure.get("site", failure["node_id"]), names or {})


def _evaluation_text(entry: dict, names: Mapping[str, str] | None) -> str:
    if entry.get("evaluated") is False:
        return "not evaluated (evaluate-every)"
    return f"eval accuracy {format_accuracy(entry.get('accuracy'))}{_site_scores(entry, names)}"


def _site_scores(entry: dict, names: Mapping[str, str] | None) -> str:
    """Macro-F1 and the worst site's accuracy beside the example-weighted accuracy, which the
    largest sites dominate; how many sites sent DP estimates (no macro-F1: ``n/a`` when none
    sent it); empty for a round recorded before sites sent them."""
    if "worst_site" not in entry:
        return ""
    dp = entry.get("sites_evaluated_with_dp", 0)
    return (f"{f' (DP estimates from {dp} sites)' if dp else ''}"
            f"  macro-F1 {format_accuracy(entry.get('macro_f1'))}  worst site "
            f"{format_accuracy(entry['worst_site_accuracy'])} "
            f"({site_label(entry['worst_site'], names or {})})")
