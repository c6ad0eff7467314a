"""The model card (README.md) of an exported model, written from the run's record.

Whoever receives the folder should learn from it alone what the model is for, what it must
not be used for, what data it was trained on, which privacy guarantee each site's data got,
how well it did, and how to run it. Everything numeric comes from the run record
(``metrics.json``: config, rounds, and the ``final`` summary); what the record lacks is said to
be missing rather than guessed.

The YAML header is Hugging Face's model card metadata (``huggingface_hub.ModelCardData``), so
the Hub and its tools read the base model, license, task, the final accuracy and the privacy
guarantee (a ``model-index`` of ``EvalResult`` entries, and ``differential_privacy``)
without parsing the prose. Nothing here touches the network.
"""

import math
from collections.abc import Iterable

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from fl_protocol.durable_files import json_safe
from models.family import ModelFamily

MISSING = "not recorded"
TAGS = ["intent-classification", "federated-learning"]
DP_TAG = "differential-privacy"
EVALUATED_METRICS = (  # final summary key, metric type, metric config, metric name
    ("accuracy", "accuracy", None, "Accuracy (example-weighted over the sites)"),
    ("macro_f1", "f1", "macro", "Macro-F1 (example-weighted over the sites)"),
    ("worst_site_accuracy", "accuracy", "worst-site", "Worst site accuracy"),
)


def model_card(run_doc: dict, family: ModelFamily, labels: list[str]) -> str:
    """Markdown model card for the model trained in the run ``run_doc`` describes."""
    config = run_doc.get("config", {})
    final = run_doc.get("final", {})
    sites = final.get("sites", {})
    without_dp = _sites_without_dp(sites)
    training = (f"each training on its own data, {len(without_dp)} of them without differential "
                "privacy (no guarantee for their data, see Privacy)" if without_dp
                else "each training with DP-SGD on its own data")
    sections = [
        f"# Intent classifier `{_run_name(run_doc)}`\n\n"
        f"A customer-service intent classifier over {len(labels)} intents, trained with "
        f"fedintent: federated learning across {len(sites) or MISSING} sites, {training}. No "
        "site's text left the site; each sent only model updates.",
        _intended_use(),
        _model_section(family, labels),
        _data_section(sites),
        _privacy_section(config, sites, run_doc.get("rounds", [])),
        _evaluation_section(run_doc.get("rounds", []), final),
        _communication_section(family, labels, config, run_doc.get("rounds", [])),
        _usage_section(family),
    ]
    metadata = _metadata(run_doc, family).to_yaml()
    return str(ModelCard(f"---\n{metadata}\n---\n\n" + "\n\n".join(sections) + "\n"))


def _run_name(run_doc: dict) -> str:
    return str(run_doc.get("config", {}).get("run-name", run_doc.get("run_id", "fedintent")))


def _metadata(run_doc: dict, family: ModelFamily) -> ModelCardData:
    """The card's Hugging Face metadata; the privacy guarantee goes into the model-index next to
    the accuracy it bought, and with its details into ``differential_privacy``."""
    final = run_doc.get("final", {})
    privacy = _privacy_metadata(run_doc.get("config", {}), final.get("sites", {}))
    results = _eval_results(final, privacy)
    return ModelCardData(
        base_model=_hub_id(family.base_model),
        language=declared_languages(final.get("sites", {})) or family.language_code,
        license=family.license,
        library_name="transformers" if family.encoder_path is not None else "fedintent",
        pipeline_tag="text-classification",
        tags=TAGS + ([DP_TAG] if privacy and "epsilon" in privacy else []),
        model_name=_run_name(run_doc) if results else None,
        eval_results=results or None,
        differential_privacy=privacy,
    )


def _hub_id(model: str | None) -> str | None:
    """``model`` if it can be a Hugging Face Hub id (``owner/name``), else None: the Hub rejects
    any other ``base_model``, and one model not on the Hub (``use-multilingual``'s, from
    TensorFlow Hub) is then named in the card's prose only."""
    return model if model and model.count("/") == 1 else None


COVERAGE = ("Each site's figures are those of its last update the server accepted, and count "
            "everything the site sent in this run up to that round.")
"""What a site's epsilon (this run) covers: the site reports it cumulatively with each update,
so an update the server rejected after the site's last accepted one is not in it."""

