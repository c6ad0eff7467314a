"""``certs``, ``release`` and ``deploy-run``: credentials, signed releases and runs on a real
TLS SuperLink with authenticated sites (docs/DEPLOYMENT.md)."""

import argparse
import hashlib
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fedintent.commands import CliError, require_operator_extra
from fedintent.commands.options import (
    DEFAULT_OUT_ROOT,
    TUNED_HELP,
    as_typed,
    created_folder,
    finite_number_argument,
    new_out_dir,
    number_argument,
    number_read_otherwise,
    path_argument,
    resumable_run,
    writable_folder,
)
from fedintent.commands.progress import print_round, print_summary, rounds_in_progress
from fl_protocol.label_file import read_labels
from fl_protocol.settings import host_and_port
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.run_config import (
    TUNING_SITE_ROWS,
    site_size_message,
    site_size_rate,
    tuned_settings,
)
from fl_server.run_record import (
    DEPLOYMENT_FILE,
    INTERRUPTED,
    METRICS_FILE,
    RunFolderRefused,
    record_interrupted,
    run_folder_busy,
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser(
        "certs",
        help="make development TLS credentials and site keys for a deployment",
        description="Write a development CA, a SuperLink TLS certificate signed by it, the "
        "operator's Ed25519 release-signing key with the trusted-entities.yaml every site pins, "
        "and an EC key pair (OpenSSH format) per site for SuperNode authentication. Private "
        "keys are mode 0600; existing files are never overwritten. For production certificates "
        "see docs/DEPLOYMENT.md.",
    )
    certs.set_defaults(handler=run_certs)
    certs.add_argument("--out", type=path_argument, required=True, help="credentials folder")
    certs.add_argument("--sites", type=int, required=True,
                       help="number of site key pairs (site-00, site-01, ...)")
    certs.add_argument("--host", action="append", metavar="IP",
                       help="an IP address the SuperLink is reached at; repeatable "
                       "(default: 127.0.0.1)")
    certs.add_argument("--dns", action="append", metavar="NAME",
                       help="a DNS name the SuperLink is reached at; repeatable "
                       "(default: localhost)")

    release = commands.add_parser(
        "release",
        help="build the fedintent app bundle and sign it with the operator's release key",
        description="Write fedintent.fab (the app bundle the sites run) and "
        "fedintent.fab.sig.json (its Ed25519 signature, with the key's public half) to --out. "
        "Sites run a bundle only if a key in their trusted-entities.yaml signed it. Keep the "
        "key off the SuperLink's machine; `fedintent deploy-run --release` needs only the "
        "release folder. An existing release in --out is never overwritten unless --force is "
        "given.",
    )
    release.set_defaults(handler=run_release)
    release.add_argument("--signing-key", type=path_argument, required=True,
                         help="the operator's Ed25519 private key, OpenSSH format "
                         "(release-signing.key from `fedintent certs`, or ssh-keygen -t ed25519)")
    release.add_argument("--out", type=path_argument, required=True, help="release folder")
    release.add_argument("--force", action="store_true",
                         help="replace the release already in --out (sites that trust only "
                         "the key that signed it refuse a release signed with another)")

    deploy_run = commands.add_parser(
        "deploy-run",
        help="train on a deployed TLS SuperLink with real sites, and follow the run",
        description="Submit a training run to a running SuperLink (TLS, authenticated sites) "
        "and follow it like `fedintent train`. Run it on the SuperLink's machine: the ServerApp "
        "reads --labels and writes --out there. Sites use their own data and budget "
        "(node config). See docs/DEPLOYMENT.md.",
    )
    deploy_run.set_defaults(handler=run_deploy_run)
    deploy_run.add_argument("--superlink", required=True, metavar="HOST:PORT",
                            help="the SuperLink's control address on this machine "
                            "(127.0.0.1:CONTROL_PORT of deploy/superlink.sh)")
    deploy_run.add_argument("--release", type=path_argument, required=True, metavar="DIR",
                            help="the signed release to run (`fedintent release`)")
    deploy_run.add_argument("--release-port", type=int, default=9095,
                            help="the SuperLink's RELEASE_PORT, on 127.0.0.1, where the release "
                            "is handed over (default: %(default)s)")
    deploy_run.add_argument("--ca-cert", type=path_argument, required=True,
                            help="the CA certificate that signed the SuperLink's certificate")
    deploy_run.add_argument("--labels", type=path_argument,
                            help="the intent taxonomy, one label per line (required unless "
                            "--resume)")
    deploy_run.add_argument("--min-sites", type=int,
                            help="sites that must be connected before a round starts "
                            "(required unless --resume, which keeps the run's own by default)")
    deploy_run.add_argument("--rounds", type=int,
                            help=f"federated rounds (default: {TUNED_HELP})")
    deploy_run.add_argument("--epsilon", type=number_argument,
                            help="per-site epsilon for the whole run; inf = no DP "
                            f"(default: {RUN_CONFIG_DEFAULTS['target-epsilon']:g})")
    deploy_run.add_argument("--site-rows", type=finite_number_argument, metavar="N",
                            help="the sites' mean number of training conversations, as their "
                            "operators report it: under DP the tuned learning rate is scaled "
                            f"down for sites under {TUNING_SITE_ROWS}, as `fedintent train` "
                            "scales it (default: not scaled)")
    deploy_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="any other run-config key (README, 'Run configuration'), "
                            "value in TOML syntax; repeatable. Keys set by the options above "
                            f"({', '.join(OWN_OPTIONS)}) are refused")
    deploy_run.add_argument("--out", type=path_argument,
                            help=f"output folder (default: {DEFAULT_OUT_ROOT}/run-DATE-TIME)")
    deploy_run.add_argument("--resume", type=path_argument, metavar="OUT",
                            help="continue the stopped deployed run in OUT after its last "
                            "checkpoint, on the same sites (each charges its own ledger), with "
                            "the settings recorded in OUT/metrics.json; only --min-sites and "
                            f"--set {', '.join(CHANGED_ON_RESUME)} may differ")


