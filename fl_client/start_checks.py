"""What a deployed site checks before its SuperNode starts: its node config, whole.

The ClientApp reads its node config with every message and declines a round when it is invalid
("site configuration invalid"); a site started on such a config would report healthy and then
decline every round (found in review). So ``fedintent-supernode`` runs here every check the
ClientApp would make of each setting (``check_node_config``; the site container's entrypoint
runs it first, a setting at a time, to name the variable at fault) and of its state folder
(``check_state_folder``), and prints the policy the site will hold every run to, defaults named
as such (``policy_lines``), so that a setting that did not take is seen at start.
"""

import math
import os
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context, RecordDict

from fl_client.data_files import check_site_folder, files_read
from fl_client.rows import SiteDataError
from fl_client.site_folders import default_state_folders
from fl_client.site_policy import (
    DEFAULT_MAX_DELTA,
    DEFAULT_MAX_NOISE_RATIO,
    DEFAULT_MIN_TOLERATED_SITES,
    NODE_CONFIG_KEYS,
    SiteConfigError,
    SitePolicy,
    evaluation_epsilon,
    evaluation_policy,
    local_model_folders,
    retention_days,
    site_languages,
    site_policy,
)
from fl_client.site_secret import SecretError, site_secret
from fl_protocol.label_file import LabelFileError, read_labels
from fl_protocol.wire import (
    DEFAULT_EVALUATION_EPSILON,
    DEFAULT_MAX_EPSILON,
    DEFAULT_MAX_EPSILON_ALONE,
    DEFAULT_RETENTION_DAYS,
    EPSILON_RANGES,
    PRIVACY_MODELS,
)


def check_node_config(node_config: Mapping[str, object]) -> None:
    """Raise ``SiteConfigError`` naming the setting at fault unless ``node_config`` is one the
    ClientApp would answer rounds with: only known settings, each valid, and a data folder that
    holds data files (found in review: an empty folder, or the folder above the site's, started
    and declined every round "data unusable")."""
    if "data-path" not in node_config:
        raise SiteConfigError("node config: data-path (the site's data folder) is not set")
    site_dir = Path(str(node_config["data-path"]))
    try:
        check_site_folder(site_dir)
        if not files_read(site_dir).in_order():
            raise SiteDataError(f"site data folder {site_dir} holds no data file (train.jsonl, "
                                "test.jsonl, *.jsonl or *.csv, docs/DATA_FORMAT.md); is the "
                                "data volume mounted?")
    except (OSError, SiteDataError) as err:
        raise SiteConfigError(f"data-path: {err}") from err
    context = _deployed(node_config)
    policy = site_policy(context)
    retention_days(context)
    evaluation_policy(context)
    evaluation_epsilon(context, policy.max_epsilon)
    site_languages(context, site_dir)
    check_local_models(node_config)
    if "labels-file" in node_config:
        try:
            read_labels(Path(str(node_config["labels-file"])))
        except LabelFileError as err:
            raise SiteConfigError(f"labels-file: {err}") from err


def check_local_models(node_config: Mapping[str, object]) -> None:
    """Raise ``SiteConfigError`` naming ``local-models`` and the path unless each folder it
    lists is a folder: a run naming one would be answered with an error at every round (found
    in review: a mistyped or unmounted folder started without a word). Nothing in the folder is
    read or quoted: the path given may be any file of the machine's."""
    for folder in local_model_folders(node_config):
        try:
            found, is_folder = folder.exists(), folder.is_dir()
        except OSError as err:  # a folder above it this account may not search (found in
            # review: a traceback that named no setting)
            raise SiteConfigError(f"local-models: {folder} cannot be looked at by this account "
                                  f"(uid {os.geteuid()}): {err.strerror}") from None
        if not found:
            raise SiteConfigError(f"local-models: {folder} not found (is its volume mounted?)")
        if not is_folder:
            raise SiteConfigError(f"local-models: {folder} is not a folder: list the "
                                  "checkpoint's folder")


def _deployed(node_config: Mapping[str, object]) -> Context:
    """The context a deployed site's ClientApp reads ``node_config`` through."""
    return Context(run_id=0, node_id=0, node_config=dict(node_config), state=RecordDict(),
                   run_config={})


