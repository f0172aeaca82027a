"""kvd.bench.redispy reads pytest's report of a run of redis-py's suite into counts per file (no network, no cluster)."""

from __future__ import annotations

from kvd.bench.redispy import Counts, read_junit

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5">
<testcase classname="tests.test_commands.TestRedisCommands" name="test_append" time="0.01"/>
<testcase classname="tests.test_commands.TestRedisCommands" name="test_hset" time="0.01">
  <failure message="redis.exceptions.ResponseError: unknown command 'hset'">trace</failure></testcase>
<testcase classname="tests.test_commands.TestRedisCommands" name="test_zadd" time="0.01">
  <skipped type="pytest.skip" message="Redis version required &gt;= 9"/></testcase>
<testcase classname="tests.test_lock.TestLock" name="test_lock" time="20.0">
  <error message="Failed: Timeout (&gt;20.0s) from pytest-timeout.">trace</error></testcase>
<testcase classname="tests.test_lock.TestLock" name="test_float_timeout" time="0.1"/>
<testcase classname="tests.test_commands.TestRedisCommands" name="test_append" time="0.01">
  <error message="failed on teardown with &quot;unknown command 'flushdb'&quot;">trace</error></testcase>
</testsuite></testsuites>
"""


def test_a_report_is_counted_per_file_with_each_failure_named(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(REPORT)
    per_file = read_junit(str(path))
    assert set(per_file) == {"test_commands.py", "test_lock.py"}
    commands, lock = per_file["test_commands.py"], per_file["test_lock.py"]
    # test_append passed its call but its teardown failed: one test, an error (pytest writes it twice)
    assert (commands.passed, commands.failed, commands.errors, commands.skipped) == (0, 1, 1, 1)
    assert (lock.passed, lock.failed, lock.errors, lock.skipped) == (1, 0, 1, 0)
    assert sorted(commands.failures) == [
        ("tests.test_commands.TestRedisCommands::test_append", "failed on teardown with \"unknown command 'flushdb'\""),
        ("tests.test_commands.TestRedisCommands::test_hset", "redis.exceptions.ResponseError: unknown command 'hset'")]
    total = Counts()
    total.add(commands)
    total.add(lock)
    assert "1 passed" in total.row() and "1 failed" in total.row() and "2 errors" in total.row()
