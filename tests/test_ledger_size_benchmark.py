"""benchmarks/ledger_size.py times a real ledger: the one it writes must verify, with every
release it was asked for, and its report hold every run, or the seconds it prints would time
something else."""

from fl_client.privacy_ledger import read_ledger
from fl_client.site_secret import site_secret


def test_the_benchmark_writes_and_reads_a_ledger_that_verifies(benchmark_script, tmp_path):
    bench = benchmark_script("ledger_size")
    row = bench.measure(120, tmp_path / "state")
    assert row["releases"] == 120 and row["bytes"] > 120 * 300
    ledger = read_ledger(tmp_path / "state", site_secret(tmp_path / "state"))
    assert [r.server_round for r in ledger.releases[:3]] == [1, 2, 3]
    assert row["runs"] == 3  # runs of 40 rounds, each composed by the report
    assert len({r.nonce for r in ledger.releases}) == 120
