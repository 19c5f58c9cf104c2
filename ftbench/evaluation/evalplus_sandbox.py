"""Pieces of the EvalPlus sandbox that keep a verdict independent of the machine's load and
memory, and leave nothing behind: memory caps, a probe that tells a per-input time-limit
failure from a wrong answer, the sandbox folder, and progress lines."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
from multiprocessing.sharedctypes import RawValue

# One sample may map at most this much new memory: enough to stop a memory bomb early.
SAMPLE_MEMORY_MAX = 12 * 10**9
# EvalPlus's default 4 GiB address-space cap fails Mbpp/255's own canonical solution;
# below this share per sample we run fewer samples at once rather than fail correct code.
SAMPLE_MEMORY_MIN = 6 * 2**30


def memory_plan(parallel: int, available: int, inherited: int,
                sample_max: int = SAMPLE_MEMORY_MAX) -> dict:
    """How many samples run at once and the address-space limit (RLIMIT_AS) of each.

    The limit is per process, so N concurrent samples each allowed 12 GB could take 12N GB
    together and exhaust the machine. Instead the memory available now is split between
    them: each gets min(sample_max, available / N) of new memory. RLIMIT_AS counts address
    space, and a forked sample starts with the scorer's (the ground truth, about 2–3 GB for
    MBPP+), shared copy-on-write and mostly untouched, so the limit is that inherited size
    plus the share. When the share would drop below SAMPLE_MEMORY_MIN, fewer samples run
    at once (never fewer than one)."""
    workers = max(1, min(parallel, available // SAMPLE_MEMORY_MIN))
    share = max(1, min(sample_max, available // workers))
    return {"parallel": workers, "requested_parallel": parallel,
            "available_bytes": int(available), "inherited_bytes": int(inherited),
            "sample_bytes": int(share), "memory_bytes": int(inherited + share)}


def machine_memory() -> tuple[int, int]:
    """(available memory of the machine, this process's address-space size), in bytes."""
    import psutil

    # The worker between the scorer and each sample adds a little of its own.
    slack = 256 * 2**20
    return psutil.virtual_memory().available, psutil.Process().memory_info().vms + slack


class TimeLimitProbe:
    """Records whether one of EvalPlus's per-input time limits fired during a check.

    EvalPlus raises TimeoutException inside the sample when an input runs past
    max(1 s, 4 x ground-truth time) and scores that input, and the sample, "fail": the
    same verdict as a wrong answer. Installed before workers fork, this replaces
    evalplus.eval's time_limit (looked up there at each input) by one that behaves the
    same and also sets a flag in memory shared with the sample's process. The flag is set
    in the signal handler, so it holds even when the sample swallows the exception."""

    def __init__(self):
        self.flag = None

    def install(self) -> None:
        import evalplus.eval as ev

        ev.time_limit = self._time_limit

    def arm(self):
        # Created before untrusted_check forks the sample: the mapping is shared with it.
        self.flag = RawValue("b", 0)
        return self.flag

    @contextlib.contextmanager
    def _time_limit(self, seconds: float):
        from evalplus.eval.utils import TimeoutException

        flag = self.flag

        def on_alarm(signum, frame):
            if flag is not None:
                flag.value = 1
            raise TimeoutException("Timed out!")

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def sandbox_folder(given: str | None):
    """The folder samples run in (they may write there), removed at the end, even on error.

    Temporary folders EvalPlus makes per sample land inside it too (TMPDIR and tempfile's
    default point there), so a sample killed before its own clean-up leaves nothing in the
    system temp folder. A folder passed in belongs to the caller (the parent process, which
    removes it even when this one is killed) and is left to it."""
    path = given or tempfile.mkdtemp(prefix="ftbench-sandbox-")
    before = (os.getcwd(), os.environ.get("TMPDIR"), tempfile.tempdir)
    os.environ["TMPDIR"] = tempfile.tempdir = path
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(before[0])
        if before[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before[1]
        tempfile.tempdir = before[2]
        if not given:
            remove_tree(path)


def remove_tree(path: str) -> None:
    """rmtree that also gets through folders a sample made unreadable (chmod 000)."""

    def make_writable_and_retry(func, p, _exc):
        parent = os.path.dirname(p)
        with contextlib.suppress(OSError):
            os.chmod(parent, stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, onerror=make_writable_and_retry)
            else:
                func(p)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=make_writable_and_retry)


class Progress:
    """Samples scored / total with an ETA on stderr: a tqdm bar on a terminal, else a line
    about every 10 % or every 30 s (CI logs, or a parent relaying a pipe)."""

    def __init__(self, total: int, desc: str, mode: str = "auto", every_s: float = 30.0):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.total, self.desc, self.mode, self.every_s = total, desc, mode, every_s
        self.done, self.t0, self.last = 0, time.monotonic(), time.monotonic()
        self.step = max(1, total // 10)
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="sample", dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.mode == "lines" and (self.done % self.step == 0 or self.done == self.total
                                     or now - self.last >= self.every_s):
            self.last = now
            print(self.line(now - self.t0), file=sys.stderr, flush=True)

    def line(self, elapsed: float) -> str:
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        return (f"{self.desc}: {self.done}/{self.total} samples scored, {elapsed:.0f} s, "
                f"ETA {eta:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