OWN_OPTIONS = {
    "target-epsilon": "use --epsilon",
    "num-rounds": "use --rounds",
    "min-sites": "use --min-sites",
    "labels-file": "use --labels",
    "out-dir": "use --out",
    "run-name": "use --out: the run is named after its folder",
    "data-dir": "deploy-run sets it to --labels' folder; deployed sites read their own data",
    "resume": "use --resume OUT",
}
"""Run-config keys that ``deploy-run`` sets itself, each with what to do instead of ``--set``
(found in review: ``--set target-epsilon=1`` was replaced by ``--epsilon``'s default 8 without
a word, so every site was asked for 8)."""

SIMULATION_ONLY = {
    "state-dir": "state-dir in its node config (STATE_DIR)",
    "site-max-epsilon": "max-epsilon in its node config (MAX_EPSILON)",
    "site-max-epsilon-alone": "max-epsilon-alone in its node config (MAX_EPSILON_ALONE)",
    "site-retention-days": "retention-days in its node config (RETENTION_DAYS)",
    "site-evaluation": "evaluation in its node config (EVALUATION)",
    "site-evaluation-epsilon": "evaluation-epsilon in its node config (EVALUATION_EPSILON)",
}
"""Run-config keys that stand in for the simulated sites' own policy, with the setting a
deployed site holds instead: ``--set`` refuses them, since no deployed site reads them (found in
review: ``--set site-max-epsilon=1`` was taken, and every site kept its own budget of 8)."""

