"""The model families: what each computes at a site, what it exchanges, and that DP-SGD bounds
every example's influence whichever way Opacus computes the per-example gradient norms.

The end-to-end tests run each family through a real `fedintent train` (Flower on 127.0.0.1)
under DP and check the upload each site reports.
"""

import json
import math
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from test_cli import fedintent
from test_end_to_end import processes_left_behind
from test_end_to_end import train as fedintent_train

from data_synth import write_sites
from fl_client.dp_training import TrainingPlan, train_locally
from fl_client.privacy_accounting import steps_per_round
from fl_protocol.label_file import read_labels
from fl_server.run_config import RunConfigError, check_run_config
from fl_server.tensor_digest import arrays_sha256
from models import get_model_family, model_family_names
from models.encoder import packaged_minilm
from models.fixed_shape import PassShape
from models.ngram import SETTINGS, featurize_with

LABELS = ["card_lost", "refund_status", "greeting"]
TEXTS = ["I lost my card yesterday", "my card is missing", "where is my refund",
         "has the refund been paid", "hello there", "hi, good morning"]
TARGETS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_the_registry_lists_every_family():
    assert model_family_names() == ["minilm-finetune", "minilm-head", "ngram", "use-multilingual"]
    for name in model_family_names():
        family = get_model_family(name)
        assert family.name == name and family.exchanged and family.languages


def test_the_models_command_says_what_each_family_uploads(tmp_path):
    result = fedintent("models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in model_family_names():
        assert name in result.stdout
    assert "minilm-head (default)" in result.stdout
    assert result.stdout.count("trained and uploaded each round:") == 4


def test_ngram_features_are_a_fixed_function_of_each_text_alone():
    one = featurize_with([TEXTS[0]], SETTINGS)
    with_others = featurize_with([TEXTS[0], *TEXTS[1:]], SETTINGS)
    assert torch.equal(one[0], with_others[0])  # no vocabulary, no statistics of the batch
    assert one.shape == (1, SETTINGS["dim"])
    assert torch.allclose(one.norm(dim=1), torch.ones(1))
    # CRC-32 buckets, not Python's per-process salted hash: the same on every site
    assert torch.equal(featurize_with(["我的卡丢了"], SETTINGS),
                       featurize_with(["我的卡丢了"], SETTINGS))


def test_ngram_reads_chinese():
    texts = ["我的银行卡丢了", "银行卡丢了怎么办", "退款什么时候到账"]
    lost, also_lost, refund = featurize_with(texts, SETTINGS)
    assert lost @ also_lost > 0.3 > lost @ refund


def test_ngram_starts_from_nothing_and_exchanges_one_linear_layer():
    family = get_model_family("ngram")
    model = family.initial_model(LABELS)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "weight": (3, SETTINGS["dim"])}  # no bias: its noise would reach every logit
    assert all(torch.count_nonzero(v) == 0 for v in model.state_dict().values())


def test_finetune_starts_as_the_frozen_head_and_exchanges_the_top_layer():
    finetune, head = get_model_family("minilm-finetune"), get_model_family("minilm-head")
    model = finetune.initial_model(LABELS).eval()
    keys = model.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"layers", "head"}
    assert {k.split(".")[1] for k in keys if k.startswith("layers.")} == {"0"}
    assert sum(v.numel() for k, v in model.state_dict().items() if k.startswith("layers")) \
        == 1_774_464  # one MiniLM layer
    with torch.no_grad():
        logits = model(finetune.featurize(TEXTS, None))
        expected = head.initial_model(LABELS)(head.featurize(TEXTS, None))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_finetune_predictions_do_not_depend_on_padding():
    family = get_model_family("minilm-finetune")
    model = family.initial_model(LABELS).eval()
    alone = family.featurize(["hi"], None)
    padded = family.featurize(["hi", "a much longer utterance about a card that never arrived"],
                              None)
    assert padded.shape[1] > alone.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(model(alone)[0], model(padded)[0], atol=1e-5, rtol=0)


