"""Checks on every site reply before it can reach aggregation.

A training reply must carry exactly the model's exchanged parameters (same names, shapes and
dtypes as the global model), only finite values, the metrics aggregation uses, privacy claims
consistent with the run's plan (``check_privacy_claims``), and an update whose L2 distance from
the global model it was sent is within ``max-update-norm``: a fixed bound when it is positive and
finite, none when it is ``inf``, and when it is 0 (the default) the bound a DP update's own scale
allows (``derived_update_bound``). Across a round's accepted replies, no site may claim more than
``EXAMPLES_RATIO`` times the other sites' median number of examples (``oversized_claims``): the
claim is its weight in the average. An evaluation reply must carry finite, in-range metrics. One
bad reply is rejected and recorded; it never reaches the average, and never stops the round. With
secure aggregation a training reply reaches the server as metrics only (its update is in the
masked sum), and only those can be checked.
"""

import math
import statistics
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fl_protocol.wire import (
    ARRAYS_KEY,
    EVALUATE_METRICS,
    MAX_AUTO_DELTA,
    METRICS_KEY,
    TRAIN_METRICS,
    Metric,
)

ArraySpec = dict[str, tuple[tuple[int, ...], str]]
"""Parameter name -> (shape, numpy dtype string) of the exchanged model."""

EXAMPLES_RATIO = 20.0
"""The most examples a site may claim, as a multiple of the median claim of the round's other
accepted sites: FedAvg weighs each update by its claim, so an unbounded one takes over the
average. Real sites a round apart in size by more than this are rare; such a site is rejected
(and recorded) until the others grow."""
NOISE_TAIL = 10.0
"""Standard deviations of slack on a Gaussian noise vector's norm: ||N(0, I_d)|| exceeds
sqrt(d) + t with probability at most exp(-t^2 / 2), about 2e-22 here."""
BOUND_SAFETY = 2.0
"""A further factor on the derived update bound, for float32 rounding and Opacus' batch size."""
EPSILON_SLACK = 1.01
"""Relative slack on epsilon and clip-norm comparisons, for accountants' numerical error."""
MAX_NOISE_RATIO = 10.0
"""The most noise a local-DP site may claim, as a multiple of a noise that suffices for the run's
target epsilon over its planned steps at the site's delta (``sufficient_noise``). The claim sets
the site's own update bound (``derived_update_bound``), so an unbounded one let a site claiming
noise 1e150 at epsilon 0 send any finite update (found in review). An honest site's noise is at
most its ``max-noise-ratio`` (default 2) times the run's plan, which is below the sufficient
noise; a site that accepts more than this ratio has its update rejected."""


@dataclass(frozen=True)
class RunPlan:
    """What the run asked every site for, and so what a site's claims are held against."""

    target_epsilon: float
    delta: float
    clip_norm: float
    learning_rate: float
    local_epochs: int
    batch_size: int
    num_rounds: int
    privacy_unit: str
    privacy_model: str
    retrained_rounds: int = 0
    """Rounds a resumed run trains again: the sites charged them before, and charge them again
    (docs/FAULT_TOLERANCE.md), so their epsilon for the run may exceed the target by as much."""

    @property
    def charged_rounds(self) -> int:
        """The most rounds the sites may have been charged for in this run."""
        return self.num_rounds + self.retrained_rounds

    @classmethod
    def from_run_config(cls, cfg: dict, retrained_rounds: int = 0) -> "RunPlan":
        return cls(
            retrained_rounds=retrained_rounds,
            target_epsilon=float(cfg["target-epsilon"]),
            delta=float(cfg["delta"]),
            clip_norm=float(cfg["clip-norm"]),
            learning_rate=float(cfg["learning-rate"]),
            local_epochs=int(cfg["local-epochs"]),
            batch_size=int(cfg["batch-size"]),
            num_rounds=int(cfg["num-rounds"]),
            privacy_unit=str(cfg["privacy-unit"]),
            privacy_model=str(cfg["privacy-model"]),
        )


class InvalidReply(ValueError):
    """A reply that must not be aggregated; the message says why."""


def array_spec(arrays: ArrayRecord) -> ArraySpec:
    """The names, shapes and dtypes every update must match."""
    return {key: (tuple(array.shape), np.dtype(array.dtype).str) for key, array in arrays.items()}