CHANGED_ON_RESUME = ("reply-timeout", "stop-after-round")
"""The ``--set`` keys a resume may change: how long the server waits, and where it stops
(``fl_server.resume.MAY_CHANGE_ON_RESUME``, less what ``deploy-run`` sets itself)."""
SERVER_APP_EXIT_S = 60
"""How long a stopped run's ServerApp may take to let go of its folder (its heartbeat, about
30 s apart, tells it of the stop)."""
SETTINGS_OF_A_NEW_RUN = ("labels", "rounds", "epsilon", "site_rows", "out")
"""Options a resume refuses: what they set, the run recorded when it started."""

DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
"""A DNS name a certificate can carry: dot-separated labels of 1 to 63 ASCII letters, digits
and inner hyphens (found in review: a non-ASCII or empty name raised, after the folder was
made)."""


def run_certs(args: argparse.Namespace) -> int:
    import ipaddress

    from fedintent.launch.certificates import (
        CredentialsExistError,
        site_names,
        write_dev_credentials,
    )

    if args.sites < 1:
        raise CliError(f"--sites must be >= 1, got {args.sites}")
    hosts = args.host or ["127.0.0.1"]
    dns_names = args.dns or ["localhost"]
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError as err:
            raise CliError(f"--host takes an IP address, got {host!r}; use --dns for names") \
                from err
    for name in dns_names:
        if not DNS_NAME.fullmatch(name) or len(name) > 253:
            raise CliError(f"--dns takes a DNS name (ASCII letters, digits, '-' and '.', at most "
                           f"253 characters; an internationalised name in its xn-- form), got "
                           f"{name!r}")
    args.out = writable_folder("--out", args.out)
    try:
        paths = write_dev_credentials(args.out, site_names(args.sites), hosts, dns_names)
    except CredentialsExistError as err:
        raise CliError(str(err)) from err
    names = ", ".join([f"IP:{h}" for h in hosts] + [f"DNS:{d}" for d in dns_names])
    print(f"wrote development credentials to {args.out}:")
    print(f"  {paths.ca_cert.name:<22} CA certificate: give it to every site and to flwr users")
    print(f"  {paths.ca_key.name:<22} CA private key (0600): keep it offline")
    print(f"  {paths.server_cert.name:<22} SuperLink TLS certificate for {names}")
    print(f"  {paths.server_key.name:<22} SuperLink TLS private key (0600)")
    print(f"  {paths.signing_key.name:<22} release-signing key (0600): the operator's only; "
          f"`fedintent release --signing-key` signs bundles with it")
    print(f"  {paths.signing_public_key.name:<22} its public half: `ssh-keygen -lf` on it "
          "gives the fingerprint sites check the pinned key against")
    print(f"  {paths.trusted_entities.name:<22} the release key as sites pin it: give it to "
          f"every site (TRUSTED_ENTITIES)")
    for site, key in paths.site_keys.items():
        print(f"  {key.name:<22} {site}'s private key (0600): give it to {site} only")
        print(f"  {paths.site_public_keys[site].name:<22} {site}'s public key: register it with "
              f"`flwr supernode register`")
    return 0


def run_release(args: argparse.Namespace) -> int:
    from fedintent.launch.deployment import DeploymentError
    from fedintent.launch.releases import RELEASE_FAB, RELEASE_SIGNATURE, write_release

    args.out = writable_folder("--out", args.out)
    try:
        release = write_release(args.out, args.signing_key, replace=args.force)
    except DeploymentError as err:
        raise CliError(str(err)) from err
    print(f"wrote {release.app_spec} to {args.out}: {RELEASE_FAB} (sha256 "
          f"{hashlib.sha256(release.fab).hexdigest()[:16]}...), {RELEASE_SIGNATURE} "
          f"(signed by {release.key_id})")
    return 0


