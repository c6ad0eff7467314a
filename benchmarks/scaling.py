"""How a simulated federation's time and memory grow with its number of sites.

    python benchmarks/scaling.py ../shared/datasets/banking77 --sites 10,50,100 --rounds 40 \
        --out scaling-banking77
    python benchmarks/scaling.py --synthetic --sites 10,50,100 --rounds 40 --out scaling-synth
    python benchmarks/scaling.py ../shared/datasets/banking77 --deployment --sites 20 \
        --rounds 10 --out scaling-deployment

For each site count N the data is split into N sites: a CSV dataset (``train.csv``,
``test.csv``) is partitioned exactly as ``fedintent bench`` does (Dirichlet alpha 0.5,
partition seed 0), so the same rows are spread thinner as N grows; ``--synthetic`` instead
generates N synthetic call-center sites (``fedintent synth``'s generator, English, its
default site size), so the data grows with N. Then one run goes through ``fedintent train``'s
code path (``fedintent.bench.federated.run_federated``: a private SuperLink, ``flwr run``, the
project's ServerApp and ClientApp, DP-SGD and a privacy ledger at every site, two simulated
sites at a time on 2 cores) with the settings tuned for the epsilon (docs/BENCHMARKS.md), for
``--rounds`` rounds. ``--privacy-model distributed`` runs distributed DP over SecAgg+ instead;
``--secure-aggregation`` adds SecAgg+ to per-site DP.

``--deployment`` runs each site count as a real deployment on 127.0.0.1 instead: a TLS
SuperLink that admits only registered site keys (``deploy/superlink.sh``), one SuperNode per
site started by the site container's entrypoint (``deploy/site-entrypoint.sh``, each with its
own key, data, state folder and trusted release key), and the signed release run with
``fedintent deploy-run``, as docs/DEPLOYMENT.md does it. It also records each site's peak
memory (its SuperNode and every process that SuperNode started) and the SuperLink's.

Every site's sentence embeddings are computed once, before the runs, and each run's sites
start from them (as a deployed site's cache does after its first round), so the figures are
the federation's costs: the encoder's are the site's own, measured by
``benchmarks/site_resources.py`` and ``benchmarks/model_families.py speed``.

Recorded per N, in ``OUT/scaling.json`` (a finished N is kept and not run again), with a table
in ``OUT/scaling.md`` and the curves in ``OUT/scaling.png``: seconds per round after the first,
the first round, the wall time of the whole run (SuperLink start to the last process stopped),
the peak resident memory of the whole process tree (this process, the SuperLink, the
simulation and its Ray workers, sampled every half second), the bytes a site uploads per round
and the test accuracy on the pooled test split.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from data_synth import write_sites
from fedintent.bench.federated import (
    PeakMemory,
    cell_lifetime_budget,
    round_seconds,
    run_federated,
    upload_bytes_per_site_round,
)
from fedintent.bench.sweep import DISTRIBUTED_DP, LOCAL_DP, RUN_SETTINGS, Rows
from fedintent.launch.certificates import write_dev_credentials
from fedintent.launch.deployment import register_site_key, start_loopback_superlink
from fedintent.launch.flower_cli import flower_env
from fedintent.launch.processes import free_port, start_process, stop_process_trees
from fedintent.launch.releases import write_release
from fedintent.partition import partition_csv_dataset
from fl_client.data_files import list_site_dirs
from fl_client.dp_training import evaluate
from fl_client.site_data import load_site
from fl_client.site_secret import create_site_secret
from fl_protocol.durable_files import write_bytes_atomic
from fl_protocol.label_file import read_labels
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.model_store import load_model
from fl_server.run_config import RunConfigError, check_run_config, tuned_settings
from models import get_model_family
from models.family import concat_features

MODEL = "minilm-head"
PARTITION_SEED = 0
ALPHA = 0.5
TOLERATED_SITES = 2
REPO = Path(__file__).resolve().parents[1]
DEPLOY_RUN_TIMEOUT_S = 4 * 3600
ROUND_LINE = re.compile(r"round\s+(\d+)/(\d+)\s+sites trained")
"""The line ``deploy-run`` prints when a round has ended (``fl_server.progress.round_lines``),
not its ``in progress`` lines (``fedintent.commands.progress``), which print while the round
runs and, taken for its end, timed the first round at its first 30 s."""
SERVER_LOG_LINE = re.compile(r"^\d\d/\d\d/\d{4} (\d\d):(\d\d):(\d\d):\w+:(.*)$")
SECAGG_EVENTS = {"begin": "Secure aggregation commencing",
                 "shares": "[Stage 3] Received key shares", "end": "Secure aggregation completed"}
"""The ServerApp's log lines (Flower's SecAgg+ workflow) that time the protocol each round."""


def run_settings(epsilon: float, rounds: int, privacy_model: str,
                 secure_aggregation: bool) -> dict:
    """The run config of every run: ``fedintent train``'s tuned settings for ``epsilon``."""
    settings = RUN_CONFIG_DEFAULTS | tuned_settings(epsilon) | {
        "target-epsilon": epsilon, "model": MODEL}
    settings = {key: settings[key] for key in RUN_SETTINGS}
    if privacy_model == DISTRIBUTED_DP:
        settings |= tuned_settings(epsilon, DISTRIBUTED_DP) | {
            "privacy-model": DISTRIBUTED_DP, "secure-aggregation": True,
            "tolerated-sites": TOLERATED_SITES}
    elif secure_aggregation:
        settings["secure-aggregation"] = True
    return settings | {"num-rounds": rounds}


