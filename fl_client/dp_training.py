"""Local training at a site: DP-SGD with Opacus, or plain SGD when DP is off.

DP-SGD here is where the privacy guarantee is *enforced*: each step's batch is a Poisson sample
that takes every training unit independently at the sample rate charged to the ledger, for
exactly the steps charged (``TrainingPlan.charged``, built by ``training_plan``; ``poisson_batches``
draws them from exactly these), Opacus clips every unit's gradient to ``clip_norm``, and
Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` is added to the summed
gradients of every step.

A unit whose gradient is not finite contributes the zero vector. The server chooses the model,
and a model can be made to overflow on some inputs only (weights that reach float32's limit
along a chosen direction): left alone, one such unit would turn the whole noisy update into NaN,
and whether the update is finite (sent, or blocked by the egress guard) would tell the server,
outside every epsilon, whether any sampled row lies in that direction. Zero is still a
gradient of norm at most ``clip_norm`` that depends on that unit alone, so the guarantee is
unchanged and the update is finite whatever the rows. Under Opacus' hooks the non-finite
per-example gradients are zeroed (``_zero_left_out_units``). Ghost clipping never holds them: it
sums the units' clipped gradients inside one backward pass, where a unit's NaN reaches the sum
even at a clipping factor of 0, and a unit's loss can be finite while its gradient is not (an
attention key at infinity scored -inf: weight 0 forward, 0 x inf backward; found in review). So
a pass whose clipped sum is not finite is done again one unit at a time, each alone in a pass of
the same shape, and only the finite ones are summed (``_clipped_sum_of_finite_units``): what a
unit adds depends on that unit alone. DP-SGD trains with dropout off (``_without_dropout``):
with it, the pass and the unit's own pass drew different masks, so a model crafted to overflow
only when a dropout element is kept made what a unit added depend on the pass it was in.

The sampling and the noise are drawn from ChaCha20 streams keyed by the release's secret seed
(``private_random``), not from PyTorch's Mersenne Twister: Opacus' own noise draw is replaced
(``_draw_noise_from``) by ``private_random.gaussian_noise``, four float64 normals summed and
halved, so it keeps the floating-point robustness of Opacus' ``secure_mode``: one float32
normal never exceeds 5.77 standard deviations, and an output beyond that could only come from a
unit being there, an unbounded privacy loss with probability up to 2e4 x delta at the smallest
deltas (found in review).

Opacus is imported inside the functions that use it: the import takes about 2 s, and Flower
starts a fresh ClientApp process for every message, most of which never train (evaluation,
three of SecAgg+'s four stages).
"""

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fl_client.privacy_units import PADDING_LABEL
from fl_client.private_random import gaussian_noise, poisson_sample, private_stream, stream_seed
from models.family import ModelFamily
from models.fixed_shape import FIXED_WIDTH, PassShape, feature_chunks


@dataclass(frozen=True)
class TrainingPlan:
    """How one round of local training runs.

    noise_multiplier: Gaussian noise std as a multiple of ``clip_norm``; ``None`` trains without
        DP (no clipping, no noise, no privacy guarantee).
    clip_norm: the largest L2 norm any one example's gradient can have; bounds each example's
        influence on the update.
    batch_size: without DP, the batch size; under DP, the expected Poisson batch size the charge
        was planned for (``privacy_accounting.steps_per_round``: rate ``1 / ceil(n /
        batch_size)``), while training samples at ``charged``'s rate.
    local_epochs: passes over the site's data per round; more epochs cost more epsilon.
    learning_rate: local SGD step size.
    charged: (Poisson sample rate, DP-SGD steps) the noise was planned and charged for; required
        under DP: training samples at exactly this rate for exactly these steps
        (``poisson_batches``), so the epsilon charged is the epsilon spent.
    grad_sample_mode: how Opacus gets each example's gradient norm for clipping ("hooks" or
        "ghost", the model family's choice); the same clipping and noise either way, so the
        guarantee does not depend on it.
    passes: the family's pass shape (``models.fixed_shape``): each sampled batch goes through
        the model in passes of exactly ``passes.rows`` rows (token states: of one token count),
        the last one filled with padding that adds nothing, so that no unit's gradient depends
        on how many others share its pass. The passes' clipped gradients are summed and noised
        once (Opacus' skipped steps): the same DP step as one pass over the batch.
    """

    noise_multiplier: float | None
    clip_norm: float
    batch_size: int
    local_epochs: int
    learning_rate: float
    charged: tuple[float, int] | None = None
    grad_sample_mode: str = "hooks"
    passes: PassShape = FIXED_WIDTH


