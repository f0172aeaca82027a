"""kvd.node.stall: the reactor stall meter measures a stall, keeps it by second, and shows it in INFO and /metrics."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task

from kvd.discovery.metrics import NodeMetrics
from kvd.node.stall import StallMeter
from kvd.resp.client import parse_info
from kvd.server_info import ServerInfo

START = 1000.0  # a whole wall-clock second, so that the seconds below are easy to name


def started(**kwargs):
    clock = task.Clock()
    clock.advance(START)
    meter = StallMeter(clock, **kwargs)
    meter.startService()
    return clock, meter


def tick(clock, n, interval=0.01):
    for _ in range(n):
        clock.advance(interval)


def test_a_reactor_that_keeps_time_shows_no_stall():
    clock, meter = started()
    tick(clock, 50)
    assert meter.ticks == 50
    assert meter.max_ms < 0.001 and meter.recent_max_ms() < 0.001
    assert all(count == 0 for count in meter.over.values())


def test_a_blocked_reactor_is_measured_as_the_gap_beyond_the_interval():
    clock, meter = started()
    tick(clock, 20)
    clock.advance(0.25)  # the reactor held for 250 ms: the next tick comes 240 ms late
    tick(clock, 5)
    assert abs(meter.max_ms - 240.0) < 0.01
    assert abs(meter.recent_max_ms() - 240.0) < 0.01
    assert meter.over == {50: 1, 100: 1, 1000: 0}
    clock.advance(1.5)  # a longer one
    assert abs(meter.max_ms - 1490.0) < 0.01 and meter.over == {50: 2, 100: 2, 1000: 1}


def test_the_recent_max_forgets_and_the_per_second_history_says_when():
    clock, meter = started(recent_s=10, history_s=60)
    clock.advance(0.5)  # a 490 ms stall ending in second START (the meter started at START)
    tick(clock, 100)
    assert abs(meter.recent_max_ms() - 490.0) < 0.01
    tick(clock, 1100)  # 11 s of steady ticks
    assert meter.recent_max_ms() < 0.001
    assert abs(meter.max_ms - 490.0) < 0.01  # since start: kept
    first, values = meter.per_second()
    assert first == int(START) and len(values) == 13  # the seconds since it started, not before
    assert values[0] == 490.0 and max(values) == 490.0
    tick(clock, 6000)  # a minute on: the last 60 seconds only
    first, values = meter.per_second()
    assert len(values) == 60 and first + 59 == int(clock.seconds()) and max(values) < 0.001


def test_it_stops_with_the_node():
    clock, meter = started()
    tick(clock, 3)
    meter.stopService()
    clock.advance(5.0)
    assert meter.ticks == 3 and not clock.getDelayedCalls()


def test_info_server_shows_the_meter():
    clock, meter = started()
    tick(clock, 10)
    clock.advance(0.08)  # 70 ms late
    tick(clock, 2)
    view = SimpleNamespace(info=lambda: {"raft_node_id": "n1"}, config=SimpleNamespace(address=SimpleNamespace(client_port=7001)))
    info = ServerInfo(view, clock.seconds)
    assert "reactor_stall" not in info.info((b"server",)).decode()  # no meter, no lines
    info.stall = meter
    fields = parse_info(info.info((b"server",)))
    assert fields["reactor_stall_interval_ms"] == "10"
    assert fields["reactor_stall_max_ms"] == "70.0" and fields["reactor_stall_recent_max_ms"] == "70.0"
    assert fields["reactor_stalls_over_50ms"] == "1" and fields["reactor_stalls_over_100ms"] == "0"
    first, _, values = fields["reactor_stall_per_second"].partition(":")
    per_second = [int(v) for v in values.split(",")]
    assert int(first) + len(per_second) - 1 == int(clock.seconds()) and max(per_second) == 70


def test_metrics_export_the_meter():
    clock, meter = started()
    clock.advance(0.2)
    metrics = NodeMetrics(process=False)
    metrics.watch_reactor(meter)
    samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert abs(samples[("kvd_reactor_stall_max_seconds", ())] - 0.19) < 1e-6
    assert abs(samples[("kvd_reactor_stall_recent_max_seconds", ())] - 0.19) < 1e-6
    assert samples[("kvd_reactor_stalls_total", (("over_seconds", "0.1"),))] == 1
    assert samples[("kvd_reactor_stalls_total", (("over_seconds", "1"),))] == 0


def _hold_the_thread_busy(seconds):
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:  # computing, as a slow step would: the tracer must find this frame
        pass


def test_the_tracer_logs_where_the_thread_was_during_a_stall_and_nothing_without_one():
    from twisted.logger import capturedLogs

    from kvd.node.stall import StallTracer

    import threading

    tracer = StallTracer(threshold_ms=30, poll_s=0.002)

    def reactor_thread():
        # A thread of its own: pytest's main thread may be switching greenlets (pytest-twisted), which
        # the tracer, reading sys._current_frames, is not built for and which left it without samples.
        tracer.start()
        tracer.tick()  # no stall since start: nothing
        _hold_the_thread_busy(0.15)
        tracer.tick()

    try:
        with capturedLogs() as events:
            thread = threading.Thread(target=reactor_thread)
            thread.start()
            thread.join(10)
        assert not thread.is_alive()
        assert len(events) == 1, events
        text = events[0]["log_format"].format(**events[0])
        assert text.startswith("reactor stall ") and "_hold_the_thread_busy" in text, text
        assert events[0]["ms"] >= 150 and events[0]["n"] >= 1
        assert events[0]["ran"] >= 0  # Linux: the kernel's account of the gap is there
    finally:
        tracer.stop()


def test_the_gc_meter_counts_collections_and_their_pauses():
    from kvd.node.stall import GcMeter

    times = iter([1.0, 1.004, 2.0, 2.062])
    meter = GcMeter(clock=lambda: next(times))
    meter._callback("start", {"generation": 0})
    meter._callback("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    meter._callback("start", {"generation": 2})
    meter._callback("stop", {"generation": 2, "collected": 5, "uncollectable": 0})
    assert meter.collections == [1, 0, 1]
    fields = dict(meter.info_fields())
    assert fields["gc_collections"] == "1,0,1"
    assert fields["gc_full_pause_max_ms"] == "62.0" and fields["gc_pause_max_ms"] == "62.0" and fields["gc_pause_total_ms"] == "66"


def test_the_gc_meter_hears_real_collections_while_its_service_runs():
    import gc

    clock, meter = started()
    before = sum(meter.gc.collections)
    gc.collect()
    assert meter.gc.collections[2] >= 1 and sum(meter.gc.collections) > before
    meter.stopService()
    counted = list(meter.gc.collections)
    gc.collect()
    assert meter.gc.collections == counted  # uninstalled with the service
    view = SimpleNamespace(info=lambda: {"raft_node_id": "n1"}, config=SimpleNamespace(address=SimpleNamespace(client_port=7001)))
    info = ServerInfo(view, clock.seconds)
    info.stall = meter
    fields = parse_info(info.info((b"server",)))
    assert fields["gc_collections"] == ",".join(str(n) for n in counted) and "gc_frozen_objects" in fields