def make_sites(args: argparse.Namespace, num_sites: int, data_dir: Path) -> None:
    """``num_sites`` site folders in ``data_dir`` (kept if already there)."""
    if (data_dir / "manifest.json").exists():
        return
    if args.synthetic:
        write_sites(data_dir, n_sites=num_sites, seed=PARTITION_SEED)
    else:
        partition_csv_dataset(args.data, data_dir, num_sites, PARTITION_SEED, alpha=ALPHA)


def prepare(args: argparse.Namespace, num_sites: int) -> tuple[Path, Path, tuple]:
    """The sites' folder and the shared feature cache, filled; each site's test rows, the
    pooled test split and the number of training utterances."""
    data_dir = args.out / f"data-{num_sites}"
    make_sites(args, num_sites, data_dir)
    cache = args.out / "cache" / "features"
    print(f"{num_sites} sites: embedding their text (cached for later runs)", flush=True)
    return data_dir, cache, embed_sites(data_dir, cache)


def embed_sites(
    data_dir: Path, cache: Path
) -> tuple[list[Rows], torch.Tensor, torch.Tensor, int]:
    """Fill the shared feature cache with every site's text; return each site's test rows,
    the pooled test split and the number of training utterances."""
    labels = read_labels(data_dir / "labels.txt")
    family = get_model_family(MODEL)
    site_tests, train_rows = [], 0
    for site_dir in list_site_dirs(data_dir):
        site = load_site(site_dir, labels)
        family.featurize(site.train.texts, cache)
        site_tests.append((family.featurize(site.test.texts, cache),
                           torch.tensor(site.test.labels, dtype=torch.long)))
        train_rows += len(site.train.texts)
    return (site_tests, concat_features([x for x, _ in site_tests]),
            torch.cat([y for _, y in site_tests]), train_rows)


def measure(args: argparse.Namespace, num_sites: int, settings: dict) -> dict:
    """One run over ``num_sites`` sites; its costs and accuracy."""
    data_dir, cache, (site_tests, test_x, test_y, train_rows) = prepare(args, num_sites)
    print(f"{num_sites} sites: {settings['num-rounds']} rounds", flush=True)
    started = time.monotonic()
    result = run_federated(data_dir, args.out / "runs" / f"sites-{num_sites}", cache, num_sites,
                           settings, args.seed, test_x, test_y, site_tests)
    log = args.out / "runs" / f"sites-{num_sites}" / "run" / "logs" / "flower.log"
    return result | secagg_seconds(log) | {
        "sites": num_sites, "train_utterances": train_rows,
        "measured_seconds": time.monotonic() - started}


