"""What ``train`` and ``deploy-run`` print while a run goes, and when it ends."""

from pathlib import Path


def format_epsilon(value: float | None) -> str:
    """An epsilon as printed; ``None`` (JSON's stand-in for infinity) is ``inf``."""
    return "inf" if value is None else f"{value:.3f}"


def print_round(entry: dict, num_rounds: int) -> None:
    """One line per round of ``metrics.json``, and one per site that did not train."""
    trained = entry.get("sites_trained", 0)
    asked = trained + entry.get("sites_failed", 0)
    accuracy = entry.get("accuracy")
    accuracy_text = "n/a" if accuracy is None else f"{accuracy:.4f}"
    upload = entry.get("upload_bytes_per_site")
    upload_text = "" if upload is None else f"  upload {upload / 1e3:.1f} kB/site"
    alone = entry.get("max_epsilon_alone", entry.get("max_epsilon"))
    alone_text = ("" if alone == entry.get("max_epsilon")
                  else f" (alone {format_epsilon(alone)})")
    print(
        f"round {entry['round']:>3}/{num_rounds}  sites trained {trained}/{asked}  "
        f"eval accuracy {accuracy_text}  max epsilon {format_epsilon(entry.get('max_epsilon'))}"
        f"{alone_text}{upload_text}",
        flush=True,
    )
    for failure in entry.get("failures", []):
        print(f"  site {failure['node_id']} did not train: {failure['reason']}", flush=True)
    secure = entry.get("secure_aggregation") or {}
    if secure.get("halted") or secure.get("dropped"):
        print(f"  no sum released, the model stays as it was: "
              f"{secure.get('halted') or secure.get('dropped')}", flush=True)


def print_summary(metrics: dict, seconds: float) -> None:
    """The run's outcome: accuracy, each site's privacy guarantee, where the results are."""
    final = metrics["final"]
    accuracy = final.get("accuracy")
    print(f"\nfinished in {seconds:.0f}s: {final['rounds_completed']} rounds")
    print(f"final accuracy (example-weighted over the sites' test splits): "
          f"{'n/a' if accuracy is None else f'{accuracy:.4f}'}")
    print("privacy per site (epsilon: this run, all its rounds; lifetime: every run on the "
          "site's data):")
    for key, site in sorted(final["sites"].items()):
        if site.get("epsilon") is None:
            print(f"  {key}: no DP (no privacy guarantee), {site['rounds_trained']} rounds, "
                  f"{site['num_examples']} training examples")
            continue
        print(
            f"  {key}: epsilon {format_epsilon(site['epsilon'])} per {site['privacy_unit']} at "
            f"delta {site['delta']:g} (lifetime {format_epsilon(site['epsilon_all_runs'])} of "
            f"budget {site['max_epsilon_budget']:g}){_alone(site)}; noise multiplier "
            f"{site['noise_multiplier']:.3g}, clip norm {site['clip_norm']:g}, "
            f"{site['rounds_trained']} rounds, {site['num_examples']} training examples"
        )
    if final.get("privacy_model") == "distributed":
        print("  (distributed DP: epsilon holds against a server that sees only the secure sum, "
              f"with at most {metrics['config'].get('tolerated-sites')} sites missing or "
              "colluding; alone: from the site's own noise share, if every other site colludes)")
    out_dir = Path(metrics["config"]["out-dir"])
    print(f"metrics: {out_dir / 'metrics.json'}")
    print(f"model:   {final['model_dir']}")


def _alone(site: dict) -> str:
    """A site's own-noise epsilon, where it differs from its epsilon (distributed DP)."""
    alone = site.get("epsilon_alone")
    if alone is None or alone == site.get("epsilon"):
        return ""
    return (f", alone {format_epsilon(alone)} (lifetime "
            f"{format_epsilon(site.get('epsilon_alone_all_runs'))})")
