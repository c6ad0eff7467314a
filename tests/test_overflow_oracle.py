"""A model that overflows on chosen rows only must not tell the server whether such rows exist.

The server chooses the model a site trains. Weights at float32's limit along one direction make
the loss, and so the gradient, of a row lying far enough along it NaN or infinite, and of no
other row. Left alone, that one unit turned the site's whole noisy update into NaN, which the
egress guard then blocked: whether a site answered told the server, outside every epsilon,
whether any of its rows lay in that direction (for ``ngram``: whether any row holds a chosen
word). Each path that sums units' gradients or scores must give such a unit the zero vector
instead, so that the reply is the same whether or not the row is there.
"""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message
from test_site_privacy import context, refused_with, rows, train_message, write_rows

import fl_client.client_app as client_app
from fl_client.distributed_dp import GRID_RANGE, clipped_grid_sum, noisy_integer_sum
from fl_client.dp_evaluation import unit_contributions
from fl_client.dp_training import TrainingPlan, train_locally, training_plan
from fl_client.privacy_ledger import LEDGER_FILE
from fl_protocol.wire import Reason
from models import get_model_family
from models.encoder import load_encoder
from models.fixed_shape import PassShape

pytestmark = pytest.mark.usefixtures("task_identity")

ROWS = 40


def overflowing_model(family_name: str, features: torch.Tensor):
    """A model of ``family_name`` whose logit 0 overflows exactly on rows with feature 5 set."""
    family = get_model_family(family_name)
    model = family.build_model(2)
    state = {key: torch.zeros_like(value) for key, value in model.state_dict().items()}
    state["weight"][0, 5] = 3.0e38  # 3e38 x 1 + 1e38 x 1 overflows; 1e38 alone does not
    state["weight"][0, 0] = 1.0e38
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model(features)
    return family, model, logits


