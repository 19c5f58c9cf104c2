"""EvalPlus ground truth (expected outputs and the canonical solutions' times per input),
cached on disk per task and shared by every scorer of the same dataset file.

EvalPlus caches it per dataset under its own cache folder, which ftbench pointed at each
results folder: every results folder (and every test) paid about 85 s to recompute it, and
EvalPlus writes the pickle in place, so a concurrent scorer could read half of one. Here:
- the folder is keyed by the dataset file's content hash (EvalPlus's md5 of the file) and
  the EvalPlus version, so any file with the same content reuses it and nothing stale is read;
- one pickle per task, so scoring a subset computes (and loads) only that subset;
- each file is written to a temporary name and renamed into place, and computing holds an
  exclusive lock, so concurrent scorers neither corrupt nor duplicate the work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import sys
import tempfile
from pathlib import Path

CACHE_ENV = "FTBENCH_EVALPLUS_CACHE"


def cache_root() -> Path:
    """$FTBENCH_EVALPLUS_CACHE, else $XDG_CACHE_HOME/ftbench/evalplus, else
    ~/.cache/ftbench/evalplus. Read it before anything repoints XDG_CACHE_HOME."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "ftbench" / "evalplus").resolve()


def dataset_folder(root: Path, dataset: str, dataset_hash: str) -> Path:
    import evalplus

    return root / f"{dataset}-{dataset_hash}-evalplus{evalplus.__version__}"


def load_groundtruth(problems: dict, task_ids: list[str], folder: Path,
                     not_none: list[str], log=None) -> dict:
    """{task_id: {"base", "base_time", "plus", "plus_time"}} for task_ids, computing (in this
    process, as EvalPlus does: these are the trusted canonical solutions) what is missing."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"cannot create the EvalPlus ground-truth cache {folder} ({e}); "
                         f"point ${CACHE_ENV} at a writable folder") from None
    out, missing = {}, []
    for task_id in task_ids:
        found = _read(_task_file(folder, task_id))
        if found is None:
            missing.append(task_id)
        else:
            out[task_id] = found
    if missing:
        with _exclusive(folder / ".lock"):
            out.update(_compute_missing(problems, missing, folder, not_none, log))
    return out


def _compute_missing(problems: dict, task_ids: list[str], folder: Path, not_none: list[str],
                     log) -> dict:
    out = {}
    # Another scorer may have computed some while this one waited for the lock.
    for task_id in task_ids:
        found = _read(_task_file(folder, task_id))
        if found is not None:
            out[task_id] = found
    todo = [t for t in task_ids if t not in out]
    if todo and log:
        log(f"computing EvalPlus ground truth for {len(todo)} tasks into {folder}")
    for task_id in todo:
        out[task_id] = compute_task(problems[task_id], not_none)
        _write_atomically(_task_file(folder, task_id), out[task_id])
    return out


def compute_task(problem: dict, not_none: list[str]) -> dict:
    """What evalplus.evaluate.get_groundtruth computes for one task."""
    from evalplus.gen.util import trusted_exec

    code = problem["prompt"] + problem["canonical_solution"]
    oracle = {}
    for which in ("base", "plus"):
        oracle[which], oracle[f"{which}_time"] = trusted_exec(
            code, problem[f"{which}_input"], problem["entry_point"], record_time=True,
            output_not_none=problem["entry_point"] in not_none)
    return oracle


def _task_file(folder: Path, task_id: str) -> Path:
    return folder / (task_id.replace("/", "_") + ".pkl")


def _read(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as e:  # written by another Python, or damaged on disk: recompute it
        print(f"warning: ignoring unreadable EvalPlus ground truth {path} "
              f"({type(e).__name__}: {e})", file=sys.stderr)
        return None


def _write_atomically(path: Path, value: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a cache is not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