SKELLAM_ACCOUNTANT = "skellam-rdp-gdp"
"""How sites account a distributed-DP run, whatever the run's ``accountant`` says (it sets only
local DP's): the Skellam sum's Rényi and Gaussian-DP accounts, the smaller
(``privacy_accounting.skellam_releases_epsilon``)."""


def _privacy_metadata(config: dict, sites: dict) -> dict | None:
    """The run's guarantee: the largest (epsilon, delta) over the sites, or which sites trained
    without DP (then there is no run-wide epsilon). Never infinity: YAML would write ``.inf``,
    which JSON, and so the Hub, cannot hold."""
    if not sites:
        return None
    distributed = config.get("privacy-model") == "distributed"
    meta = {"privacy_model": "distributed" if distributed else "local"}
    without_dp = _sites_without_dp(sites)
    if without_dp:
        meta |= {"guarantee": "none for the data of the sites that trained without DP",
                 "sites_without_dp": without_dp}
    else:
        meta |= {"privacy_unit": config.get("privacy-unit"),
                 "accountant": SKELLAM_ACCOUNTANT if distributed else config.get("accountant"),
                 "epsilon": max(_finite(site["epsilon"]) for site in sites.values()),
                 "delta": _largest(site.get("delta") for site in sites.values())}
        if distributed:
            meta["epsilon_alone"] = _largest(site.get("epsilon_alone") for site in sites.values())
        meta["guarantee"] = (f"({_value(meta['epsilon'])}, {_value(meta['delta'])})-DP per "
                             f"{meta['privacy_unit'] or MISSING} at each site, the largest over "
                             "the sites, this run")
    return {key: value for key, value in meta.items() if value is not None}


def _eval_results(final: dict, privacy: dict | None) -> list[EvalResult]:
    """The final model's scores on the sites' test splits, and the epsilon they cost."""
    sites = final.get("sites", {})
    where = {"task_type": "text-classification", "task_name": "Intent classification",
             "dataset_type": "fedintent-site-test-splits", "dataset_split": "test",
             "dataset_name": f"held-out test splits of the {len(sites) or MISSING} sites "
                             "(private, evaluated at each site)"}
    scores = {key: _finite(final.get(key)) for key, *_ in EVALUATED_METRICS}
    results = [EvalResult(**where, metric_type=kind, metric_config=config, metric_name=name,
                          metric_value=scores[key])
               for key, kind, config, name in EVALUATED_METRICS if scores[key] is not None]
    if privacy and "epsilon" in privacy:
        details = {key: privacy[key] for key in ("delta", "privacy_unit", "privacy_model",
                                                 "accountant", "epsilon_alone") if key in privacy}
        results.append(EvalResult(**where, metric_type="epsilon", metric_value=privacy["epsilon"],
                                  metric_name="DP epsilon (the largest over the sites, this run)",
                                  metric_args=details))
    return results


def _sites_without_dp(sites: dict) -> list[str]:
    """The sites whose epsilon is missing or infinite: they trained without DP."""
    return sorted(key for key, site in sites.items() if _finite(site.get("epsilon")) is None)


def _finite(value: object) -> float | None:
    """A recorded number as a float; None when missing, NaN or infinite (epsilon: no DP)."""
    value = json_safe(value)
    return float(value) if isinstance(value, int | float) else None


def _largest(values: Iterable[object]) -> float | None:
    """The largest of finite ``values``; None if any is missing or infinite."""
    numbers = [_finite(value) for value in values]
    return None if not numbers or None in numbers else max(numbers)


def _intended_use() -> str:
    return (
        "## Intended use and limits\n\n"
        "- Use: routing and analytics of customer-service utterances (chat or call "
        "transcripts) by intent, over the label set below.\n"
        "- Inputs must be PII-redacted the way training redacted them (phone numbers, IDs, "
        "card numbers, e-mail and IP addresses, URLs replaced by tokens such as `[PHONE]`); "
        "`fedintent predict` does this before classifying. Unredacted input differs from "
        "what the model saw.\n"
        "- Not for decisions about individuals (credit, fraud, employment, eligibility): it "
        "labels what an utterance is about, it does not judge the person.\n"
        "- Text outside the training languages and domains, and intents outside the label "
        "set, get a confident-looking but meaningless label; use the confidence with care.\n"
        "- Differential privacy limits what the model reveals about any one training unit "
        "(see Privacy); it does not remove biases present in the sites' data.")