def check_state_folder(node_config: Mapping[str, object]) -> None:
    """Raise ``SiteConfigError`` unless the site's state folder (``state-dir``, or its default
    inside the data folder) holds its site secret: the ClientApp would decline every round
    (found in review), and never makes one itself, as a lost or unmounted folder made anew
    would start every unit's spent budget again from zero."""
    site_dir = Path(str(node_config["data-path"]))
    state_dir = Path(str(node_config.get("state-dir", default_state_folders(site_dir)[0])))
    try:
        site_secret(state_dir)
    except SecretError as err:
        raise SiteConfigError(f"state-dir: {err}") from err


def policy_lines(node_config: Mapping[str, object]) -> list[str]:
    """Each setting as the site will hold runs to it, one line each, a default named so."""
    defaults = {
        "state-dir": default_state_folders(Path(str(node_config.get("data-path", "."))))[0],
        "max-epsilon": DEFAULT_MAX_EPSILON, "max-delta": DEFAULT_MAX_DELTA,
        "privacy-unit": "any: the first run's, then pinned by the ledger",
        "privacy-models": ",".join(PRIVACY_MODELS),
        "min-tolerated-sites": DEFAULT_MIN_TOLERATED_SITES,
        "max-epsilon-alone": DEFAULT_MAX_EPSILON_ALONE,
        "max-noise-ratio": DEFAULT_MAX_NOISE_RATIO, "languages": "none declared",
        "retention-days": DEFAULT_RETENTION_DAYS, "evaluation": "dp",
        "evaluation-epsilon": DEFAULT_EVALUATION_EPSILON,
        "labels-file": "none: any run's label set", "local-models": "none",
    }
    lines = [f"{key}: {node_config[key]}" if key in node_config
             else f"{key}: {defaults[key]} (default)" for key in NODE_CONFIG_KEYS]
    context = _deployed(node_config)
    policy = site_policy(context)
    cap = min(policy.max_epsilon, policy.alone_bound)
    if evaluation_epsilon(context, cap) < evaluation_epsilon(context, math.inf):
        at = NODE_CONFIG_KEYS.index("evaluation-epsilon")
        lines[at] += f", held to {cap:g} by max-epsilon and max-epsilon-alone"
    return lines


def policy_warnings(node_config: Mapping[str, object]) -> list[str]:
    """What the printed settings do not say on their face, one line each: a setting that has no
    effect under another (evaluation-epsilon but no DP evaluation; max-epsilon-alone or
    min-tolerated-sites but no distributed DP), and DP evaluations the site will decline or
    that spend each test unit's whole budget. Said, not refused: each is a policy a site may
    hold, but one its operator may not have meant (found in review: accepted without a word)."""
    context = _deployed(node_config)
    policy = site_policy(context)
    evaluation = evaluation_policy(context)
    warnings = [f"{key} has no effect: privacy-models is {','.join(policy.privacy_models)}, "
                "and it applies to distributed DP only"
                for key in ("min-tolerated-sites", "max-epsilon-alone")
                if key in node_config and "distributed" not in policy.privacy_models]
    if evaluation != "dp":
        return warnings + ([f"evaluation-epsilon has no effect: evaluation is {evaluation}, "
                            "and only DP evaluations (evaluation dp) spend it"]
                           if "evaluation-epsilon" in node_config else [])
    return warnings + _evaluation_warnings(context, policy)


def _evaluation_warnings(context: Context, policy: SitePolicy) -> list[str]:
    """Under DP evaluation: which runs' evaluations the site will decline, as the epsilon they
    may spend is below what their accountant plans (``evaluation_request``), or that one run's
    evaluations spend each test unit's whole lifetime budget (held to max-epsilon)."""
    asked = evaluation_epsilon(context, math.inf)
    held = evaluation_epsilon(context, min(policy.max_epsilon, policy.alone_bound))
    spend = f"{held:g}, its evaluation-epsilon" + (
        f" {asked:g} held to max-epsilon and max-epsilon-alone" if held < asked else "")
    declined = {name: low for name, (low, high) in EPSILON_RANGES.items()
                if not low <= held <= high}
    if declined:
        every = len(declined) == len(EPSILON_RANGES)
        named = f"accountant {', '.join(declined)}"
        which = "every DP evaluation" if every else f"the DP evaluations of runs under {named}"
        return [f"{which} will be declined: the epsilon they may spend, {spend}, is below "
                f"{min(declined.values()):g}, the least {'any accountant' if every else named} "
                "can plan"]
    if held < asked and held == policy.max_epsilon:
        return [f"DP evaluations will be planned at max-epsilon {held:g}, below "
                f"evaluation-epsilon {asked:g}: one run's evaluations spend each test unit's "
                "whole lifetime budget, and later runs get noise alone from those units"]
    return []
