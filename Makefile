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

# Runs each bench/*.py (none yet) with the services up.
bench: venv
	@set -e; found=0; for script in bench/*.py; do \
		[ -e "$$script" ] || continue; found=1; \
		echo "== $$script"; $(VENV_PYTHON) scripts/with_services.py $(VENV_PYTHON) "$$script"; \
	done; [ $$found = 1 ] || echo "no benchmarks in bench/ yet"

# Stops the embedded servers first, so that none keeps running on deleted files.
clean:
	if [ -x $(VENV_PYTHON) ]; then $(VENV_PYTHON) scripts/services.py stop; fi
	rm -rf var