def secagg_seconds(log: Path) -> dict:
    """From the ServerApp's log of a SecAgg+ run, the mean seconds per round (after the first)
    of the whole protocol and of the server's own last step, from the sites' key shares to the
    unmasked sum (rebuilding the dropped secrets and removing every mask); the log's time stamps
    are whole seconds. Nothing for a run without SecAgg+."""
    times: dict[str, list[int]] = {event: [] for event in SECAGG_EVENTS}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = SERVER_LOG_LINE.match(line)
        if match is None:
            continue
        hours, minutes, seconds = (int(value) for value in match.group(1, 2, 3))
        for event, text in SECAGG_EVENTS.items():
            if match.group(4).startswith(text):
                times[event].append(3600 * hours + 60 * minutes + seconds)
    rounds = min(len(stamps) for stamps in times.values())
    if rounds < 2:
        return {}

    def mean(start: str, end: str) -> float:
        spans = [(times[end][i] - times[start][i]) % 86400 for i in range(1, rounds)]
        return sum(spans) / len(spans)

    return {"secagg_seconds_per_round": mean("begin", "end"),
            "secagg_server_unmask_seconds": mean("shares", "end")}


def measure_deployment(args: argparse.Namespace, num_sites: int, settings: dict) -> dict:
    """One run over ``num_sites`` SuperNode processes behind a TLS SuperLink on 127.0.0.1."""
    data_dir, cache, (_, test_x, test_y, train_rows) = prepare(args, num_sites)
    root = args.out / "runs" / f"deployment-{num_sites}"
    sites = list_site_dirs(data_dir)
    creds = write_dev_credentials(root / "creds", [site.name for site in sites],
                                  ["127.0.0.1"], ["localhost"])
    port, control, release_port = free_port(), free_port(), free_port()
    epsilon = float(settings["target-epsilon"])
    processes: list[subprocess.Popen] = []
    site_processes: list[subprocess.Popen] = []
    with open(root / "flower.log", "ab") as log:
        try:
            superlink, operator = start_loopback_superlink(
                REPO / "deploy" / "superlink.sh", root, creds.ca_cert,
                (port, control, release_port), log, processes)
            print(f"{num_sites} sites: starting {num_sites} SuperNodes", flush=True)
            for site in sites:
                register_site_key(creds.site_public_keys[site.name], operator)
                state = root / "state" / site.name
                create_site_secret(state)  # as INIT_STATE=1 does: the entrypoint refuses none
                # The site's own store, hard links to the cache (as fedintent bench does).
                shutil.copytree(cache, state / "features", copy_function=os.link)
                site_env = flower_env(root / "site-homes" / site.name) | {
                    "SUPERLINK": f"127.0.0.1:{port}", "CA_CERT": str(creds.ca_cert),
                    "SITE_KEY": str(creds.site_keys[site.name]),
                    "TRUSTED_ENTITIES": str(creds.ca_cert.parent / "trusted-entities.yaml"),
                    "DATA_DIR": str(site), "STATE_DIR": str(state),
                    "MAX_EPSILON": str(cell_lifetime_budget(epsilon)["site-max-epsilon"]),
                    "SUPERNODE_PORT": str(free_port()), "RETENTION_DAYS": "inf",
                    "PURGE_INTERVAL_HOURS": "0",
                    # 20 sites share this machine's cores: one thread each, as the quota
                    # rule gives a site container run with ``--cpus 1``, not a thread per
                    # core each, which oversubscribes the cores (docs/TESTING.md).
                    "OMP_NUM_THREADS": "1"}
                site_processes.append(start_process(
                    [str(REPO / "deploy" / "site-entrypoint.sh")], site_env, log, processes))
            write_release(root / "release", creds.signing_key)
            command = [
                sys.executable, "-m", "fedintent.cli", "deploy-run",
                "--superlink", f"127.0.0.1:{control}", "--ca-cert", str(creds.ca_cert),
                "--release", str(root / "release"), "--release-port", str(release_port),
                "--labels", str(data_dir / "labels.txt"), "--min-sites", str(num_sites),
                "--rounds", str(settings["num-rounds"]),
                "--epsilon", str(settings["target-epsilon"]), "--out", str(root / "run"),
                *[arg for key, value in settings.items()
                  if key not in ("num-rounds", "target-epsilon")
                  for arg in ("--set", f"{key}={value}")]]
            trees = {"superlink": [superlink.pid]} | {
                f"site{i}": [process.pid] for i, process in enumerate(site_processes)}
            with PeakMemory(trees) as memory:
                started = time.monotonic()
                round_times = follow_rounds(command, flower_env(root / "engineer-home"), root)
                wall = time.monotonic() - started
        finally:
            stop_process_trees(processes)
    model, _, _ = load_model(root / "run" / "model")
    site_peaks = [memory.peaks[f"site{i}"] / 2**20 for i in range(len(site_processes))]
    return {
        "sites": num_sites, "train_utterances": train_rows, "wall_seconds": wall,
        **round_seconds(started, round_times),
        "peak_memory_mib": memory.peak_bytes / 2**20,
        "site_peak_memory_mib_max": max(site_peaks),
        "site_peak_memory_mib_mean": sum(site_peaks) / len(site_peaks),
        "superlink_peak_memory_mib": memory.peaks["superlink"] / 2**20,
        "upload_bytes_per_site_round": upload_bytes_per_site_round(root / "state"),
        "accuracy": evaluate(model, test_x, test_y).accuracy,
    }


