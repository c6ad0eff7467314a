"""What ``train`` and ``deploy-run`` print while a run goes, and when it ends."""

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from fedintent.commands import counted
from fl_server.progress import (
    at_ledger_delta,
    format_accuracy,
    format_epsilon,
    round_lines,
    site_label,
)
from fl_server.run_record import read_stage


def print_round(entry: dict, num_rounds: int, names: Mapping[str, str] | None = None) -> None:
    """One line per round of ``metrics.json``, and one per site that did not train; ``names``:
    site folder names in a simulation (``fedintent.launch.simulated_sites``)."""
    for line in round_lines(entry, num_rounds, names):
        print(line, flush=True)


@contextmanager
def rounds_in_progress(first_round: int, num_rounds: int, out_dir: Path | None = None,
                       every: float = 30.0) -> Iterator[Callable[[int], None]]:
    """Print a line every ``every`` seconds in which no round completed; yields what to call
    with each completed round's number. Round 1 embeds every utterance once at each site and
    can take minutes with nothing else to show (found in review: 47 s of silence under
    ``train``, two minutes under ``deploy-run``, read as a hung run). With ``out_dir`` (a run's
    folder, where its ServerApp records each stage as it starts) the line says whether the round
    waits for sites to connect, or its sites train or evaluate (found in review: it said round
    1 embeds while the sites evaluated, and while no site had connected)."""
    # a file's time is the kernel's coarse clock, up to a few ms behind time.time(): a stage
    # written just after this began must not read as one from before it
    current, since, began = [first_round], [time.monotonic()], time.time() - 1.0
    stop = threading.Event()

    def completed(server_round: int) -> None:
        current[0], since[0] = server_round + 1, time.monotonic()

    def beat() -> None:
        printed = time.monotonic()
        while True:  # each line ``every`` seconds after the last round or line, whichever is
            # later (found in review: a fixed beat printed "in progress (0 s)" just after a round)
            quiet_since = max(since[0], printed)
            if stop.wait(max(0.0, quiet_since + every - time.monotonic())):
                return
            if time.monotonic() < max(since[0], printed) + every:
                continue  # a round completed while it waited
            printed = time.monotonic()
            server_round = current[0]
            if server_round <= num_rounds:
                stage = read_stage(out_dir, began) if out_dir is not None else None
                if stage is not None and stage["round"] != server_round:
                    stage = None  # the last round's, or a round this launcher has not printed
                doing = ("" if stage is None
                         else f": waiting for sites to connect (at least {stage['sites']} "
                              "needed)" if stage["stage"] == "waiting"
                         else f": {counted(stage['sites'], 'site')} {stage['stage']}")
                note = ("; the first round embeds every utterance once at each site"
                        if server_round == 1 and (stage is None or stage["stage"] == "training")
                        else "")
                print(f"round {server_round:>3}/{num_rounds}  in progress{doing} "
                      f"({time.monotonic() - since[0]:.0f} s{note})", flush=True)

    ticker = threading.Thread(target=beat, name="rounds-in-progress", daemon=True)
    ticker.start()
    try:
        yield completed
    finally:
        stop.set()
        ticker.join()


def print_summary(metrics: dict, seconds: float, names: Mapping[str, str] | None = None) -> None:
    """The run's outcome: accuracy, each site's privacy guarantee, where the results are."""
    final = metrics["final"]
    print(f"\nfinished in {seconds:.0f}s: {counted(final['rounds_completed'], 'round')}")
    if idle := final.get("rounds_without_training"):
        print(f"warning: no site trained in {len(idle)} of the {final['rounds_completed']} rounds "
              f"(round {', '.join(map(str, idle))}): the model is the last trained round's; "
              "each round's line above says why its sites did not train")
    # A DP-evaluating site's figures are noisy estimates (one release over its test units):
    # said here as on the round lines, since this is the line copied into a report (found in
    # review).
    dp = final.get("sites_evaluated_with_dp")
    estimates = f"DP estimates from {counted(dp, 'site')}, " if dp else ""
    print(f"final accuracy ({estimates}example-weighted over the sites' test splits): "
          f"{format_accuracy(final.get('accuracy'))}")
    if final.get("worst_site") is not None:
        worst = final["worst_site"]
        noisy = " (a DP estimate)" if "epsilon" in final.get("evaluation", {}).get(worst, {}) \
            else ""
        print(f"macro-F1 (example-weighted mean of the sites'): "
              f"{format_accuracy(final['macro_f1'])}; worst site accuracy "
              f"{format_accuracy(final['worst_site_accuracy'])}{noisy} "
              f"({site_label(worst, names or {})})")
    print("privacy per site (epsilon: this run, all its rounds; lifetime: every run on the "
          "site's data):")
    for key, site in sorted(final["sites"].items()):
        name = site_label(key, names or {})
        if site.get("epsilon") is None:
            print(f"  {name}: no DP (no privacy guarantee), {site['rounds_trained']} rounds, "
                  f"{site['num_examples']} training examples")
            continue
        print(
            f"  {name}: epsilon {format_epsilon(site['epsilon'])} per {site['privacy_unit']} at "
            f"delta {site['delta']:g} (lifetime {format_epsilon(site['epsilon_all_runs'])}"
            f"{at_ledger_delta(site)} of budget {site['max_epsilon_budget']:g}"
            f"{_lifetime_note(site)}){_alone(site)}; noise multiplier "
            f"{site['noise_multiplier']:.3g}, clip norm {site['clip_norm']:g}, "
            f"{site['rounds_trained']} rounds, {site['num_examples']} training examples"
            f"{_evaluation_note(final, key)}"
        )
    if final.get("privacy_model") == "distributed":
        print("  (distributed DP: epsilon holds against a server that sees only the secure sum, "
              f"with at most {metrics['config'].get('tolerated-sites')} sites missing or "
              "colluding; alone: from the site's own noise share, if every other site colludes)")
    out_dir = Path(metrics["config"]["out-dir"])
    print(f"metrics: {out_dir / 'metrics.json'}")
    print(f"model:   {final['model_dir']}")


def _evaluation_note(final: dict, key: str) -> str:
    """A site's DP evaluations of the run, which its lifetime figure (from its last training
    reply) leaves out where they came after it (found in review: "lifetime 11.688" beside a
    ledger at 14.374 after the last round's evaluation, whose epsilon was printed nowhere)."""
    epsilon = (final.get("evaluation") or {}).get(key, {}).get("epsilon")
    if epsilon is None:
        return ""
    return (f"; its DP evaluations: epsilon {format_epsilon(epsilon)} per test unit that took "
            "part, charged to the same lifetime budget after the figure above (fedintent "
            "privacy-report on its state folder shows the ledger and how many took part)")


def _lifetime_note(site: dict) -> str:
    """Where a site declined for its budget after its last reply, that the lifetime figure is
    that reply's: a round it trained whose reply was never recorded (an interrupted run) was
    charged too (found in review: "lifetime 6.801 of budget 8" beside ledgers holding 8)."""
    declined = site.get("declined_for_budget_round")
    if declined is None:
        return ""
    return (f", as last reported, in round {site['epsilon_all_runs_round']}; it declined round "
            f"{declined} for its budget, so its units' lifetime spend may be higher, up to "
            f"the budget")


def _alone(site: dict) -> str:
    """A site's own-noise epsilon, where it differs from its epsilon (distributed DP)."""
    alone = site.get("epsilon_alone")
    if alone is None or alone == site.get("epsilon"):
        return ""
    return (f", alone {format_epsilon(alone)} (lifetime "
            f"{format_epsilon(site.get('epsilon_alone_all_runs'))}{at_ledger_delta(site)})")
