# Gatehouse developer commands. Needs only Python 3.11: everything else goes into .venv, and
# PostgreSQL and Redis are started under var/ unless DATABASE_URL and REDIS_URL are set.

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Touched after a successful install, so pip runs again only when a requirements file changes.
INSTALLED := $(VENV)/.installed

.PHONY: venv run test lint bench clean

venv: $(INSTALLED)

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

# Order-only on the interpreter: recreating it must not by itself force a reinstall.
$(INSTALLED): requirements.txt requirements-dev.txt | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install -r requirements-dev.txt
	touch $@

run: venv
	$(VENV_PYTHON) scripts/run.py

test: venv
	$(VENV_PYTHON) scripts/with_services.py $(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV_PYTHON) -m ruff check .
	$(VENV_PYTHON) -m ruff format --check .

# Benchmarks: `make bench` runs them all, `make bench BENCH=gateway_overhead` one of them.
# Each prints a Markdown table; bench/RESULTS.md keeps the latest figures.
# Gateway load comes from wrk (bench/load.py): installed from Debian's packages when missing and
# this runs as root, as .ci/run does for chromium.
BENCHMARKS := gateway_overhead api_overhead gateway_sustained config_apply revocation_propagation config_scale budget_admission ingestion_throughput sla_failover audit_export audit_verify system_cost gateway_scale config_fanout request_log_scale capture_overhead
BENCH ?= $(BENCHMARKS)
bench: venv
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } \
		|| { echo "make bench needs wrk: apt-get install wrk"; exit 1; }
	@set -e; for name in $(BENCH); do \
		echo "== bench/$$name.py"; $(VENV_PYTHON) scripts/with_services.py $(VENV_PYTHON) bench/$$name.py; \
	done

# Stops the embedded servers first, so that none keeps running on deleted files.
clean:
	if [ -x $(VENV_PYTHON) ]; then $(VENV_PYTHON) scripts/services.py stop; fi
	rm -rf var
