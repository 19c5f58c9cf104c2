# Set-up is part of every target: a clean clone needs only `make demo` or `make test`.
# `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
# CPU machines: the CPU wheel. On a GPU machine, install your CUDA torch into $(VENV)
# first (`$(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install torch`): an importable
# torch is kept as it is.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftbench-installed

# The data mirror (laid out as in docs/data-mirror.md); the demo and the tests read it
# offline. Default: a folder inside the clone, which `make demo` and `make test` build
# with `ftbench data mirror` unless it holds a complete mirror (SHA256SUMS is written
# last). A DATA_DIR you give (`make demo DATA_DIR=/path/to/mirror`) is used as it is.
DATA_DIR ?= data-mirror

.DEFAULT_GOAL := help
.PHONY: help setup demo data test test-fast test-science test-mutation bench bench-gpu clean

help: ## List the targets
	@echo "Usage: make TARGET [DATA_DIR=/path/to/mirror] [TEST_WORKERS=N]"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

setup: $(STAMP) ## Create .venv: torch (CPU wheel unless one is installed), ftbench, test tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,evalplus-deps,tensorboard,wandb]"
	$(BIN)/python -m pip install -q --no-deps "evalplus==0.3.1"
	touch $(STAMP)

# Files already present and intact are kept; a partial download resumes.
data: $(STAMP) ## Download and verify the data mirror into DATA_DIR (default data-mirror/)
	$(BIN)/ftbench data mirror $(DATA_DIR)

# The default mirror folder is built when incomplete; a DATA_DIR you give is not touched.
ifeq ($(origin DATA_DIR),file)
MIRROR := test -f $(DATA_DIR)/SHA256SUMS || $(BIN)/ftbench data mirror $(DATA_DIR)
else
MIRROR := true
endif

# The toy demo: cost accounting, a toy pair trained on the mirror, its training data
# checked for benchmark overlap, the pair evaluated on every suite with a small limit,
# then the report.
demo: $(STAMP) ## The toy demo on CPU: train a pair, check overlap, evaluate, report (~4 min)
	$(MIRROR)
	$(BIN)/ftbench info --size toy
	$(BIN)/ftbench train-pair --size toy --data-dir $(DATA_DIR)
	$(BIN)/ftbench data contamination --size toy --data-dir $(DATA_DIR)
	$(BIN)/ftbench eval models/toy/baseline models/toy/free-k0p5 --suite code,math,qa \
		--limit 10 --data-dir $(DATA_DIR)
	$(BIN)/ftbench report toy

# One pytest-xdist worker per core by default (TEST_WORKERS=0: one process). Whole files
# go to a worker, the slowest first (tests/conftest.py). GPU tests are deselected by their
# marker; the synthetic experiment is `make test-science`.
TEST_WORKERS ?= auto
PYTEST := FTBENCH_DATA_DIR=$(abspath $(DATA_DIR)) $(BIN)/python -m pytest -q
test: $(STAMP) ## The test suite without the synthetic experiment (what CI runs first)
	$(MIRROR)
	$(PYTEST) -m "not gpu and not science" -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder

test-fast: $(STAMP) ## The fast lane: every test not marked slow, gpu or science
	$(MIRROR)
	$(PYTEST) -m "not slow and not gpu and not science" -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder

# Its three arms train in three processes of one thread each (`--jobs 3`); sampling runs
# on one thread, as the bounds were calibrated.
test-science: $(STAMP) ## The CI-sized synthetic experiment (paper Fig. 4) against its bounds
	OMP_NUM_THREADS=1 $(PYTEST) -m science tests/repro/test_synthetic.py

MUTATION_JOBS ?= 2
test-mutation: $(STAMP) ## Mutation testing (mutmut) of the modules whose numbers go into papers
	$(BIN)/python tests/mutation/run_mutation.py --jobs $(MUTATION_JOBS)

# Every CPU benchmark that docs/ and benchmarks/README.md quote, in turn (bench_data.py
# generates and tokenises 1.5 GB of text in a temporary folder).
bench: $(STAMP) ## Every CPU speed and memory benchmark the docs quote (benchmarks/README.md)
	PYTHONPATH=. $(BIN)/python benchmarks/bench_model.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_training.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_loss_memory.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_memory_plan.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_compile.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_rehearsal.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_eval.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_data.py

bench-gpu: $(STAMP) ## The GPU checks and figures on a CUDA machine (benchmarks/gpu_check.sh)
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh

clean: ## Remove .venv and build files (not models/, results/, reports/ or the mirror)
	rm -rf $(VENV) .pytest_cache build *.egg-info
