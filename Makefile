# Entry points, each working on a fresh machine with nothing installed by hand:
#   make demo       set up .venv, run the quick demo on the embedded defaults (8x8 digits and synthetic token
#                   tasks; small models trained and cached), write the HTML report and print its path last
#   make reproduce  the full reproduction: every study on three seeds, Fashion-MNIST included (long; see README)
#   make test       set up .venv with the test oracles, run the default test suite, then ruff check
# torch 2.13.0 (CPU wheel) is installed first and pinned so that no CUDA build is ever resolved.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip install -q --disable-pip-version-check
TORCH   := torch==2.13.0
OUT     ?= out/demo
REPRO   ?= out/reproduce
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo demo-quick reproduce test test-slow setup setup-dev fashion browser bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e ".[hf]" "$(TORCH)"   # transformers: the IOI Llama (zoo ioi-llama, studies path-ioi, lm-probes)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) "$(TORCH)" pytest captum transformers "transformer-lens==3.9.0" ruff hypothesis selenium "ray>=2.9"
	$(PIP) --no-deps zennit   # zennit's torchvision pin breaks imports next to the CPU torch
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

# Fashion-MNIST from Debian's package when its files are missing (INNERPROBE_FASHION_MNIST overrides).
fashion:
	@if [ -z "$$INNERPROBE_FASHION_MNIST" ] && [ ! -f $(FASHION) ]; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  if [ "$$(id -u)" = 0 ]; then S=; else S=sudo; fi; \
	  $$S apt-get update -qq && $$S apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
	  echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST recipes will say how to get it"; \
	fi

# Debian's Chromium and its driver for the report's browser test, when missing.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver (browser test of the report)"; \
	  if [ "$$(id -u)" = 0 ]; then S=; else S=sudo; fi; \
	  $$S apt-get update -qq && $$S apt-get install -y -qq chromium chromium-driver >/dev/null || \
	  echo "warning: could not install chromium; the browser test will be skipped"; \
	fi

demo: setup
	OMP_NUM_THREADS=1 $(BIN)/innerprobe demo --quick --out $(OUT)

demo-quick: demo

reproduce: setup fashion
	OMP_NUM_THREADS=1 $(BIN)/innerprobe demo --seeds 3 --out $(REPRO)

test: setup-dev fashion browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test-slow: setup-dev fashion browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow
	OMP_NUM_THREADS=1 INNERPROBE_FUZZ=long $(BIN)/python -m pytest -q tests/test_fuzz_api.py tests/test_fuzz_cli.py

bench: setup
	$(BIN)/python benchmarks/apex_bench.py
	$(BIN)/python benchmarks/patch_bench.py
	$(BIN)/python benchmarks/pullback_bench.py

clean:
	rm -rf $(VENV) out build src/*.egg-info
