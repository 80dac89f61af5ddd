# Two commands set everything up on a fresh machine: `make bench` (the main job: MNv4 vs MobileNetV3 latency on the
# quick-to-build runtimes here, ~3 min on 2 cores, table + CSV/JSON + Pareto plot in bench-results/; `make bench-full`
# adds LiteRT, ExecuTorch and AOTInductor) and `make test`. Both create .venv and install the package with its dev
# extras on first use; `make models` lists the variants.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: models bench bench-full test test-slow lint bench-timm dali test-dali clean

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

bench-full: $(STAMP)
	$(BIN)/mnv4 bench --full

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# The default suite (< 15 min on 2 cores); the tests marked slow (long trainings, searches, measured latency) run
# with `make test-slow` -- CI (.ci/run) runs both.
test: lint
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench-timm: $(STAMP)
	$(BIN)/python benchmarks/vs_timm.py

# The DALI input pipeline's wheel is ~420 MB, so `make test` does not install it (its tests skip without it).
dali: $(STAMP)
	$(BIN)/pip install -q -e ".[dali]"

test-dali: dali
	$(BIN)/python -m pytest -q tests/test_dali.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
