# Two commands set everything up on a fresh machine: `make bench` (the main job: MNv4 vs MobileNetV3 latency on every
# runtime here, table + CSV/JSON + Pareto plot in bench-results/) and `make test`. Both create .venv and install the
# package with its dev extras on first use; `make models` lists the variants.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: models bench test lint bench-timm clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q -e ".[dev,tflite,coreml,executorch]"
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/mnv4 models

bench: $(STAMP)
	$(BIN)/mnv4 bench

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

bench-timm: $(STAMP)
	$(BIN)/python benchmarks/vs_timm.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