def _model_section(family: ModelFamily, labels: list[str]) -> str:
    return (
        "## Model\n\n"
        f"- Family: `{family.name}`: {family.description}\n"
        f"- Reads: {family.languages}\n"
        f"- Trained and exchanged between sites and server: {family.exchanged}\n"
        f"- {_license(family)} The sites' training data is not in this folder.\n"
        f"- Labels ({len(labels)}): " + ", ".join(f"`{label}`" for label in labels))


def _license(family: ModelFamily) -> str:
    if family.license is None:
        return (f"License: {MISSING}: this folder holds the weights of the local checkpoint "
                f"`{family.name}`, under that checkpoint's license.")
    if family.base_model is None:
        return f"License: {family.license} (fedintent's; no pretrained weights)."
    return (f"Base model: `{family.base_model}`. License: {family.license} (the base model's "
            "and fedintent's).")


def _data_section(sites: dict) -> str:
    if not sites:
        return f"## Training data\n\nPer-site training data: {MISSING}."
    rows = [f"| {key} | {_value(site.get('num_examples'))} | {site.get('rounds_trained', 0)} |"
            for key, site in sorted(sites.items())]
    total = sum(site.get("num_examples") or 0 for site in sites.values())
    return (
        "## Training data\n\n"
        f"{len(sites)} sites trained on their own customer-service utterances, "
        f"{total} training examples in all, PII-redacted at the site before any "
        f"featurization. {_languages_sentence(sites)}\n\n"
        "| site | training examples | rounds trained |\n|---|---|---|\n" + "\n".join(rows))


def _languages_sentence(sites: dict) -> str:
    """The training languages as the sites declared them (their node config ``languages``): a
    site's choice from a fixed list, never measured from its text."""
    counts: dict[str, int] = {}
    for site in sites.values():
        for code in site.get("languages") or ():
            counts[code] = counts.get(code, 0) + 1
    if not counts:
        return ("Languages: no site declared its languages (a site's node config "
                "`languages`); the model reads the languages under Model.")
    silent = sum(1 for site in sites.values() if not site.get("languages"))
    listed = ", ".join(f"{code} ({count} site{'s' if count > 1 else ''})"
                       for code, count in sorted(counts.items()))
    return (f"Languages, as the sites declared them: {listed}"
            + (f"; {silent} site{'s' if silent > 1 else ''} declared none." if silent else "."))


def declared_languages(sites: dict) -> list[str]:
    """Every language some site declared, sorted."""
    return sorted({code for site in sites.values() for code in site.get("languages") or ()})


def _local_dp_intro(accountant: str, sites: dict) -> str:
    """The Privacy section's opening under local DP, naming the sites that trained with DP when
    only some did. Found in review: a run without DP opened with "Each site trained with DP-SGD",
    then said that its sites trained without DP."""
    without_dp = _sites_without_dp(sites)
    with_dp = sorted(set(sites) - set(without_dp))
    if sites and not with_dp:
        return ("## Privacy\n\nNo site trained with differential privacy (DP): the model gives "
                "no site's data a privacy guarantee.")
    who, whose = ("Each site", "its") if not without_dp else (
        f"Of the {len(sites)} sites, only {', '.join(with_dp)}",
        "its" if len(with_dp) == 1 else "their")
    return (
        "## Privacy\n\n"
        f"{who} trained with DP-SGD (per-example gradient clipping plus Gaussian noise) "
        f"and accounted {whose} own privacy loss with the `{accountant}` accountant. A site's "
        "(epsilon, delta) bounds how much the model can change when one privacy unit (one "
        "utterance, or all of one customer's utterances) is added to or removed from that "
        "site's data: any outcome becomes at most e^epsilon times more likely, except with "
        "probability delta. Smaller epsilon means stronger protection; the guarantee covers "
        f"this model and every checkpoint. {COVERAGE}")


