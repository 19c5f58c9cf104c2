"""Offline (a local mirror directory) or online (the Hugging Face hub) data."""

from __future__ import annotations

import os
from pathlib import Path

from ftbench.data.errors import DataError

ENV_VAR = "FTBENCH_DATA_DIR"

# Evaluation splits never enter training: any source path under these is refused.
EVAL_ONLY = ("gsm8k/test", "humanevalplus/", "mbppplus/", "mbpp/", "mmlu/", "commonsenseqa/")


def resolve_data_dir(explicit: str | os.PathLike | None) -> Path | None:
    """The mirror named by --data-dir / config, else $FTBENCH_DATA_DIR, else None (online)."""
    raw = str(explicit) if explicit else os.environ.get(ENV_VAR, "")
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        origin = "--data-dir/data.data_dir" if explicit else f"${ENV_VAR}"
        raise DataError(f"data directory {path} (from {origin}) does not exist; point it at a "
                        "data mirror laid out as in docs/data-mirror.md")
    return path


def go_offline() -> None:
    """Keep `datasets` and the hub client from any network attempt (set before import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def check_hub_reachable(timeout: float = 5.0) -> None:
    """Fail fast, with a fix, when the hub cannot be reached (instead of slow retries)."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or endpoint, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise DataError(f"online mode, but the Hugging Face hub ({endpoint}) is unreachable "
                        f"({e}). Use a local mirror with --data-dir or $FTBENCH_DATA_DIR, or "
                        "check the network.") from None


def resolve_path(path: str, data_dir: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (data_dir / p) if data_dir is not None else p.resolve()
    norm = p.as_posix()
    for marker in EVAL_ONLY:
        if f"/{marker}" in norm and not norm.endswith("gsm8k/train.jsonl"):
            raise DataError(f"{p} is benchmark evaluation data; it must never enter training")
    if not p.exists():
        where = f" (relative paths resolve against the data dir {data_dir})" if data_dir else \
            " (set --data-dir or $FTBENCH_DATA_DIR to resolve relative paths against a mirror)"
        raise DataError(f"data path {p} does not exist{where}")
    return p