def follow_rounds(command: list[str], env: dict[str, str], root: Path) -> list[float]:
    """Run ``fedintent deploy-run``, echoing its output; the time each round was reported."""
    times: list[float] = []
    with open(root / "deploy-run.log", "w", encoding="utf-8") as log:
        runner = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        for line in runner.stdout:
            log.write(line)
            match = ROUND_LINE.search(line)
            if match and int(match.group(1)) > len(times):
                times.append(time.monotonic())
                print(f"  {line.strip()}", flush=True)
        code = runner.wait(timeout=DEPLOY_RUN_TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"deploy-run failed (exit {code}); see {root / 'deploy-run.log'} "
                           f"and {root / 'flower.log'}")
    return times


def write_report(out: Path, record: dict) -> None:
    """``scaling.md`` (the table) and ``scaling.png`` (time and memory against sites)."""
    rows = sorted(record["results"], key=lambda row: row["sites"])
    deployment = record.get("mode") == "deployment"
    lines = [
        f"{record.get('mode', 'simulation')}; data: {record['data']}; settings: "
        f"{json.dumps(record['settings'], sort_keys=True)}",
        "",
        "| sites | train utterances | s/round | first round s | wall s | peak memory MiB "
        + ("| per site: peak MiB, largest (mean) | SuperLink peak MiB " if deployment else "")
        + "| upload bytes/site/round | test accuracy |",
        "| ---: " * (10 if deployment else 8) + "|",
    ]
    if any("secagg_seconds_per_round" in row for row in rows):
        lines[2] += " SecAgg+ s/round (server's unmasking s) |"
        lines[3] += " ---: |"
    for row in rows:
        sites_memory = (f"| {row['site_peak_memory_mib_max']:.0f} "
                        f"({row['site_peak_memory_mib_mean']:.0f}) "
                        f"| {row['superlink_peak_memory_mib']:.0f} " if deployment else "")
        lines.append(
            f"| {row['sites']} | {row['train_utterances']} | {row['seconds_per_round']:.1f} "
            f"| {row['first_round_seconds']:.1f} | {row['wall_seconds']:.0f} "
            f"| {row['peak_memory_mib']:.0f} {sites_memory}"
            f"| {row['upload_bytes_per_site_round']:.0f} | {row['accuracy']:.4f} |"
            + (f" {row['secagg_seconds_per_round']:.1f} "
               f"({row['secagg_server_unmask_seconds']:.1f}) |"
               if "secagg_seconds_per_round" in row else ""))
    write_bytes_atomic(out / "scaling.md", ("\n".join(lines) + "\n").encode())

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    sites = [row["sites"] for row in rows]
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    time_ax.plot(sites, [row["seconds_per_round"] for row in rows], "o-")
    time_ax.set(xlabel="sites", ylabel="seconds per round", ylim=(0, None),
                title="time per round (after the first)")
    memory_ax.plot(sites, [row["peak_memory_mib"] / 1024 for row in rows], "o-")
    memory_ax.set(xlabel="sites", ylabel="GiB", ylim=(0, None),
                  title="peak memory, whole process tree")
    for ax in (time_ax, memory_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    partial = out / "scaling.png.partial"
    fig.savefig(partial, format="png", dpi=120)
    plt.close(fig)
    partial.replace(out / "scaling.png")


RECORDED = {
    "banking77": {},
    "synthetic": {"synthetic": True},
    "secagg": {"sites": "10,20,50,100", "rounds": 5, "secure_aggregation": True},
    "distributed": {"sites": "10,20,50", "rounds": 5, "epsilon": 3.0,
                    "privacy_model": DISTRIBUTED_DP},
    "deployment": {"sites": "20", "rounds": 3, "deployment": True},
}
SITE_SIZES = "1000,3000,10000,30000"
"""``--recorded``: the measurements of docs/SCALING.md, each into its own folder of ``--out``
(DATA for all but the synthetic one), then one site against its size (``site_resources.py``
at ``SITE_SIZES`` utterances, into ``OUT/site``). The distributed-DP runs are at epsilon 3:
at 8, the default site policy's ``max-epsilon-alone`` (50) refuses a cohort of 20, where a
site's own share of the noise is one eighteenth."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="?",
                        help="folder with train.csv and test.csv (or use --synthetic)")
    parser.add_argument("--synthetic", action="store_true",
                        help="generate synthetic call-center sites instead of partitioning DATA")
    parser.add_argument("--sites", default="10,50,100", help="comma-separated site counts")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--privacy-model", choices=(LOCAL_DP, DISTRIBUTED_DP), default=LOCAL_DP)
    parser.add_argument("--secure-aggregation", action="store_true",
                        help="SecAgg+ with per-site DP (distributed DP always uses it)")
    parser.add_argument("--deployment", action="store_true",
                        help="a TLS SuperLink and one SuperNode process per site on 127.0.0.1 "
                        "instead of a simulation")
    parser.add_argument("--recorded", action="store_true",
                        help="every measurement of docs/SCALING.md, each into a folder of OUT "
                        "(needs DATA; about two hours on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not args.recorded:
        return measure_all(parser, args)
    if args.data is None or args.synthetic:
        parser.error("--recorded needs DATA (it makes its synthetic sites itself)")
    for name, preset in RECORDED.items():
        print(f"== {name}", flush=True)
        defaults = {"synthetic": False, "sites": "10,50,100", "rounds": 40, "epsilon": 8.0,
                    "privacy_model": LOCAL_DP, "secure_aggregation": False,
                    "deployment": False}
        measure_all(parser, argparse.Namespace(**vars(args) | defaults | preset | {
            "data": None if preset.get("synthetic") else args.data,
            "out": args.out / name}))
    print("== site", flush=True)
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "site_resources.py"),
                    "--utterances", SITE_SIZES, "--out", str(args.out / "site")], check=True)
    return 0


def measure_all(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Every site count of ``args`` not yet measured in ``args.out``; the report after each."""
    if (args.data is None) == (not args.synthetic):
        parser.error("give a dataset folder or --synthetic, not both")
    if args.data is not None and not all((args.data / name).is_file()
                                         for name in ("train.csv", "test.csv")):
        parser.error(f"{args.data}: needs train.csv and test.csv")
    try:
        site_counts = sorted({int(value) for value in args.sites.split(",")})
    except ValueError:
        parser.error(f"--sites: comma-separated integers, got {args.sites!r}")
    if site_counts[0] < 3 or args.rounds < 2 or not math.isfinite(args.epsilon):
        parser.error("needs at least 3 sites, 2 rounds and a finite --epsilon")

    settings = run_settings(args.epsilon, args.rounds, args.privacy_model,
                            args.secure_aggregation)
    try:
        check_run_config(settings | {"min-sites": site_counts[0]})
    except RunConfigError as err:
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "scaling.json"
    record = {"data": "synthetic" if args.synthetic else str(args.data),
              "mode": "deployment" if args.deployment else "simulation", "settings": settings,
              "results": []}
    if record_path.exists():
        kept = json.loads(record_path.read_text(encoding="utf-8"))
        if any(kept.get(key) != record[key] for key in ("data", "mode", "settings")):
            parser.error(f"{record_path} holds runs of other data, mode or settings; use a "
                         "new --out")
        record = kept
    for num_sites in site_counts:
        if any(row["sites"] == num_sites for row in record["results"]):
            print(f"{num_sites} sites: already measured")
            continue
        result = (measure_deployment if args.deployment else measure)(args, num_sites, settings)
        record["results"].append(result)
        write_bytes_atomic(record_path, json.dumps(record, indent=1).encode())
        write_report(args.out, record)
        print(f"{num_sites} sites: {result['seconds_per_round']:.1f} s/round, first round "
              f"{result['first_round_seconds']:.1f} s, wall {result['wall_seconds']:.0f} s, "
              f"peak memory {result['peak_memory_mib']:.0f} MiB, accuracy "
              f"{result['accuracy']:.4f}", flush=True)
    print(f"wrote {args.out / 'scaling.md'} and {args.out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