def run_deploy_run(args: argparse.Namespace) -> int:
    require_operator_extra()
    from fedintent.launch import deployment
    from fedintent.launch.releases import read_release
    from fedintent.launch.run_config import compose_run_config

    if args.min_sites is not None and args.min_sites < 1:
        raise CliError(f"--min-sites must be >= 1, got {args.min_sites}")
    if not 1 <= args.release_port <= 65535:
        raise CliError(f"--release-port must be a port in [1, 65535], got {args.release_port}")
    if not args.ca_cert.is_file():
        raise CliError(f"--ca-cert {args.ca_cert} is not a file")
    if host_and_port(args.superlink) is None:
        # found in review: a missing port failed later, as an unavailable SuperLink
        raise CliError(f"--superlink must be HOST:PORT, without a scheme (the SuperLink's "
                       f"control API, 127.0.0.1:9091 by default), got {args.superlink!r}")
    overrides = _parse_settings(args.set)
    if args.resume is not None:
        return _resume(args, overrides)
    if args.labels is None or args.min_sites is None:
        raise CliError("deploy-run needs --labels and --min-sites (or --resume OUT, to continue "
                       "a stopped run)")
    try:
        release = read_release(args.release)
    except deployment.DeploymentError as err:
        raise CliError(str(err)) from err
    if args.epsilon is None:
        args.epsilon = float(RUN_CONFIG_DEFAULTS["target-epsilon"])
    settings = deploy_settings(args.epsilon, args.site_rows, overrides)
    if args.rounds is None:
        args.rounds = int(settings["num-rounds"])
    labels_file = args.labels.resolve()
    labels = read_labels(labels_file)
    out_dir = new_out_dir(args.out)
    with as_typed({"num-rounds": "--rounds", "target-epsilon": "--epsilon",
                   "min-sites": "--min-sites"}):  # the other keys as --set names them
        run_config = compose_run_config(  # every key checked before the folder is made
            settings | {"num-rounds": args.rounds, "target-epsilon": args.epsilon},
            # data-dir is simulation-only; pointing it at the labels' folder keeps the
            # ServerApp from generating synthetic sites that no deployed site would read.
            data_dir=labels_file.parent, labels_file=labels_file, out_dir=out_dir,
            min_sites=args.min_sites,
        )
    try:
        deployment.check_superlink_certificate(args.superlink, args.ca_cert)
    except deployment.DeploymentError as err:
        raise CliError(str(err)) from err
    return _submit_and_follow(
        args, release, run_config,
        lambda run_id: (f"run {run_id} of {release.app_spec} (signature by key "
                        f"{release.key_id} checked here; each site runs it only if it trusts "
                        f"that key) submitted to {args.superlink}: {args.rounds} rounds, at "
                        f"least {args.min_sites} sites, {len(labels)} intents, "
                        f"{privacy_settings(run_config)}; output: {out_dir}"))


