"""Membership-inference attacks on the audit's examples, and how well they do.

Every attack turns a trained model into one score per audit example, higher meaning "more
likely a member":

* loss threshold (Yeom et al. 2018): the model's log-probability of the example's label (minus
  its loss), one global threshold, no shadow models.
* LiRA (Carlini et al. 2022, online variant with a global variance): for each example, the
  attacker fits one Gaussian to the example's logit-scaled confidence in shadow models that
  trained on it and one to shadow models that did not, and scores the target model by the
  likelihood ratio. This calibrates per example: a hard example's low confidence no longer
  looks like non-membership.

The confidence is phi = log(p / (1 - p)) for the example's label, computed from the logits
without forming p (stable for p near 1), which makes it close to Gaussian over training runs.
"""

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPRS = (0.001, 0.01)


@torch.no_grad()
def confidence_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(phi, loss) per row: phi = logit of the label minus the logsumexp of the other logits."""
    logits = logits.double()
    picked = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf")).logsumexp(dim=1)
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return (picked - others).numpy(), loss.numpy()


def loss_attack(loss: np.ndarray) -> np.ndarray:
    """Scores of the loss-threshold attack: lower loss, more likely a member."""
    return -np.asarray(loss, dtype=float)


def lira_leave_one_out(phi: np.ndarray, member: np.ndarray) -> np.ndarray:
    """LiRA scores of every model, each attacked with all the *other* models as its shadows.

    phi, member: arrays [models, examples]. Row j of the result is what an attacker holding
    models != j as shadows (and knowing their membership) computes for model j. Returns
    log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out) per (model, example).
    """
    phi = np.asarray(phi, dtype=float)
    member = np.asarray(member, dtype=bool)
    models = phi.shape[0]
    if models < 2:
        raise ValueError("LiRA needs at least one shadow model besides the target")
    scores = np.empty_like(phi)
    for j in range(models):
        shadows = np.arange(models) != j
        scores[j] = lira_scores(phi[j], phi[shadows], member[shadows])
    return scores


def lira_scores(target_phi: np.ndarray, shadow_phi: np.ndarray,
                shadow_member: np.ndarray) -> np.ndarray:
    """LiRA scores of one target model given shadow models' phi and membership."""
    shadow_phi = np.asarray(shadow_phi, dtype=float)
    shadow_member = np.asarray(shadow_member, dtype=bool)
    mu_in, sd_in = _gaussian(shadow_phi, shadow_member)
    mu_out, sd_out = _gaussian(shadow_phi, ~shadow_member)
    # An example with no "in" (or "out") shadow: shift the other mean by the average gap.
    gap = np.nanmean(mu_in - mu_out) if np.any(~np.isnan(mu_in - mu_out)) else 0.0
    mu_in = np.where(np.isnan(mu_in), mu_out + gap, mu_in)
    mu_out = np.where(np.isnan(mu_out), mu_in - gap, mu_out)
    return _log_normal(target_phi, mu_in, sd_in) - _log_normal(target_phi, mu_out, sd_out)


def _gaussian(phi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-example mean over the masked shadows and one pooled standard deviation: with a few
    dozen shadows, per-example variances are too noisy (Carlini et al., fixed variance)."""
    counts = mask.sum(axis=0)
    sums = np.where(mask, phi, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan)
    residuals = np.where(mask, phi - np.nan_to_num(mean), 0.0)
    dof = max(int(counts.sum() - np.count_nonzero(counts)), 1)
    sd = float(np.sqrt((residuals**2).sum() / dof))
    return mean, max(sd, 1e-6)


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: float) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd)


def roc_metrics(scores: np.ndarray, member: np.ndarray) -> dict:
    """ROC AUC, the membership advantage (the largest TPR - FPR of any threshold, Yeom et al.
    2018) and the TPR at 0.1% and 1% FPR (the largest TPR whose FPR is at most that).

    Low-FPR TPR is what matters for privacy: an attack that confidently identifies a few
    members is a real leak even when its AUC is near 0.5 (Carlini et al. 2022).
    """
    scores = np.asarray(scores, dtype=float).ravel()
    member = np.asarray(member, dtype=bool).ravel()
    if member.all() or not member.any():
        raise ValueError("ROC metrics need both members and non-members")
    fpr, tpr, _ = roc_curve(member, scores)
    result = {"auc": float(roc_auc_score(member, scores)), "advantage": float((tpr - fpr).max()),
              "members": int(member.sum()), "non_members": int((~member).sum())}
    for low in LOW_FPRS:
        result[f"tpr_at_{low:g}_fpr"] = float(tpr[fpr <= low].max())
    return result


def roc_points(scores: np.ndarray, member: np.ndarray, points: int = 400) -> dict:
    """A thinned ROC curve (FPR, TPR) for plotting, log-spaced in FPR."""
    fpr, tpr, _ = roc_curve(np.asarray(member, bool).ravel(), np.asarray(scores, float).ravel())
    grid = np.unique(np.concatenate([[0.0], np.logspace(-5, 0, points)]))
    return {"fpr": grid.tolist(), "tpr": np.interp(grid, fpr, tpr).tolist()}
