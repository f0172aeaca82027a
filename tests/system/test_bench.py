"""
The benchmarks work (their short forms, as `make bench` and `make bench-failover` run them); they are
benchmarks, not tests, so nothing here says how fast anything must be.
"""

import json
import subprocess
import sys

import pytest

from kvd.bench import loads
from tests.system.nodes import REPO

pytestmark = pytest.mark.system


def test_bench_loads_short_form(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "kvd.bench", "loads", "--short", "--etcd", "--redis", "--profile",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "ops/s" in line and not line.startswith("  ")]
    etcd_lines = [line for line in done.stdout.splitlines() if line.startswith("  etcd, the same load")]
    assert len(lines) == len(loads.LOADS), done.stdout
    assert len(etcd_lines) == sum(1 for load in loads.LOADS if load.etcd), done.stdout
    figures = json.loads(out.read_text())
    assert [row["load"] for row in figures["loads"]] == [load.name for load in loads.LOADS]
    for row in figures["loads"]:
        assert row["ops_per_s"] > 0 and row["p50_ms"] is not None and len(row["cpu_s_per_node_leader_first"]) == 3
        # Every node's CPU is measured; one that did not serve the load (the leader under reads sent to a
        # follower) may round to 0.0 s in the short form, but the nodes that served it used some.
        per_node = row["cpu_s_per_10k_ops_leader_first"]
        assert all(c is None or c >= 0 for c in per_node) and max(c or 0 for c in per_node) > 0, row
    compared = [row for row in figures["loads"] if "etcd" in row]
    assert len(compared) == sum(1 for load in loads.LOADS if load.etcd)
    for row in compared:
        assert row["etcd"]["ops_per_s"] > 0 and row["etcd"]["errors"] == 0, row  # etcd accepted every put/range
        # the whole cluster's CPU per 10K ops, kvd's and etcd's, side by side (what caps both on few cores)
        assert row["cpu_s_per_10k_ops_all_nodes"] > 0 and row["etcd"]["cpu_s_per_10k_ops_all_members"] > 0, row
    # The local read (KVD.GET ... SERIALIZABLE, redis-benchmark's custom command) answered every request, and is
    # set against both of etcd's reads: its serializable range and the linearizable GET load's range of this run.
    (local,) = [row for row in compared if "ratio_kvd_to_etcd_linearizable" in row]
    assert local["load"] == next(load.name for load in loads.LOADS if load.etcd_linearizable), local
    assert local["errors_shown"] == 0 and local["ratio_kvd_to_etcd"] > 0, local
    assert local["ratio_kvd_to_etcd_linearizable"] > 0 and local["etcd_linearizable_ops_per_s"] > 0, local
    # Redis with fsync always ran every load to the leader, and each node was sampled under every load.
    to_leader = [row for row in figures["loads"] if "follower" not in row["load"]]
    assert all(row["redis_aof_always"]["ops_per_s"] > 0 for row in to_leader), figures["loads"]
    assert all("redis_aof_always" not in row for row in figures["loads"] if row not in to_leader)
    # Every node was sampled under every load; the node a load targets is busy, so it has samples in each (the
    # others may be idle through a short load, e.g. followers under a leader's reads: py-spy counts no idle time).
    for row in figures["loads"]:
        profiles = row["profile_us_per_request"]
        assert len(profiles) == 3 and profiles[row["target"]], row
    nodes = figures["loads"][0]["profile_us_per_request"].keys()
    assert all(any(row["profile_us_per_request"][n] for row in figures["loads"]) for n in nodes), figures["loads"]
    assert done.stdout.count("where the time goes") == len(loads.LOADS), done.stdout


def test_bench_failover_short_form(tmp_path):
    out = tmp_path / "failover.json"
    done = subprocess.run([sys.executable, "-m", "kvd.bench", "failover", "--short", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    assert figures["failover"]["kills"] == 2 and len(figures["times_s"]) == 2
    assert "time to the next acknowledged write" in done.stdout
    (round_,) = figures["membership_rounds"]  # one removal of the leader, then its re-adding
    assert all(isinstance(round_[k], float) for k in ("leader_after_s", "write_after_s", "join_to_voter_s")), round_
    assert "re-added at the same address -> voter:" in done.stdout


def test_bench_soak_short_form(tmp_path):
    """The ten-minute write load of issue 14, for five seconds: rounds run, elections and CPU per 10K ops are counted."""
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "kvd.bench", "soak", "--short", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    assert figures["seconds"] >= 5 and figures["ops"] > 0 and figures["rounds"]
    assert isinstance(figures["elections"], int) and len(figures["cpu_s_per_10k_ops_leader_first"]) == 3
    assert "soak: " in done.stdout and "elections" in done.stdout


def test_the_report_parser_reads_redis_benchmark_7():
    report = """====== SET ======
  200 requests completed in 0.07 seconds
  1 parallel clients
Latency by percentile distribution:
0.000% <= 1.103 milliseconds (cumulative count 1)
50.000% <= 3.287 milliseconds (cumulative count 101)
99.000% <= 9.503 milliseconds (cumulative count 199)
99.900% <= 12.100 milliseconds (cumulative count 200)
100.000% <= 12.100 milliseconds (cumulative count 200)
Summary:
  throughput summary: 2857.14 requests per second
"""
    r = loads.parse(report)
    assert (r.ops_per_s, r.p50_ms, r.p99_ms, r.p999_ms, r.seconds) == (2857.14, 3.287, 9.503, 12.1, 0.07)
    with pytest.raises(RuntimeError):
        loads.parse("no report here")
