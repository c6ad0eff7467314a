"""``fedintent audit-privacy``: data, the game per epsilon, the analysis and the outputs.

Per epsilon, the training settings are ``fedintent train``'s tuned settings for that epsilon
(``fl_server.run_config.tuned_settings``), the learning rate scaled to the sites' size as
``fedintent train`` scales it, so the audited model is trained the way users' models are, and
the sites' lifetime budget is one that does not set their noise (``fedintent bench``'s
``cell_lifetime_budget``), so that the epsilon audited is the one asked for. The folder is
resumable: trained models are kept in ``OUT/models``.
"""

import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from fedintent.audit.analysis import analyse
from fedintent.audit.bounds import DEFAULT_CONFIDENCE
from fedintent.audit.game import Game, make_audit_set, run_models
from fedintent.audit.report import noise_text, write_outputs
from fedintent.bench.cells import cell_lifetime_budget
from fedintent.launch.simulated_sites import mean_training_rows
from fedintent.partition import partition_csv_dataset, read_labeled_csv
from fedintent.report_files import FolderClaimed, claim_folder, epsilon_label
from fl_client.data_files import list_site_dirs
from fl_client.site_data import load_site
from fl_protocol.durable_files import remove_entry
from fl_protocol.label_file import read_labels
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.run_config import site_size_rate, tuned_settings
from models import get_model_family

SETTING_KEYS = ("num-rounds", "local-epochs", "batch-size", "learning-rate", "clip-norm",
                "site-max-epsilon")


class AuditError(ValueError):
    """Bad input for the audit (data, options, or an output folder of another audit)."""


class BoundViolation(RuntimeError):
    """An empirical lower bound came out above the accountant's epsilon: a privacy bug (or the
    1 - confidence chance of a false alarm); the results are written before this is raised."""


@dataclass(frozen=True)
class AuditSpec:
    data: str
    sites: int | None
    alpha: float
    epsilons: list[float]
    shadows: int
    canaries: int
    natural: int
    seed: int
    partition_seed: int = 0
    rounds: int | None = None
    confidence: float = DEFAULT_CONFIDENCE
    model: str = str(RUN_CONFIG_DEFAULTS["model"])


def settings_for(epsilon: float, rounds: int | None, site_rows: float | None = None) -> dict:
    """The audited sites' settings at ``epsilon``: the tuned ones, the learning rate scaled to
    sites of ``site_rows`` mean training rows as ``fedintent train`` scales it (``None``: not
    scaled), and a lifetime budget that leaves the noise to the run's plan (recorded in
    audit.json, so that models trained under other settings are never mixed in)."""
    settings = RUN_CONFIG_DEFAULTS | tuned_settings(epsilon) | cell_lifetime_budget(epsilon)
    if rounds is not None:
        settings["num-rounds"] = rounds
    if site_rows is not None:
        settings["learning-rate"] = site_size_rate(settings["learning-rate"], site_rows, epsilon)
    return {key: settings[key] for key in SETTING_KEYS}


def audited_site_rows(spec: AuditSpec) -> float | None:
    """The audited sites' mean training rows, known before anything is partitioned or trained
    (found in review: small sites were audited at the full tuned rate, which ``fedintent
    train`` scales down for them); ``None`` where the data does not read (reported later)."""
    source = Path(spec.data)
    if (source / "labels.txt").is_file():
        return mean_training_rows(source, spec.sites)
    try:  # the partition gives every row of train.csv to one site
        return len(read_labeled_csv(source / "train.csv")) / (spec.sites or 1)
    except (OSError, ValueError):
        return None