def _resume(args: argparse.Namespace, overrides: dict) -> int:
    """Continue a stopped deployed run with the configuration it was started with, on the same
    sites: the ServerApp goes on after the checkpoint its audit log vouches for, under the same
    run name, so each site charges the new rounds to the run in its own ledger and keeps the
    noise it planned for the run's rounds. Everything that can be checked here is checked
    before anything is submitted: the deployment record, the run record and the audit log, the
    checkpoint, the label file, and that none of the run's Flower runs is still going."""
    from fedintent.launch import deployment
    from fedintent.launch.releases import read_release

    given = [f"--{name.replace('_', '-')}" for name in SETTINGS_OF_A_NEW_RUN
             if getattr(args, name) is not None]
    if given:
        raise CliError(f"--resume uses the settings recorded in OUT/metrics.json; drop "
                       f"{', '.join(given)}")
    if refused := sorted(set(overrides) - set(CHANGED_ON_RESUME)):
        raise CliError(f"--set {', '.join(refused)} is refused with --resume: the run keeps the "
                       f"settings it started with (only {', '.join(CHANGED_ON_RESUME)} may "
                       "change)")
    out_dir = writable_folder("--resume", args.resume)
    if not out_dir.is_dir():
        raise CliError(f"--resume {out_dir}: no such folder")
    try:
        record = deployment.read_deployment_record(out_dir)
        release = read_release(args.release)
    except deployment.DeploymentError as err:
        raise CliError(f"cannot resume: {err}") from err
    changes = overrides | ({} if args.min_sites is None else {"min-sites": args.min_sites})
    doc, run_config, done, warnings = resumable_run(out_dir, changes)
    labels_file = Path(str(run_config["labels-file"]))
    if read_labels(labels_file) != doc["labels"]:
        raise CliError(f"cannot resume: {labels_file} changed since the run started")
    last = [record, *record.get("resumes", [])][-1]
    fab_sha256 = hashlib.sha256(release.fab).hexdigest()
    if last["app"] != release.app_spec or last.get("fab_sha256", fab_sha256) != fab_sha256:
        # found in review: a bundle rebuilt under the same version went unnoticed
        warnings.append(f"the run's last submission ran {last['app']} (bundle sha256 "
                        f"{str(last.get('fab_sha256'))[:16]}...) and --release holds "
                        f"{release.app_spec} (bundle sha256 {fab_sha256[:16]}...): rounds "
                        f"after {done} are trained by it")
    if last.get("superlink") != args.superlink:
        warnings.append(f"the run's last submission went to {last.get('superlink')} and this "
                        f"one goes to {args.superlink}: its earlier Flower runs are looked for "
                        "there, and its rounds go to the sites connected there")
    for warning in warnings:
        print(f"fedintent deploy-run: warning: {warning}", file=sys.stderr)
    try:
        deployment.check_superlink_certificate(args.superlink, args.ca_cert)
    except deployment.DeploymentError as err:
        raise CliError(str(err)) from err
    num_rounds = int(run_config["num-rounds"])
    return _submit_and_follow(
        args, release, run_config,
        lambda run_id: (f"resuming run {run_config['run-name']} after round {done} of "
                        f"{num_rounds}: run {run_id} of {release.app_spec} (signature by key "
                        f"{release.key_id} checked here) submitted to {args.superlink}, at "
                        f"least {run_config['min-sites']} sites; output: {out_dir}"),
        done=done, resumes=len(doc.get("resumes", [])) + 1,
        earlier_runs=deployment.deployed_run_ids(record))