def _privacy_section(config: dict, sites: dict, rounds: list[dict]) -> str:
    intro = _local_dp_intro(config.get("accountant", MISSING), sites)
    distributed = config.get("privacy-model") == "distributed"
    if distributed:
        intro = (
            "## Privacy\n\n"
            "Distributed DP: every round, each site clipped each privacy unit's gradient, "
            "rounded the sum to integers and added its share of Skellam noise; secure "
            "aggregation (SecAgg+) revealed only the sum over the sites, which carries the full "
            "noise as long as at most "
            f"{config.get('tolerated-sites', MISSING)} sites were missing or colluded with the "
            "server. A site's (epsilon, delta) bounds how much the model can change when one "
            "privacy unit (one utterance, or all of one customer's utterances) is added to or "
            "removed from that site's data: any outcome becomes at most e^epsilon times more "
            "likely, except with probability delta. 'epsilon alone' is what the site's own "
            "noise share guarantees if every other site colluded with the server. Smaller "
            "epsilon means stronger protection; the guarantee covers this model and every "
            f"checkpoint. {COVERAGE}")
    elif config.get("secure-aggregation"):
        intro += (" Updates were summed with secure aggregation: the server saw only the "
                  "sites' mean update.")
    if rejected := sum(1 for entry in rounds for failure in entry.get("failures", [])
                       if failure.get("kind") == "rejected"):
        intro += (f"\n\nThe server rejected {rejected} update(s) in this run (metrics.json, "
                  "each round's `failures`). They are not in this model; what they cost their "
                  "sites is in each site's own ledger (`fedintent privacy-report`), and in the "
                  "table below only where the site had an update accepted after them.")
    if without_dp := _sites_without_dp(sites):
        intro += ("\n\nThese sites trained without DP, so the model gives their data no "
                  "privacy guarantee: " + ", ".join(without_dp) + ".")
    if declined := [f"{key} (round {site['declined_for_budget_round']})"
                    for key, site in sorted(sites.items())
                    if site.get("declined_for_budget_round") is not None]:
        intro += ("\n\nThese sites declined a later round for their lifetime budget, so their "
                  "epsilon over all runs below is the one their last accepted update reported: "
                  "a round they trained whose update the run never kept (an interrupted run) "
                  "cost them too, up to their budget: " + ", ".join(declined) + ".")
    if not sites:
        return intro + f"\n\nPer-site guarantees: {MISSING}."
    rows = []
    for key, site in sorted(sites.items()):
        epsilon = _finite(site.get("epsilon"))
        rows.append(
            f"| {key} | {_value(epsilon) if epsilon is not None else 'no DP (infinite)'} "
            f"| {_value(site.get('delta'))} | {site.get('privacy_unit') or MISSING} "
            f"| {_value(site.get('noise_multiplier'))} | {_value(site.get('clip_norm'))} "
            f"| {_value(site.get('sample_rate'))} | {_value(site.get('epsilon_all_runs'))} "
            f"| {_value(site.get('delta_all_runs'))} | {_value(site.get('max_epsilon_budget'))} |"
            + (f" {_value(site.get('epsilon_alone'))} |" if distributed else ""))
    alone = " epsilon alone (this run) |" if distributed else ""
    return (intro + "\n\n| site | epsilon (this run) | delta | privacy unit | noise multiplier "
            "| clip norm | sample rate | epsilon over all runs on its data | at delta "
            "| lifetime budget |" + alone + "\n|---|---|---|---|---|---|---|---|---|---|"
            + ("---|" if distributed else "") + "\n" + "\n".join(rows))


