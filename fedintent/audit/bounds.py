"""An empirical lower bound on epsilon from one training run (Steinke, Nasr & Jagielski 2023).

The audit game: m audit examples (canaries) are each included in the training data
independently with probability 1/2. The attacker looks at the trained model and guesses "in"
for some canaries, "out" for some, and abstains on the rest: r guesses, v of them correct.
If training is (epsilon, delta)-DP with respect to each canary, then (their Theorem 5.2)

    P[v or more correct] <= P[Binomial(r, q) >= v] + 2 m delta alpha,   q = e^eps / (1 + e^eps),

with alpha = max over i = 1..v of P[v > Binomial(r, q) >= v - i] / i. This holds for *one*
run with all m canaries in it: the canaries need not be independent of each other in the
model, which is what lets a single federated training run give a valid bound.

The p-value of "training is (epsilon, delta)-DP" is the right-hand side. The lower bound at
confidence c is the largest epsilon that this test rejects at level 1 - c: with probability at
least c over the canary draw and training, the true epsilon is at least the bound. It can
never be larger than the accountant's epsilon unless the accountant (or the training code) is
wrong, or the 1 - c chance of a false rejection happened.
"""

import math

import numpy as np
from scipy.stats import binom

DEFAULT_CONFIDENCE = 0.95
EPSILON_SEARCH_STEPS = 50


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of ``v`` or more correct guesses out of ``r`` (of ``m`` canaries) under the
    null hypothesis that training is (epsilon, delta)-DP with respect to each canary."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")
    if not epsilon >= 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v > 0 and delta > 0:
        steps = np.arange(1, v + 1)
        below = np.cumsum(binom.pmf(v - steps, r, q))  # P[v > Binomial(r, q) >= v - i]
        alpha = float(np.max(below / steps))
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float,
                        confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The largest epsilon rejected by ``p_value`` at level ``1 - confidence`` (0 if none is).

    The p-value grows with epsilon, so the rejected epsilons form an interval [0, bound):
    a bisection finds its end. The result is rounded down, never up.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    level = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < level:
        low, high = high, 2 * high
        if high > 1e3:  # only reachable with delta = 0 and all guesses right: bounded anyway
            return low
    for _ in range(EPSILON_SEARCH_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if p_value(m, r, v, middle, delta) < level else (low, middle)
    return low


def guesses(scores: np.ndarray, k_in: int, k_out: int) -> np.ndarray:
    """+1 ("in") for the ``k_in`` highest scores, -1 ("out") for the ``k_out`` lowest, 0 for
    abstain. Ties are broken by position, which does not depend on membership."""
    if k_in < 0 or k_out < 0 or k_in + k_out > len(scores):
        raise ValueError(f"cannot make {k_in} + {k_out} guesses about {len(scores)} canaries")
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    guess = np.zeros(len(scores), dtype=int)
    guess[order[:k_in]] = 1
    if k_out:
        guess[order[-k_out:]] = -1
    return guess


def audit_guesses(scores: np.ndarray, member: np.ndarray, k_in: int, k_out: int, delta: float,
                  confidence: float = DEFAULT_CONFIDENCE) -> dict:
    """Guess with fixed counts and return r, v and the lower bound at ``confidence``."""
    guess = guesses(scores, k_in, k_out)
    truth = np.where(np.asarray(member, dtype=bool), 1, -1)
    r = int(np.count_nonzero(guess))
    v = int(np.count_nonzero(guess == truth))
    m = len(scores)
    return {"m": m, "k_in": k_in, "k_out": k_out, "r": r, "v": v, "delta": delta,
            "confidence": confidence, "epsilon_lb": epsilon_lower_bound(m, r, v, delta,
                                                                        confidence)}


def guess_grid(m: int) -> list[tuple[int, int]]:
    """Candidate (k_in, k_out) guess counts: "in"-only guesses and symmetric ones, from 1% of
    the canaries to all of them."""
    grid = []
    for share in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        k = max(1, round(share * m))
        grid.append((k, 0))
        if 2 * k <= m:
            grid.append((k, k))
    return sorted(set(grid))


def choose_guess_counts(calibration: list[tuple[np.ndarray, np.ndarray]], delta: float,
                        confidence: float = DEFAULT_CONFIDENCE) -> tuple[int, int]:
    """The (k_in, k_out) with the highest mean bound over calibration runs (scores, membership).

    Why: picking the counts that maximise the bound on the audited run itself would test many
    hypotheses on the same data and overstate the bound. The calibration runs are the
    attacker's own shadow models (each in turn playing the target), whose membership the
    attacker knows and which are independent of the audited run's canary draw, so the choice
    costs the audited run no confidence.
    """
    if not calibration:
        raise ValueError("choosing guess counts needs at least one calibration run")
    m = len(calibration[0][0])
    best, best_mean = (max(1, round(0.1 * m)), 0), -1.0
    for k_in, k_out in guess_grid(m):
        bounds = [audit_guesses(scores, member, k_in, k_out, delta, confidence)["epsilon_lb"]
                  for scores, member in calibration]
        mean = float(np.mean(bounds))
        if mean > best_mean + 1e-12:
            best, best_mean = (k_in, k_out), mean
    return best
