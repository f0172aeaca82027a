"""
kvd.bench's table of loads: ``--loads`` numbers, and the READONLY read set against both of etcd's reads (its
serializable range, and the linearizable GET load's range of the same run).  The loads themselves run in the
short form's system test (tests/system/test_bench.py).
"""

import argparse

import pytest

from kvd.bench import etcd, loads
from kvd.bench.__main__ import _chosen_loads, _linearizable_note, _versus_etcd_linearizable


def test_loads_5_and_6_are_the_linearizable_and_the_readonly_get():
    linearizable, local = _chosen_loads(argparse.Namespace(loads="5,6"))
    assert linearizable.name == "GET (linearizable), 64 clients" and linearizable.etcd == (64, "range")
    assert local.target == "follower" and local.etcd == (64, "range-serializable")
    assert local.etcd_linearizable == linearizable.etcd  # its second ratio is to load 5's etcd figure
    # redis-benchmark's SETs write key:__rand_int__: the custom command reads those keys.
    assert local.args[-3:] == ["KVD.GET", "key:__rand_int__", "SERIALIZABLE"]
    with pytest.raises(SystemExit):
        _chosen_loads(argparse.Namespace(loads="%d" % (len(loads.LOADS) + 1)))


def test_the_ratio_to_etcds_linearizable_get_and_its_note():
    row = _versus_etcd_linearizable(30000.0, 3000.0)
    assert row == {"etcd_linearizable_ops_per_s": 3000.0, "ratio_kvd_to_etcd_linearizable": 10.0}
    assert _linearizable_note(row) == " (to etcd's linearizable GET, 3000 ops/s: 10.00x)"
    not_run = _versus_etcd_linearizable(30000.0, None)  # --loads without the linearizable GET
    assert not_run["ratio_kvd_to_etcd_linearizable"] is None and "not run" in _linearizable_note(not_run)
    assert _linearizable_note({"ratio_kvd_to_etcd": 1.0}) == ""  # the other loads' etcd lines are as they were


def test_etcd_modes(tmp_path):
    assert "range-serializable" in etcd.MODES and '"serializable":true' in etcd.PUT_LUA
    with pytest.raises(ValueError):
        etcd.wrk("http://127.0.0.1:1", 1, 1, "serializable", str(tmp_path))
