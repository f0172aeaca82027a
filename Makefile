# kvd: the two commands a new user needs are `make run` and `make test`.
# Both create the virtual environment in .venv and install what they need.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export KVD_HOME ?= $(CURDIR)/.kvd

.PHONY: install run stop status test test-fast sim bench clean

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e . --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

# A local three-node cluster on 127.0.0.1:7001-7003, ready for redis-cli and mgmt.py.
run: install
	$(PY) mgmt.py -r server -c start -h 127.0.0.1:7001
	$(PY) mgmt.py -r server -c join -h 127.0.0.1:7002
	$(PY) mgmt.py -r server -c join -h 127.0.0.1:7003
	$(PY) mgmt.py -r server -c list

stop: install
	-$(PY) mgmt.py -r server -c stop -h 127.0.0.1:7003
	-$(PY) mgmt.py -r server -c stop -h 127.0.0.1:7002
	-$(PY) mgmt.py -r server -c stop -h 127.0.0.1:7001

status: install
	$(PY) mgmt.py -r server -c list

# Every test: unit, simulator, real processes.
test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not system and not docker"

# The deterministic simulator: `make sim RUNS=2000 SEED=1`.
RUNS ?= 500
SEED ?= 1
sim: install
	$(PY) -m kvd.sim --seed $(SEED) --runs $(RUNS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