def run_audit(spec: AuditSpec, out_dir: Path, workers: int = 1, progress=print) -> list[dict]:
    """Run (or finish) the audit in ``out_dir``; return one result per epsilon."""
    out_dir = Path(out_dir)
    site_rows = audited_site_rows(spec)
    record = asdict(spec) | {"settings": {epsilon_label(e): settings_for(e, spec.rounds, site_rows)
                                          for e in spec.epsilons}}
    created = [out_dir / name for name in ("audit.json", "data")
               if not ((out_dir / name).exists() or (out_dir / name).is_symlink())]
    _claim_folder(out_dir, record)
    try:
        game = prepare_game(spec, out_dir, progress)
    except BaseException:  # found in review: its audit.json refused the corrected data's rerun
        for path in created:  # the claim, and the partition made under it
            remove_entry(path, ignore_errors=True)
        raise
    results = []
    for epsilon in spec.epsilons:
        settings = settings_for(epsilon, spec.rounds, site_rows)
        progress(f"requested epsilon {epsilon_label(epsilon)}: training 1 target + {spec.shadows} "
                 f"shadow models "
                 f"({settings['num-rounds']} rounds, {settings['local-epochs']} local epochs, "
                 f"batch {settings['batch-size']}, lr {settings['learning-rate']:g}, "
                 + (f"site lifetime budget {settings['site-max-epsilon']:g})"
                    if math.isfinite(epsilon) else "no DP)"))
        started = time.monotonic()
        models = run_models(game, epsilon, settings, spec.shadows + 1,
                            out_dir / "models" / f"eps-{epsilon_label(epsilon)}", workers, progress)
        attacks = analyse(models, game.audit.kind, spec.confidence)
        target = models[0]
        progress(f"  audited: accountant epsilon {epsilon_label(target['epsilon'])} (delta "
                 f"{target['delta']:g}), noise multiplier "
                 f"{noise_text(*(target['noise_multiplier'] or (None, None)))}")
        results.append({
            "epsilon": epsilon, "accountant_epsilon": target["epsilon"],
            "delta": target["delta"], "noise_multiplier": target["noise_multiplier"],
            "settings": settings, "models": len(models),
            "target_accuracy": target["accuracy"],
            "seconds": time.monotonic() - started, "attacks": attacks,
        })
        for kind, per_attack in attacks.items():
            for attack, metrics in per_attack.items():
                progress(f"  {kind:<7} {attack:<4} AUC {metrics['auc']:.3f}  TPR@0.1%FPR "
                         f"{metrics['tpr_at_0.001_fpr']:.3f}  TPR@1%FPR "
                         f"{metrics['tpr_at_0.01_fpr']:.3f}  epsilon >= "
                         f"{metrics['bound']['epsilon_lb']:.2f} "
                         f"({spec.confidence:.0%}; accountant {epsilon_label(target['epsilon'])})")
        # the sites counted where --sites left it to the folder (found in review: "None sites")
        write_outputs(out_dir, record | {"sites": record["sites"] or len(game.sites)}, results)
    violations = [
        f"epsilon {epsilon_label(r['epsilon'])}: {kind} {attack} lower bound "
        f"{m['bound']['epsilon_lb']:.3f} > accountant {r['accountant_epsilon']:.3f}"
        for r in results for kind, attacks in r["attacks"].items()
        for attack, m in attacks.items() if m["bound"]["epsilon_lb"] > r["accountant_epsilon"]
    ]
    if violations:
        raise BoundViolation("; ".join(violations))
    return results


def prepare_game(spec: AuditSpec, out_dir: Path, progress=print) -> Game:
    """Sites' training features, the audit examples drawn from their test rows, the prior."""
    source = Path(spec.data)
    if (source / "labels.txt").is_file():
        data_dir = source
    elif (source / "train.csv").is_file() and (source / "test.csv").is_file():
        data_dir = out_dir / "data"
        if not (data_dir / "manifest.json").exists():
            progress(f"partitioning {source} into {spec.sites} sites (alpha {spec.alpha:g})")
            try:
                partition_csv_dataset(source, data_dir, spec.sites, spec.partition_seed,
                                      alpha=spec.alpha)
            except ValueError as err:
                raise AuditError(f"cannot partition {source}: {err}") from err
    else:
        raise AuditError(f"{source}: expected train.csv and test.csv, or site folders with "
                         f"labels.txt")
    labels = read_labels(data_dir / "labels.txt")
    site_dirs = list_site_dirs(data_dir)
    if spec.sites is not None:
        if spec.sites > len(site_dirs):
            raise AuditError(f"{data_dir} has {len(site_dirs)} sites, --sites asks for "
                             f"{spec.sites}")
        site_dirs = site_dirs[: spec.sites]
    family = get_model_family(spec.model)
    cache = out_dir / "cache" / "features"
    progress(f"embedding {len(site_dirs)} sites' utterances (cached in {cache})")
    train, test = [], []
    for site_dir in site_dirs:
        site = load_site(site_dir, labels)
        if len(site.train) == 0:
            raise AuditError(f"{site_dir}: no training rows")
        for split, into in ((site.train, train), (site.test, test)):
            into.append((family.featurize(split.texts, cache),
                         torch.tensor(split.labels, dtype=torch.long)))
    try:
        audit, holdout = make_audit_set(test, len(labels), spec.canaries, spec.natural,
                                        spec.seed)
    except ValueError as err:
        raise AuditError(str(err)) from err
    initial = family.initial_model(labels).state_dict()
    return Game(train, audit, holdout, {k: v.clone() for k, v in initial.items()},
                partial(family.build_model, len(labels)), spec.seed, family.name)


def _claim_folder(out_dir: Path, record: dict) -> None:
    """An audit folder holds one audit: refuse to mix models of different games."""

    def merge(existing: dict, wanted: dict) -> dict | None:
        fixed = [k for k in wanted if k not in ("epsilons", "settings")]
        same = all(existing.get(k) == wanted[k] for k in fixed) and all(
            existing.get("settings", {}).get(e, s) == s for e, s in wanted["settings"].items())
        return existing | {"epsilons": wanted["epsilons"],
                           "settings": existing.get("settings", {}) | wanted["settings"]} \
            if same else None

    try:
        claim_folder(out_dir / "audit.json", record, merge,
                     f"{out_dir} holds an audit with other data or options "
                     f"({out_dir / 'audit.json'}); use a new --out, or delete it")
    except FolderClaimed as err:
        raise AuditError(str(err)) from err
