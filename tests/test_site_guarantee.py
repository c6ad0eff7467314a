"""The site's DP guarantee, measured on its real reply (issue 21: noise is measured, not reported).

Every test drives the real ClientApp (``fl_client.client_app.app``) with hand-made messages and
recomputes, independently of ``fl_client``, what the reply must be:

* ``test_update_noise_is_the_planned_gaussian``: one full-batch DP step (batch size above the
  site's size, so Poisson sampling at rate 1 takes every row once). The test computes the
  noise-free step itself (per-example gradients clipped to clip-norm, summed, times
  lr / expected batch) and the noise multiplier itself (Opacus' ``get_noise_multiplier`` from
  the public run settings). What is left of the reply, divided by lr * sigma * clip / batch,
  must be N(0, 1) per coordinate: a site that adds less noise than it charges fails.
* ``test_one_outlier_moves_the_update_by_at_most_its_clipped_share``: two sites that differ
  in one planted outlier row and share a secret (hence the same DP noise) must differ by the
  outlier's clipped share, at most lr * clip / expected batch.
* ``test_redaction_is_applied_before_featurizing``: planted PII never reaches the featurizer
  or any file the site writes.

Statistics of the noise check (``check_standard_normal``): with d coordinates r_i that are
i.i.d. N(0, 1) under a correct site, sum r_i^2 is chi-square with d degrees of freedom and
sum r_i / sqrt(d) is N(0, 1). The test accepts the sum of squares between the chi-square
quantiles at 0.5e-6 and 1 - 0.5e-6 and |sum r_i| / sqrt(d) below the normal quantile
1 - 0.5e-6 (4.89). By the union bound a correct site fails a family's check with probability
at most 2e-6 (at most 6e-6 for the three families), and every run is seeded (a fixed site
secret fixes the site's noise) so the outcome does not change between runs. The window on the
measured std is sqrt(quantile / d): about -8.7%..+8.9% for ``minilm-head`` (1,540 coordinates),
+-1.9% for ``ngram`` (32,768) and +-0.3% for ``minilm-finetune`` (1.8 M; +-2.7% with the
dropout slack below). A site adding no noise measures a std near 0 and fails every family; one
adding 10% less noise than it charged fails ``ngram`` and ``minilm-finetune``.

Known slack, added to the window as an L2 bound on the residual (triangle inequality):
float32 rounding of the parameters (a few ulps per coordinate), and for families whose model has
dropout (``minilm-finetune``: MiniLM's layers train with dropout 0.1) the site's own dropout
masks, which are drawn from its private seed and cannot be recomputed here. The noise-free step
with and without dropout are each a sum of n clipped gradients, so they differ by at most
2 n clip in L2, 2 n / sigma after normalisation (33, against a residual norm of 1,333 here).
"""

from __future__ import annotations

import csv
import hashlib
import math
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from opacus.accountants.utils import get_noise_multiplier
from scipy import stats
from torch import nn

import fl_client.client_app as client_app
from fl_client.redaction import redact
from fl_client.site_secret import SECRET_FILE
from fl_protocol.wire import RUN_CONFIG_DEFAULTS as DEFAULTS
from models import get_model_family
from models.family import ModelFamily
from models.feature_scale import FEATURE_SCALE

pytestmark = pytest.mark.usefixtures("task_identity")

FAMILIES = ("minilm-head", "minilm-finetune", "ngram")
LABELS = ["card_lost", "refund_request", "change_address", "check_balance"]
TEMPLATES = {
    "card_lost": ["I lost my card", "my bank card is missing", "someone stole my debit card",
                  "I cannot find my credit card anywhere", "block my lost card please"],
    "refund_request": ["I want a refund for my order", "please refund the payment",
                       "give me my money back", "the refund has not arrived yet",
                       "cancel the purchase and refund me"],
    "change_address": ["I moved and need to change my address", "update my home address",
                       "my postal address is wrong", "change the delivery address on file",
                       "please record my new address"],
    "check_balance": ["what is my account balance", "how much money do I have",
                      "show me my balance", "check the balance of my savings",
                      "tell me what is left in my account"],
}
ROWS_PER_LABEL = 10
EPSILON = 3.0
DELTA = 1e-5
NUM_ROUNDS = 3
LEARNING_RATE = 16.0
CLIP_TEST_LEARNING_RATE = 64.0  # a large share next to float32 rounding of the parameters
BATCH_SIZE = 4096  # above every site's size: Poisson sample rate 1, one DP step per round
FALSE_FAILURE = 1e-6  # two-sided, per statistic
FLOAT_ULPS = 4 * 2.0**-24  # float32 rounding of the site's parameters, a few ulps