def check_train_reply(
    content: RecordDict,
    spec: ArraySpec,
    global_arrays: dict[str, np.ndarray],
    max_update_norm: float,
    plan: RunPlan,
) -> float:
    """The reply's update norm ||reply - global||_2, or raise ``InvalidReply``.

    ``max_update_norm``: the run's ``max-update-norm``; ``plan``: what the run asked every site
    for, which the reply's privacy claims, and so its derived bound, are held to."""
    if set(content) != {ARRAYS_KEY, METRICS_KEY}:
        raise InvalidReply(f"expected records {ARRAYS_KEY!r} and {METRICS_KEY!r}, "
                           f"got {sorted(content)}")
    arrays = content.array_records.get(ARRAYS_KEY)
    if arrays is None:
        raise InvalidReply(f"{ARRAYS_KEY!r} is not an ArrayRecord")
    metrics = _check_metrics(content, TRAIN_METRICS)
    check_privacy_claims(metrics, plan)
    missing, unexpected = sorted(set(spec) - set(arrays)), sorted(set(arrays) - set(spec))
    if missing or unexpected:
        raise InvalidReply(f"wrong parameter names: missing {missing}, unexpected {unexpected}")
    squared = 0.0
    for key, (shape, dtype) in spec.items():
        if tuple(arrays[key].shape) != shape:
            raise InvalidReply(f"{key}: shape {tuple(arrays[key].shape)}, expected {shape}")
        if np.dtype(arrays[key].dtype).str != dtype:
            raise InvalidReply(f"{key}: dtype {arrays[key].dtype}, expected {np.dtype(dtype)}")
        try:
            values = arrays[key].numpy()
        except (ValueError, TypeError) as err:
            raise InvalidReply(f"{key}: unreadable array ({err})") from err
        if not np.isfinite(values).all():
            raise InvalidReply(f"{key}: contains NaN or Inf")
        difference = values.astype(np.float64) - global_arrays[key].astype(np.float64)
        squared += float(np.sum(difference * difference))
    norm = math.sqrt(squared)
    bound = max_update_norm
    if bound == 0:
        dimension = sum(math.prod(shape) for shape, _ in spec.values())
        bound = derived_update_bound(metrics, plan, dimension)
    if norm > bound:
        source = "derived from the run's DP settings" if max_update_norm == 0 else "set"
        raise InvalidReply(f"update norm {norm:.4g} exceeds max-update-norm {bound:.4g} "
                           f"({source})")
    return norm


def derived_update_bound(metrics: MetricRecord, plan: RunPlan, dimension: int) -> float:
    """The largest update norm one round of local DP-SGD can produce (``inf`` without DP).

    Each of the ``T`` steps moves the model by ``lr / B`` times (the sum of the sampled units'
    clipped gradients, each at most ``C``, at most ``U`` of them, plus Gaussian noise of std
    ``sigma * C`` per coordinate), ``B`` being Opacus' expected batch ``U * q``. The T noise
    vectors sum to one Gaussian of std ``sqrt(T) * sigma * C``, so

        bound = BOUND_SAFETY * lr * C / B * (T * U + sigma * sqrt(T) * (sqrt(d) + NOISE_TAIL))

    with ``B`` taken one lower for Opacus' rounding down (at least 1). ``lr``, ``C`` and the
    number of epochs are the run's; ``sigma``, ``q``, ``T`` and ``U`` the site's claims, already
    held against the plan (``check_privacy_claims``). No model family steps faster than
    ``learning-rate``. Without DP nothing bounds an honest update (no clipping), so there is no
    derived bound: set ``max-update-norm`` for a run without DP.
    """
    if not math.isfinite(float(metrics["epsilon"])):
        return math.inf
    sigma = float(metrics["noise-multiplier"])
    steps, units = int(metrics["steps"]), int(metrics["privacy-units"])
    batch = max(1.0, units * float(metrics["sample-rate"]) - 1)
    noise = sigma * math.sqrt(steps) * (math.sqrt(dimension) + NOISE_TAIL)
    return BOUND_SAFETY * plan.learning_rate * plan.clip_norm / batch * (steps * units + noise)