def training_plan(
    family: ModelFamily,
    noise_multiplier: float | None,
    charged: tuple[float, int],
    clip_norm: float,
    batch_size: int,
    local_epochs: int,
    learning_rate: float,
) -> TrainingPlan:
    """The plan for one of ``family``'s models: the family's clipping mode and physical batching,
    and the (sample rate, steps) ``charged`` for the noise; the one way every caller builds it."""
    return TrainingPlan(
        noise_multiplier=noise_multiplier,
        clip_norm=clip_norm,
        batch_size=batch_size,
        local_epochs=local_epochs,
        learning_rate=learning_rate,
        charged=charged,
        grad_sample_mode=family.grad_sample_mode,
        passes=family.passes,
    )


def train_locally(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    plan: TrainingPlan,
    seed: int,
) -> tuple[float, int]:
    """Train ``model`` in place; return (mean training loss, optimizer steps taken)."""
    # torch's global stream: the model's own randomness (dropout; off under DP), not the noise's
    torch.manual_seed(stream_seed(seed, "model") % 2**63)
    # A family may step its parts at different rates (``minilm-finetune``'s param_groups).
    params = (model.param_groups(plan.learning_rate) if hasattr(model, "param_groups")
              else model.parameters())
    optimizer = torch.optim.SGD(params, lr=plan.learning_rate)
    model.train()
    criterion = UnitLoss()
    if plan.noise_multiplier is None:
        batches = shuffled_batches(features, labels, plan, seed)
        dp_model = model
    else:
        from opacus import PrivacyEngine

        if plan.charged is None:
            raise ValueError("a DP plan needs the sample rate and steps it was charged for")
        sample_rate, _ = plan.charged
        batches = poisson_batches(features, labels, plan, seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            # its accountant is never read: the site's ledger accounts (``privacy_budget``)
            engine = PrivacyEngine(accountant="prv")
            private = engine.make_private(
                module=model,
                optimizer=optimizer,
                # read for the dataset's size only: the batches are ``poisson_batches``
                data_loader=DataLoader(TensorDataset(features, labels),
                                       batch_size=plan.batch_size),
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.clip_norm,
                poisson_sampling=False,
                criterion=criterion,
                grad_sample_mode=plan.grad_sample_mode,
            )
        if plan.grad_sample_mode == "ghost":
            dp_model, optimizer, criterion, _ = private
        else:
            dp_model, optimizer, _ = private
        dp_model.forbid_grad_accumulation()  # one step's per-unit gradients never reach the next
        _without_dropout(dp_model)
        # Opacus averages the noisy sum by the expected batch size, units x rate, which
        # floating point can leave one short (49 x (1/49) < 1): at a batch of one, a division
        # by zero after the charge (found in review). A scale of the noisy sum only.
        optimizer.expected_batch_size = max(1, int(len(labels) * sample_rate + 1e-9))
        _draw_noise_from(optimizer, private_stream(stream_seed(seed, "noise")))

    with warnings.catch_warnings():
        # Opacus' hooks on a head over frozen features: the warning is expected and harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        total_loss, steps = _run_steps(dp_model, batches, optimizer, criterion, plan)
    if plan.noise_multiplier is not None:
        dp_model.remove_hooks()
    return total_loss, steps


def poisson_batches(features: torch.Tensor, labels: torch.Tensor, plan: TrainingPlan,
                    seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """DP-SGD's batches: ``plan.charged``'s steps, each a Poisson sample of the units at its
    sample rate (``private_random.poisson_sample``), drawn from the ``"sampling"`` stream of
    ``seed``. Exactly the sampling the ledger was charged for, whatever the site holds."""
    sample_rate, steps = plan.charged
    stream = private_stream(stream_seed(seed, "sampling"))
    for _ in range(steps):
        chosen = torch.from_numpy(poisson_sample(stream, len(labels), sample_rate))
        yield features[chosen], labels[chosen]


def shuffled_batches(features: torch.Tensor, labels: torch.Tensor, plan: TrainingPlan,
                     seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training without DP: ``plan.local_epochs`` passes over the units in a fresh order each,
    in batches of ``plan.batch_size``."""
    stream = private_stream(stream_seed(seed, "shuffle"))
    for _ in range(plan.local_epochs):
        order = torch.from_numpy(stream.permutation(len(labels)))
        for start in range(0, len(labels), plan.batch_size):
            chosen = order[start:start + plan.batch_size]
            yield features[chosen], labels[chosen]


def _draw_noise_from(optimizer: torch.optim.Optimizer, stream: np.random.Generator) -> None:
    """Opacus' noise step (``DPOptimizer.add_noise``, the same in its ghost-clipping optimizer)
    with the noise drawn from ``stream``: N(0, (noise_multiplier x clip_norm)^2) on every
    parameter's clipped sum, from ``private_random.gaussian_noise`` instead of a torch generator
    (module docstring)."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    def add_noise() -> None:
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        for param in optimizer.params:
            _check_processed_flag(param.summed_grad)
            noise = gaussian_noise(stream, tuple(param.summed_grad.shape), std)
            param.grad = (param.summed_grad + torch.from_numpy(noise).to(
                param.summed_grad.dtype)).view_as(param)
            _mark_as_processed(param.summed_grad)

    optimizer.add_noise = add_noise


def _run_steps(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
               optimizer: torch.optim.Optimizer, criterion: nn.Module,
               plan: TrainingPlan) -> tuple[float, int]:
    total_loss, total_seen, steps = 0.0, 0, 0
    private = plan.noise_multiplier is not None
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        if len(y) == 0:
            # An empty Poisson batch is still a DP step: zero gradients, then pure noise.
            _zero_gradients(model, x, plan)
            optimizer.step()
            steps += 1
            continue
        chunks = _physical_batches(x, y, plan.passes)
        for index, (xc, yc, real) in enumerate(chunks):
            last = index == len(chunks) - 1
            if private and plan.grad_sample_mode == "ghost":
                loss = _clipped_sum_of_finite_units(model, criterion, xc, yc, real)
            else:
                loss = criterion(model(xc), yc)  # the mean over the pass, padding adding 0
                if private:
                    loss.backward()  # this pass's per-example gradients
                    _zero_left_out_units(model, real)
                else:
                    (loss * (len(yc) / len(y))).backward()  # gradients add up over passes
                loss = loss.item()
            if math.isfinite(loss):
                total_loss += loss * len(yc)
                total_seen += real
            if private:
                optimizer.signal_skip_step(do_skip=not last)
                optimizer.step()  # clipped and summed; noise and the update after the last
                optimizer.zero_grad(set_to_none=True)  # keeps the sum of skipped steps
            elif last:
                optimizer.step()
        steps += 1
    return total_loss / max(total_seen, 1), steps


def _zero_gradients(model: nn.Module, x: torch.Tensor, plan: TrainingPlan) -> None:
    """A DP step's gradients when no unit takes part: zero, for the noise to be added to."""
    if plan.grad_sample_mode == "ghost":  # the optimizer reads p.grad as is
        for param in model.parameters():
            if param.requires_grad:
                param.grad = torch.zeros_like(param)
    else:  # the hooks record an empty batch of per-example gradients
        model(x[:0]).sum().backward()


def _zero_left_out_units(model: nn.Module, real: int) -> None:
    """Opacus' hooks: zero the per-example gradients of the pass's padding (the rows past
    ``real``) and every one that holds NaN or infinity in any parameter, before they are
    clipped (each unit's gradient is computed on its own rows only, so one unit's overflow
    cannot reach another's)."""
    samples = [p.grad_sample for p in model.parameters()
               if p.requires_grad and p.grad_sample is not None]
    if not samples:
        return
    kept = torch.stack([g.reshape(len(g), -1).isfinite().all(dim=1) for g in samples]).all(0)
    kept[real:] = False
    if not kept.all():
        for grads in samples:
            grads[~kept] = 0.0


def _without_dropout(model: nn.Module) -> None:
    """Every dropout layer at rate 0 and in eval mode, the rest still training: each forward
    pass is then the same function of the rows, so the non-finite screens see the pass that is
    trained. The rate too: BERT's attention reads its dropout layer's ``p`` under its own
    training flag, not the layer's (found in review: eval mode alone left it on)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d
                      | nn.AlphaDropout | nn.FeatureAlphaDropout):
            module.p = 0.0
            module.eval()


def _clipped_sum_of_finite_units(model: nn.Module, criterion: nn.Module, x: torch.Tensor,
                                 y: torch.Tensor, real: int) -> float:
    """Ghost clipping: leave in the gradients the sum of the pass's clipped unit gradients, a
    unit whose clipped gradient is not finite adding zero; return the pass's mean loss.

    The pass as a whole first (one forward, Opacus' two backward passes). A sum that is not
    finite means some unit's term is not, and ghost clipping cannot say which: then each real
    unit runs alone, in a pass of the same shape filled with copies of itself labelled
    ``PADDING_LABEL`` (no loss; their zero upstream gradient meets only the finite Jacobian a
    finite unit has), and only the finite results are summed. Which units add zero is decided
    by each unit alone, never by what shares its pass.
    """
    loss = criterion(model(x), y)
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    if all(p.grad is None or torch.isfinite(p.grad).all() for p in trained):
        return loss.item()
    total = [torch.zeros_like(p) for p in trained]
    losses = []
    for unit in range(real):
        alone = torch.full((len(y),), unit)
        labels = y[alone].clone()
        labels[1:] = PADDING_LABEL
        unit_loss = criterion(model(x[alone]), labels)
        unit_loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trained]
        if all(torch.isfinite(g).all() for g in grads):
            for summed, grad in zip(total, grads, strict=True):
                summed += grad
            losses.append(unit_loss.item() * len(y))
    for param, summed in zip(trained, total, strict=True):
        param.grad = summed
    return sum(losses) / len(y) if losses else math.nan


def _physical_batches(x: torch.Tensor, y: torch.Tensor,
                      passes: PassShape) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """The batch in passes of exactly ``passes.rows`` rows (``models.fixed_shape``), each with
    how many of its rows are real; the padding's labels are ``PADDING_LABEL``, so it adds no
    loss, and its per-example gradients are zeroed besides."""
    batches = []
    for chunk in feature_chunks(x, passes):
        labels = y[chunk.index].clone()
        labels[chunk.real:] = PADDING_LABEL
        batches.append((x[chunk.index], labels, chunk.real))
    return batches


class UnitLoss(nn.Module):
    """Mean over the batch's privacy units of each unit's mean cross-entropy.

    An utterance unit is one row; a customer unit is a padded group of rows (labels
    ``PADDING_LABEL`` mark padding). Opacus treats the first dimension as the unit, so the
    gradient it clips is exactly one unit's gradient. ``reduction = "none"`` gives the per-unit
    losses that Opacus' ghost clipping asks for.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() == 1:
            per_unit = nn.functional.cross_entropy(logits, labels, ignore_index=PADDING_LABEL,
                                                   reduction="none")
        else:
            per_row = nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=PADDING_LABEL,
                reduction="none",
            ).view(labels.shape)
            rows_per_unit = (labels != PADDING_LABEL).sum(dim=1).clamp(min=1)
            per_unit = per_row.sum(dim=1) / rows_per_unit
        return per_unit if self.reduction == "none" else per_unit.mean()


class Evaluation(NamedTuple):
    """A model's scores on one held-out split."""

    loss: float
    accuracy: float
    macro_f1: float


@torch.no_grad()
def evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    """Mean cross-entropy loss, accuracy and macro-F1 of the model on a site's held-out split."""
    model.eval()
    logits = model(features)
    loss = nn.functional.cross_entropy(logits, labels).item()
    predictions = logits.argmax(dim=1)
    accuracy = (predictions == labels).float().mean().item()
    return Evaluation(loss, accuracy, macro_f1(predictions, labels))


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """The unweighted mean F1 over the classes that occur in ``labels`` or ``predictions``
    (scikit-learn's ``f1_score(average="macro")``): a rare intent the model never gets right
    weighs as much as a common one, which accuracy hides. One number, so a site can send it
    without revealing its label histogram."""
    classes = torch.unique(torch.cat([labels, predictions]))
    hits = predictions.unsqueeze(1) == classes
    truths = labels.unsqueeze(1) == classes
    true_positives = (hits & truths).sum(dim=0).double()
    wrong = (hits ^ truths).sum(dim=0).double()  # false positives + false negatives
    return (2 * true_positives / (2 * true_positives + wrong)).mean().item()
