# simuq: `make repro` runs the pipeline, `make test` runs the tests. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv repro test test-fast bench lint clean-venv ui compare

venv: $(STAMP)

# Re-install whenever the pins change. The constraints file pins every transitive package.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[pipeline,dev]"
	# Independent classical SIM implementations for the cross-check (tests/test_crosscheck_classical.py,
	# benchmarks/crosscheck_classical.py). --no-deps: napari-sim-processor declares its Qt widget's
	# packages, which its numpy processor does not use.
	$(BIN)/python -m pip install --quiet --no-deps "pyfairsim==0.0.3" "napari-sim-processor==0.1.1"
	touch $@

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check simuq_core stages tests benchmarks

clean-venv:
	rm -rf $(VENV)

# The MLflow UI over the project's embedded store (loopback only, one worker).
MLFLOW_PORT ?= 5000
ui: $(STAMP)
	@echo "MLflow UI: open http://127.0.0.1:$(MLFLOW_PORT) (Ctrl-C to stop)"
	$(BIN)/mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" \
		--default-artifact-root "$(CURDIR)/mlruns" --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

compare: $(STAMP)
	$(BIN)/python -m stages.compare
