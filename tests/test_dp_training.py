"""Local DP-SGD: it learns, it clips, it adds noise, it takes exactly the charged steps, and a
customer's utterances form one example."""

import math
import warnings

import numpy as np
import pytest
import torch
from randomgen import ChaCha
from torch import nn

from fl_client.dp_training import (
    TrainingPlan,
    UnitLoss,
    evaluate,
    poisson_batches,
    shuffled_batches,
    train_locally,
    training_plan,
)
from fl_client.privacy_accounting import steps_per_round
from fl_client.privacy_units import (
    MAX_UTTERANCES_PER_CUSTOMER,
    PADDING_LABEL,
    group_by_customer,
)
from fl_client.private_random import stream_seed
from models import get_model_family


def separable_data(n: int = 200, dim: int = 16, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 3
    labels = torch.randint(0, classes, (n,), generator=g)
    features = centers[labels] + torch.randn(n, dim, generator=g) * 0.5
    return nn.functional.normalize(features, dim=1), labels


def plan(noise: float | None, n: int = 200, **overrides) -> TrainingPlan:
    """A plan for ``n`` examples, charged for the sample rate and steps they take."""
    values = {"noise_multiplier": noise, "clip_norm": 1.0, "batch_size": 32, "local_epochs": 3,
              "learning_rate": 2.0} | overrides
    charged = steps_per_round(n, values["batch_size"], values["local_epochs"])
    return TrainingPlan(**values, charged=charged)


def test_training_without_dp_learns():
    x, y = separable_data()
    model = nn.Linear(16, 4)
    before = evaluate(model, x, y)[1]
    loss, steps = train_locally(model, x, y, plan(None), seed=0)
    assert evaluate(model, x, y)[1] > max(0.9, before)
    assert steps == 3 * 7


def test_dp_training_learns_with_moderate_noise_and_takes_the_charged_steps():
    x, y = separable_data()
    model = nn.Linear(16, 4)
    _, steps = train_locally(model, x, y, plan(0.8), seed=0)
    assert steps == steps_per_round(200, 32, 3)[1]
    assert evaluate(model, x, y)[1] > 0.8


def test_update_is_bounded_by_clipping():
    """With zero noise, one DP step moves the weights by at most lr * C * (batch / expected)."""
    x, y = separable_data(n=64)
    x = x * 1000  # huge gradients: clipping must bound them
    model = nn.Linear(16, 4)
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train_locally(model, x, y, plan(0.0, 64, batch_size=64, local_epochs=1, learning_rate=1.0),
                  seed=0)
    end = torch.cat([p.detach().flatten() for p in model.parameters()])
    # Poisson batch of at most 64 examples, expected size 64: bound lr * C * 64/64 with slack
    # for a larger-than-expected batch (never more than n = 64 here).
    assert (end - start).norm() <= 1.0 + 1e-4


def test_noise_is_added_and_seeded():
    x, y = separable_data(n=64)
    results = []
    for seed in (1, 1, 2):
        model = nn.Linear(16, 4)
        model.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
        train_locally(model, x, y, plan(5.0, 64, local_epochs=1), seed=seed)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])
    assert not torch.allclose(results[0], results[2])


