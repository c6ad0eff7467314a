"""From the trained models' scores to the audit's numbers, for one epsilon.

Two kinds of numbers, computed differently on purpose:

* ROC AUC and TPR at low FPR describe how well each attack separates members from non-members.
  They pool every model of the game, each attacked with all the others as its shadows
  (leave-one-out, as Carlini et al. 2022 evaluate LiRA), so they rest on models x examples
  guesses instead of one model's.
* The empirical epsilon lower bound is a statistical claim and uses only the target model
  (model 0): the one-run test of ``bounds`` on its audit examples, with the number of guesses
  chosen beforehand on the shadow models alone (each shadow attacked with the other shadows).
  The target's membership is used only once, to count correct guesses.
"""

import numpy as np

from fedintent.audit.attacks import (
    lira_leave_one_out,
    loss_attack,
    roc_metrics,
    roc_points,
)
from fedintent.audit.bounds import DEFAULT_CONFIDENCE, audit_guesses, choose_guess_counts

ATTACKS = ("lira", "loss")


def analyse(models: list[dict], kind: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
            with_curves: bool = True) -> dict:
    """Metrics and bound per (example kind, attack) for one epsilon's models (target first)."""
    if len(models) < 3:
        raise ValueError("the audit needs a target and at least 2 shadow models")
    phi = np.stack([m["phi"] for m in models])
    loss = np.stack([m["loss"] for m in models])
    member = np.stack([m["member"] for m in models]).astype(bool)
    delta = max(m["delta"] for m in models)
    out: dict = {}
    for name in sorted(set(kind.tolist())):
        cols = kind == name
        scores = {
            "lira": lira_leave_one_out(phi[:, cols], member[:, cols]),
            "loss": np.stack([loss_attack(row) for row in loss[:, cols]]),
        }
        # Calibration: the shadows alone (model 0 excluded), each attacked by the others.
        calibration = {
            "lira": lira_leave_one_out(phi[1:, cols], member[1:, cols]),
            "loss": scores["loss"][1:],
        }
        per_attack = {}
        for attack in ATTACKS:
            metrics = roc_metrics(scores[attack], member[:, cols])
            target_member = member[0, cols]
            counts = choose_guess_counts(
                list(zip(calibration[attack], member[1:, cols], strict=True)), delta, confidence)
            metrics["bound"] = audit_guesses(scores[attack][0], target_member, *counts, delta,
                                             confidence)
            if target_member.any() and not target_member.all():
                metrics["target_auc"] = roc_metrics(scores[attack][0], target_member)["auc"]
            if with_curves:
                metrics["roc"] = roc_points(scores[attack], member[:, cols])
            per_attack[attack] = metrics
        out[name] = per_attack
    return out
