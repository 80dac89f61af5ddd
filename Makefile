# Two commands set everything up on a fresh machine: `make models` (the main job until benchmarking lands) and
# `make test`. Both create .venv and install the package with its dev extras on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: models test lint bench-timm clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/mnv4 models

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

bench-timm: $(STAMP)
	$(BIN)/python benchmarks/vs_timm.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