def test_empty_poisson_batches_do_not_crash():
    x, y = separable_data(n=5)
    model = nn.Linear(16, 4)
    loss, steps = train_locally(model, x, y, plan(1.0, 5, batch_size=1, local_epochs=4), seed=3)
    assert steps == 20
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_training_spends_exactly_what_was_charged():
    """A DP plan must carry the (sample rate, steps) charged to the ledger (without them,
    nothing is trained), and DP-SGD then takes exactly those steps, each a Poisson sample at
    exactly that rate, whatever the rows would suggest: the epsilon charged is the epsilon
    spent. Over 400 steps of 64 units each unit's share of the batches is within 5 standard
    deviations of the rate (the stream is seeded: the same draws every run)."""
    x, y = separable_data(n=64)
    model = nn.Linear(16, 4)
    before = [p.detach().clone() for p in model.parameters()]
    uncharged = TrainingPlan(noise_multiplier=1.0, clip_norm=1.0, batch_size=32, local_epochs=3,
                             learning_rate=2.0, charged=None)
    with pytest.raises(ValueError, match="charged"):
        train_locally(model, x, y, uncharged, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    rate, steps = steps_per_round(64, 32, 3)
    for charged in [(rate, steps), (rate / 4, steps - 1), (0.9, 400)]:
        charged_plan = TrainingPlan(noise_multiplier=1.0, clip_norm=1.0, batch_size=32,
                                    local_epochs=3, learning_rate=2.0, charged=charged)
        assert train_locally(nn.Linear(16, 4), x, y, charged_plan, seed=0)[1] == charged[1]
        batches = list(poisson_batches(torch.arange(64), torch.arange(64), charged_plan, seed=0))
        assert len(batches) == charged[1]
        taken = torch.zeros(64)
        for chosen, _ in batches:
            assert torch.equal(chosen, torch.unique(chosen))  # each unit at most once a step
            taken[chosen] += 1
        share = taken / len(batches)
        assert (share - charged[0]).abs().max() <= 5 * math.sqrt(
            charged[0] * (1 - charged[0]) / len(batches))


def test_a_customers_utterances_become_one_padded_example():
    """With the customer unit, each customer's utterances (in first-appearance order, at most
    MAX_UTTERANCES_PER_CUSTOMER) are stacked into one example, padded with PADDING_LABEL, so
    that clipping bounds the whole customer's influence."""
    features = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    labels = torch.tensor([0, 1, 2, 3, 0])
    x, y, units, dropped = group_by_customer(features, labels, ["bo", "al", "bo", "bo", "al"])
    assert units == ["bo", "al"] and dropped == 0
    # every customer padded to the cap, however few utterances the site's customers have: the
    # passes' shape must not depend on one customer's count (``models.fixed_shape``)
    cap = MAX_UTTERANCES_PER_CUSTOMER
    assert x.shape == (2, cap, 2)
    assert torch.equal(x[0], torch.cat([features[[0, 2, 3]], torch.zeros(cap - 3, 2)]))
    assert torch.equal(x[1], torch.cat([features[[1, 4]], torch.zeros(cap - 2, 2)]))
    assert y.tolist() == [[0, 2, 3] + [PADDING_LABEL] * (cap - 3),
                          [1, 0] + [PADDING_LABEL] * (cap - 2)]
    many = MAX_UTTERANCES_PER_CUSTOMER + 3
    x, y, units, dropped = group_by_customer(torch.ones(many, 2), torch.zeros(many).long(),
                                             ["cy"] * many)
    assert x.shape == (1, MAX_UTTERANCES_PER_CUSTOMER, 2) and dropped == 3


def test_a_customers_loss_is_the_mean_over_their_real_utterances():
    """The loss clipped per customer is the mean cross-entropy over that customer's utterances;
    padding rows count for nothing."""
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2, PADDING_LABEL], [3, PADDING_LABEL, PADDING_LABEL]])
    loss = UnitLoss()
    loss.reduction = "none"
    expected = torch.stack([
        nn.functional.cross_entropy(logits[0, :2], labels[0, :2]),
        nn.functional.cross_entropy(logits[1, :1], labels[1, :1]),
    ])
    torch.testing.assert_close(loss(logits, labels), expected)


def test_every_step_is_noised_even_when_the_poisson_batch_is_empty():
    """An empty batch must still add the step's noise: a step without noise would show the
    server that nobody was sampled. With zero features and no bias every gradient is zero, so
    the weights are the sum of the noise of every step: per coordinate, standard deviation
    sigma x C x lr / (expected batch 1) x sqrt(steps), here sqrt(40); a third of the steps have
    empty batches, so skipping them would give about sqrt(27)."""
    x, y = torch.zeros(4, 256), torch.zeros(4, dtype=torch.long)
    model = nn.Linear(256, 16, bias=False)
    nn.init.zeros_(model.weight)
    charged = steps_per_round(4, 1, 10)
    assert charged == (0.25, 40)
    noisy = TrainingPlan(noise_multiplier=1.0, clip_norm=1.0, batch_size=1, local_epochs=10,
                         learning_rate=1.0, charged=charged)
    _, steps = train_locally(model, x, y, noisy, seed=5)
    assert steps == 40
    spread = model.weight.detach().std().item()
    assert abs(spread / math.sqrt(40) - 1) < 0.06, spread  # 4,096 coordinates: about 1% error


@pytest.mark.parametrize("n", [49, 98, 103])  # n x (1/n) < 1 in floating point
def test_a_batch_of_one_trains_at_any_unit_count(n):
    x, y = separable_data(n)
    model = nn.Linear(16, 4)
    train_locally(model, x, y, plan(1.0, n=n, batch_size=1, local_epochs=1), seed=0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_dp_steps_run_with_dropout_off_so_every_forward_pass_is_the_one_trained():
    """Found in review: the ghost-clipping screen and the trained pass drew different dropout
    masks, so a unit the screen let through could still turn the update into NaN."""
    seen = []
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 4))
    model[0].register_forward_hook(lambda module, args, out: seen.append(module.training))
    x, y = separable_data(50)
    train_locally(model, x, y, plan(1.0, n=50), seed=0)
    assert seen and not any(seen)
    plain = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 4))
    plain[0].register_forward_hook(lambda module, args, out: seen.append(module.training))
    seen.clear()
    train_locally(plain, x, y, plan(None, n=50), seed=0)
    assert seen and all(seen)  # without DP, dropout as usual