def _evaluation_section(rounds: list[dict], final: dict) -> str:
    if not rounds:
        return f"## Evaluation\n\nRounds: {MISSING}."
    rows = [f"| {r['round']} | {r.get('sites_trained', 0)} | "
            f"{'not evaluated' if r.get('evaluated') is False else _value(r.get('accuracy'))} "
            f"| {_value(r.get('macro_f1'))} | {_value(r.get('worst_site_accuracy'))} "
            f"| {_value(r.get('loss'))} | {_value(r.get('max_epsilon'))} |" for r in rounds]
    return (
        "## Evaluation\n\n"
        f"{_evaluated_when(rounds)} the global model was evaluated on every site's held-out "
        "test split; "
        "accuracy, macro-F1 (the mean of per-class F1, computed at each site) and loss are "
        "weighted by the sites' test examples, so the largest sites dominate them: the worst "
        "site's accuracy and the per-site table show how the model does at a small site. "
        f"Final accuracy {_value(final.get('accuracy'))}, macro-F1 "
        f"{_value(final.get('macro_f1'))}, worst site accuracy "
        f"{_value(final.get('worst_site_accuracy'))}, loss {_value(final.get('loss'))}, after "
        f"{len(rounds)} rounds{_idle_rounds(rounds)}.\n\n"
        + _site_evaluation_table(final.get("evaluation"))
        + "| round | sites trained | accuracy | macro-F1 | worst site accuracy | loss "
        "| largest site epsilon so far |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def _idle_rounds(rounds: list[dict]) -> str:
    """The rounds in which no site trained (the model stayed as it was), if any."""
    idle = [str(r["round"]) for r in rounds if not r.get("sites_trained")]
    if not idle:
        return ""
    return (f", {len(idle)} of which trained no site (round {', '.join(idle)}), so the model is "
            "the last trained round's")


def _evaluated_when(rounds: list[dict]) -> str:
    skipped = sum(1 for r in rounds if r.get("evaluated") is False)
    if not skipped:
        return "Each round"
    return (f"In {len(rounds) - skipped} of the {len(rounds)} rounds (the run's evaluate-every, "
            f"and always the last)")


def _site_evaluation_table(sites: dict | None) -> str:
    """The final model at each site, worst accuracy first; empty when not recorded."""
    if not sites:
        return ""
    rows = [f"| {key} | {_value(site.get('num_examples'))} | {_value(site.get('accuracy'))} "
            f"| {_value(site.get('macro_f1'))} | {_how_evaluated(site)} |"
            for key, site in sorted(sites.items(), key=lambda item: item[1].get("accuracy", 0))]
    dp_note = ("Sites that evaluate under DP sent estimates from one Gaussian release of their "
               "test split per round (accuracy, loss and a noisy count of test units; no "
               "macro-F1), so their figures carry noise.\n\n"
               if any("epsilon" in site for site in sites.values()) else "")
    return ("Final model per site:\n\n| site | test examples | accuracy | macro-F1 "
            "| evaluation |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + dp_note
            + "Per round:\n\n")


def _how_evaluated(site: dict) -> str:
    """``exact``, or DP with what the run's evaluations had cost the site's test units."""
    if "epsilon" not in site:
        return "exact"
    return f"DP, epsilon {_value(site['epsilon'])}"


def _communication_section(family: ModelFamily, labels: list[str], config: dict,
                           rounds: list[dict]) -> str:
    count = sum(p.numel() for p in family.build_model(len(labels)).state_dict().values())
    text = (
        "## Communication\n\n"
        f"Each site uploaded {count:,} float32 parameters ({count * 4 / 1e6:.2f} MB) per "
        f"round it trained, over {config.get('num-rounds', MISSING)} rounds with the "
        f"`{config.get('strategy', MISSING)}` strategy.")
    measured = [f"round {r['round']}: {r['upload_bytes_per_site']:,.0f} bytes" for r in rounds
                if r.get("upload_bytes_per_site") is not None]
    if measured:
        text += (" Measured size of a site's serialized reply, mean over the sites that "
                 "trained: " + ", ".join(measured) + ".")
    return text


def _usage_section(family: ModelFamily) -> str:
    if family.encoder_path is None:
        return (
            "## How to run it\n\n"
            "```\nfedintent predict THIS_FOLDER \"my card has not arrived\"\n```\n\n"
            "or `models.export.load_exported(THIS_FOLDER).predict(texts)` in Python. "
            + (family.no_pipeline_reason or "`transformers.pipeline` cannot run this model."))
    return (
        "## How to run it\n\n"
        "```python\nfrom transformers import pipeline\n"
        "classify = pipeline(\"text-classification\", model=THIS_FOLDER, "
        "trust_remote_code=True)\n"
        "classify(redacted_texts, truncation=True)\n```\n\n"
        "`trust_remote_code=True` runs `modeling_fedintent.py` from this folder (mean pooling "
        "over a BERT encoder, which no built-in architecture does); read it first. With "
        "fedintent installed, run `import models.export` first: it registers the class, and the "
        "flag is not needed. "
        "`fedintent predict THIS_FOLDER \"text\"` also redacts PII first.\n\n"
        "Copy this folder whole. `fedintent predict` and `models.export.load_exported` check "
        "every file but this card against the SHA-256 that `fedintent.json` records; `pipeline` "
        "checks none, and a copy without `tokenizer.json` reads every text as `[UNK]` and "
        "gives them all the same label, without an error.")


def _value(value: float | int | None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return "infinite" if math.isinf(value) else f"{value:.4g}"
    return str(value)
