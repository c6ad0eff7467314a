"""What a site's privacy ledger costs to read and write as it grows.

    python benchmarks/ledger_size.py --releases 1000,5000,20000

Every message a site answers under DP reads its ledger (verifying every release's MAC, twice:
the deletion-log check and the charge) and writes it back with one release more, all under the
state folder's lock. A ledger grows by a release per DP round and per DP evaluation, for the
site's whole life: 40 rounds and their evaluations a day make about 30,000 releases a year.
For each size this writes a ledger of that many releases (local DP, as a round records them,
runs of 40 rounds of one plan, 300 units' spends) with ``privacy_ledger.write_ledger``, reads it
back with ``read_ledger``, builds ``fedintent privacy-report``'s report of it (which composes
every run's epsilon), and prints the CPU seconds of each and the file's size. docs/SCALING.md
records the result.
"""

import argparse
import tempfile
import time
from pathlib import Path

from fl_client.privacy_ledger import LEDGER_FILE, Ledger, Release, read_ledger, write_ledger
from fl_client.privacy_report import site_privacy_report
from fl_client.site_secret import create_site_secret, site_secret

UNITS = 300


def release(number: int) -> Release:
    """One local-DP round's release, as a site records it."""
    return Release(run=f"run-{number // 40}", server_round=number % 40 + 1, num_rounds=40,
                   noise_multiplier=1.1, sample_rate=0.25, steps=4, clip_norm=1.0, delta=1e-5,
                   accountant="prv", units=UNITS, rdp=0.01, time="2026-12-07T00:00:00+00:00",
                   nonce=f"{number:032x}", target_epsilon=8.0, batch_size=64, local_epochs=1,
                   plan_delta=1e-5)


def measure(releases: int, state_dir: Path) -> dict:
    """CPU seconds to write, to read (and verify), and to report a ledger of ``releases``
    releases."""
    create_site_secret(state_dir)
    secret = site_secret(state_dir)
    ledger = Ledger(privacy_unit="utterance", order=8.0, delta=1e-5,
                    releases=[release(n) for n in range(releases)],
                    spend={f"unit-{n}": 0.5 for n in range(UNITS)})
    started = time.process_time()
    write_ledger(state_dir, ledger, secret)
    written = time.process_time()
    read = read_ledger(state_dir, secret)
    verified = time.process_time()
    report = site_privacy_report(state_dir, 8.0)
    reported = time.process_time()
    assert read is not None and len(read.releases) == releases
    return {"releases": releases, "write_s": written - started, "read_s": verified - written,
            "report_s": reported - verified, "runs": len(report.runs),
            "bytes": (state_dir / LEDGER_FILE).stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", default="1000,5000,20000",
                        help="comma-separated ledger sizes (default: 1000,5000,20000)")
    sizes = [int(size) for size in parser.parse_args().releases.split(",")]
    print(f"{'releases':>9} {'runs':>5} {'write s':>8} {'read s':>7} {'report s':>9} {'MB':>6}")
    for size in sizes:
        with tempfile.TemporaryDirectory() as folder:
            row = measure(size, Path(folder) / "state")
        print(f"{row['releases']:>9} {row['runs']:>5} {row['write_s']:>8.2f} "
              f"{row['read_s']:>7.2f} {row['report_s']:>9.2f} {row['bytes'] / 1e6:>6.1f}",
              flush=True)


if __name__ == "__main__":
    main()