CANARY = "quokka-canary-7d41"
PII = {  # raw value -> (forms that must never be seen or stored, placeholder it becomes)
    "4111 1111 1111 1111": (("4111 1111 1111 1111", "4111111111111111"), "[CARD]"),
    "4532-0151-1283-0366": (("4532-0151-1283-0366", "4532015112830366"), "[CARD]"),
    "+1 (415) 555-2671": (("(415) 555-2671", "4155552671"), "[PHONE]"),
    "13812345678": (("13812345678",), "[PHONE]"),
    "jane.canary@example.com": (("jane.canary@example.com", "jane.canary"), "[EMAIL]"),
}


# ---------------------------------------------------------------------------------------------
# A site on disk and the messages a SuperNode would hand the ClientApp.


def site_rows() -> list[tuple[str, str]]:
    """40 short utterances, 10 per label; deterministic."""
    rows = []
    for label in LABELS:
        for i in range(ROWS_PER_LABEL):
            template = TEMPLATES[label][i % len(TEMPLATES[label])]
            rows.append((f"{template} (ref {i})" if i >= len(TEMPLATES[label]) else template,
                         label))
    return rows


def write_site(site_dir: Path, train: list[tuple[str, str]],
               test: list[tuple[str, str]] | None = None) -> Path:
    site_dir.mkdir(parents=True)
    for name, rows in (("train.csv", train), ("test.csv", test or train[:4])):
        with open(site_dir / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return site_dir


def seed_site_secret(state_dir: Path, seed: int) -> None:
    """A fixed site secret: the site's private noise and sampling seed, so the test is seeded."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / SECRET_FILE).write_text(hashlib.sha256(f"test-secret-{seed}".encode()).hexdigest())


def site_context(site_dir: Path, state_dir: Path, **run_config) -> Context:
    node = {"data-path": str(site_dir), "state-dir": str(state_dir), "max-epsilon": 100.0,
            "retention-days": math.inf}  # the synthetic conversations are dated early 2026
    config = DEFAULTS | {
        "target-epsilon": EPSILON, "delta": DELTA, "accountant": "prv",
        "batch-size": BATCH_SIZE, "local-epochs": 1, "learning-rate": LEARNING_RATE,
    } | run_config
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=config)


def message(model: nn.Module, kind: str = "train", run: str = "run-a") -> Message:
    config = ConfigRecord({"labels": LABELS, "server-round": 1, "num-rounds": NUM_ROUNDS,
                           "run-name": run})
    return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                       "config": config}), dst_node_id=7, message_type=kind)


def train(model: nn.Module, ctx: Context) -> tuple[dict[str, torch.Tensor], dict]:
    """(the site's returned parameters, its metrics); fails the test on an error reply."""
    reply = client_app.app(message(model), ctx)
    assert not reply.has_error(), f"site replied with an error: {reply.error.reason}"
    return reply.content["arrays"].to_torch_state_dict(), dict(reply.content["metrics"])


@contextmanager
def recording_featurize(family: ModelFamily) -> Iterator[list[str]]:
    """Record every text the family's ``featurize`` receives, from any caller in this process.

    ``get_model_family`` is cached, so the site gets this very object; the frozen dataclass is
    patched in place and restored afterwards.
    """
    seen: list[str] = []
    original = family.featurize

    def featurize(texts, cache_dir):
        seen.extend(texts)
        return original(texts, cache_dir)

    object.__setattr__(family, "featurize", featurize)
    try:
        yield seen
    finally:
        object.__setattr__(family, "featurize", original)


# ---------------------------------------------------------------------------------------------
# The independent reference: received parameters, per-example gradients, planned sigma.


def received_model(family: ModelFamily) -> nn.Module:
    """The run's public starting model; all-zero tensors (``ngram``'s weights, head biases) get
    seeded random values, logits of about 3 (weights read features FEATURE_SCALE long), so that
    per-example gradient norms differ and clipping matters."""
    model = family.initial_model(LABELS)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                size = 3.0 / FEATURE_SCALE if param.dim() > 1 else 3.0
                param.copy_(size * torch.randn(param.shape, generator=generator))
    return model


def learning_rates(model: nn.Module, lr: float) -> dict[str, float]:
    """Each parameter's SGD step size: a family may step its parts at different rates."""
    if not hasattr(model, "param_groups"):
        return {name: lr for name, _ in model.named_parameters()}
    by_id = {id(p): group["lr"] for group in model.param_groups(lr) for p in group["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def per_example_gradients(model: nn.Module, features: torch.Tensor,
                          labels: torch.Tensor) -> Iterator[torch.Tensor]:
    """Each row's cross-entropy gradient, flattened over all parameters, one at a time;
    without dropout (eval mode)."""
    model.eval()
    params = list(model.parameters())
    for i in range(len(labels)):
        loss = nn.functional.cross_entropy(model(features[i : i + 1]), labels[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        yield torch.cat([g.reshape(-1) for g in grads])


def clipped_sum(grads: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Sum over rows of each row's gradient scaled to L2 norm at most ``clip``."""
    return sum(g.double() * min(1.0, clip / float(g.norm())) for g in grads)


def flat(state: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([state[name].reshape(-1).double() for name in names])


@lru_cache(maxsize=8)
def planned_sigma(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier the PRV accountant allows for the run's whole plan, found
    with the same search tolerance as the site's planner (0.5% of epsilon)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PRV's log(0) at sample rate 1 is harmless
        return float(get_noise_multiplier(
            target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
            accountant="prv", epsilon_tolerance=0.005 * epsilon))


def has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def site_features(family: ModelFamily, rows: list[tuple[str, str]]
                  ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """What the site trains on, computed here: redacted texts, their features, label indices."""
    texts = [redact(text) for text, _ in rows]
    labels = torch.tensor([LABELS.index(label) for _, label in rows])
    return texts, family.featurize(texts, None), labels


# ---------------------------------------------------------------------------------------------
# The statistic.


@dataclass(frozen=True)
class NormalCheck:
    """Whether residuals r (d coordinates) are N(0, 1), allowing an L2 slack on r."""

    d: int
    std: float
    mean: float
    std_low: float
    std_high: float
    mean_limit: float

    @property
    def ok(self) -> bool:
        return self.std_low <= self.std <= self.std_high and abs(self.mean) <= self.mean_limit

    def __str__(self) -> str:
        return (f"measured noise std {self.std:.4f} (allowed {self.std_low:.4f}.."
                f"{self.std_high:.4f}) and mean {self.mean:.2e} (allowed "
                f"+-{self.mean_limit:.2e}) over {self.d} "
                "coordinates, in units of the planned noise lr * sigma * clip / batch")


def check_standard_normal(r: torch.Tensor, slack: float) -> NormalCheck:
    """Chi-square window on ||r||^2 and a normal window on sum(r), each at FALSE_FAILURE
    two-sided, widened by ``slack`` >= ||r - z|| where z is the N(0, I) part: then
    ||z|| - slack <= ||r|| <= ||z|| + slack and |sum r| <= |sum z| + sqrt(d) slack."""
    d = r.numel()
    low = math.sqrt(stats.chi2.ppf(FALSE_FAILURE / 2, d))
    high = math.sqrt(stats.chi2.isf(FALSE_FAILURE / 2, d))
    z_limit = stats.norm.isf(FALSE_FAILURE / 2)
    root = math.sqrt(d)
    return NormalCheck(
        d=d, std=float(r.norm()) / root, mean=float(r.sum()) / d,
        std_low=max(low - slack, 0.0) / root, std_high=(high + slack) / root,
        mean_limit=(z_limit + slack) / root,
    )


# ---------------------------------------------------------------------------------------------
# 1. Noise is measured.


@pytest.mark.parametrize("family_name", FAMILIES)
def test_update_noise_is_the_planned_gaussian(family_name: str, tmp_path: Path) -> None:
    """The reply minus the noise-free DP step is Gaussian with exactly the charged sigma."""
    family = get_model_family(family_name)
    rows = site_rows()
    texts, features, labels = site_features(family, rows)
    received = received_model(family)
    names = [name for name, _ in received.named_parameters()]
    # Clip at the median norm: half the rows are clipped, half are not, so both paths count.
    grads = list(per_example_gradients(received, features, labels))
    norms = torch.stack([g.norm() for g in grads])
    clip = float(norms.median())
    assert (norms > 1.05 * clip).sum() >= 5 and (norms < 0.95 * clip).sum() >= 5, norms

    n = len(rows)
    sample_rate = 1.0 / math.ceil(n / BATCH_SIZE)  # 1: every row in the one Poisson batch
    expected_batch = sample_rate * n
    sigma = planned_sigma(EPSILON, DELTA, sample_rate, NUM_ROUNDS)  # one step per round

    site_dir = write_site(tmp_path / "site", rows)
    state = tmp_path / "state"
    seed_site_secret(state, 1)
    ctx = site_context(site_dir, state, model=family_name, **{"clip-norm": clip})
    with recording_featurize(family) as seen:
        returned, metrics = train(received, ctx)
    assert seen == texts, "the site trained on other texts than the test's reference"
    assert metrics["num-examples"] == n
    assert metrics["noise-multiplier"] == pytest.approx(sigma, rel=1e-9), (
        "the reported noise multiplier is not the one planned from the run's settings")
    assert sorted(returned) == sorted(names), "the reply does not hold exactly the parameters"

    lrs = learning_rates(received, LEARNING_RATE)
    lr = torch.cat([torch.full((p.numel(),), lrs[name], dtype=torch.float64)
                    for name, p in received.named_parameters()])
    before = flat(received.state_dict(), names)
    after = flat(returned, names)
    noise_free_step = -lr * clipped_sum(grads, clip) / expected_batch
    scale = lr * sigma * clip / expected_batch  # std of the step's noise, per coordinate
    r = (after - before - noise_free_step) / scale

    slack = float((FLOAT_ULPS * (after.abs() + before.abs()) / scale).norm())
    slack += 1e-4 * n / sigma  # float32 gradients here and in Opacus (relative 1e-4 of n clip)
    if has_dropout(received):
        slack += 2 * n / sigma
    check = check_standard_normal(r, slack)
    assert check.ok, f"{family_name}: the site's update is not the planned Gaussian: {check}"


# ---------------------------------------------------------------------------------------------
# 2. Clipping is measured.


@pytest.mark.parametrize("family_name", ["minilm-head", "ngram"])
def test_one_outlier_moves_the_update_by_at_most_its_clipped_share(
    family_name: str, tmp_path: Path, twin_noise
) -> None:
    """Sites A (n rows) and B (the same rows plus one outlier) with the same secret draw the
    same noise z, so u_B - n/(n+1) u_A = -lr clip(g_outlier) / (n+1): the outlier's influence,
    at most lr * clip / expected batch of B. (``minilm-finetune`` is left out: its dropout
    masks differ between the two sites, so their noise-free steps cannot be lined up.)
    """
    family = get_model_family(family_name)
    rows = site_rows()
    received = received_model(family)
    names = [name for name, _ in received.named_parameters()]
    outlier_text = "I lost my card on the train and it is gone for good"
    _, outlier_features, _ = site_features(family, [(outlier_text, LABELS[0])])
    with torch.no_grad():
        probs = torch.softmax(received.eval()(outlier_features), dim=-1)[0]
    outlier_label = int(probs.argmin())  # the label the model finds least likely: large gradient
    rows_b = [*rows, (outlier_text, LABELS[outlier_label])]
    _, features_b, labels_b = site_features(family, rows_b)
    g_out = next(per_example_gradients(received, features_b[-1:], labels_b[-1:])).double()
    clip = 0.01
    assert float(g_out.norm()) >= 20 * clip, "the planted row's gradient must dwarf the clip"

    state_a, state_b = tmp_path / "state-a", tmp_path / "state-b"
    seed_site_secret(state_a, 2)
    state_b.mkdir()
    shutil.copy(state_a / SECRET_FILE, state_b / SECRET_FILE)  # same secret: same noise
    lr = CLIP_TEST_LEARNING_RATE
    run = {"model": family_name, "clip-norm": clip, "learning-rate": lr}
    new_a, metrics_a = train(received, site_context(
        write_site(tmp_path / "site-a", rows), state_a, **run))
    new_b, metrics_b = train(received, site_context(
        write_site(tmp_path / "site-b", rows_b), state_b, **run))
    assert metrics_a["noise-multiplier"] == metrics_b["noise-multiplier"]

    n = len(rows)
    before = flat(received.state_dict(), names)
    after_a, after_b = flat(new_a, names), flat(new_b, names)
    share = (after_b - before) - n / (n + 1) * (after_a - before)
    bound = lr * clip / (n + 1)
    expected = -lr * clip * g_out / g_out.norm() / (n + 1)
    float_tol = FLOAT_ULPS * float((after_a.abs() + after_b.abs() + 2 * before.abs()).norm())
    influence = float(share.norm())
    assert influence <= bound * (1 + 1e-3) + float_tol, (
        f"{family_name}: one row moved the update by {influence:.3g} in L2, more than its "
        f"clipped share lr * clip / batch = {bound:.3g} (unclipped it would be "
        f"{lr * float(g_out.norm()) / (n + 1):.3g})")
    assert float((share - expected).norm()) <= 1e-3 * bound + float_tol, (
        f"{family_name}: the outlier's share is not its gradient clipped to clip-norm")


# ---------------------------------------------------------------------------------------------
# 3. Redaction is applied where text is featurized.


def pii_rows() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train rows, test rows) with every PII value and the canary planted."""
    card, card2, phone, mobile, email = PII
    planted_train = [
        (f"I lost my card {card}, {CANARY}", "card_lost"),
        (f"please call me on {phone} about my refund", "refund_request"),
        (f"send the address change confirmation to {email}", "change_address"),
        (f"balance for the account linked to {mobile} please {CANARY}", "check_balance"),
    ]
    planted_test = [
        (f"my card {card2} was stolen, {CANARY}", "card_lost"),
        (f"refund to {email}, phone {phone}", "refund_request"),
    ]
    return [*planted_train, *site_rows()], [*planted_test, *site_rows()[::10]]


def raw_forms() -> list[str]:
    return [form for forms, _ in PII.values() for form in forms]


@pytest.mark.parametrize("family_name", FAMILIES)
def test_redaction_is_applied_before_featurizing(family_name: str, tmp_path: Path) -> None:
    """What the site featurizes holds placeholders, never the raw PII, and nothing the site
    writes to its state folder holds raw PII or even the canary (no text is stored)."""
    family = get_model_family(family_name)
    train_rows, test_rows = pii_rows()
    for value, (_, placeholder) in PII.items():  # the redactor does recognise each planted value
        assert redact(f"x {value} y") == f"x {placeholder} y"

    site_dir = write_site(tmp_path / "site", train_rows, test_rows)
    state = tmp_path / "state"
    seed_site_secret(state, 3)
    ctx = site_context(site_dir, state, model=family_name)
    received = received_model(family)
    with recording_featurize(family) as seen:
        train(received, ctx)
        assert_no_raw_text_stored(state)
        evaluated = client_app.app(message(received, kind="evaluate"), ctx)
    assert not evaluated.has_error(), evaluated.error.reason
    assert_no_raw_text_stored(state)

    assert any(CANARY in text for text in seen), "the planted rows never reached featurize"
    leaked = sorted({form for form in raw_forms() for text in seen if form in text})
    assert not leaked, f"{family_name}: raw PII reached the featurizer: {leaked}"
    featurized = "\n".join(seen)
    for _, placeholder in PII.values():
        assert placeholder in featurized, f"no {placeholder} placeholder reached the featurizer"


def assert_no_raw_text_stored(state: Path) -> None:
    """No file under the site's state folder holds a raw PII value or the canary (which is not
    PII, so it survives redaction: finding it means text itself was stored)."""
    files = [path for path in state.rglob("*") if path.is_file()]
    assert len(files) > 1, "the site wrote nothing to its state folder"
    for path in files:
        data = path.read_bytes()
        for secret in [*raw_forms(), CANARY]:
            for encoding in ("utf-8", "utf-16-le"):
                assert secret.encode(encoding) not in data, (
                    f"{path.relative_to(state)} holds {secret!r} ({encoding})")