def _submit_and_follow(args: argparse.Namespace, release, run_config: dict,
                       submitted: Callable[[int], str], done: int = 0, resumes: int = 0,
                       earlier_runs: list[int] | None = None) -> int:
    """Hand ``release`` over and submit the run, record it in the run folder's deployment
    record, print ``submitted(run_id)`` and follow the rounds after ``done`` to the end; on
    Ctrl-C, from the moment the run is submitted, stop it on the SuperLink, wait for its
    ServerApp to let go of the folder, and say how it goes on. A resume (``resumes``, its number
    among the record's) is refused while one of ``earlier_runs``, the folder's earlier Flower
    runs, is still going, and fails where its ServerApp never resumed the record."""
    from fedintent.launch import deployment
    from fedintent.launch.processes import make_temporary_folder, remove_temporary_folder
    from fedintent.launch.releases import serve_release
    from fedintent.launch.run_outcome import (
        RunFailedError,
        completed_run_metrics,
        resume_recorded,
    )

    out_dir = Path(str(run_config["out-dir"]))
    num_rounds = int(run_config["num-rounds"])
    resume = shlex.join(["fedintent", "deploy-run", "--resume", str(out_dir), "--superlink",
                         args.superlink, "--release", str(args.release.resolve()),
                         "--release-port", str(args.release_port), "--ca-cert",
                         str(args.ca_cert.resolve())])
    way_on = (f"continue with: {resume} (a round the sites trained after the last checkpoint "
              "is charged to their budgets again when the resume trains it)")
    flwr_home = make_temporary_folder()  # the watchdog removes it should this be killed
    try:
        connection = deployment.write_connection(
            flwr_home, "fedintent-deployment", args.superlink, args.ca_cert
        )
        for earlier in earlier_runs or []:
            try:
                status = deployment.unfinished_status(connection, earlier)
            except deployment.DeploymentError as err:
                raise CliError(f"cannot resume: cannot ask {args.superlink} whether run "
                               f"{earlier} of {out_dir} has ended: {err}") from err
            if status:
                raise CliError(f"cannot resume: run {earlier} of {out_dir} is still {status} on "
                               f"{args.superlink} and writes there; wait for it to end, or stop "
                               f"it (flwr stop {earlier}), then resume")
        started = time.monotonic()
        run_id = interrupted = None
        try:
            try:
                with created_folder(out_dir):
                    try:
                        with serve_release(release, args.release_port):
                            run_id = _submitted(release, connection, run_config,
                                                args.release_port)
                    except KeyboardInterrupt:  # found in review: while the handover closed,
                        if run_id is None:  # after the submission, it removed the run's folder
                            raise
                        interrupted = KeyboardInterrupt()
            except OSError as err:
                raise CliError(f"cannot hand over the release on 127.0.0.1:{args.release_port}: "
                               f"{err.strerror}") from err
            if interrupted:
                raise interrupted
            try:
                deployment.record_deployed_run(out_dir, run_id, args.superlink,
                                               release.app_spec, release.key_id,
                                               hashlib.sha256(release.fab).hexdigest())
            except (OSError, deployment.DeploymentError) as err:
                # found in review: the submitted run went on, reported failed
                print(f"fedintent deploy-run: warning: cannot record run {run_id} in "
                      f"{out_dir / DEPLOYMENT_FILE} ({getattr(err, 'strerror', None) or err}): "
                      "the run goes on, but its folder does not record it; resume it only "
                      "with fedintent deploy-run --resume (it waits for any server still "
                      "writing there), never fedintent train --resume", file=sys.stderr)
            print(submitted(run_id), flush=True)
            with rounds_in_progress(done + 1, num_rounds, out_dir) as round_done:
                def report(entry: dict) -> None:
                    round_done(int(entry["round"]))
                    print_round(entry, num_rounds)

                status = deployment.follow_run(connection, run_id, out_dir / METRICS_FILE,
                                               on_round=report, seen=done, resumes=resumes)
        except KeyboardInterrupt:  # found in review: one right after submitting left it going
            if run_id is None:
                raise
            _stop(connection, run_id, out_dir, f"{INTERRUPTED}; {way_on}")
            print(f"fedintent deploy-run: interrupted; {way_on}", file=sys.stderr)
            return 130
        if resumes and not resume_recorded(out_dir / METRICS_FILE, run_id):
            raise RunFailedError(f"run {run_id} ended ({status}) before its ServerApp resumed "
                                 f"the run (flwr log {run_id} says why); it wrote nothing in "
                                 f"{out_dir}; {way_on}")
        metrics = completed_run_metrics(out_dir / METRICS_FILE, status)
    except (deployment.DeploymentError, RunFailedError) as err:
        print(f"fedintent deploy-run: error: {err}", file=sys.stderr)
        return 1
    finally:
        remove_temporary_folder(flwr_home)
    print_summary(metrics, time.monotonic() - started)
    return 0


def _submitted(release, connection, run_config: dict, release_port: int) -> int:
    """The run of ``release`` submitted; a SuperLink that could not fetch the release named
    with the port it was handed over on (found in review: Flower's "Failed to request FAB
    download link" did not say that --release-port was not the SuperLink's RELEASE_PORT)."""
    from fedintent.launch import deployment
    from fedintent.launch.releases import submit_release_run

    try:
        return submit_release_run(release, connection, run_config)
    except deployment.DeploymentError as err:
        if "fetch-fab" not in str(err):
            raise
        raise deployment.DeploymentError(
            f"{err}; the release was handed over on 127.0.0.1:{release_port}: --release-port "
            "must be the SuperLink's RELEASE_PORT (docs/DEPLOYMENT.md)") from err