def test_a_local_checkpoint_folder_is_a_frozen_encoder_family(tmp_path):
    folder = packaged_minilm()
    family = get_model_family(str(folder))
    assert family.name == str(folder.resolve()) and family.encoder_path == folder.resolve()
    torch.testing.assert_close(family.featurize(TEXTS, None),
                               get_model_family("minilm-head").featurize(TEXTS, None))
    config = check_run_config({"model": str(folder)})
    assert config["model"] == str(folder.resolve())


@pytest.mark.parametrize("make,problem", [
    (lambda d: d / "missing", "model checkpoint folder not found"),
    (lambda d: d, "no config.json"),
    (lambda d: (d / "config.json").write_text('{"model_type": "gpt2"}') and d,
     "only BERT-style encoders"),
    (lambda d: (d / "config.json").write_text('{"model_type": "bert"}') and d,
     "hidden_size is None; a BERT config names its width"),
    (lambda d: (d / "config.json").write_text('{"model_type": "bert", "hidden_size": "384"}')
     and d, "hidden_size is '384'"),
    (lambda d: (d / "config.json").write_text('{"model_type": "bert", "hidden_size": 384}')
     and d, "no weights"),
    (lambda d: (d / "config.json").write_text("{not json") and d, "unreadable"),
])
def test_a_bad_checkpoint_folder_is_refused_with_its_path(tmp_path, make, problem):
    folder = make(tmp_path)
    with pytest.raises(RunConfigError, match=problem) as err:
        check_run_config({"model": str(folder)})
    assert str(tmp_path) in str(err.value)