def check_privacy_claims(metrics: MetricRecord, plan: RunPlan) -> None:
    """Raise ``InvalidReply`` unless the reply's privacy numbers fit the run's plan.

    * ``epsilon`` is at most the run's ``target-epsilon`` (a run without DP, target ``inf``,
      accepts any); ``inf`` in a DP run is a round without DP.
    * ``delta`` is in [0, the run's delta], or [0, ``MAX_AUTO_DELTA``] when the run leaves it to
      the sites (0), and above 0 with a finite epsilon (the Gaussian mechanism needs it).
    * A DP claim (finite epsilon) names its release, and it is the one the plan asked for: the
      run's ``clip-norm``; at least one unit, and under the utterance unit as many examples as
      units; under local DP the sample rate ``1 / ceil(U / batch-size)`` and ``local-epochs /
      sample-rate`` steps (Opacus' epochs), under distributed DP one full-batch step.
    * Under local DP the noise multiplier fits the epsilon claimed: the full-batch Gaussian
      mechanism's Renyi bound over twice the run's planned steps, ``k / (2 sigma^2) + sqrt(2 k
      ln(1/delta)) / sigma``, is at least half the claim (subsampling only lowers it). A site
      that overstates its noise would otherwise widen its own update bound.
    """
    epsilon, delta = float(metrics["epsilon"]), metrics.get("delta", 0.0)
    # A resumed run's retrained rounds are charged twice. Epsilon grows sublinearly in the
    # rounds composed (Gaussian and Skellam releases), so target x charged / planned bounds it.
    most_epsilon = plan.target_epsilon * plan.charged_rounds / plan.num_rounds
    if not epsilon >= 0:  # the reply contract refuses it too: this check stands on its own
        raise InvalidReply(f"epsilon {epsilon:g} is below 0")
    if not epsilon <= most_epsilon * EPSILON_SLACK:
        raise InvalidReply(f"epsilon {epsilon:g} is above the run's target-epsilon "
                           f"{plan.target_epsilon:g}"
                           + (f" ({most_epsilon:g} with the {plan.retrained_rounds} rounds "
                              "a resume trains again)" if plan.retrained_rounds else ""))
    delta_cap = plan.delta if plan.delta > 0 else MAX_AUTO_DELTA
    private = math.isfinite(epsilon)
    numeric = isinstance(delta, int | float) and not isinstance(delta, bool)
    if not (numeric and (delta > 0 if private else delta >= 0) and delta <= delta_cap):
        low = "(0" if private else "[0"
        raise InvalidReply(f"delta {delta!r} is outside {low}, {delta_cap:g}] for epsilon "
                           f"{epsilon:g} in this run")
    if not private:
        return
    release = {name: metrics.get(name) for name in
               ("noise-multiplier", "sample-rate", "clip-norm", "steps", "privacy-units")}
    missing = sorted(name for name, value in release.items()
                     if isinstance(value, bool) or not isinstance(value, int | float))
    if missing:
        raise InvalidReply(f"a DP claim (epsilon {epsilon:g}) without {missing}")
    sigma, rate = float(release["noise-multiplier"]), float(release["sample-rate"])
    steps, units = release["steps"], release["privacy-units"]
    examples = metrics["num-examples"]
    if not (math.isfinite(sigma) and sigma > 0 and 0 < rate <= 1):
        raise InvalidReply(f"noise-multiplier {sigma:g} or sample-rate {rate:g} out of range")
    if abs(float(release["clip-norm"]) - plan.clip_norm) > plan.clip_norm * (EPSILON_SLACK - 1):
        raise InvalidReply(f"clip-norm {release['clip-norm']:g}, the run's is "
                           f"{plan.clip_norm:g}")
    if units != int(units) or units < 1 or examples < units or (
            plan.privacy_unit == "utterance" and examples != units):
        raise InvalidReply(f"{examples:g} examples in {units:g} {plan.privacy_unit} units")
    if plan.privacy_model == "distributed":
        planned = (1.0, 1)
    else:
        batches = math.ceil(int(units) / plan.batch_size)
        planned = (1.0 / batches, batches * plan.local_epochs)
    if abs(rate - planned[0]) > 1e-9 or steps != planned[1]:
        raise InvalidReply(f"sample-rate {rate:g} and {steps:g} steps, the plan's are "
                           f"{planned[0]:g} and {planned[1]} for {units:g} units")
    if plan.privacy_model == "local":
        most_noise = MAX_NOISE_RATIO * sufficient_noise(plan.target_epsilon, delta,
                                                        planned[1] * plan.num_rounds)
        if sigma > most_noise:
            raise InvalidReply(f"noise-multiplier {sigma:.4g} is above {MAX_NOISE_RATIO:g} x "
                               f"the {most_noise / MAX_NOISE_RATIO:.4g} that suffices for the "
                               f"run's target-epsilon {plan.target_epsilon:g}")
        most = 2 * plan.charged_rounds * planned[1]
        ceiling = most / (2 * sigma**2) + math.sqrt(2 * most * math.log(1 / delta)) / sigma
        if epsilon > 2 * ceiling:
            raise InvalidReply(f"noise-multiplier {sigma:g} allows at most epsilon "
                               f"{ceiling:.3g} over the run's planned steps, not {epsilon:g}")


