"""The wire test: nothing a site holds as text crosses the network, as text or as token ids.

A real loopback deployment: one SuperLink, three SuperNodes that reach it only through a
recording TCP proxy (the site's network egress), each with its own data folder in which canary
sentences full of PII were planted next to the synthetic conversations. After a real DP
training run, every byte the sites sent is searched for the canaries, the PII, and any run of
their token ids.
"""

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from data_synth import write_sites
from fedintent.launch.flower_cli import flower_env, write_app
from fedintent.launch.processes import free_port, stop_process_trees
from fedintent.launch.simulation import (
    CONNECTION,
    last_local_run,
    wait_local_superlink,
    write_local_connection,
)
from fl_client.site_secret import create_site_secret
from models.encoder import load_encoder, packaged_minilm

CANARY_TEXTS = [
    "canary zebra quasar {site}: my card 4556 7375 8689 9855 was stolen, call 13912345678",
    "canary walrus nebula {site}: email me at canary.{site}@example.org about order 99887766",
    "canary heron pulsar {site}: my ID is 11010519491231002X and my IP is 203.0.113.77",
]
RUN_TIMEOUT_S = 420


class RecordingProxy:
    """Forwards TCP connections to the SuperLink and keeps every byte sent towards it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.upstream = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the SuperLink is gone (teardown): refuse the site too
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if record:
                    with self.lock:
                        self.upstream.extend(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def forget(self) -> None:
        """Start a new capture: what one run sent is not searched in the next."""
        with self.lock:
            self.upstream.clear()

    def close(self) -> None:
        self.server.close()


def plant_canaries(data: Path) -> tuple[list[str], list[str]]:
    """Add canary conversations to every site; return (canary texts, every PII value)."""
    labels = (data / "labels.txt").read_text().split()
    canaries, pii = [], []
    for site in sorted(p for p in data.iterdir() if p.is_dir()):
        for line in (site / "train.jsonl").read_text().splitlines():
            pii += [item["value"] for item in json.loads(line).get("pii", [])]
        with open(site / "train.jsonl", "a", encoding="utf-8") as f:
            for i, template in enumerate(CANARY_TEXTS):
                text = template.format(site=site.name)
                canaries.append(text)
                f.write(json.dumps({
                    "conversation_id": f"canary-{i}", "customer_id": f"canary-{site.name}-{i}",
                    "timestamp": "2026-01-01T00:00:00Z", "channel": "chat", "language": "en",
                    "turns": [{"speaker": "customer", "text": text}], "intent": labels[i],
                }) + "\n")
    pii += ["4556 7375 8689 9855", "4556737586899855", "13912345678", "11010519491231002X",
            "203.0.113.77", "99887766"]
    return canaries, pii


def token_id_patterns(texts: list[str]) -> list[bytes]:
    """Every run of 4 consecutive word-piece ids, packed the ways a tensor would hold them."""
    tokenizer, _ = load_encoder(packaged_minilm())
    patterns = []
    for text in texts:
        ids = tokenizer(text)["input_ids"][1:-1]
        for start in range(len(ids) - 3):
            window = ids[start : start + 4]
            for dtype in ("<i8", "<i4", "<f4"):
                patterns.append(np.asarray(window, dtype=dtype).tobytes())
    return patterns


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One deployment for both runs: starting three SuperNodes and embedding their data once."""
    tmp_path = tmp_path_factory.mktemp("wire")
    data = tmp_path / "data"
    write_sites(data, n_sites=3, seed=11, size=80)
    canaries, pii = plant_canaries(data)
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    env = flower_env(flwr_home)
    processes: list[subprocess.Popen] = []
    superlink_port = free_port()
    proxy = RecordingProxy(superlink_port)
    with open(tmp_path / "flower.log", "ab") as log:
        try:
            superlink = subprocess.Popen(
                ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                 "--host", "127.0.0.1", "--port", str(superlink_port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            processes.append(superlink)
            wait_local_superlink(superlink_port, superlink)
            for site in ("site-00", "site-01", "site-02"):
                create_site_secret(tmp_path / "state" / site)  # as ``fedintent init-site`` does
                node_config = (f"data-path='{data / site}' "
                               f"state-dir='{tmp_path / 'state' / site}' max-epsilon=20.0 "
                               "retention-days=inf")  # the test data are dated 2026-01-01
                processes.append(subprocess.Popen(
                    ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{proxy.port}",
                     "--port", str(free_port()), "--node-config", node_config],
                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            write_local_connection(flwr_home, superlink_port)
            yield {"data": data, "env": env, "flwr_home": flwr_home, "proxy": proxy,
                   "canaries": canaries, "pii": pii}
        finally:
            stop_process_trees(processes)
            proxy.close()

def run_deployed(deployment, out: Path, **overrides) -> dict:
    """A real run over the deployment, writing to ``out``; its metrics.json. The proxy's capture
    holds what the sites sent during this run only."""
    deployment["proxy"].forget()
    app_dir = write_app(out.parent / "app")
    overrides = {
        "data-dir": str(deployment["data"]), "out-dir": str(out),
        "num-rounds": 1, "min-sites": 3, "target-epsilon": 4.0,
    } | overrides
    command = ["flwr", "run", str(app_dir), CONNECTION, "--stream"]
    for key, value in overrides.items():
        command += ["-c", f"{key}={json.dumps(value)}"]
    subprocess.run(command, env=deployment["env"], cwd=deployment["flwr_home"],
                   capture_output=True, timeout=RUN_TIMEOUT_S, check=False)
    deadline = time.monotonic() + 60
    while not str(last_local_run(deployment["env"], deployment["flwr_home"]).get(
            "status")).startswith("finished"):
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed", metrics.get("error")
    assert all(r["sites_trained"] == 3 for r in metrics["rounds"])
    return metrics


def test_no_text_pii_or_token_ids_cross_the_wire(deployment, tmp_path):
    run_deployed(deployment, tmp_path / "out")
    sent = bytes(deployment["proxy"].upstream)
    # The capture really holds what the sites sent: metric names and the head's parameters.
    assert b"num-examples" in sent and b"epsilon" in sent
    assert len(sent) > 3 * 45 * 384 * 4  # 3 sites' head of 45 x 384 float32s

    for canary in deployment["canaries"]:
        for fragment in (canary, canary.split(":")[0], canary.split(":")[1].strip()):
            assert fragment.encode() not in sent, fragment
    for value in set(deployment["pii"]):
        if len(value) >= 6:
            assert value.encode() not in sent, value
    leaked_ids = [p for p in token_id_patterns(deployment["canaries"]) if p in sent]
    assert not leaked_ids
    assert os.path.getsize(tmp_path / "out" / "model" / "model.safetensors") > 0



def test_under_distributed_dp_no_unmasked_update_crosses_the_wire(deployment, tmp_path):
    """Distributed DP over SecAgg+: what the sites sent holds their masked shares (32-bit words
    in Flower's protocol record) and their metrics, and no array of any other kind: not the
    plaintext integers (int64), not a float update, not an ``arrays`` record."""
    metrics = run_deployed(deployment, tmp_path / "out", **{
        "secure-aggregation": True, "privacy-model": "distributed",
        "tolerated-sites": 1})
    assert [r["secure_aggregation"]["sites_summed"] for r in metrics["rounds"]] == [3]
    sent = bytes(deployment["proxy"].upstream)
    assert b"epsilon-alone" in sent  # the capture holds the sites' replies
    masked = sent.count(b"'descr': '<u4'")
    assert masked == 3 * 3  # 3 sites x (factor, weight, bias) as uint32 words
    # Array headers as numpy writes them, and Flower's dtype names: the masked words are
    # uniformly random bytes, which hold a bare 3-byte "<f8" about once every 16 MiB
    for forbidden in (b"'descr': '<i8'", b"'descr': '<f4'", b"'descr': '<f8'", b"int64",
                      b"float32", b"float64", b"arrays"):
        assert forbidden not in sent, forbidden
    for canary in deployment["canaries"]:
        assert canary.encode() not in sent
