import os
import shutil
import tempfile

# Keep `datasets`' Arrow caches and EvalPlus's ground-truth cache out of ~/.cache (set before
# anything imports datasets or ftbench.evaluation, and inherited by subprocesses): a run must
# not pass thanks to what an earlier run on this machine left behind. Removed at the end.
_TEMP_CACHES = []
for _var, _prefix in (("HF_DATASETS_CACHE", "ftbench-hf-datasets-"),
                      ("FTBENCH_EVALPLUS_CACHE", "ftbench-evalplus-cache-"),
                      ("HF_MODULES_CACHE", "ftbench-hf-modules-")):
    if not os.environ.get(_var):
        os.environ[_var] = tempfile.mkdtemp(prefix=_prefix)
        _TEMP_CACHES.append(os.environ[_var])

# Under pytest-xdist (`make test` runs one worker per core): one torch thread per worker,
# inherited by the subprocesses tests start. Two workers with two OpenMP threads each on two
# cores spend their time waiting on each other. An explicit OMP_NUM_THREADS is kept.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The slowest files, longest first (`--durations` under `make test` on an otherwise idle
# 2-core machine: two workers, one thread each). `make test` hands whole files to workers
# in collection order (`--dist loadfile --no-loadscope-reorder`): starting the long ones
# first lets the short files fill in around them instead of leaving one worker alone with
# a long file at the end.
SLOWEST_FILES = (
    "tests/evaluation/test_evalplus.py",  # 194 s
    "tests/test_end_to_end.py",  # 150 s
    "tests/training/test_memory_plan.py",  # 52 s
    "tests/evaluation/test_runner.py",
    "tests/evaluation/test_distributed_eval.py",
    "tests/evaluation/test_evalplus_sandbox.py",
    "tests/training/test_distributed.py",
    "tests/doctor/test_doctor.py",
    "tests/training/test_reshard.py",
    "tests/model/test_models.py",
    "tests/training/test_pair.py",
    "tests/test_readme_commands.py",
    "tests/report/test_sizes.py",
)

from ftbench.model import build_model, get_preset  # noqa: E402


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_unconfigure(config):
    # In the process that made them: under pytest-xdist the workers inherit the variables
    # (their _TEMP_CACHES stay empty) and the controller removes the folders at the end.
    for path in _TEMP_CACHES:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture
def toy_cfg():
    # Small vocabulary and H so that float64 checks and many steps stay fast.
    return get_preset("toy").replace(vocab_size=97, latent_bits=6, max_seq_len=128)


@pytest.fixture
def toy_pair(toy_cfg):
    return (build_model(toy_cfg, "baseline", seed=3, dtype=torch.float64).eval(),
            build_model(toy_cfg, "free", seed=3, dtype=torch.float64).eval())


def z_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


import os  # noqa: E402
from pathlib import Path  # noqa: E402

# The offline mirror (docs/data-mirror.md): $FTBENCH_DATA_DIR, which `make test` sets from
# DATA_DIR. No guessed default: a test that needs the mirror fails, never skips, without it.
DATA_DIR = Path(os.environ["FTBENCH_DATA_DIR"]) if os.environ.get("FTBENCH_DATA_DIR") else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA_DIR is None:
        pytest.fail("FTBENCH_DATA_DIR is not set: run the tests through `make test "
                    "DATA_DIR=/path/to/mirror` (`make data` builds one), or set "
                    "FTBENCH_DATA_DIR to a data mirror laid out as in docs/data-mirror.md",
                    pytrace=False)
    if not (DATA_DIR / "SHA256SUMS").is_file():
        pytest.fail(f"FTBENCH_DATA_DIR={DATA_DIR} holds no complete data mirror (no "
                    "SHA256SUMS); build one with `ftbench data mirror DIR` or point "
                    "FTBENCH_DATA_DIR at one (docs/data-mirror.md)", pytrace=False)
    return DATA_DIR
