# `make dev`: set up and run the engine with the example workflows (SQLite, in-process worker).
# `make test`: set up and run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test install screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/interlock db upgrade
	$(BIN)/interlock dev

test: $(STAMP)
	$(BIN)/pytest -q

screenshots: $(STAMP)  # docs/*.png of the web pages (needs Debian's chromium and chromium-driver)
	$(BIN)/python scripts/screenshot.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
