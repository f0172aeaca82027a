"""
``make bench-data`` works: its short form (2000 keys of 100 bytes, on real
processes) prints every figure with a number and writes them as JSON, so
the harness cannot rot unnoticed.  A benchmark, not a test of speed: nothing
here says how fast anything must be.
"""

import json
import random
import re
import subprocess
import sys

import pytest

from kvd.bench import pipeline
from kvd.bench.watch import parse_per_second
from tests.system.nodes import REPO

pytestmark = pytest.mark.system

#: Every figure of the run: its JSON key and the start of its line.
FIGURES = {
    "load_keys_per_s": "load rate, all keys:",
    "load_keys_per_s_by_tenth": "load rate by tenth of the keys:",
    "load_elections": "elections during the load:",
    "load_failed_writes": "failed writes during the load:",
    "restart_tenth_s": "restart to serving, ",
    "restart_all_s": "restart to serving, ",
    "rss_after_load_mib": "RSS of each node holding the data:",
    "write_ops_baseline": "write throughput, no snapshot:",
    "join_s": "new node to voter:",
    "snapshot_mb_per_s": "snapshot transfer rate:",
    "join_peak_rss_mib": "peak RSS during the join, sender/receiver:",
    "join_elections": "elections during the join:",
    "write_ops_during_snapshot": "write throughput, snapshot being sent:",
    "write_ratio": "throughput with / without the snapshot:",
    "quiet_join_s": "new node to voter, no write load:",
    "quiet_snapshot_mb_per_s": "snapshot transfer rate, no write load:",
    "stall_load_ms": "max reactor stall, load:",
    "stall_compaction_ms": "max reactor stall, compaction:",
    "stall_snapshot_ms": "max reactor stall, join (snapshot):",
}


def test_bench_data_short_form_prints_every_figure_with_a_number(tmp_path):
    out = tmp_path / "data.json"
    port = random.Random().randrange(7600, 7700)
    done = subprocess.run([sys.executable, "-m", "kvd.bench", "data", "--short", "--port", str(port), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    table = [i for i, line in enumerate(lines) if line.startswith("figure ") and "issue 13's target" in line]
    assert table, done.stdout  # the final table
    lines = lines[: table[0]]  # the figures' own lines, as they were measured
    for prefix in set(FIGURES.values()):
        found = [line for line in lines if line.startswith(prefix)]
        assert found, "no line %r in:\n%s" % (prefix, done.stdout)
        for line in found:
            assert re.match(r"[^:]*:\s+\d", line), line  # a number, not "-"
    figures = json.loads(out.read_text())["figures"]
    for key in FIGURES:
        assert figures.get(key) is not None, (key, done.stdout)
    assert figures["load_keys_per_s_keys"] == 2000 and figures["load_failed_writes_given_up"] == 0
    assert len(figures["load_keys_per_s_by_tenth"]) == 10 and all(v > 0 for v in figures["load_keys_per_s_by_tenth"])
    assert len(figures["rss_after_load_mib"]) == 3 and all(v > 0 for v in figures["rss_after_load_mib"].values())
    assert figures["join_peak_rss_mib"]["sender"] > 0 and figures["join_peak_rss_mib"]["receiver"] > 0
    assert figures["stopped_early_before"] is None


def test_keys_and_values_can_be_checked_when_read_back():
    assert pipeline.key(42) == b"d:0000000042" and pipeline.key(7, "t") == b"t:0000000007"
    v = pipeline.value(42, 100)
    assert len(v) == 100 and v.startswith(b"v0000000042:") and v != pipeline.value(43, 100)
    assert len(pipeline.value(3, 5)) == 5


def test_a_failed_key_is_tried_again_then_given_up():
    keys = pipeline.Keys(0, 4, attempts=2)
    assert keys.take(3) == [0, 1, 2]
    keys.failed([1])
    assert keys.take(3) == [1, 3]
    keys.failed([1])
    assert keys.take(3) == [] and keys.given_up == 1


def test_progress_reports_the_rate_of_each_tenth():
    seen = []
    progress = pipeline.Progress(100, on_tenth=lambda *a: seen.append(a))
    progress.resume()
    progress.acked(25)
    progress.acked(75)
    progress.pause()
    assert [p for p, _ in progress.rates()] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert [a[0] for a in seen] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def test_the_stall_history_of_info_is_read_by_second():
    assert parse_per_second("1000:0,3,51") == {1000: 0.0, 1001: 3.0, 1002: 51.0}
    assert parse_per_second("") == {} and parse_per_second("junk") == {}


def test_the_watch_attributes_stalls_and_compactions_to_their_seconds():
    from kvd.bench.watch import Watch

    w = Watch()
    w.stalls["n1"], w.samples["n1"] = {}, []
    w._record("n1", 1005.2, {"reactor_stall_per_second": "1000:1,2,80,3,4,5", "raft_snapshots": 1, "raft_snapshot_index": 100})
    w._record("n1", 1005.7, {"reactor_stall_per_second": "1001:2,80,3,4,5,9", "raft_snapshots": 1, "raft_snapshot_index": 100})
    w._record("n1", 1006.2, {"reactor_stall_per_second": "1001:2,80,3,4,5,700", "raft_snapshots": 2, "raft_snapshot_index": 200})
    w._record("n1", 1009.0, {"reactor_stall_per_second": "1004:4,5,700,1,2,3", "raft_snapshots": 0, "raft_snapshot_index": 200})
    assert w.meter_seen
    assert w.stall_ms("n1", [(1000.0, 1003.5)]) == 80.0  # seconds 1000..1003
    assert w.stall_ms("n1", [(1002.5, 1004.2)]) == 80.0 and w.stall_ms("n1", [(1003.0, 1005.9)]) == 5.0
    spans = w.compactions("n1", 0.0, 2000.0)
    assert spans == [(1005.7, 1006.2)]  # a restart's count from 0 is not a snapshot
    assert w.stall_ms("n1", spans) == 700.0
    assert w.stall_ms("n2", [(0.0, 2000.0)]) is None


def test_the_watch_waits_for_every_live_node_to_be_sampled_after_a_phase():
    from kvd.bench.watch import Watch

    class Node:
        def __init__(self, id, alive=True):
            self.id, self.paused, self._alive = id, False, alive

        def alive(self):
            return self._alive

    w = Watch(interval_s=0.01)
    up, down = Node("n1"), Node("n2", alive=False)
    w.nodes = [up, down]
    w.stalls, w.samples = {"n1": {}, "n2": {}}, {"n1": [], "n2": []}
    w._record("n1", 100.0, {"reactor_stall_per_second": "99:1,2"})
    assert not w.sampled_since(100.5, 0.05)  # n1's last answer came before the phase ended
    w._record("n1", 101.0, {"reactor_stall_per_second": "99:1,2,3"})
    assert w.sampled_since(100.5, 0.05)  # n2 is down: nothing to wait for
