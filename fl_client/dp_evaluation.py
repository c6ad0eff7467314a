"""Evaluation under DP: a site's test-split accuracy and loss as one Gaussian release.

Exact evaluation answers with exact counts of the test rows a model the server chose gets
right, outside every epsilon: an oracle, message after message
(``site_policy.evaluation_policy``). A site whose node config sets ``evaluation = "dp"``
answers instead with this release, charged to its ledger like a training round
(``privacy_budget.charge_round``):

* **What one unit can move.** Each privacy unit of the test split (an utterance; or a customer,
  with all their test utterances) contributes one vector: the mean over its rows of (correct,
  cross-entropy capped at ``LOSS_CAP`` / ``LOSS_CAP``, 1), divided by sqrt(3). Every entry lies
  in [0, 1], so the vector's L2 norm is at most 1, and adding or removing one unit moves the sum
  of all vectors by at most 1: the L2 sensitivity is 1 whatever the model.
* **The noise.** The site adds Gaussian noise of standard deviation ``noise_multiplier`` to each
  of the three sums, drawn from a ChaCha20 stream keyed by the release's secret seed as the sum
  of four normals halved (``private_random.gaussian_noise``): the Gaussian mechanism, which is
  a DP-SGD step with sample rate 1, one step and clip norm 1. So it is charged as exactly that
  release, planned for the site's own ``evaluation-epsilon`` over the run's planned evaluations
  (every ``evaluate-every``-th round and the last), as the run ``<run> (evaluation)``, in the
  same ledger and under the same unit keys as training (a customer with rows in both splits
  composes both spends), through the same lifetime filter.
* **What leaves.** Accuracy (first sum / third), loss (``LOSS_CAP`` x second / third) and the
  unit count (sqrt(3) x third, rounded, at least 1), each clipped into its range: functions of
  the noisy sums only, so post-processing, which costs no privacy. No macro-F1: per-class counts
  would each need noise of their own.

Under customer units, every customer weighs as one whatever their number of test utterances, so
the accuracy is a mean over customers and the count counts customers.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from fl_client.private_random import gaussian_noise, private_stream, stream_seed
from models.fixed_shape import FIXED_WIDTH, PassShape, feature_chunks

LOSS_CAP = 10.0
"""The cross-entropy (nats) above which a row's loss counts as this: it bounds what one unit adds
to the loss sum. Far above a useful model's loss (ln 77 = 4.3 for a uniform guess over
BANKING77's intents); a larger cap would widen the loss estimate's noise in proportion."""
COMPONENTS = 3
"""Correct, capped loss and count: each in [0, 1], so a unit's vector scaled by 1 / sqrt(3) has
norm at most 1."""


@dataclass(frozen=True)
class NoisyScores:
    """What a DP evaluation sends: estimates from the noisy sums."""

    accuracy: float
    loss: float
    units: int


def unit_contributions(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor, units: list[str],
    passes: PassShape = FIXED_WIDTH,
) -> torch.Tensor:
    """One row per distinct unit in ``units`` (one entry per test row, in order of first
    appearance): the mean of its rows' (correct, capped loss / cap, 1), scaled to norm <= 1.
    Rows are scored in passes of the family's fixed shape (``passes``, ``models.fixed_shape``),
    so that no row's score depends on another row."""
    if not units:  # nothing in the release: its sum is the zero vector
        return torch.zeros(0, COMPONENTS, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        chunks = feature_chunks(features, passes)
        scored = torch.cat([model(features[chunk.index])[: chunk.real] for chunk in chunks])
        logits = torch.empty_like(scored)
        logits[torch.cat([chunk.index[: chunk.real] for chunk in chunks])] = scored
        losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        correct = (logits.argmax(dim=1) == labels).double()
    # a loss that is not finite (a model that overflows on this row) counts as the cap: the
    # bound on what one unit adds must hold whatever the model does
    capped = torch.nan_to_num(losses.double(), nan=LOSS_CAP, posinf=LOSS_CAP).clamp(0, LOSS_CAP)
    per_row = torch.stack([correct, capped / LOSS_CAP, torch.ones_like(correct)], dim=1)
    index: dict[str, int] = {}
    positions = torch.tensor([index.setdefault(unit, len(index)) for unit in units])
    sums = torch.zeros(len(index), COMPONENTS, dtype=torch.float64).index_add_(0, positions,
                                                                              per_row)
    rows = torch.bincount(positions, minlength=len(index)).double().unsqueeze(1)
    return sums / rows / math.sqrt(COMPONENTS)


def noisy_scores(contributions: torch.Tensor, noise_multiplier: float, seed: int) -> NoisyScores:
    """The release: the contributions' sum plus Gaussian noise of standard deviation
    ``noise_multiplier`` per component (sensitivity 1), read back as scores."""
    stream = private_stream(stream_seed(seed, "evaluation"))
    noise = torch.from_numpy(gaussian_noise(stream, (COMPONENTS,), noise_multiplier))
    correct, loss, count = (contributions.sum(dim=0) + noise).tolist()
    if count <= 0:  # noise larger than the count: nothing can be read from the sums
        return NoisyScores(accuracy=0.0, loss=LOSS_CAP, units=1)
    return NoisyScores(
        accuracy=min(max(correct / count, 0.0), 1.0),
        loss=min(max(LOSS_CAP * loss / count, 0.0), LOSS_CAP),
        units=max(1, round(math.sqrt(COMPONENTS) * count)),
    )
