"""`--help` and `--version` answer at once: they must not load torch (seconds of CPU)."""

import subprocess
import sys

from typer.testing import CliRunner

from ftbench import __version__
from ftbench.cli import app


def _imported_modules(*args: str) -> tuple[str, set[str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftbench", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:")}
    return proc.stdout, modules


def test_help_and_version_do_not_import_torch():
    for args in (["--help"], ["--version"], ["eval", "--help"], ["repro", "--help"],
                 ["data", "--help"]):
        out, modules = _imported_modules(*args)
        assert "typer" in modules  # the measurement works: the CLI's own imports are listed
        assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, args
    assert _imported_modules("--version")[0].strip() == f"ftbench {__version__}"


def test_documented_examples_in_help_are_the_working_forms():
    runner = CliRunner()
    top = " ".join(runner.invoke(app, ["--help"]).output.split())
    assert "ftbench eval models/toy --suite code,math,qa" in top
    assert "models/<run>/*" not in top
    eval_help = " ".join(runner.invoke(app, ["eval", "--help"]).output.split())
    assert "models/toy/* works too (data/ and pair.yaml are skipped)" in eval_help
    repro = " ".join(runner.invoke(app, ["repro", "--help"]).output.split())
    assert "synthetic experiment (section 4.1, Figure 4), measured." in repro


def test_version_is_the_package_metadata_version():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    # The version lives in one place, the package, and pyproject reads it from there.
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ftbench.__version__"}
    from importlib.metadata import version

    assert version("ftbench") == __version__