def test_a_site_builds_its_head_without_loading_the_encoder():
    """A message whose features the site has cached builds the head from the checkpoint's
    config.json: loading transformers and the weights for its width cost every message to a
    deployed site 1.4 CPU-seconds (of 6.3 for a later round at 300 utterances)."""
    probe = ("import sys; from models import get_model_family; "
             "head = get_model_family('minilm-head').build_model(7); "
             "print(tuple(head.weight.shape), 'transformers' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True)
    assert shown.stdout.split() == ["(7,", "384)", "False"]


def test_an_unknown_model_name_lists_the_families():
    with pytest.raises(RunConfigError, match="minilm-finetune, minilm-head, ngram"):
        check_run_config({"model": "gpt-17"})


def test_finetune_refuses_customer_units():
    with pytest.raises(RunConfigError, match="customer is not supported with minilm-finetune"):
        check_run_config({"model": "minilm-finetune", "privacy-unit": "customer"})


@pytest.mark.parametrize("name", ["ngram", "minilm-finetune", "minilm-head"])
def test_one_example_moves_a_dp_step_by_at_most_its_clipped_share(name):
    """Replace one example by an extreme one (repeated text, wrong label): with clipping and no
    noise, one full-batch step changes by at most 2 x lr x C / n, ghost clipping or hooks."""
    family = get_model_family(name)
    texts, targets = TEXTS * 4, TARGETS.repeat(4)
    outlier_texts = [("refund " * 60).strip()] + texts[1:]
    outlier_targets = targets.clone()
    outlier_targets[0] = 2
    plan = TrainingPlan(noise_multiplier=0.0, clip_norm=0.5, batch_size=4096, local_epochs=1,
                        learning_rate=3.0, grad_sample_mode=family.grad_sample_mode,
                        charged=steps_per_round(len(targets), 4096, 1))
    if name == "minilm-finetune":  # one padded length for both datasets
        both = family.featurize(texts + outlier_texts[:1], None)
        features, outlier_features = both[: len(texts)], torch.cat([both[-1:], both[1:len(texts)]])
    else:
        features, outlier_features = (family.featurize(texts, None),
                                      family.featurize(outlier_texts, None))

    def step(x, y) -> torch.Tensor:
        model = family.initial_model(LABELS)  # same seed: same dropout masks in both runs
        train_locally(model, x, y, plan, seed=3)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    start = torch.cat([p.detach().flatten() for p in family.initial_model(LABELS).parameters()])
    plain, changed = step(features, targets), step(outlier_features, outlier_targets)
    n = len(targets)
    assert (plain - start).norm() <= plan.learning_rate * plan.clip_norm * (1 + 1e-4)
    assert (changed - plain).norm() <= 2 * plan.learning_rate * plan.clip_norm / n * (1 + 1e-3)
    assert (changed - plain).norm() > 0


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("families") / "data"
    write_sites(data, n_sites=3, seed=5, size=60)
    return data


RUN_LR = 1.0


@pytest.mark.parametrize("name", ["ngram", "minilm-finetune", "checkpoint"])
def test_each_family_trains_under_dp_in_a_real_run(sites, tmp_path, name):
    model = str(packaged_minilm()) if name == "checkpoint" else name
    tag, out = uuid.uuid4().hex, tmp_path / "out"
    # Each family's run has state of its own: on shared state the three runs would spend the
    # same units' lifetime budget (8) twice over, and the third would find them exhausted.
    result = fedintent_train("--data", str(sites), "--model", model, "--rounds", "2",
                             "--epsilon", "4", "--lr", str(RUN_LR), "--out", str(out),
                             "--state-dir", str(tmp_path / "state"), cwd=tmp_path, tag=tag)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not processes_left_behind(tag)
    assert "kB/site" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    family = get_model_family(model)
    for entry in metrics["rounds"]:
        assert entry["sites_trained"] == 3
        for site in entry["sites"].values():
            assert 0 < site["epsilon"] <= 4 and site["noise_multiplier"] > 0
            assert site["upload_bytes"] > 0
            # The noise is really there. Without it, DP-SGD moves the model by at most
            # steps x lr x clip-norm (each full-batch step is the mean of gradients clipped to
            # clip-norm; no parameter group steps faster than --lr), and a site that returned
            # the model it received moves it by 0. The planned noise alone moves it by about
            # lr x noise-multiplier x clip-norm x sqrt(parameters) / rows: several times that
            # bound on these small sites, for every family.
            assert site["sample_rate"] == 1.0  # full-batch steps: the bound above holds
            no_noise_bound = site["steps"] * RUN_LR * site["clip_norm"]
            assert site["update_norm"] > no_noise_bound, site
    # The global model moved every round, starting from the model this family starts from.
    audited = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    digests = [e["model_sha256"] for e in audited if e["event"] in ("run-started", "round")]
    torch.manual_seed(0)
    initial = family.initial_model(read_labels(sites / "labels.txt"))
    assert digests[0] == arrays_sha256({k: v.numpy() for k, v in initial.state_dict().items()})
    assert len(digests) == 3 and len(set(digests)) == 3, digests
    labels = len((sites / "labels.txt").read_text().split())
    exchanged = sum(v.numel() * 4 for v in family.build_model(labels).state_dict().values())
    upload = metrics["rounds"][-1]["upload_bytes_per_site"]
    assert exchanged < upload < exchanged * 1.05 + 4096
    assert math.isfinite(metrics["final"]["accuracy"])


def _without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@pytest.mark.parametrize("noise", [None, 0.0, 1.0])
def test_length_sorted_chunks_give_the_same_step_as_one_pass(noise):
    """Splitting a sampled batch into physical chunks must not change the DP step: the same
    clipped per-example gradients, summed, with one noise draw (and plain SGD without DP)."""
    family = get_model_family("minilm-finetune")
    features = family.featurize([*TEXTS, "a much longer message about a refund for a card I "
                                 "ordered that never arrived at my home address"], None)
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 1])
    results = []
    for rows in (64, 2):
        model = _without_dropout(family.initial_model(LABELS))
        plan = TrainingPlan(noise_multiplier=noise, clip_norm=0.5, batch_size=4096,
                            local_epochs=1, learning_rate=3.0, grad_sample_mode="ghost",
                            passes=PassShape(rows, token_states=True),
                            charged=steps_per_round(len(targets), 4096, 1))
        loss, steps = train_locally(model, features, targets, plan, seed=4)
        assert steps == 1
        results.append((loss, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (loss_one, one), (loss_chunked, chunked) = results
    assert loss_one == pytest.approx(loss_chunked, rel=1e-5)
    torch.testing.assert_close(one, chunked, atol=2e-5, rtol=0)