def test_every_forward_pass_of_a_dp_step_of_minilm_finetune_is_without_dropout():
    """BERT's attention dropout follows the attention module's training flag, so eval mode on
    the dropout layers alone left it on (found in review). A DP step's passes (the pass, and
    each unit's own when the pass is not finite) must be one function of the rows: the logits
    the model gives in eval mode."""
    family = get_model_family("minilm-finetune")
    model = family.build_model(3)
    features = family.featurize(["my card is lost", "refund my order please"], None)
    passes = []
    hook = model.register_forward_hook(
        lambda module, args, out: passes.append((args[0].detach().clone(), out.detach().clone())))
    train_locally(model, features, torch.tensor([0, 1]),
                  training_plan(family, noise_multiplier=1.0, charged=(1.0, 1), clip_norm=1.0,
                                batch_size=2, local_epochs=1, learning_rate=0.0), seed=3)
    assert len(passes) == 2  # two token counts, so two passes (``models.fixed_shape``)
    hook.remove()
    model.eval()
    with torch.no_grad():
        assert all(torch.equal(model(rows), logits) for rows, logits in passes)


@pytest.mark.parametrize("units", [93, 99])  # int(1 / (1/k)) = k - 1 in floating point
def test_every_charged_step_runs_whatever_the_step_count(units):
    x, y = separable_data(units)
    _, steps = train_locally(nn.Linear(16, 4), x, y,
                             plan(1.0, n=units, batch_size=1, local_epochs=1), seed=0)
    assert steps == units


def test_the_noise_is_the_chacha_streams_sum_of_four_draws_not_one():
    """One float32 normal never exceeds 5.77 standard deviations, a cut-off an output beyond
    it would give away (found in review); the site adds four float64 normals from the
    ChaCha20 stream of ``stream_seed(seed, "noise")``, summed and halved, read back here
    exactly: zero features, one full-batch step, so the weights are -lr x noise / units."""
    x, y = torch.zeros(4, 8), torch.zeros(4, dtype=torch.long)
    model = nn.Linear(8, 3, bias=False)
    nn.init.zeros_(model.weight)
    train_locally(model, x, y, plan(2.0, n=4, batch_size=4, local_epochs=1, learning_rate=1.0),
                  seed=11)
    stream = np.random.Generator(ChaCha(key=stream_seed(11, "noise"), rounds=20))
    draws = [stream.standard_normal((3, 8)) for _ in range(4)]
    four = torch.from_numpy((draws[0] + draws[1] + draws[2] + draws[3]) * (2.0 / 2)).float()
    assert torch.equal(model.weight.detach(), -(four / 4))  # averaged over the 4 units


@pytest.mark.parametrize("grad_sample_mode", ["hooks", "ghost"])
def test_no_dp_draw_comes_from_torchs_generators(monkeypatch, grad_sample_mode):
    """The Poisson sampling and the noise come from ChaCha20 streams (``private_random``), not
    from PyTorch's Mersenne Twister, whose state 624 outputs give away: every torch draw
    Opacus' own sampler and noise would make fails here, and DP-SGD still trains and adds
    noise, under both of Opacus' clipping modes."""
    def refused(*args, **kwargs):
        raise AssertionError("a DP draw came from a torch generator")

    x, y = separable_data(n=64)
    model = nn.Linear(16, 4)
    before = model.weight.detach().clone()
    dp_plan = plan(1.0, n=64, batch_size=16, local_epochs=1, grad_sample_mode=grad_sample_mode)
    for name in ("normal", "rand", "randn", "randint", "randperm", "bernoulli"):
        monkeypatch.setattr(torch, name, refused)
    _, steps = train_locally(model, x, y, dp_plan, seed=3)
    assert steps == dp_plan.charged[1]
    assert not torch.equal(model.weight.detach(), before)


# --- stop 68's mutation pass: what the ChaCha20 draws' tests had left open -------------------


