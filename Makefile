# Two entry points (see README): `make demo` runs a whole sweep offline, `make test` runs the tests.
# Both set up everything they need on a fresh machine: system packages (tests), a venv, the package.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SWEEP := $(VENV)/bin/sweep
# The build machine's pins (torch from this machine's disk, the Optuna sweep is tested against):
# constraints.txt. pyproject.toml's requirements stay open for users' environments.
CONSTRAINTS := constraints.txt
DEMO_STORAGE ?= sqlite:///storage/sweep.db
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv system-deps lint clean-demo

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch torchvision
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# PostgreSQL and PgBouncer (storage tests on both backends, and through PgBouncer in transaction
# mode), Slurm and munge (deploy/slurm-array.sh on a throwaway single-node Slurm, as root) and
# Chromium (the report in a real browser).
SYSTEM_PACKAGES := postgresql pgbouncer slurmctld slurmd slurm-client munge
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! test -x /usr/sbin/pgbouncer \
	  || ! test -x /usr/sbin/slurmd || ! test -x /usr/sbin/slurmctld || ! test -x /usr/sbin/munged; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES); \
	fi
	scripts/install-browser

demo: venv
	$(SWEEP) create demo --storage $(DEMO_STORAGE)
	$(SWEEP) worker demo --storage $(DEMO_STORAGE)
	$(SWEEP) status demo --storage $(DEMO_STORAGE)
	$(SWEEP) report demo --storage $(DEMO_STORAGE)

lint: venv
	$(VENV)/bin/ruff check sweep sweep_bench benchmarks tests
	$(VENV)/bin/ruff format --check sweep sweep_bench benchmarks tests

# The whole suite, in TEST_WORKERS processes (pytest-xdist; most tests wait on child processes, a
# database or a browser, so more processes than cores pay; BENCHMARKS.md, "Test suite").
TEST_WORKERS ?= 4
test: venv system-deps lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The edit-test loop: everything not marked slow (no Slurm, no fault injection, no multi-process
# sweeps, no console script end to end: no test over ~10 s on 2 cores), same processes. `make test`
# still runs everything, and CI runs `make test`.
test-fast: venv lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

clean-demo:
	rm -f storage/sweep.db storage/sweep.db-* storage/sweep.db.lock
	rm -rf storage/reports
