"""The model card (README.md) of an exported model, written from the run's record.

Whoever receives the folder should learn from it alone what the model is for, what it must
not be used for, what data it was trained on, which privacy guarantee each site's data got,
how well it did, and how to run it. Everything numeric comes from the run record
(``metrics.json``: config, rounds, and the ``final`` summary); what the record lacks is said to
be missing rather than guessed.
"""

import math

from models.family import ModelFamily

MISSING = "not recorded"


def model_card(run_doc: dict, family: ModelFamily, labels: list[str]) -> str:
    """Markdown model card for the model trained in the run ``run_doc`` describes."""
    config = run_doc.get("config", {})
    final = run_doc.get("final", {})
    sites = final.get("sites", {})
    sections = [
        _front_matter(family),
        f"# Intent classifier `{config.get('run-name', run_doc.get('run_id', 'fedintent'))}`\n\n"
        f"A customer-service intent classifier over {len(labels)} intents, trained with "
        f"fedintent: federated learning across {len(sites) or MISSING} sites, each training "
        "with DP-SGD on its own data. No site's text left the site; each sent only model "
        "updates.",
        _intended_use(),
        _model_section(family, labels),
        _data_section(sites),
        _privacy_section(config, sites),
        _evaluation_section(run_doc.get("rounds", []), final),
        _communication_section(family, labels, config, run_doc.get("rounds", [])),
        _usage_section(family),
    ]
    return "\n\n".join(sections) + "\n"


def _front_matter(family: ModelFamily) -> str:
    library = "transformers" if family.encoder_path is not None else "fedintent"
    return (f"---\nlibrary_name: {library}\npipeline_tag: text-classification\ntags:\n"
            "- intent-classification\n- federated-learning\n- differential-privacy\n---")


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
        f"- Labels ({len(labels)}): " + ", ".join(f"`{label}`" for label in labels))


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
        "featurization. Languages: not reported by sites (a site sends no statistics of its "
        "text beyond its example count, so the language mix would be a release of its own); "
        "the model reads the languages under Model.\n\n"
        "| site | training examples | rounds trained |\n|---|---|---|\n" + "\n".join(rows))


def _privacy_section(config: dict, sites: dict) -> str:
    accountant = config.get("accountant", MISSING)
    intro = (
        "## Privacy\n\n"
        "Each site trained with DP-SGD (per-example gradient clipping plus Gaussian noise) "
        f"and accounted its own privacy loss with the `{accountant}` accountant. A site's "
        "(epsilon, delta) bounds how much the model can change when one privacy unit (one "
        "utterance, or all of one customer's utterances) is added to or removed from that "
        "site's data: any outcome becomes at most e^epsilon times more likely, except with "
        "probability delta. Smaller epsilon means stronger protection; the guarantee covers "
        "this model, every checkpoint and every update the site sent.")
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
            "epsilon means stronger protection; the guarantee covers this model, every "
            "checkpoint and everything the site sent.")
    elif config.get("secure-aggregation"):
        intro += (" Updates were summed with secure aggregation: the server saw only the "
                  "sites' mean update.")
    if not sites:
        return intro + f"\n\nPer-site guarantees: {MISSING}."
    rows = []
    for key, site in sorted(sites.items()):
        epsilon = site.get("epsilon")
        rows.append(
            f"| {key} | {_value(epsilon) if epsilon is not None else 'no DP (infinite)'} "
            f"| {_value(site.get('delta'))} | {site.get('privacy_unit') or MISSING} "
            f"| {_value(site.get('noise_multiplier'))} | {_value(site.get('clip_norm'))} "
            f"| {_value(site.get('sample_rate'))} | {_value(site.get('epsilon_all_runs'))} "
            f"| {_value(site.get('max_epsilon_budget'))} |"
            + (f" {_value(site.get('epsilon_alone'))} |" if distributed else ""))
    alone = " epsilon alone (this run) |" if distributed else ""
    return (intro + "\n\n| site | epsilon (this run) | delta | privacy unit | noise multiplier "
            "| clip norm | sample rate | epsilon over all runs on its data | lifetime budget |"
            + alone + "\n|---|---|---|---|---|---|---|---|---|" + ("---|" if distributed else "")
            + "\n" + "\n".join(rows))


def _evaluation_section(rounds: list[dict], final: dict) -> str:
    if not rounds:
        return f"## Evaluation\n\nRounds: {MISSING}."
    rows = [f"| {r['round']} | {r.get('sites_trained', 0)} | {_value(r.get('accuracy'))} "
            f"| {_value(r.get('macro_f1'))} | {_value(r.get('worst_site_accuracy'))} "
            f"| {_value(r.get('loss'))} | {_value(r.get('max_epsilon'))} |" for r in rounds]
    return (
        "## Evaluation\n\n"
        "Each round the global model was evaluated on every site's held-out test split; "
        "accuracy, macro-F1 (the mean of per-class F1, computed at each site) and loss are "
        "weighted by the sites' test examples, so the largest sites dominate them: the worst "
        "site's accuracy and the per-site table show how the model does at a small site. "
        f"Final accuracy {_value(final.get('accuracy'))}, macro-F1 "
        f"{_value(final.get('macro_f1'))}, worst site accuracy "
        f"{_value(final.get('worst_site_accuracy'))}, loss {_value(final.get('loss'))}, after "
        f"{len(rounds)} rounds.\n\n"
        + _site_evaluation_table(final.get("evaluation"))
        + "| round | sites trained | accuracy | macro-F1 | worst site accuracy | loss "
        "| largest site epsilon so far |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def _site_evaluation_table(sites: dict | None) -> str:
    """The final model at each site, worst accuracy first; empty when not recorded."""
    if not sites:
        return ""
    rows = [f"| {key} | {_value(site.get('num_examples'))} | {_value(site.get('accuracy'))} "
            f"| {_value(site.get('macro_f1'))} |"
            for key, site in sorted(sites.items(), key=lambda item: item[1].get("accuracy", 0))]
    return ("Final model per site:\n\n| site | test examples | accuracy | macro-F1 |\n"
            "|---|---|---|---|\n" + "\n".join(rows) + "\n\nPer round:\n\n")


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
            "or `models.export.load_exported(THIS_FOLDER).predict(texts)` in Python. The "
            "features are hashed character and word n-grams (settings in config.json), not "
            "token ids, so `transformers.pipeline` cannot run this model.")
    return (
        "## How to run it\n\n"
        "```python\nfrom transformers import pipeline\n"
        "classify = pipeline(\"text-classification\", model=THIS_FOLDER, "
        "trust_remote_code=True)\n"
        "classify(redacted_texts, truncation=True)\n```\n\n"
        "`trust_remote_code=True` runs `modeling_fedintent.py` from this folder (mean pooling "
        "over a BERT encoder, which no built-in architecture does); read it first. With "
        "fedintent installed, `import models` registers the class and the flag is not needed. "
        "`fedintent predict THIS_FOLDER \"text\"` also redacts PII first.")


def _value(value: float | int | None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return "infinite" if math.isinf(value) else f"{value:.4g}"
    return str(value)
