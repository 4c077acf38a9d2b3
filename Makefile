# `make demo` and `make test` set up everything they need on a fresh Debian box.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench faults soak setup mosquitto chromium clean

setup: $(VENV)/.installed mosquitto chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing mosquitto (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	else \
		echo "mosquitto is missing: run 'sudo apt-get install mosquitto', then try again" >&2; exit 1; \
	fi

# The dashboard's browser test drives Debian's chromium (headless); without it that test skips.
chromium:
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium (Debian package) for the dashboard's browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium is missing: the dashboard's browser test will skip ('sudo apt-get install chromium' to run it)" >&2; \
	fi

demo: $(VENV)/.installed mosquitto
	$(BIN)/edge-gateway demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@# each test folder has its own conftest.py, so mypy checks them one folder at a time
	@for dir in tests tests/*/; do $(BIN)/mypy --no-error-summary $$dir/*.py || exit 1; done

test: setup lint
	$(BIN)/pytest -q --durations=15

bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/drain.py
	$(BIN)/python bench/rules.py

# The fault suite alone; FAULT_LOOPS=50 repeats the kill -9 loop longer than CI does.
faults: setup
	$(BIN)/pytest -q tests/faults

soak: setup
	$(BIN)/python bench/soak.py --minutes 30

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