def _stop(connection, run_id: int, out_dir: Path, reason: str) -> None:
    """Stop the run on the SuperLink and, once its ServerApp has let go of ``out_dir`` (it sees
    the stop at its next heartbeat: found in review, the SuperLink marks the run finished at
    once), mark its record interrupted if it could not say so itself."""
    from fedintent.launch import deployment

    deployment.stop_run(connection, run_id)
    if not deployment.wait_run_finished(connection, run_id):
        return
    deadline = time.monotonic() + SERVER_APP_EXIT_S
    while True:
        try:
            if not run_folder_busy(out_dir):
                break
        except RunFolderRefused as err:  # the record is then left to the ServerApp
            print(f"fedintent deploy-run: {err}", file=sys.stderr)
            return
        if time.monotonic() > deadline:
            print(f"fedintent deploy-run: run {run_id}'s ServerApp has not ended within "
                  f"{SERVER_APP_EXIT_S} s; it records how the run ended itself", file=sys.stderr)
            return
        time.sleep(0.5)
    record_interrupted(out_dir / METRICS_FILE, reason)


def deploy_settings(epsilon: float, site_rows: float | None, overrides: dict) -> dict:
    """The tuned settings for ``epsilon`` and the privacy model ``--set`` asks for, under the
    ``--set`` overrides, the learning rate scaled to sites of ``site_rows`` training rows as
    ``fedintent train`` scales it to the sites it counts (a deployment's server cannot count
    them: the sites' data stays at the sites). Found in review: a distributed-DP deployment
    ran the local-DP table (40 rounds, no server momentum)."""
    privacy_model = str(overrides.get("privacy-model", RUN_CONFIG_DEFAULTS["privacy-model"]))
    settings = tuned_settings(epsilon, privacy_model)
    if str(overrides.get("strategy", RUN_CONFIG_DEFAULTS["strategy"])) != "fedavg":
        settings.pop("server-momentum", None)  # tuned for FedAvg's step only, as train has it
    settings |= overrides
    if site_rows is None:
        return settings
    if not site_rows > 0:
        raise CliError(f"--site-rows must be a positive number of rows, got {site_rows:g}")
    if "learning-rate" in overrides:
        print("--site-rows ignored: --set learning-rate sets the rate", flush=True)
        return settings
    tuned = float(settings["learning-rate"])
    scaled = site_size_rate(tuned, site_rows, epsilon)
    if scaled != tuned:
        print(site_size_message(scaled, tuned, site_rows, "--set learning-rate=X"), flush=True)
    return settings | {"learning-rate": scaled}


def privacy_settings(run_config: dict) -> str:
    """The privacy settings the run asks the sites for, as the submitted line prints them: the
    operator sees what was submitted before any site spends budget on it."""
    delta = float(run_config["delta"])
    return (f"target-epsilon {float(run_config['target-epsilon']):g}, delta "
            f"{f'{delta:g}' if delta else 'per-site default'}, privacy-unit "
            f"{run_config['privacy-unit']}, privacy-model {run_config['privacy-model']}")


def _parse_settings(items: list[str]) -> dict:
    """``--set KEY=VALUE`` options as run-config values (TOML syntax, else the text); a key in
    :data:`OWN_OPTIONS` or :data:`SIMULATION_ONLY`, or a number TOML reads as another
    (``number_read_otherwise``), is refused."""
    import tomllib

    settings = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"--set takes KEY=VALUE, got {item!r}")
        if key in OWN_OPTIONS:
            raise CliError(f"--set {key} is refused: {OWN_OPTIONS[key]}")
        if key in SIMULATION_ONLY:
            raise CliError(f"--set {key} is refused: it stands in for simulated sites' policy, "
                           f"and no deployed site reads it; each site sets "
                           f"{SIMULATION_ONLY[key]} (docs/SITE_GUIDE.md)")
        try:
            settings[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key] = text
        if isinstance(settings[key], float) and (problem := number_read_otherwise(
                text, settings[key])):
            raise CliError(f"--set {key}: {problem}")
    return settings