def sufficient_noise(target_epsilon: float, delta: float, steps: int) -> float:
    """A noise multiplier that makes ``steps`` full-batch Gaussian steps (epsilon, delta)-DP at
    ``target_epsilon``: by the zero-concentrated DP bound, ``rho + 2 sqrt(rho ln(1/delta))``
    with ``rho = steps / (2 sigma^2)``. Any accountant's plan for the same target needs less
    (subsampling only lowers the noise needed); a closed form, so checking a reply costs
    nothing."""
    log_term = math.log(1 / delta)
    mu = math.sqrt(2 * log_term + 2 * target_epsilon) - math.sqrt(2 * log_term)
    return math.sqrt(steps) / mu


def oversized_claims(claims: dict[int, float]) -> dict[int, str]:
    """Node -> why its ``num-examples`` claim is rejected: above ``EXAMPLES_RATIO`` times the
    median of the other claims (with one site alone, its weight is irrelevant)."""
    return {node: (f"num-examples {claim:g} is above {EXAMPLES_RATIO:g} x the other sites' "
                   f"median {median:g}")
            for node, (claim, median) in _claims_and_medians(claims).items()
            if median is not None and claim > EXAMPLES_RATIO * median}


def capped_claims(claims: dict[int, float]) -> dict[int, float]:
    """Node -> its ``num-examples`` claim, at most ``EXAMPLES_RATIO`` times the median of the
    other claims (a site alone keeps its claim): a weight no site can inflate past that."""
    return {node: claim if median is None else min(claim, EXAMPLES_RATIO * median)
            for node, (claim, median) in _claims_and_medians(claims).items()}


def _claims_and_medians(claims: dict[int, float]) -> dict[int, tuple[float, float | None]]:
    """Node -> (its claim, the median of the other nodes' claims; ``None`` when it is alone)."""
    out = {}
    for node, claim in claims.items():
        others = [value for other, value in claims.items() if other != node]
        out[node] = (claim, statistics.median(others) if others else None)
    return out


def check_secure_train_reply(content: RecordDict, plan: RunPlan) -> None:
    """Raise ``InvalidReply`` unless a SecAgg+ site's reply holds exactly its usable metrics,
    its privacy claims within the run's ``plan``."""
    if set(content) != {METRICS_KEY}:
        raise InvalidReply(f"expected only the record {METRICS_KEY!r}, got {sorted(content)}")
    check_privacy_claims(_check_metrics(content, TRAIN_METRICS), plan)


def check_evaluate_reply(content: RecordDict) -> None:
    """Raise ``InvalidReply`` unless the reply holds usable evaluation metrics."""
    if set(content) != {METRICS_KEY}:
        raise InvalidReply(f"expected only the record {METRICS_KEY!r}, got {sorted(content)}")
    _check_metrics(content, EVALUATE_METRICS)


def _check_metrics(content: RecordDict, contract: tuple[Metric, ...]) -> MetricRecord:
    """Every metric the contract requires is present, and every checked one that is present
    passes its check; the others are optional here (the site's egress guard lets out no name
    outside the contract)."""
    metrics = content.metric_records.get(METRICS_KEY)
    if metrics is None:
        raise InvalidReply(f"{METRICS_KEY!r} is not a MetricRecord")
    for metric in contract:
        if metric.check is None or (metric.optional and metric.name not in metrics):
            continue
        value = metrics.get(metric.name)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not metric.check(value)):
            raise InvalidReply(f"metric {metric.name!r} is missing or out of range: {value!r}")
    return metrics
