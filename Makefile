# Two commands do all the set-up on a fresh machine:
#   make demo   builds .venv, then runs the embedded default (synthetic world, tiny model, CPU)
#   make test   builds .venv, then runs the whole test suite (.ci/run calls exactly this)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned first so that no later requirement resolves a fresh (CUDA, multi-GB) torch build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,kernels,quant
STAMP := $(VENV)/.adaptlm-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

.PHONY: demo test

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python -m experiments.demo

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider
