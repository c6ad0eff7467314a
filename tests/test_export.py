"""The exported model: transformers loads it and predicts what fedintent's own model predicts."""

import copy
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, metadata_load
from safetensors.torch import load_file, save_file
from transformers import pipeline

import models.export as export
from fl_server.model_store import load_model, save_model
from models import get_model_family
from models.encoder import MINILM_HUB_ID
from models.export import export_model, load_exchanged, load_exported
from models.feature_scale import FEATURE_SCALE
from models.model_card import model_card
from models.ngram import SETTINGS

LABELS = ["card_arrival", "lost_card", "exchange_rate", "top_up"]
TRAIN = [
    ("where is my new card", 0), ("my card has not arrived yet", 0),
    ("i lost my card", 1), ("someone stole my card, call me on [PHONE]", 1),
    ("what is the euro exchange rate", 2), ("how much is a dollar in pounds", 2),
    ("my top-up failed", 3), ("add money to my account", 3),
]
QUERIES = ["when will the card come", "card lost yesterday", "rate for yen please",
           "top up did not work", "a longer sentence about nothing in particular at all"]


def sgd_trained(name: str, labels: list[str], rows: list[tuple[str, int]], lr: float,
                steps: int) -> torch.nn.Module:
    """The family's initial model after ``steps`` plain SGD steps on ``rows`` (text, label)."""
    family = get_model_family(name)
    torch.manual_seed(0)
    model = family.initial_model(labels)
    features = family.featurize([text for text, _ in rows], None)
    targets = torch.tensor([label for _, label in rows])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(features), targets).backward()
        optimizer.step()
    return model.eval()


def trained(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """(the family's initial model after a few SGD steps on TRAIN, its QUERIES logits)."""
    model = sgd_trained(name, LABELS, TRAIN, lr=0.5, steps=5)
    with torch.no_grad():
        return model, model(get_model_family(name).featurize(QUERIES, None))


@pytest.fixture(scope="module", params=["minilm-head", "minilm-finetune"])
def bert_export(request, tmp_path_factory):
    """(family name, trained exchanged module, its QUERIES logits, export folder)."""
    model, logits = trained(request.param)
    out = export_model(tmp_path_factory.mktemp(request.param) / "model",
                       get_model_family(request.param), model.state_dict(), LABELS, "card\n")
    return request.param, model, logits, out


def expected(logits: torch.Tensor) -> list[tuple[str, float]]:
    confidence, index = torch.softmax(logits, dim=-1).max(dim=-1)
    return [(LABELS[i], c) for i, c in zip(index.tolist(), confidence.tolist(), strict=True)]


def assert_same(predictions: list[tuple[str, float]], logits: torch.Tensor) -> None:
    wanted = expected(logits)
    assert [label for label, _ in predictions] == [label for label, _ in wanted]
    assert [c for _, c in predictions] == pytest.approx([c for _, c in wanted], abs=1e-4)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_digests(folder: Path) -> None:
    """fedintent.json made to record its other files as they are now, as if exported so: what
    loading then finds is an edit, not a digest mismatch."""
    info = json.loads((folder / "fedintent.json").read_text())
    info["files_sha256"] = {name: sha256(folder / name) for name in info["files_sha256"]}
    (folder / "fedintent.json").write_text(json.dumps(info))


def recorded(damage):
    """``damage``, with the digests of the files it changed recorded again."""
    return lambda out: (damage(out), record_digests(out))


def test_the_export_is_a_hugging_face_folder(bert_export):
    name, _, _, out = bert_export
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "fedintent-bert"
    assert config["id2label"] == {str(i): label for i, label in enumerate(LABELS)}
    assert config["label2id"] == {label: i for i, label in enumerate(LABELS)}
    assert config["problem_type"] == "single_label_classification"
    assert config["auto_map"] == export.AUTO_MAP
    assert (out / "modeling_fedintent.py").read_text() == (
        Path(export.__file__).with_name("hf_classifier.py").read_text())
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == 128
    info = json.loads((out / "fedintent.json").read_text())
    assert info["model_family"] == name and info["labels"] == LABELS
    assert info["weights_sha256"] == {  # what loading checks the weights file against
        "model.safetensors": sha256(out / "model.safetensors")}
    # found in review: only the weights were checked, and a copy without tokenizer.json read
    # every text as [UNK]; every other file but the card is checked now
    assert info["files_sha256"] == {name: sha256(out / name) for name in (
        "config.json", "modeling_fedintent.py", "tokenizer.json", "tokenizer_config.json")}
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [*info["files_sha256"], "model.safetensors", "fedintent.json", "README.md"])


