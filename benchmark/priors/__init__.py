"""Priors: pretrained models a method may use (monocular depth, video diffusion).

A prior is loaded from a local folder (``from_pretrained(path)`` in diffusers / transformers), never downloaded
inside gfbench: the folder is named by a command-line flag or an environment variable, and a missing or broken
folder is a :class:`PriorError` raised before any training. The runner resolves priors and hands them to a
method's ``fit``; every record lists each prior it used with the sha256 of every file in its folder
(:func:`folder_fingerprint`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gfbench.metrics import sha256_file


class PriorError(RuntimeError):
    """A prior is missing, incomplete or not what its kind expects; the message says what and how to fix it."""


@dataclass(frozen=True)
class PriorSource:
    """Where a prior came from: its kind (``depth``, ``video``), its name (``oracle`` or a folder's name), the
    folder (None for built-in priors such as ``oracle``), and the sha256 of each file in the folder."""

    kind: str
    name: str
    path: str | None = None
    files_sha256: dict[str, str] = field(default_factory=dict)

    def as_record(self) -> dict:
        return {"kind": self.kind, "name": self.name, "path": self.path, "files_sha256": dict(self.files_sha256)}


def folder_fingerprint(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (relative POSIX paths, sorted); hidden files skipped."""
    root = Path(folder)
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }


def resolve_prior_folder(value: str | os.PathLike | None, *, env_var: str, what: str, flag: str,
                         required_files: tuple[str, ...] = ()) -> Path:
    """The prior folder named by ``value`` (a flag), else by ``$env_var``; a clear :class:`PriorError` when
    neither names one, the folder does not exist, or one of ``required_files`` is missing from it."""
    named = value or os.environ.get(env_var)
    if not named:
        raise PriorError(f"{what}: no folder given; pass {flag} PATH or set {env_var} to a local folder "
                         f"(weights are never downloaded by gfbench)")
    folder = Path(named).expanduser()
    if not folder.is_dir():
        raise PriorError(f"{what}: {folder} is not a folder (from {flag if value else env_var})")
    missing = [name for name in required_files if not (folder / name).exists()]
    if missing:
        raise PriorError(f"{what}: {folder} has no {missing[0]!r}; expected a folder saved with "
                         f"save_pretrained() holding {', '.join(required_files)}")
    return folder


__all__ = ["PriorError", "PriorSource", "folder_fingerprint", "resolve_prior_folder"]
