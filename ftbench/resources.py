"""Where the run configs and task definitions are, in a checkout and in an installed wheel.

The repository keeps `configs/` and `tasks/` at its top. A wheel ships copies of both
inside the package, as `ftbench/_bundled/configs` and `ftbench/_bundled/tasks` (see
`[tool.setuptools.package-dir]` in pyproject.toml). Every lookup goes through this module,
so the two layouts need no special cases elsewhere.

`FTBENCH_CONFIGS_DIR` and `FTBENCH_TASKS_DIR` name other folders explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_BUNDLED = _PACKAGE / "_bundled"
_CHECKOUT = _PACKAGE.parent


class ResourceError(FileNotFoundError):
    """A configs or tasks folder that should be there is not."""


def _locate(name: str, env: str, marker: str) -> Path:
    explicit = os.environ.get(env)
    if explicit:
        path = Path(explicit).expanduser()
        if not (path / marker).exists():
            raise ResourceError(f"${env} is {explicit}, which holds no {marker}; point it at "
                                f"a copy of the repository's {name}/ folder or unset it")
        return path
    # The wheel's copy first: in a checkout it does not exist, and next to an installed
    # package (site-packages) a folder of that name would belong to something else.
    for path in (_BUNDLED / name, _CHECKOUT / name):
        if (path / marker).exists():
            return path
    raise ResourceError(
        f"ftbench's {name}/ folder was found neither in the installed package "
        f"({_BUNDLED / name}) nor in a source checkout ({_CHECKOUT / name}); reinstall "
        f"ftbench from its repository (`pip install .`) or set ${env} to a copy of the "
        f"repository's {name}/ folder")


def configs_dir() -> Path:
    """The folder of the shipped run configs (toy.yaml, 1.5b.yaml, synthetic.yaml, ...)."""
    return _locate("configs", "FTBENCH_CONFIGS_DIR", "toy.yaml")


def tasks_dir() -> Path:
    """The folder of the shipped task definitions (lm_eval/csqa_utils.py, ...)."""
    return _locate("tasks", "FTBENCH_TASKS_DIR", "lm_eval/csqa_utils.py")


def config_path(name: str) -> Path | None:
    """configs/<name>.yaml from the working directory's configs/ if it has one, else the
    shipped one; None if neither exists. A local copy wins so that a user can edit it."""
    file = f"{name.strip().lower()}.yaml"
    for folder in config_dirs():
        if (folder / file).is_file():
            return folder / file
    return None


def config_dirs() -> tuple[Path, ...]:
    """Where `--size NAME` looks, in order: ./configs, then the shipped configs."""
    return (Path.cwd() / "configs", configs_dir())