def test_pipeline_predicts_what_the_framework_model_predicts(bert_export):
    _, _, logits, out = bert_export
    classify = pipeline("text-classification", model=str(out))  # registered by models.export
    found = classify(QUERIES, truncation=True)
    assert_same([(r["label"], r["score"]) for r in found], logits)
    assert_same(load_exported(out).predict(QUERIES), logits)


@pytest.mark.parametrize("bert_export", ["minilm-finetune"], indirect=True)
def test_the_finetuned_layers_replace_the_encoders_top_layers(bert_export):
    name, model, _, out = bert_export
    family = get_model_family(name)
    initial = family.initial_model(LABELS).state_dict()
    changed = [k for k, v in model.state_dict().items()
               if k.startswith("layers.") and not torch.equal(v, initial[k])]
    assert changed  # the test would prove nothing if training left the layers as they were
    rebuilt, labels, _ = load_exchanged(out)
    assert labels == LABELS
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_trust_remote_code_loads_it_without_fedintent(bert_export, tmp_path):
    _, _, logits, out = bert_export
    script = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        f"classify = pipeline('text-classification', model={str(out)!r}, "
        "trust_remote_code=True)\n"
        f"found = classify({QUERIES!r}, truncation=True)\n"
        "assert 'models' not in sys.modules and 'fedintent' not in sys.modules\n"
        "print(json.dumps([[r['label'], r['score']] for r in found]))\n"
    )
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_same([tuple(pair) for pair in json.loads(done.stdout)], logits)


@pytest.mark.parametrize("bert_export", ["minilm-head"], indirect=True)
def test_the_cards_import_lets_the_pipeline_load_it_without_the_flag(bert_export, tmp_path):
    """The card's "How to run it" names the import that makes ``trust_remote_code`` unneeded;
    a fresh process that does just that import must load the folder without the flag."""
    _, _, logits, out = bert_export
    card = model_card(RUN_DOC, get_model_family("minilm-head"), LABELS)
    usage = card.split("## How to run it", 1)[1]
    imports = re.findall(r"`(import [\w.]+)`", usage)
    assert len(imports) == 1, usage
    script = (
        f"import json\n{imports[0]}\n"
        "from transformers import pipeline\n"
        f"classify = pipeline('text-classification', model={str(out)!r})\n"
        f"found = classify({QUERIES!r}, truncation=True)\n"
        "print(json.dumps([[r['label'], r['score']] for r in found]))\n"
    )
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same([tuple(pair) for pair in json.loads(done.stdout)], logits)


@pytest.mark.parametrize("bert_export", ["minilm-head"], indirect=True)
def test_an_export_from_before_scaled_features_predicts_as_it_did(bert_export, tmp_path):
    """Exports made before features were FEATURE_SCALE long record no scale: their head reads
    unit-length embeddings, and fedintent still runs them as trained. They record no digest of
    their weights or other files either (fedintent.json's weights_sha256 and files_sha256 came
    later)."""
    name, _, logits, out = bert_export
    old = tmp_path / "old"
    shutil.copytree(out, old)
    info = json.loads((old / "fedintent.json").read_text())
    del info["weights_sha256"], info["files_sha256"]
    (old / "fedintent.json").write_text(json.dumps(info))
    config = json.loads((old / "config.json").read_text())
    scale = config.pop("feature_scale")
    assert scale == FEATURE_SCALE
    (old / "config.json").write_text(json.dumps(config))
    weights = load_file(old / "model.safetensors")
    weights["classifier.weight"] = weights["classifier.weight"] * scale
    save_file(weights, old / "model.safetensors", metadata={"format": "pt"})
    assert_same(load_exported(old).predict(QUERIES), logits)
    rebuilt, _, _ = load_exchanged(old)
    with torch.no_grad():
        assert_same(expected(rebuilt(get_model_family(name).featurize(QUERIES, None))), logits)


def test_ngram_exports_its_featurizer_settings_and_loads_with_fedintent(tmp_path):
    model, logits = trained("ngram")
    out = export_model(tmp_path / "model", get_model_family("ngram"), model.state_dict(),
                       LABELS, "card\n")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "fedintent-ngram" and config["featurizer"] == SETTINGS
    assert config["id2label"]["2"] == "exchange_rate"
    assert not (out / "modeling_fedintent.py").exists()
    assert_same(load_exported(out).predict(QUERIES), logits)
    rebuilt, labels, info = load_model(out)
    assert labels == LABELS and info["model_family"] == "ngram"
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.state_dict().items())


