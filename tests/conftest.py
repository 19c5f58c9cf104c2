import os
import tempfile

# Keep `datasets`' Arrow caches out of ~/.cache (set before anything imports datasets).
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="ftbench-hf-datasets-"))

import pytest  # noqa: E402
import torch  # noqa: E402

from ftbench.model import build_model, get_preset  # noqa: E402


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

# The offline mirror: $FTBENCH_DATA_DIR (set by `make test`), else ../shared/data.
DATA_DIR = Path(os.environ.get("FTBENCH_DATA_DIR") or
                Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "SHA256SUMS").is_file():
        pytest.fail(f"the shared data mirror is missing at {DATA_DIR}")
    return DATA_DIR