@pytest.mark.parametrize(("units", "rate", "divisor"), [
    (98, steps_per_round(98, 2, 1)[0], 2),  # 98 x (1/49) = 1.9999999999999998 in floating point
    (6, 0.5, 3),  # the charged rate's expected batch, not the batch size's (6)
    (4, 0.1, 1),  # an expected batch below one unit: the sum is not divided by zero
])
def test_the_noise_is_sigma_times_the_clip_norm_over_the_charged_expected_batch(units, rate,
                                                                                 divisor):
    """Read back exactly (zero features, one step, so the weights are -lr x noise / divisor):
    the noise's standard deviation is noise multiplier x clip norm (2 x 2.5; a clip norm of 1
    would not tell it from noise multiplier / clip norm), and the noisy sum is averaged over
    ``units x rate`` rounded to the nearest integer below it, at least 1."""
    x, y = torch.zeros(units, 8), torch.zeros(units, dtype=torch.long)
    model = nn.Linear(8, 3, bias=False)
    nn.init.zeros_(model.weight)
    dp_plan = TrainingPlan(noise_multiplier=2.0, clip_norm=2.5, batch_size=units,
                           local_epochs=1, learning_rate=1.0, charged=(rate, 1))
    assert train_locally(model, x, y, dp_plan, seed=13)[1] == 1
    stream = np.random.Generator(ChaCha(key=stream_seed(13, "noise"), rounds=20))
    draws = [stream.standard_normal((3, 8)) for _ in range(4)]
    noise = torch.from_numpy((draws[0] + draws[1] + draws[2] + draws[3]) * (2.0 * 2.5 / 2))
    assert torch.equal(model.weight.detach(), -(noise.float() / divisor))


def test_training_without_dp_takes_every_unit_once_an_epoch_in_a_fresh_order():
    """Without DP each of ``local_epochs`` passes is a permutation of all the units, in batches
    of ``batch_size`` (the last one shorter), features and labels kept together; the order is
    the seed's."""
    no_dp = plan(None, n=10, batch_size=4)
    batches = list(shuffled_batches(torch.arange(10), torch.arange(10), no_dp, seed=4))
    assert [len(labels) for _, labels in batches] == [4, 4, 2] * 3
    assert all(torch.equal(features, labels) for features, labels in batches)
    epochs = [torch.cat([labels for _, labels in batches[i:i + 3]]) for i in (0, 3, 6)]
    assert all(sorted(epoch.tolist()) == list(range(10)) for epoch in epochs)
    assert len({tuple(epoch.tolist()) for epoch in epochs}) == 3
    again = list(shuffled_batches(torch.arange(10), torch.arange(10), no_dp, seed=4))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, again, strict=True))
    other = list(shuffled_batches(torch.arange(10), torch.arange(10), no_dp, seed=5))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, other, strict=True))


def test_training_without_dp_draws_its_dropout_from_the_seed():
    """The model's own randomness (dropout, on only without DP) comes from the seed: the same
    seed draws the same masks, another seed others. The rows are alike, so a mask does not
    depend on the order the rows come in."""
    def masks(seed: int) -> torch.Tensor:
        model = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 4))
        seen = []
        model[0].register_forward_hook(lambda module, args, out: seen.append(out == 0))
        train_locally(model, torch.ones(20, 16), torch.zeros(20, dtype=torch.long),
                      plan(None, n=20, batch_size=20, local_epochs=2), seed=seed)
        return torch.stack(seen)

    assert torch.equal(masks(1), masks(1))
    assert not torch.equal(masks(1), masks(2))


def test_dp_training_leaves_no_opacus_hooks_on_the_model():
    """After DP training the model is a plain module again: a backward pass leaves no
    per-unit gradients on it, and it can be trained under DP again (Opacus refuses to hook a
    model twice)."""
    x, y = separable_data(n=32)
    model = nn.Linear(16, 4)
    dp_plan = plan(1.0, n=32, batch_size=8, local_epochs=1)
    train_locally(model, x, y, dp_plan, seed=1)
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())
    assert train_locally(model, x, y, dp_plan, seed=2)[1] == dp_plan.charged[1]


def test_dp_training_shows_the_operator_neither_opacus_rng_warning_nor_its_hook_warning():
    """Opacus warns that its secure RNG is off (the draws are ChaCha20's, not its generator's)
    and that a head over fixed features fires a full backward hook (expected): neither reaches
    the site's operator."""
    x, y = separable_data(n=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_locally(nn.Linear(16, 4), x, y, plan(1.0, n=32, batch_size=8, local_epochs=1),
                      seed=1)
    messages = [str(warning.message) for warning in caught]
    assert not any("Secure RNG" in m or "Full backward hook" in m for m in messages), messages


def test_the_poisson_batches_are_the_sampling_streams_own_draws():
    """Known answer: step by step, the units whose 53-bit uniform from the ChaCha20 stream of
    ``stream_seed(seed, "sampling")`` falls below the charged rate; a stream apart from the
    noise's (the accounting takes the sampling and the noise to be independent). The tool
    mutates no stream's name; this pins it."""
    dp_plan = plan(1.0, n=40, batch_size=8, local_epochs=2)
    rate, steps = dp_plan.charged
    stream = np.random.Generator(ChaCha(key=stream_seed(21, "sampling"), rounds=20))
    batches = list(poisson_batches(torch.arange(40), torch.arange(40), dp_plan, seed=21))
    assert len(batches) == steps
    for features, labels in batches:
        expected = np.flatnonzero(stream.random(40) < rate)
        assert features.tolist() == labels.tolist() == expected.tolist()