def test_run_outputs_are_readable_by_the_serving_user(tmp_path):
    """The model and metrics.json are outputs to share: ordinary permissions, unlike what a
    site derives from customer data (tests/test_site_privacy.py)."""
    from fl_server.run_record import RunRecord

    model, _ = trained("ngram")
    out = export_model(tmp_path / "model", get_model_family("ngram"), model.state_dict(),
                       LABELS, "card\n")
    assert out.stat().st_mode & 0o755 == 0o755
    assert all(p.stat().st_mode & 0o644 == 0o644 for p in out.iterdir())
    RunRecord.start(tmp_path / "metrics.json", 1, {"target-epsilon": 8.0}, LABELS)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644


def test_a_failed_export_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    family = get_model_family("ngram")
    first = family.initial_model(LABELS).state_dict()
    out = export_model(tmp_path / "model", family, first, LABELS, "first\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "save_file", broken)
    second = {k: v + 1 for k, v in first.items()}
    with pytest.raises(OSError, match="disk full"):
        export_model(tmp_path / "model", family, second, LABELS, "second\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    monkeypatch.undo()
    export_model(tmp_path / "model", family, second, LABELS, "second\n")
    assert (out / "README.md").read_text() == "second\n"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_export_kept_aside_by_a_failed_folder_flush_goes_at_the_next_export(tmp_path,
                                                                              monkeypatch):
    family = get_model_family("ngram")
    first = family.initial_model(LABELS).state_dict()
    export_model(tmp_path / "model", family, first, LABELS, "first\n")

    def failing(folder):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(export, "sync_folder", failing)
    with pytest.raises(OSError, match="Input/output error"):
        export_model(tmp_path / "model", family, first, LABELS, "second\n")
    assert (tmp_path / "model" / "README.md").read_text() == "second\n"
    assert len(list(tmp_path.glob(".model.old.*"))) == 1  # not deleted before it is on disk
    monkeypatch.undo()
    export_model(tmp_path / "model", family, first, LABELS, "third\n")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_every_exported_file_is_on_disk_before_the_old_export_is_removed(tmp_path, monkeypatch):
    """Found in review: the export was renamed into place with nothing fsync'd, and the one it
    replaced deleted, so a power loss could leave neither. Every file and folder is synced
    before the rename, and the rename before the old export goes."""
    family = get_model_family("ngram")
    first = family.initial_model(LABELS).state_dict()
    export_model(tmp_path / "model", family, first, LABELS, "first\n")
    events = []
    real_fsync, real_rmtree = os.fsync, shutil.rmtree
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(
        ("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(shutil, "rmtree", lambda path, **kw: events.append(
        ("rmtree", str(path))) or real_rmtree(path, **kw))
    out = export_model(tmp_path / "model", family, first, LABELS, "second\n")
    synced = [Path(path).name for kind, path in events if kind == "fsync"]
    assert {p.name for p in out.iterdir()} <= set(synced)
    removed = next(i for i, (kind, _) in enumerate(events) if kind == "rmtree")
    assert ("fsync", str(tmp_path)) in events[:removed]  # the rename, on disk first


def test_parameters_of_another_family_are_refused_before_writing(tmp_path):
    head = get_model_family("minilm-head").initial_model(LABELS).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        export_model(tmp_path / "model", get_model_family("ngram"), head, LABELS, "card\n")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("damage,message", [
    (lambda out: (out / "fedintent.json").unlink(), "not a fedintent model export"),
    (lambda out: (out / "model.safetensors").write_bytes(b"\x10\x00garbage"),
     "model.safetensors does not match the SHA-256 recorded in fedintent.json: damaged"),
    (lambda out: (out / "config.json").write_text("{"), "config.json: unreadable"),
    (recorded(lambda out: (out / "config.json").write_text(json.dumps(
        json.loads((out / "config.json").read_text()) | {"feature_scale": -3}))),
     "config.json: feature_scale must be a positive number, not -3"),
    (lambda out: (out / "fedintent.json").write_text("[" * 100_000),
     "fedintent.json: unreadable"),
    (lambda out: (out / "fedintent.json").write_text(json.dumps(
        {"model_family": "ngram", "labels": ["card_lost", {"x": 2}]})),
     "fedintent.json: needs 'model_family' and 'labels'"),
    (lambda out: (out / "fedintent.json").write_text(json.dumps(
        {"model_family": "ngram", "labels": LABELS + ["one_more"]})),
     r"model.safetensors: weights of shapes \[\(4, 8192\)\] do not map 8192 features to the "
     "5 labels"),
    (recorded(lambda out: (out / "config.json").write_text(json.dumps(
        json.loads((out / "config.json").read_text()) | {"featurizer": "oops"}))),
     "config.json: its featurizer settings are not the ones fedintent.s ngram family"),
    # found in review: only the weights were checked, and an edited config.json loaded
    (lambda out: (out / "config.json").write_text(json.dumps(
        json.loads((out / "config.json").read_text()) | {"feature_scale": 1})),
     "config.json does not match the SHA-256 recorded in fedintent.json: damaged or edited"),
])
def test_a_damaged_export_gives_an_error_naming_the_file(tmp_path, damage, message):
    family = get_model_family("ngram")
    out = export_model(tmp_path / "model", family, family.initial_model(LABELS).state_dict(),
                       LABELS, "card\n")
    damage(out)
    with pytest.raises(ValueError, match=message):
        load_exported(out)


RUN_DOC = {
    "run_id": 42,
    "config": {"run-name": "pilot-7", "num-rounds": 2, "strategy": "fedavg",
               "accountant": "prv", "privacy-unit": "customer", "secure-aggregation": False},
    "rounds": [
        {"round": 1, "sites_trained": 2, "accuracy": 0.3125, "loss": 3.5, "max_epsilon": 5.2846},
        {"round": 2, "sites_trained": 2, "accuracy": 0.4107, "loss": 2.9888,
         "max_epsilon": 7.9741, "upload_bytes_per_site": 131512.0, "macro_f1": 0.3551,
         "worst_site_accuracy": 0.125},
    ],
    "final": {
        "accuracy": 0.4107, "loss": 2.9888, "rounds_completed": 2, "max_epsilon": 7.9741,
        "macro_f1": 0.3551, "worst_site_accuracy": 0.125, "worst_site": "site-bbb",
        "evaluation": {"site-aaa": {"num_examples": 48, "accuracy": 0.5, "macro_f1": 0.42},
                       "site-bbb": {"num_examples": 8, "accuracy": 0.125, "macro_f1": 0.1}},
        "sites": {
            f"site-{key}": {"epsilon": epsilon, "epsilon_all_runs": 9.125, "delta": 1e-05,
                            "delta_all_runs": 1e-05, "privacy_unit": "customer",
                            "max_epsilon_budget": 10.0,
                            "noise_multiplier": 0.85205, "sample_rate": 0.0625,
                            "clip_norm": 1.5, "rounds_trained": 2, "num_examples": examples}
            for key, epsilon, examples in (("aaa", 7.9741, 86), ("bbb", 6.5, 63))
        },
    },
}


def test_the_model_card_reports_the_run():
    card = model_card(RUN_DOC, get_model_family("ngram"), LABELS)
    for text in ["pilot-7", "2 sites", "149 training examples", "no site declared its languages",
                 "`prv` accountant", "| site-aaa | 7.974 | 1e-05 | customer | 0.852 | 1.5 "
                 "| 0.0625 | 9.125 | 1e-05 | 10 |", "| site-bbb | 6.5 |", "| site-aaa | 86 | 2 |",
                 "Final accuracy 0.4107, macro-F1 0.3551, worst site accuracy 0.125, "
                 "loss 2.989", "| 2 | 2 | 0.4107 | 0.3551 | 0.125 | 2.989 | 7.974 |",
                 "| 1 | 2 | 0.3125 | not recorded | not recorded | 3.5 | 5.285 |",
                 "| site-bbb | 8 | 0.125 | 0.1 | exact |\n| site-aaa | 48 | 0.5 | 0.42 | exact |",
                 "`ngram`", "hashed", "card_arrival", "PII-redacted",
                 "Not for decisions about individuals", "cannot run this model",
                 f"{SETTINGS['dim'] * len(LABELS):,} float32 parameters",
                 "round 2: 131,512 bytes"]:
        assert text in card, text
    assert "carry noise" not in card


def card_metadata(run_doc: dict, family: str, folder: Path, monkeypatch) -> ModelCard:
    """The card for ``run_doc`` written to ``folder`` and read back with Hugging Face's own
    loader, with every network connection failing: writing and reading a card is offline."""
    def offline(*args):
        raise AssertionError(f"the model card touched the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", offline)
    path = folder / "README.md"
    path.write_text(model_card(run_doc, get_model_family(family), LABELS), encoding="utf-8")
    return ModelCard.load(path)


def test_the_card_metadata_follows_hugging_face(tmp_path, monkeypatch):
    card = card_metadata(RUN_DOC, "minilm-head", tmp_path, monkeypatch)
    data = card.data
    assert (data.base_model, data.license, data.language, data.pipeline_tag,
            data.library_name) == (MINILM_HUB_ID, "apache-2.0", "en", "text-classification",
                                   "transformers")
    assert "differential-privacy" in data.tags and data.model_name == "pilot-7"
    scores = {(r.metric_type, r.metric_config): r for r in data.eval_results}
    assert {key: r.metric_value for key, r in scores.items()} == {
        ("accuracy", None): 0.4107, ("f1", "macro"): 0.3551, ("accuracy", "worst-site"): 0.125,
        ("epsilon", None): 7.9741}
    assert scores["epsilon", None].metric_args == {
        "delta": 1e-05, "privacy_unit": "customer", "privacy_model": "local", "accountant": "prv"}
    assert {r.task_type for r in data.eval_results} == {"text-classification"}
    assert data.differential_privacy == {
        "privacy_model": "local", "privacy_unit": "customer", "accountant": "prv",
        "epsilon": 7.9741, "delta": 1e-05,
        "guarantee": "(7.974, 1e-05)-DP per customer at each site, the largest over the sites, "
                     "this run"}
    assert "# Intent classifier `pilot-7`" in card.text and "| site-bbb | 6.5 |" in card.text


def test_the_card_metadata_of_an_ngram_model_has_no_base_model(tmp_path, monkeypatch):
    data = card_metadata(RUN_DOC, "ngram", tmp_path, monkeypatch).data
    assert (data.base_model, data.language, data.license, data.library_name) == (
        None, None, "apache-2.0", "fedintent")


def test_the_card_of_a_distributed_dp_run_carries_epsilon_alone(tmp_path, monkeypatch):
    run_doc = copy.deepcopy(RUN_DOC)
    run_doc["config"] |= {"privacy-model": "distributed", "tolerated-sites": 1}
    for alone, site in zip((21.5, 19.0), run_doc["final"]["sites"].values(), strict=True):
        site["epsilon_alone"] = alone
    card = card_metadata(run_doc, "ngram", tmp_path, monkeypatch)
    epsilon = next(r for r in card.data.eval_results if r.metric_type == "epsilon")
    assert epsilon.metric_value == 7.9741 and epsilon.metric_args["epsilon_alone"] == 21.5
    assert card.data.differential_privacy["epsilon_alone"] == 21.5
    # the sites account a distributed run with the Skellam sum's own accounts, not the run's
    assert card.data.differential_privacy["accountant"] == "skellam-rdp-gdp"
    assert epsilon.metric_args["accountant"] == "skellam-rdp-gdp"
    assert "| site-aaa | 7.974 |" in card.text and "21.5 |" in card.text


def test_the_card_says_which_updates_its_figures_do_not_cover():
    """A site's epsilon (this run) is from its last accepted update; one the server rejected
    later was still charged and sent, so the card must not claim to cover it."""
    card = model_card(RUN_DOC, get_model_family("ngram"), LABELS)
    assert "every update the site sent" not in card
    assert "last update the server accepted" in card and "rejected" not in card
    run_doc = copy.deepcopy(RUN_DOC)
    run_doc["rounds"][1]["failures"] = [
        {"node_id": "7", "kind": "rejected", "reason": "rejected by the server: oversized"},
        {"node_id": "8", "kind": "declined", "reason": "declined: privacy budget exhausted"}]
    card = model_card(run_doc, get_model_family("ngram"), LABELS)
    assert "The server rejected 1 update(s) in this run" in card
    assert "`fedintent privacy-report`" in card


def test_the_card_says_whose_lifetime_figure_predates_a_budget_decline():
    """Found in review: a resumed run whose sites declined its last round for their budget
    (the round was charged before the interrupt) showed their lifetime epsilon as last
    reported, as if it were all they had spent."""
    card = model_card(RUN_DOC, get_model_family("ngram"), LABELS)
    assert "declined a later round for their lifetime budget" not in card
    run_doc = copy.deepcopy(RUN_DOC)
    run_doc["final"]["sites"]["site-bbb"]["declined_for_budget_round"] = 2
    card = model_card(run_doc, get_model_family("ngram"), LABELS)
    assert "These sites declined a later round for their lifetime budget" in card
    assert "cost them too, up to their budget: site-bbb (round 2)." in card


def test_the_card_names_the_languages_the_sites_declared(tmp_path, monkeypatch):
    run_doc = copy.deepcopy(RUN_DOC)
    run_doc["final"]["sites"]["site-aaa"]["languages"] = ["en", "zh"]
    card = card_metadata(run_doc, "use-multilingual", tmp_path, monkeypatch)
    assert "Languages, as the sites declared them: en (1 site), zh (1 site); 1 site declared " \
           "none." in card.text
    assert card.data.language == ["en", "zh"]
    run_doc["final"]["sites"]["site-bbb"]["languages"] = ["zh"]
    card = card_metadata(run_doc, "use-multilingual", tmp_path, monkeypatch)
    assert "declared them: en (1 site), zh (2 sites)." in card.text


@pytest.mark.parametrize("no_dp", [None, float("inf")], ids=["recorded", "in-memory"])
def test_the_card_of_a_run_without_dp_says_so(tmp_path, monkeypatch, no_dp):
    """metrics.json records a site without DP as epsilon null; in memory it may be infinity,
    which YAML would write as .inf and JSON (so the Hub) cannot read."""
    run_doc = copy.deepcopy(RUN_DOC)
    for site in run_doc["final"]["sites"].values():
        site |= {"epsilon": no_dp, "epsilon_all_runs": no_dp, "delta": None,
                 "privacy_unit": None}
    card = card_metadata(run_doc, "minilm-head", tmp_path, monkeypatch)
    raw = (tmp_path / "README.md").read_text()
    assert ".inf" not in raw
    assert card.data.differential_privacy == {
        "privacy_model": "local", "guarantee": "none for the data of the sites that trained "
        "without DP", "sites_without_dp": ["site-aaa", "site-bbb"]}
    assert "differential-privacy" not in card.data.tags
    assert [r.metric_type for r in card.data.eval_results] == ["accuracy", "f1", "accuracy"]
    assert "2 of them without differential privacy" in card.text
    assert "| site-aaa | no DP (infinite) |" in card.text
    assert "no privacy guarantee: site-aaa, site-bbb." in card.text
    assert json.loads(json.dumps(metadata_load(tmp_path / "README.md"), allow_nan=False))


def test_the_privacy_section_says_which_sites_trained_with_dp():
    """Found in review: a run without DP opened its Privacy section with "Each site trained with
    DP-SGD", then said that its sites trained without DP."""
    all_dp = "Each site trained with DP-SGD (per-example gradient clipping plus Gaussian noise) " \
             "and accounted its own privacy loss with the `prv` accountant."
    assert all_dp in model_card(RUN_DOC, get_model_family("ngram"), LABELS)
    run_doc = copy.deepcopy(RUN_DOC)
    run_doc["final"]["sites"]["site-bbb"] |= {"epsilon": None, "epsilon_all_runs": None}
    card = model_card(run_doc, get_model_family("ngram"), LABELS)
    assert "Of the 2 sites, only site-aaa trained with DP-SGD (per-example gradient clipping " \
           "plus Gaussian noise) and accounted its own privacy loss" in card
    assert "Each site trained with DP-SGD" not in card
    assert "trained without DP, so the model gives their data no privacy guarantee: site-bbb." \
           in card
    run_doc["final"]["sites"]["site-aaa"] |= {"epsilon": float("inf")}
    card = model_card(run_doc, get_model_family("ngram"), LABELS)
    assert "DP-SGD" not in card
    assert "No site trained with differential privacy (DP): the model gives no site's data a " \
           "privacy guarantee." in card


def test_the_server_saves_the_export_with_its_card(tmp_path):
    family = get_model_family("minilm-head")
    head = family.initial_model(LABELS)
    out = save_model(tmp_path / "model", head.state_dict(), "minilm-head", LABELS, RUN_DOC)
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and "| site-bbb | 6.5 |" in card
    # found in review: pipeline checks no file, and served a copy without tokenizer.json
    assert "Copy this folder whole." in card and "`pipeline` checks none" in card
    assert metadata_load(out / "README.md")["base_model"] == MINILM_HUB_ID
    assert json.loads((out / "fedintent.json").read_text())["run_id"] == 42
    rebuilt, labels, _ = load_model(out)
    x = torch.randn(3, 384)
    assert labels == LABELS and torch.equal(rebuilt(x), head(x))
