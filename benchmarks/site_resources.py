"""What one site needs: CPU time, peak memory and disk for a round of training on N utterances.

A SuperNode runs its ClientApp in a process of its own, so each measured round runs here in a
fresh process that drives the real ClientApp (``fl_client.client_app.app``) with a train
message, the way a SuperNode does: check the policy, read, validate and redact the site folder,
embed it with the frozen encoder (cached in the site's state folder), charge the privacy ledger
and train the head with DP-SGD, at the run defaults (``minilm-head``, target epsilon 8, batch
4096, one local epoch). The first round embeds every utterance (cold cache); the second reads the
cached embeddings (warm), as every later round and run on unchanged data does.

    nice -n 10 python benchmarks/site_resources.py --utterances 10000
    python benchmarks/site_resources.py --utterances 1000,3000,10000,30000 --out site-scaling

Reports, per round: wall and CPU seconds and the process's peak resident memory (``getrusage``,
so imports, the encoder and the data are all counted), and the disk taken by the site's data
and its state folder (ledger, feature cache). The synthetic site (``data_synth``, English) is
sized to about N conversations, one intent utterance each. With several sizes and ``--out``,
``OUT/site_resources.json``, a table (``.md``) and the curves (``.png``: CPU time and peak memory
of a cold and a warm round against the site's size) are written too.
"""

import argparse
import json
import math
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

from fl_client.site_secret import create_site_secret
from fl_protocol.durable_files import write_bytes_atomic


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_site(out: Path, utterances: int, seed: int) -> Path:
    """One synthetic site folder of about ``utterances`` conversations (train and test)."""
    from data_synth import write_sites

    # A site's size is drawn around the asked mean; the draw scales linearly with it, so one
    # rescaled second pass lands on the asked size.
    size = utterances
    for _ in range(2):
        manifest = write_sites(out, n_sites=1, seed=seed, size=size)
        site = manifest["sites"]["site-00"]
        size = max(1, round(size * utterances / (site["train"] + site["test"])))
    return out / "site-00"


def one_round(site_dir: str, state_dir: str, server_round: int, queue) -> None:
    """Run one train round through the ClientApp in this (fresh) process; report its costs."""
    started, cpu_start = time.monotonic(), time.process_time()
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import fl_client.client_app as client_app
    from data_synth import LABELS
    from fl_protocol.wire import METRICS_KEY, RUN_CONFIG_DEFAULTS
    from models import get_model_family

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    head = get_model_family("minilm-head").build_model(len(LABELS))
    config = ConfigRecord({"labels": list(LABELS), "server-round": server_round,
                           "num-rounds": 2, "run-name": "site-resources"})
    msg = Message(content=RecordDict({"arrays": ArrayRecord(head.state_dict()),
                                      "config": config}), dst_node_id=7, message_type="train")
    # The synthetic conversations are dated early 2026: keep them whatever today's date.
    node = {"data-path": site_dir, "state-dir": state_dir, "retention-days": math.inf}
    ctx = Context(run_id=1, node_id=7, node_config=node,
                  state=RecordDict(), run_config=dict(RUN_CONFIG_DEFAULTS))
    reply = client_app.app(msg, ctx)
    if reply.has_error():
        raise SystemExit(f"round {server_round} refused: {reply.error.reason}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    metrics = reply.content[METRICS_KEY]
    queue.put({"round": server_round, "wall_s": round(time.monotonic() - started, 1),
               "cpu_s": round(time.process_time() - cpu_start, 1),
               "peak_rss_mib": round(usage.ru_maxrss / 1024),  # kB on Linux
               "trained": int(metrics["num-examples"]), "epsilon": round(metrics["epsilon"], 3)})


def measure(utterances: int, seed: int) -> dict:
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="site-resources-") as tmp:
        site_dir = write_site(Path(tmp) / "data", utterances, seed)
        state_dir = Path(tmp) / "state"
        create_site_secret(state_dir)  # the site set up, as ``fedintent init-site`` does
        rows = sum(1 for path in site_dir.glob("*.jsonl") for _ in path.open(encoding="utf-8"))
        rounds = []
        for server_round in (1, 2):
            queue = spawn.Queue()
            child = spawn.Process(target=one_round,
                                  args=(str(site_dir), str(state_dir), server_round, queue))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"round {server_round} failed (exit code {child.exitcode})")
            rounds.append(queue.get())
            print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
        return {"utterances": rows, "data_mib": round(disk_bytes(site_dir) / 2**20, 1),
                "state_mib": round(disk_bytes(state_dir) / 2**20, 1),
                "cold_round": rounds[0], "warm_round": rounds[1],
                "cpus": multiprocessing.cpu_count()}


def write_report(out: Path, results: list[dict]) -> None:
    """``site_resources.md`` and ``site_resources.png``: cost against the site's size."""
    lines = ["| utterances | data MiB | state MiB | cold round: CPU s, wall s, peak MiB "
             "| warm round: CPU s, wall s, peak MiB |", "| ---: | ---: | ---: | ---: | ---: |"]
    for row in results:
        cold, warm = row["cold_round"], row["warm_round"]
        lines.append(f"| {row['utterances']} | {row['data_mib']} | {row['state_mib']} "
                     f"| {cold['cpu_s']}, {cold['wall_s']}, {cold['peak_rss_mib']} "
                     f"| {warm['cpu_s']}, {warm['wall_s']}, {warm['peak_rss_mib']} |")
    write_bytes_atomic(out / "site_resources.md", ("\n".join(lines) + "\n").encode())

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    sizes = [row["utterances"] for row in results]
    fig, (cpu_ax, memory_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("cold_round", "first round (embeds)"), ("warm_round", "later round")):
        cpu_ax.plot(sizes, [row[key]["cpu_s"] for row in results], "o-", label=label)
        memory_ax.plot(sizes, [row[key]["peak_rss_mib"] / 1024 for row in results], "o-",
                       label=label)
    cpu_ax.set(xlabel="utterances at the site", ylabel="CPU seconds", title="CPU time per round")
    memory_ax.set(xlabel="utterances at the site", ylabel="GiB", ylim=(0, None),
                  title="peak memory of the ClientApp")
    for ax in (cpu_ax, memory_ax):
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "site_resources.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", default="10000",
                        help="size of the synthetic site, or comma-separated sizes "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="folder for the JSON, table and plot")
    args = parser.parse_args()
    try:
        sizes = sorted({int(size) for size in args.utterances.split(",")})
    except ValueError:
        parser.error(f"--utterances: comma-separated integers, got {args.utterances!r}")
    if sizes[0] < 100:
        parser.error(f"--utterances must be >= 100, got {sizes[0]}")
    results = []
    for size in sizes:
        results.append(measure(size, args.seed))
        print(json.dumps(results[-1], indent=2), flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(args.out / "site_resources.json",
                               json.dumps(results, indent=1).encode())
            write_report(args.out, results)


if __name__ == "__main__":
    main()