def rows_with(marker: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``ROWS`` rows with feature 0 set; row 3 also has feature 5 at ``marker`` (if not None)
    and then the other label."""
    features = torch.zeros(ROWS, 384)
    features[:, 0] = 1.0
    labels = torch.arange(ROWS) % 2
    if marker is not None:
        features[3, 5] = marker
        labels[3] = 1 - labels[3]
    return features, labels


@pytest.mark.parametrize("family_name", ["minilm-head", "ngram"])  # Opacus hooks; ghost clipping
def test_dp_sgd_gives_an_overflowing_unit_the_zero_gradient(family_name):
    """With or without the overflowing row the update is finite (so the site answers either
    way), and what that row holds changes nothing: two different such rows give the same
    update (the same noise seed, the same other rows)."""
    updates = []
    for marker in (None, 1.0, 2.0):
        features, labels = rows_with(marker)
        if family_name == "ngram":
            features = torch.nn.functional.pad(features, (0, 8192 - 384))
        family, model, logits = overflowing_model(family_name, features)
        assert torch.isfinite(logits).all() == (marker is None)  # the attack's premise
        plan = training_plan(family, 2.0, (1.0, 1), clip_norm=1.0, batch_size=4096,
                             local_epochs=1, learning_rate=1.0)
        train_locally(model, features, labels, plan, seed=7)
        updates.append({k: v[1:] for k, v in model.state_dict().items()})  # row 0 is 1e38
    for name in updates[0]:
        assert all(torch.isfinite(update[name]).all() for update in updates)
        torch.testing.assert_close(updates[2][name], updates[1][name])
    # and the row is not simply ignored: a finite row 3 (the first run) does move the model
    assert not torch.equal(updates[1]["weight"], updates[0]["weight"])


class TokenHead(torch.nn.Module):
    """A head over token states ``[rows, tokens, hidden + mask]``, the shape ``minilm-finetune``
    trains on with ghost clipping and physical batches, without its encoder layer."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[..., :-1]).mean(dim=1)


def test_a_chunk_whose_every_unit_overflows_still_takes_its_noisy_step():
    """Ghost clipping with physical batches: the overflowing rows fill a chunk of their own
    (chunks are sorted by token count), which is left out whole; the step is still taken and
    noised, and its update is the same as with other overflowing rows there."""
    weights = []
    for marker in (1.0, 2.0):
        features = torch.zeros(ROWS, 3, 17)
        features[..., 0] = 1.0
        features[:, :2, -1] = 1.0  # two tokens per row ...
        features[:8, :, -1] = 1.0  # ... and three for rows 0-7, the last chunk after sorting
        features[:8, :, 5] = marker
        labels = torch.arange(ROWS) % 2
        model = TokenHead(16)
        with torch.no_grad():
            model.linear.weight.zero_()
            model.linear.weight[0, 5] = 3.0e38
            model.linear.weight[0, 0] = 1.0e38
            logits = model(features)
        assert (~torch.isfinite(logits[:8])).any(dim=1).all() and torch.isfinite(logits[8:]).all()
        plan = TrainingPlan(noise_multiplier=2.0, clip_norm=1.0, batch_size=4096, local_epochs=1,
                            learning_rate=1.0, charged=(1.0, 1), grad_sample_mode="ghost",
                            passes=PassShape(8, token_states=True))
        _, steps = train_locally(model, features, labels, plan, seed=7)
        assert steps == 1
        weights.append(model.linear.weight.detach()[1])
    assert torch.isfinite(weights[0]).all()
    torch.testing.assert_close(weights[1], weights[0])


def test_the_distributed_sum_gives_an_overflowing_unit_the_zero_vector():
    sums = []
    for marker in (1.0, 2.0):
        features, labels = rows_with(marker)
        _, model, logits = overflowing_model("minilm-head", features)
        assert not torch.isfinite(logits[3]).all()
        sums.append(noisy_integer_sum(model, features, labels, clip_norm=1.0, mu_share=10.0,
                                      seed=3))
    for name in sums[0]:
        np.testing.assert_array_equal(sums[1][name], sums[0][name])


def test_dp_evaluation_counts_an_overflowing_row_at_the_loss_cap():
    features, labels = rows_with(1.0)
    _, model, logits = overflowing_model("minilm-head", features)
    assert not torch.isfinite(logits[3]).all()
    contributions = unit_contributions(model, features, labels, [str(i) for i in range(ROWS)])
    assert torch.isfinite(contributions).all() and contributions.norm(dim=1).max() <= 1 + 1e-12
    assert contributions[3, 1] * 3**0.5 == pytest.approx(1.0)  # its loss counted as the cap


def _infinite(weight: np.ndarray) -> np.ndarray:
    weight[0, 0] = np.inf
    return weight


def _beyond_float32(weight: np.ndarray) -> np.ndarray:
    """Finite as float64, infinity once cast to the family's float32 (found in review: it
    passed the finiteness check, and the site read, charged and trained)."""
    weight = weight.astype(np.float64)
    weight[0, 0] = 1e300
    return weight


@pytest.mark.parametrize("altered", [
    _infinite, _beyond_float32,
    lambda weight: weight.astype(np.complex64),  # loading dropped the imaginary part
    lambda weight: weight.astype(np.float16),
    # found in review: once converted outside the check, an internal error and "data unusable"
    lambda weight: weight.astype(">f4"),
    lambda weight: np.array(["x"] * weight.size).reshape(weight.shape),
])
@pytest.mark.parametrize("message_type", ["train", "evaluate"])
def test_a_model_not_of_the_familys_finite_values_and_dtype_is_declined_before_any_read(
        tmp_path, monkeypatch, message_type, altered):
    """NaN or infinity, or another dtype than the family's (which loading would cast)."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    write_rows(site_dir, rows(0, 20))
    read = []
    monkeypatch.setattr(client_app, "load_site", lambda *args, **kwargs: read.append(args))
    message = train_message()
    arrays = message.content["arrays"]
    weight = altered(arrays["weight"].numpy().copy())
    message.content["arrays"] = ArrayRecord({"weight": Array(weight), "bias": arrays["bias"]})
    asked = Message(content=message.content, dst_node_id=7, message_type=message_type)
    reply = client_app.app(asked, context(site_dir, tmp_path / "state"))
    assert refused_with(reply, Reason.PARAMETERS_REFUSED)
    assert not read and not (tmp_path / "state" / LEDGER_FILE).exists()


PADDING_LABELS = ["card_lost", "refund"]


def padding_crafted_model():
    """``minilm-finetune`` whose trained layer gives every real key the score -inf and every
    padded key (hidden state 0) a finite one (found in review): a row attends only to padding,
    so it is finite exactly when a longer row shares its pass. Built from no data: the layer
    below ends in a LayerNorm, so sum_d h_d / gamma_d is the same for every real token."""
    family = get_model_family("minilm-finetune")
    model = family.initial_model(PADDING_LABELS)
    gamma = load_encoder(family.encoder_path)[1].encoder.layer[-2].output.LayerNorm.weight
    attention = model.layers[0].attention.self
    with torch.no_grad():
        attention.key.weight.copy_((1e20 / gamma).expand_as(attention.key.weight))
        attention.key.bias.zero_()
        attention.query.weight.zero_()
        attention.query.bias.fill_(1e20)
        attention.value.weight.zero_()
    return model


@pytest.fixture(scope="module")
def padding_rows():
    """Six rows of one token count, and a seventh, longer row."""
    family = get_model_family("minilm-finetune")
    texts = [f"I lost my card number {i}" for i in range(6)]
    texts.append("please refund my order because it never arrived at my house")
    with torch.no_grad():
        features = family.featurize(texts, None).detach()
    tokens = features[..., -1].sum(dim=1)
    assert len(set(tokens[:6].tolist())) == 1 and tokens[6] > tokens[0]
    return features, torch.tensor([0] * 6 + [1])


def test_no_units_result_depends_on_a_longer_unit_in_its_pass(padding_rows):
    """DP evaluation, DP-SGD and the distributed sum each run units through the model together;
    with one longer unit added, the other units' contributions must not change (before the
    fix: DP evaluation's sum moved by 2.9 for one unit, and DP-SGD's update went from NaN,
    blocked, to finite, sent: the site's answer told whether the longer row was there)."""
    features, labels = padding_rows
    passes = get_model_family("minilm-finetune").passes
    units = [str(i) for i in range(7)]
    alone = unit_contributions(padding_crafted_model(), features[:6], labels[:6], units[:6],
                               passes)
    joined = unit_contributions(padding_crafted_model(), features, labels, units, passes)
    torch.testing.assert_close(joined[:6], alone, rtol=0, atol=0)
    assert (joined.sum(0) - alone.sum(0)).norm() <= 1 + 1e-12

    def finite_update(x, y) -> bool:
        model = padding_crafted_model()
        plan = training_plan(get_model_family("minilm-finetune"), noise_multiplier=1.0,
                             charged=(1.0, 1), clip_norm=1.0, batch_size=4096, local_epochs=1,
                             learning_rate=1.0)
        train_locally(model, x, y, plan, seed=11)
        return all(torch.isfinite(v).all() for v in model.state_dict().values())

    assert finite_update(features[:6], labels[:6]) == finite_update(features, labels)

    def grid_sum(x, y) -> torch.Tensor:
        sums = clipped_grid_sum(padding_crafted_model(), x, y, 1.0, passes)
        return torch.cat([total.flatten() for total in sums.values()]).double()

    moved = (grid_sum(features, labels) - grid_sum(features[:6], labels[:6])).norm()
    assert moved <= GRID_RANGE * (1 + 1e-6)  # one unit's clipped gradient, on the grid


class ZeroTimesInfinity(torch.nn.Module):
    """A finite loss over an infinite gradient: rows with feature 5 set add ``exp(-inf) = 0`` to
    a logit, so their loss is finite, but the backward pass multiplies that 0 by infinity."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(384, 1)
        self.head = torch.nn.Linear(384, 2)
        with torch.no_grad():
            self.gate.weight.zero_()
            self.gate.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.where(x[..., 5:6] != 0, torch.tensor(float("inf")), torch.tensor(1.0))
        return self.head(x) + torch.exp(self.gate(x) * scale)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_unit_with_a_finite_loss_and_an_infinite_gradient_adds_zero(mode):
    """Found in review: ghost clipping screened units by their loss only; such a unit's clipping
    factor of 0 met the infinity again in the second backward pass, and the update was NaN
    (blocked) exactly when the row was sampled. With it, the update is finite and the same
    whatever that row holds."""
    updates = []
    for marker, flipped in ((1.0, False), (2.0, False), (2.0, True)):
        features, labels = rows_with(marker)
        labels[0] = 1 - labels[0] if flipped else labels[0]
        torch.manual_seed(0)
        model = ZeroTimesInfinity()
        loss = torch.nn.functional.cross_entropy(model(features), labels, reduction="none")
        assert torch.isfinite(loss).all()  # the attack's premise
        plan = TrainingPlan(noise_multiplier=2.0, clip_norm=1.0, batch_size=4096, local_epochs=1,
                            learning_rate=1.0, charged=(1.0, 1), grad_sample_mode=mode)
        train_locally(model, features, labels, plan, seed=7)
        updates.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.isfinite(updates[0]).all()
    torch.testing.assert_close(updates[1], updates[0], rtol=0, atol=0)
    assert not torch.equal(updates[2], updates[1])  # the other rows still count


def test_minilm_finetune_answers_the_same_whether_a_sampled_utterance_holds_a_word():
    """The review's attack on the trained BERT layer: one key dimension at c x (a word's token
    state) overflows to +inf for that word only, and the matching query dimension is -1, so
    every query scores that key -inf: attention weight 0, the loss finite, and 0 x inf in the
    backward pass. The row holding the word must add zero: the update is finite, and the same
    whichever label that row carries (while another row's label does change it)."""
    family = get_model_family("minilm-finetune")
    texts = ["please block my card", "i lost my wallet yesterday", "how do i change my pin",
             "transfer money to my savings", "why was i charged twice", "my card is not working",
             "where is my new card", "cancel my last payment", "my zebra ate the card"]
    with torch.no_grad():
        features = family.featurize(texts, None).detach()
    states, mask = features[..., :-1], features[..., -1] > 0
    target, others = states[-1][mask[-1]], states[:-1][mask[:-1]]
    directions = target / target.norm(dim=1, keepdim=True)
    ratios = (target @ directions.T).diagonal() / (others @ directions.T).max(dim=0).values
    word = int(ratios.argmax())
    assert ratios[word] > 1.5  # the word's state stands apart from every other token's
    reach = float(target[word] @ directions[word] + (others @ directions[word]).max()) / 2
    model = family.initial_model(PADDING_LABELS)
    attention = model.layers[0].attention.self
    with torch.no_grad():
        attention.key.weight[0] = torch.finfo(torch.float32).max / reach * directions[word]
        attention.key.bias[0] = 0.0
        attention.query.weight[0] = 0.0
        attention.query.bias[0] = -1.0
    state = {key: value.clone() for key, value in model.state_dict().items()}
    updates = []
    for first_label, last_label in ((0, 0), (0, 1), (1, 1)):
        labels = torch.tensor([first_label, 1, 0, 1, 0, 1, 0, 1, last_label])
        model.load_state_dict(state)
        with torch.no_grad():
            model.eval()
            assert torch.isfinite(model(features)).all()  # the attack's premise
        plan = training_plan(family, noise_multiplier=1.0, charged=(1.0, 1), clip_norm=1.0,
                             batch_size=4096, local_epochs=1, learning_rate=0.1)
        train_locally(model, features, labels, plan, seed=11)
        updates.append(torch.cat([v.flatten() for v in model.state_dict().values()]))
    assert torch.isfinite(updates[0]).all()
    torch.testing.assert_close(updates[1], updates[0], rtol=0, atol=0)
    assert not torch.equal(updates[2], updates[1])
