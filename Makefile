# kvd: the two commands a new user needs are `make run` and `make test`.
# Both create the virtual environment in .venv and install what they need.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export KVD_HOME ?= $(CURDIR)/.kvd

.PHONY: install run stop status test test-fast sim bench clean clean-data

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e . --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

# A local three-node cluster on 127.0.0.1:7001-7003 (PORT=7101 moves it), ready for redis-cli and mgmt.py.
PORT ?= 7001
NODES := 127.0.0.1:$(PORT) 127.0.0.1:$(shell expr $(PORT) + 1) 127.0.0.1:$(shell expr $(PORT) + 2)
# Run again, it restarts the same cluster on its data (`make clean-data` forgets it).
run: install
	@if [ -d "$(KVD_HOME)/nodes/127.0.0.1-$(PORT)" ]; then \
		for node in $(NODES); do $(PY) mgmt.py -r server -c restart -h $$node || exit $$?; done; \
	else \
		$(PY) mgmt.py -r server -c start -h $(word 1,$(NODES)) && \
		$(PY) mgmt.py -r server -c join -h $(word 2,$(NODES)) && \
		$(PY) mgmt.py -r server -c join -h $(word 3,$(NODES)); \
	fi
	$(PY) mgmt.py -r server -c list

stop: install
	-for node in $(NODES); do $(PY) mgmt.py -r server -c stop -h $$node; done

status: install
	$(PY) mgmt.py -r server -c list

# Every test: unit, simulator, real processes, Docker.  It first installs the Debian packages the
# tests use (tests/debian-packages.sh: as root; otherwise it names the apt-get line and stops).
test: install
	sh tests/debian-packages.sh
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not system and not docker"

# The deterministic simulator: `make sim RUNS=2000 SEED=1`.
RUNS ?= 500
SEED ?= 1
sim: install
	$(PY) -m kvd.sim --seed $(SEED) --runs $(RUNS)

clean-data: stop
	rm -rf $(KVD_HOME)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# The kvd image, built on this machine without a registry: the local Debian base
# (docker/build-base.sh, reused once built), kvd's wheels, then docker build.
# KVD_IMAGE (kvd:latest) and KVD_BASE_IMAGE (kvd-base:bookworm) override the names.
.PHONY: docker-image test-docker
docker-image: install
	docker/build-base.sh
	docker/build-image.sh

# Only the Docker tests: a compose cluster killed, restarted and partitioned.
test-docker: install
	$(PY) -m pytest -q -m docker tests/docker

# Jepsen-style runs against real processes under faults, as long as asked:
# `make torture DURATION=600 NEMESIS=all` (or a comma-separated list of
# kill-leader kill-random stop-leader pause-leader pause-random crash-all partition-random
# partition-leader bridge one-way membership; groups process, partitions).
# One summary line per run; an anomaly keeps the history and node logs under
# TORTURE_OUT.  Partitions need root and nft.  WORKLOAD=txn (MULTI/EXEC, WATCH
# compare-and-set), WORKLOAD=script (Lua scripts) or WORKLOAD=kvtxn (KVD.TXN) runs multi-key ops instead;
# WORKLOAD=expiry SET PX / GET with keys expiring all through the faults; WORKLOAD=locks mgmt.py's lock recipe
# (leases, fencing tokens) with writes fenced by the token.
# WORKLOAD=watch: KVD.WATCH streams resumed FROMREV across nodes while KVD.TXN writes (no gap, no duplicate).
DURATION ?= 300
WORKLOAD ?= register
NEMESIS ?= all
RUN_SECONDS ?= 60
TORTURE_NODES ?= 3
TORTURE_OUT ?= $(KVD_HOME)/jepsen
.PHONY: torture
torture: install
	$(PY) -m kvd.jepsen --duration $(DURATION) --nemesis $(NEMESIS) --run-seconds $(RUN_SECONDS) --nodes $(TORTURE_NODES) --workload $(WORKLOAD) --out $(TORTURE_OUT)

# Longer fuzzing of what strangers send: the RESP parser and client port, the DNS server, the peer
# decoder (tests/fuzz; every test run does a short pass): `make fuzz FUZZ_EXAMPLES=100000`.
FUZZ_EXAMPLES ?= 20000
.PHONY: fuzz
fuzz: install
	KVD_FUZZ=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

# Benchmarks, not tests (they assert nothing about speed): a three-node cluster of their own on
# loopback, bounded loads through redis-benchmark, one line per load (ops/s, p50/p99/p999, CPU
# seconds per node); `make bench-failover` kills the leader KILLS times under light load;
# `make bench-data` measures data at scale (issue 13).
# BENCH_ARGS="--json out.json" keeps the figures; --short is the form CI runs.
KILLS ?= 20
BENCH_ARGS ?=
.PHONY: bench bench-etcd bench-failover bench-tools
bench-tools:
	@command -v redis-benchmark >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null; \
		else echo "make bench needs redis-benchmark; run: sudo apt-get install -y redis-tools" >&2; exit 1; fi; }
bench: install bench-tools
	$(PY) -m kvd.bench loads $(BENCH_ARGS)
# The same loads, each followed by the same load on a 3-member etcd (Debian's etcd-server, driven by wrk)
# and on one redis-server with appendfsync always.  BENCH_ARGS=--profile adds where each node's time goes.
bench-etcd: install bench-tools
	@command -v etcd >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server wrk redis-server >/dev/null; \
		else echo "make bench-etcd needs etcd, wrk and redis-server; run: sudo apt-get install -y etcd-server wrk redis-server" >&2; exit 1; fi; }
	$(PY) -m kvd.bench loads --etcd --redis $(BENCH_ARGS)
bench-failover: install bench-tools
	$(PY) -m kvd.bench failover --kills $(KILLS) $(BENCH_ARGS)
# Issue 14's "no leader change in 10 minutes of full write load": SET from 64 clients for SOAK_SECONDS (600).
SOAK_SECONDS ?= 600
.PHONY: bench-soak
bench-soak: install bench-tools
	$(PY) -m kvd.bench soak --soak-seconds $(SOAK_SECONDS) $(BENCH_ARGS)
# redis-py's own test suite (the installed version's, from PyPI) against a local 3-node cluster, through the
# leader and a follower, RESP2 and RESP3: passed/failed/errors/skipped per file (issue 15). Not part of `make test`.
# BENCH_ARGS="--server redis" runs it against a redis-server instead; "--files test_hash --failures out.tsv".
.PHONY: redis-py-tests
redis-py-tests: install
	@command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else echo "make redis-py-tests --server redis needs redis-server; run: sudo apt-get install -y redis-server" >&2; fi; }
	$(PY) -m kvd.bench redis-py $(BENCH_ARGS)
# Issue 13's figures at scale: load DATA_KEYS keys (1000000) of DATA_VALUE_BYTES bytes (1024), restart a follower,
# join a fourth node by snapshot; load rates, restart times, snapshot rate, RSS, reactor stalls (--max-seconds bounds it).
DATA_KEYS ?=
DATA_VALUE_BYTES ?=
.PHONY: bench-data
bench-data: install
	$(PY) -m kvd.bench data $(if $(DATA_KEYS),--keys $(DATA_KEYS)) $(if $(DATA_VALUE_BYTES),--value-bytes $(DATA_VALUE_BYTES)) $(BENCH_ARGS)
