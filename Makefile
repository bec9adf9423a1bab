# `make dev`: set up and run the engine with the example workflows (SQLite, in-process worker).
# `make test`: set up and run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test install screenshots clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and f"Interlock needs Python 3.11 or newer, $(PYTHON) is {sys.version.split()[0]}: make PYTHON=python3.12 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)  # `make dev PORT=8123` listens there instead of 8000 (like INTERLOCK_PORT=8123)
	$(BIN)/interlock db upgrade
	$(BIN)/interlock dev $(if $(PORT),--port $(PORT))

test: $(STAMP)  # two processes, then alone the tests that restart the brokers or time lateness
	$(BIN)/pytest -q -n 2 -m "not serial"
	$(BIN)/pytest -q -m serial

screenshots: $(STAMP)  # docs/*.png of the web pages (needs Debian's chromium and chromium-driver)
	$(BIN)/python scripts/screenshot.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
