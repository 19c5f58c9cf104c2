"""configs/ and tasks/ found in a checkout and in a built wheel (ftbench.resources)."""

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from ftbench import resources
from ftbench.config.loader import size_config_path

ROOT = Path(__file__).resolve().parents[2]


def test_checkout_resolves_to_the_top_level_folders(monkeypatch, tmp_path):
    monkeypatch.delenv("FTBENCH_CONFIGS_DIR", raising=False)
    monkeypatch.delenv("FTBENCH_TASKS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped one answers
    assert resources.configs_dir() == ROOT / "configs"
    assert resources.tasks_dir() == ROOT / "tasks"
    assert size_config_path("toy") == ROOT / "configs" / "toy.yaml"
    assert size_config_path("no-such-size") is None
    # A configs/ in the working directory wins: a user's edited copy.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.yaml").write_text("size: toy\n")
    assert size_config_path("TOY") == tmp_path / "configs" / "toy.yaml"


def test_an_explicit_folder_must_hold_the_files(monkeypatch, tmp_path):
    monkeypatch.setenv("FTBENCH_CONFIGS_DIR", str(tmp_path))
    with pytest.raises(resources.ResourceError, match="FTBENCH_CONFIGS_DIR.*holds no toy.yaml"):
        resources.configs_dir()
    (tmp_path / "toy.yaml").write_text("size: toy\n")
    assert resources.configs_dir() == tmp_path


def test_every_package_folder_is_listed_for_the_wheel():
    # pyproject lists the packages by hand (package-dir maps configs/ and tasks/ into the
    # wheel), so a new subpackage left off the list would be missing from every install.
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "ftbench").rglob("__init__.py")}
    assert on_disk <= listed, sorted(on_disk - listed)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Built from a copy: setuptools writes build/ beside the sources it builds.
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, src / name)
    for name in ("ftbench", "configs", "tasks"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (path,) = out.glob("ftbench-*.whl")
    return path


def test_the_wheel_carries_configs_tasks_and_types(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    def files(folder):
        return [p for p in (ROOT / folder).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]

    expected = {f"ftbench/_bundled/{p.relative_to(ROOT).as_posix()}"
                for folder in ("configs", "tasks") for p in files(folder)}
    # Every file of the package too, data files (py.typed, JSON manifests) included.
    expected |= {p.relative_to(ROOT).as_posix() for p in files("ftbench")}
    assert "ftbench/_bundled/tasks/lm_eval/csqa_utils.py" in expected
    assert "ftbench/_bundled/configs/toy.yaml" in expected and "ftbench/py.typed" in expected
    assert expected <= names, sorted(expected - names)


def test_the_unpacked_wheel_runs_from_another_folder(wheel, tmp_path, data_dir):
    # The wheel's files first on the path: imports come from the unpacked copy, not from
    # this checkout, and nothing of the checkout sits in the working directory.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FTBENCH_CONFIGS_DIR", None)

    def ftbench(*args):
        run = subprocess.run([sys.executable, "-m", "ftbench", *args], cwd=work, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    where = subprocess.run(
        [sys.executable, "-c", "import ftbench.resources as r; print(r.__file__); "
                               "print(r.configs_dir()); print(r.tasks_dir())"],
        cwd=work, env=env, capture_output=True, text=True, timeout=60).stdout.split()
    assert where == [str(site / "ftbench" / "resources.py"),
                     str(site / "ftbench" / "_bundled" / "configs"),
                     str(site / "ftbench" / "_bundled" / "tasks")]
    assert "toy" in ftbench("info", "--size", "toy")
    plan = ftbench("train-pair", "--size", "toy", "--data-dir", str(data_dir), "--dry-run")
    assert "memory plan" in plan and "free-k0p5" in plan
    assert not (work / "models").exists()  # a dry run writes nothing


def test_citation_names_the_package_version():
    import yaml

    import ftbench

    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"] == ftbench.__version__
