# Set-up is part of every target: a clean clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
# CPU machines: the CPU wheel. On a GPU machine, install your CUDA torch into $(VENV)
# first (`$(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install torch`): an importable
# torch is kept as it is.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftbench-installed

.PHONY: setup demo test test-mutation bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,evalplus-deps,tensorboard,wandb]"
	$(BIN)/python -m pip install -q --no-deps "evalplus==0.3.1"
	touch $(STAMP)

# The data mirror (laid out as in docs/data-mirror.md); the demo and the tests read it
# offline. Give yours with `make demo DATA_DIR=/path/to/mirror`.
DATA_DIR ?= ../shared/data

## The main job: the toy demo (cost accounting, a toy pair trained on the mirror, its
## training data checked for benchmark overlap, the pair evaluated on every suite with a
## small limit, then the report).
demo: $(STAMP)
	$(BIN)/ftbench info --size toy
	$(BIN)/ftbench train-pair --size toy --data-dir $(DATA_DIR)
	$(BIN)/ftbench data contamination --size toy --data-dir $(DATA_DIR)
	$(BIN)/ftbench eval models/toy/baseline models/toy/free-k0p5 --suite code,math,qa \
		--limit 10 --data-dir $(DATA_DIR)
	$(BIN)/ftbench report toy

## The test suite as CI runs it (GPU tests are deselected by their marker), one pytest-xdist
## worker per core by default (TEST_WORKERS=0: one process). Whole files go to a worker, the
## slowest first (tests/conftest.py).
TEST_WORKERS ?= auto
test: $(STAMP)
	FTBENCH_DATA_DIR=$(abspath $(DATA_DIR)) $(BIN)/python -m pytest -q -m "not gpu" \
		-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

## Mutation testing (mutmut) of the modules whose numbers go into papers, each against the
## tests that target it: killed / survived / timed out per module (docs/development.md).
MUTATION_JOBS ?= 2
test-mutation: $(STAMP)
	$(BIN)/python tests/mutation/run_mutation.py --jobs $(MUTATION_JOBS)

bench: $(STAMP)
	PYTHONPATH=. $(BIN)/python benchmarks/bench_model.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_training.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_loss_memory.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_memory_plan.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_compile.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_rehearsal.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
