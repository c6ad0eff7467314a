"""The default model family: offline encoder, on-disk feature cache, exchanged head."""

import pytest
import torch

import models.encoder as encoder
import models.encoder_head as minilm
import models.feature_store as feature_store
from fl_server.model_store import load_model, save_model
from models import get_model_family, model_family_names
from models.feature_scale import FEATURE_SCALE

MINILM = encoder.packaged_minilm()


def test_features_are_scaled_embeddings_and_meaningful():
    features = minilm.featurize(
        ["I lost my credit card", "my card is missing", "what is the weather today"], None,
        MINILM)
    assert features.shape == (3, 384)
    assert torch.allclose(features.norm(dim=1), torch.full((3,), FEATURE_SCALE),
                          atol=1e-5)
    assert features[0] @ features[1] > features[0] @ features[2]


def test_features_are_cached_on_the_site_disk_and_only_new_texts_are_encoded(tmp_path,
                                                                             monkeypatch):
    texts = ["refund my order", "cancel my plan"]
    first = minilm.featurize(texts, tmp_path, MINILM)
    assert len(list(tmp_path.glob("*/chunk-*.npz"))) == 1
    real_embed, encoded = minilm.embed, []

    def recording(batch, folder):
        encoded.append(list(batch))
        return real_embed(batch, folder)

    monkeypatch.setattr(minilm, "embed", recording)
    assert torch.equal(minilm.featurize(texts, tmp_path, MINILM), first)
    assert encoded == []  # every text came from the store
    grown = minilm.featurize(["a new text", *texts], tmp_path, MINILM)
    assert encoded == [["a new text"]]  # a new day of data encodes only its new rows
    assert torch.equal(grown[1:], first)
    assert torch.allclose(grown[0], FEATURE_SCALE * real_embed(["a new text"], MINILM)[0])


def test_only_the_head_is_exchanged():
    family = get_model_family("minilm-head")
    head = family.build_model(77)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        "weight": (77, 384), "bias": (77,)
    }


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="minilm-head"):
        get_model_family("gpt-17")
    assert "minilm-head" in model_family_names()


def test_model_store_round_trip(tmp_path):
    head = get_model_family("minilm-head").build_model(3)
    out = save_model(tmp_path / "model", head.state_dict(), "minilm-head", ["a", "b", "c"],
                     {"run_id": 1})
    loaded, labels, config = load_model(out)
    assert labels == ["a", "b", "c"] and config["run_id"] == 1
    x = torch.randn(2, 384)
    assert torch.equal(loaded(x), head(x))
    save_model(tmp_path / "model", head.state_dict(), "minilm-head", ["a", "b", "c"], {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_initial_head_is_a_zero_shot_classifier_from_label_names():
    labels = ["card_arrival", "banking.lost_card", "exchange-rate", "top_up_failed"]
    head = minilm.initial_head(labels, MINILM)
    phrases = ["card arrival", "banking lost card", "exchange rate", "top up failed"]
    assert [minilm.label_phrase(label) for label in labels] == phrases
    assert torch.count_nonzero(head.bias) == 0
    label_features = minilm.featurize(phrases, None, MINILM)
    embeddings = encoder.embed(phrases, MINILM)
    cosines = embeddings @ embeddings.T
    assert torch.allclose(head(label_features), minilm.LABEL_PRIOR_SCALE * cosines, atol=1e-4)
    queries = minilm.featurize(["where is my new card", "i lost my card",
                                "what rate for euros", "my top-up did not work"], None, MINILM)
    assert head(queries).argmax(dim=1).tolist() == [0, 1, 2, 3]


def test_every_folder_the_feature_store_makes_is_owner_only(tmp_path):
    """Found in review: ``features/`` was made 0755 as a parent of the kind's folder, though it
    holds vectors derived from customer text; its files were 0600, the state folder 0700."""
    store = tmp_path / "state" / "features"
    feature_store.cached("kind", ["refund", "card"], store,
                         lambda texts: torch.ones((len(texts), 2)))
    made = [store.parent, store, *(p for p in store.rglob("*") if p.is_dir())]
    assert len(made) == 3 and all(p.stat().st_mode & 0o777 == 0o700 for p in made)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in store.rglob("*.npz"))


def test_a_feature_chunk_holding_nan_is_computed_again(tmp_path):
    """NaN features would reach training, where each such unit adds nothing: a store that
    holds them was damaged, and its rows are computed again."""
    def compute(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(len(text)), 1.0] for text in texts])

    feature_store.cached("kind", ["refund", "card"], tmp_path,
                         lambda texts: torch.full((len(texts), 2), float("nan")))
    assert torch.equal(feature_store.cached("kind", ["refund", "card"], tmp_path, compute),
                       compute(["refund", "card"]))
    assert feature_store.prune(tmp_path, ["refund", "card"]).files == 0


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],  # a torn write, a full disk
    lambda data: data[:-30],  # the zip directory's end cut off
    lambda data: b"PK\x03\x04" + bytes(200),  # a zip header over zeros
])
def test_a_damaged_feature_chunk_is_computed_again_and_pruned(tmp_path, damage):
    def compute(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(len(text)), 1.0] for text in texts])

    first = feature_store.cached("kind", ["refund", "card"], tmp_path, compute)
    [chunk] = tmp_path.glob("*/chunk-*.npz")
    chunk.write_bytes(damage(chunk.read_bytes()))
    # read: the damaged chunk is dropped and its rows computed again, into a new chunk
    assert torch.equal(feature_store.cached("kind", ["refund", "card"], tmp_path, compute), first)
    [chunk] = tmp_path.glob("*/chunk-*.npz")
    chunk.write_bytes(damage(chunk.read_bytes()))
    assert feature_store.prune(tmp_path, ["refund", "card"]).files == 1
    assert not list(tmp_path.glob("*/chunk-*.npz"))
