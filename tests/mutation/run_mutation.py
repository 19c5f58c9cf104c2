"""The mutation-testing tier: mutmut over the modules whose numbers users copy into papers.

Each module is mutated on its own, in a scratch copy of the package and tests under
build/mutation/<module>, and every mutant is judged by the tests that target that module
only (listed below). Prints, per module: mutants, killed, survived, timed out, the
survivors listed as equivalent in tests/mutation/equivalent.md, and the share of the
non-equivalent mutants killed. Exits 1 when a module kills fewer than --min-killed of
its non-equivalent mutants or has a survivor that is not listed.

    make test-mutation                      # every module, 2 parallel mutants
    .venv/bin/python tests/mutation/run_mutation.py stats sampler --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EQUIVALENT = Path(__file__).with_name("equivalent.md")

# module name: (the file mutated, the tests that target it)
MODULES: dict[str, tuple[str, list[str]]] = {
    "accounting": ("ftbench/model/accounting.py", ["tests/model/test_accounting.py"]),
    "objective": ("ftbench/objective.py", ["tests/model/test_objective.py"]),
    "stats": ("ftbench/report/stats.py", ["tests/report/test_stats.py"]),
    "sampler": ("ftbench/data/sampler.py", ["tests/data/test_sampler.py"]),
    "scoring": ("ftbench/evaluation/scoring.py", ["tests/evaluation/test_scoring.py",
                                                  "tests/evaluation/test_scoring_mixture.py",
                                                  "tests/evaluation/test_truncation.py"]),
}


def equivalent_mutants() -> set[str]:
    """Mutant names listed in equivalent.md (a `name` at the start of a list item)."""
    if not EQUIVALENT.exists():
        return set()
    return set(re.findall(r"^- `([\w.]+__mutmut_\d+)`", EQUIVALENT.read_text(), re.M))


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def prepare(name: str, work: Path) -> None:
    source, tests = MODULES[name]
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "ftbench", work / "ftbench", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    config = (ROOT / "pyproject.toml").read_text()
    config += (
        "\n[tool.mutmut]\n"
        'source_paths = ["ftbench"]\n'
        f"only_mutate = {_toml_list([source])}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist"]\n'
        # Mutants fork from the process that ran the tests once (torch warmed up); one
        # OpenMP thread (set below) keeps torch safe to fork.
        'process_isolation = "fork"\n'
        "use_git_change_detection = false\n"
    )
    (work / "pyproject.toml").write_text(config)


def run_module(name: str, jobs: int, keep: bool) -> dict:
    work = ROOT / "build" / "mutation" / name
    prepare(name, work)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    mutmut = [sys.executable, "-m", "mutmut"]
    t0 = time.monotonic()
    log = work / "mutmut-run.log"
    with open(log, "w") as f:
        rc = subprocess.run(mutmut + ["run", "--max-children", str(jobs)], cwd=work, env=env,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - t0
    if rc != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"{name}: mutmut run failed (exit {rc}); log in {log}")
    subprocess.run(mutmut + ["export-cicd-stats"], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    listing = subprocess.run(mutmut + ["results", "--all", "true"], cwd=work, env=env,
                             check=True, capture_output=True, text=True).stdout
    status = dict(re.findall(r"^\s*([\w.]+__mutmut_\d+): ([\w ]+?)\s*$", listing, re.M))
    survivors = sorted(k for k, v in status.items() if v == "survived")
    stats.update(name=name, seconds=seconds, survivors=survivors, work=str(work))
    if not keep:
        shutil.rmtree(work / "mutants", ignore_errors=True)
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", metavar="MODULE",
                    help=f"some of: {', '.join(MODULES)} (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel")
    ap.add_argument("--min-killed", type=float, default=0.90,
                    help="least share of non-equivalent mutants killed per module")
    ap.add_argument("--keep", action="store_true", help="keep build/mutation/*/mutants")
    args = ap.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    args.modules = args.modules or list(MODULES)
    equivalent = equivalent_mutants()
    rows, ok, t0 = [], True, time.monotonic()
    for name in args.modules:
        s = run_module(name, args.jobs, args.keep)
        eq = [m for m in s["survivors"] if m in equivalent]
        unlisted = [m for m in s["survivors"] if m not in equivalent]
        judged = s["total"] - len(eq) - s["skipped"]
        share = s["killed"] / judged if judged else 1.0
        rows.append((name, s, len(eq), share))
        print(f"{name}: {s['total']} mutants, killed {s['killed']}, survived {s['survived']} "
              f"({len(eq)} listed as equivalent), timed out {s['timeout']}, no tests "
              f"{s['no_tests']}, suspicious {s['suspicious']}; killed {share:.1%} of the "
              f"non-equivalent; {s['seconds']:.0f} s", flush=True)
        for m in unlisted:
            print(f"  survived, not listed as equivalent: {m}  (mutmut show {m}, in {s['work']})")
        if share < args.min_killed or unlisted:
            ok = False
    print()
    print(f"{'module':<11} {'mutants':>7} {'killed':>6} {'survived':>8} {'equiv.':>6} "
          f"{'timeout':>7} {'no tests':>8} {'killed/non-eq':>13} {'time':>7}")
    for name, s, n_eq, share in rows:
        print(f"{name:<11} {s['total']:>7} {s['killed']:>6} {s['survived']:>8} {n_eq:>6} "
              f"{s['timeout']:>7} {s['no_tests']:>8} {share:>13.1%} {s['seconds']:>6.0f}s")
    print(f"total time {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
