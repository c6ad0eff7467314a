"""A unit's result must be a function of that unit alone, to the last bit: a matrix product's
last bits depend on how many rows it holds, and a server that knew a row's exact features could
key a crafted model to them (docs/PRIVACY.md, "Floating point"). So every featurization pass and
every pass on a DP path has one fixed shape (``models.fixed_shape``)."""

import random

import pytest
import torch
from torch import nn

from fl_client.distributed_dp import clipped_grid_sum
from fl_client.dp_evaluation import unit_contributions
from fl_client.dp_training import TrainingPlan, train_locally
from fl_client.privacy_accounting import steps_per_round
from models import get_model_family
from models.encoder import embed, packaged_minilm, token_states
from models.fixed_shape import FIXED_WIDTH, PassShape, feature_chunks, fixed_shape_chunks
from models.ngram import SETTINGS, featurize_with
from models.use_multilingual import embed as use_embed

ENGLISH = "my card was lost yesterday please block it and send a new one to my home address"
WORDS = [*ENGLISH.split(), "我的", "银行卡", "丢了", "请", "帮", "我", "挂失"]


def texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 25))) for _ in range(count)]


def test_every_pass_holds_exactly_its_rows_each_row_once_and_padding_copies_the_first():
    groups = torch.tensor([3, 1, 3, 3, 2, 1, 3, 3, 3])
    chunks = fixed_shape_chunks(groups, 4)
    assert all(len(chunk.index) == 4 for chunk in chunks)
    real = torch.cat([chunk.index[: chunk.real] for chunk in chunks])
    assert sorted(real.tolist()) == list(range(len(groups)))
    for chunk in chunks:
        assert len(set(groups[chunk.index].tolist())) == 1  # one token count a pass
        assert (chunk.index[chunk.real:] == chunk.index[0]).all()
    assert fixed_shape_chunks(torch.zeros(0, dtype=torch.long), 4) == []


@pytest.mark.parametrize("featurize", ["minilm", "minilm-states", "use", "ngram"])
def test_a_texts_features_are_the_same_bits_whatever_is_featurized_beside_it(featurize):
    folder = packaged_minilm()
    run = {"minilm": lambda batch: embed(batch, folder),
           "minilm-states": lambda batch: token_states(batch, folder, 5),
           "use": use_embed,
           "ngram": lambda batch: featurize_with(batch, SETTINGS)}[featurize]
    text = "please block my card, it was stolen"
    alone = run([text])[0]
    for seed, count in ((1, 3), (2, 40)):
        others = texts(count, seed) + [text + " today", text]  # one of the same length too
        beside = run([*others[: count // 2], text, *others[count // 2:]])[count // 2]
        tokens = len(alone) if featurize == "minilm-states" else None
        assert torch.equal(beside[:tokens], alone), f"{featurize}: {count} texts beside it"


class KeyedToBits(nn.Module):
    """A server's crafted head: the row with features ``row`` (which the server knows) scores a
    finite loss only while its first logit has exactly the bits it had when first scored, and
    the cap otherwise: a switch on how many rows share its pass, if that moved the bits."""

    def __init__(self, head: nn.Module, row: torch.Tensor) -> None:
        super().__init__()
        self.head, self.row, self.bits = head, row, None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.head(features)
        mine = (features == self.row).all(dim=1)
        if self.bits is None:
            self.bits = logits[mine][0, 0].clone()
        moved = mine & (logits[:, 0] != self.bits)
        return torch.where(moved[:, None], torch.inf, logits)


def test_a_units_dp_evaluation_score_is_the_same_bits_whatever_units_are_scored_beside_it():
    """Before the fix, one pass scored the whole split: a row's logits differed in the last bits
    between a split of 1 row and one of 8 or more, and a model keyed to those bits scored the
    row's loss finite alone and capped beside others: one unit moved another's score."""
    generator = torch.Generator().manual_seed(0)
    head = nn.Linear(512, 45)
    features = torch.randn(300, 512, generator=generator)
    labels = torch.randint(0, 45, (300,), generator=generator)
    units = [str(row) for row in range(300)]
    model = KeyedToBits(head, features[0])
    alone = unit_contributions(model, features[:1], labels[:1], units[:1])
    assert alone[0, 1] < 1 / 3 ** 0.5  # finite: below the capped loss
    for rows in (8, 63, 64, 65, 300):
        beside = unit_contributions(model, features[:rows], labels[:rows], units[:rows])
        assert torch.equal(beside[0], alone[0]), f"unit 0 scored beside {rows - 1} others"


class RecordedHead(nn.Module):
    """A linear head that records how many rows each forward pass holds."""

    def __init__(self, width: int, labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, labels)
        self.rows: list[int] = []

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.rows.append(len(features))
        return self.linear(features)


@pytest.mark.parametrize("units", [1, 5, 64, 130])
@pytest.mark.parametrize("path", ["dp-sgd hooks", "dp-sgd ghost", "distributed", "evaluation"])
def test_every_pass_on_a_dp_path_holds_the_familys_row_count_whatever_the_sites_size(
        path, units):
    generator = torch.Generator().manual_seed(units)
    features = torch.randn(units, 16, generator=generator)
    labels = torch.randint(0, 4, (units,), generator=generator)
    model = RecordedHead(16, 4)
    if path == "evaluation":
        unit_contributions(model, features, labels, [str(i) for i in range(units)])
    elif path == "distributed":
        clipped_grid_sum(model, features, labels, 1.0)
    else:
        plan = TrainingPlan(noise_multiplier=1.0, clip_norm=1.0, batch_size=4096,
                            local_epochs=1, learning_rate=0.1,
                            charged=steps_per_round(units, 4096, 1),
                            grad_sample_mode=path.split()[1])
        train_locally(model, features, labels, plan, seed=0)
    assert model.rows and set(model.rows) == {FIXED_WIDTH.rows}, model.rows


def test_a_dp_step_in_padded_passes_is_the_step_over_the_real_rows_alone():
    """The padding adds no loss and no gradient: with the noise's seed fixed, passes of 64 rows
    (padded) and of 1 row (none) take the same DP step."""
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(70, 16, generator=generator)
    labels = torch.randint(0, 4, (70,), generator=generator)
    results = {}
    for mode in ("hooks", "ghost"):
        for rows in (64, 1):
            torch.manual_seed(0)
            model = nn.Linear(16, 4)
            plan = TrainingPlan(noise_multiplier=0.5, clip_norm=0.1, batch_size=4096,
                                local_epochs=1, learning_rate=1.0,
                                charged=steps_per_round(70, 4096, 1), grad_sample_mode=mode,
                                passes=PassShape(rows))
            train_locally(model, features, labels, plan, seed=5)
            results[mode, rows] = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.testing.assert_close(results[mode, 64], results[mode, 1], atol=1e-6, rtol=0)


def test_token_states_share_a_pass_only_with_their_own_token_count():
    family = get_model_family("minilm-finetune")
    features = family.featurize(texts(20, 4), None)
    tokens = features[..., -1].sum(dim=1)
    for chunk in feature_chunks(features, family.passes):
        assert len(chunk.index) == family.passes.rows
        assert len(set(tokens[chunk.index].tolist())) == 1
