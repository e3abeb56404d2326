"""Where gfbench finds its specs and keeps its data.

Specs come from the built-in folder (``datasets/`` of a checkout, or the copy a wheel installs as
``gfbench/_specs``) and from folders of your own, which add to the built-ins:

- ``gfbench --specs DIR`` (repeatable), then
- ``$GFBENCH_SPEC_PATH``: folders separated by ``os.pathsep`` (``:`` on Linux).

A folder of your own has the built-in layout: dataset specs ``<dir>/<id>.yaml``, suites
``<dir>/suites/<id>.yaml``, frozen splits ``<dir>/splits/<suite>/<scene>.json``. ``$GFBENCH_SPECS`` replaces
the built-in folder itself (for developing the built-in specs; user folders still add to it).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "GFBENCH_DATA"
SPECS_ENV = "GFBENCH_SPECS"
SPEC_PATH_ENV = "GFBENCH_SPEC_PATH"

_PACKAGE_DIR = Path(__file__).resolve().parent
_flag_spec_dirs: list[Path] = []  # set by ``gfbench --specs DIR``


def data_root(override: str | os.PathLike | None = None) -> Path:
    """Shard root: an explicit ``override``, else ``$GFBENCH_DATA``, else ``~/.cache/gfbench/data``. A URL
    (``http(s)://``, ``pipe:``, ``s3://``...) is returned as the string it is (see ``gfbench.shards``)."""
    from gfbench.shards import is_remote

    chosen = override or os.environ.get(DATA_ENV)
    if chosen and is_remote(chosen):
        return str(chosen)
    if chosen:
        return Path(chosen).expanduser()
    return Path.home() / ".cache" / "gfbench" / "data"


def specs_root() -> Path:
    """The built-in folder of YAML specs: ``$GFBENCH_SPECS``, else the checkout's ``datasets/`` beside
    ``benchmark/`` (editable install), else the copy a wheel installs as ``gfbench/_specs``."""
    if os.environ.get(SPECS_ENV):
        return Path(os.environ[SPECS_ENV]).expanduser()
    checkout = _PACKAGE_DIR.parent / "datasets"
    if (_PACKAGE_DIR.parent / "pyproject.toml").exists() and checkout.is_dir():
        return checkout
    return _PACKAGE_DIR / "_specs"


def set_user_spec_dirs(dirs: list[str | os.PathLike]) -> None:
    """The folders given with ``gfbench --specs`` (searched before ``$GFBENCH_SPEC_PATH``)."""
    _flag_spec_dirs[:] = [Path(d).expanduser() for d in dirs]


def user_spec_dirs() -> list[Path]:
    """Folders of user specs, in search order: ``--specs`` folders, then ``$GFBENCH_SPEC_PATH``'s."""
    from_env = [Path(p).expanduser() for p in os.environ.get(SPEC_PATH_ENV, "").split(os.pathsep) if p]
    dirs: list[Path] = []
    for folder in (*_flag_spec_dirs, *from_env):
        if folder.resolve() not in {d.resolve() for d in dirs} and folder.resolve() != specs_root().resolve():
            dirs.append(folder)
    return dirs


def spec_dirs() -> list[Path]:
    """Every spec folder, user folders first, the built-in folder last."""
    return [*user_spec_dirs(), specs_root()]


def splits_root() -> Path:
    """Frozen splits of the built-in suites."""
    return specs_root() / "splits"


def inside_installed_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies inside the installed ``gfbench`` package (site-packages), where nothing is
    ever written. An editable checkout's ``datasets/`` is not inside it."""
    try:
        Path(path).resolve().relative_to(_PACKAGE_DIR)
    except ValueError:
        return False
    return True
