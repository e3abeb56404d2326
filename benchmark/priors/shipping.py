"""Priors shipped inside the package: ``gfbench/priors/shipped/<name>/``, each a prior folder as ``--prior`` or
``--depth-prior`` would name (what ``save_pretrained`` writes), carried by the wheel as package data.

A suite names one per kind as its default (``default_priors: {video: synthetic-video}``); a run takes it when
neither the kind's flag nor its environment variable names a folder. A shipped prior is recorded like any other
folder: its name and the sha256 of every file. ``gfbench ls priors`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gfbench.priors import KINDS, PriorError

SHIPPED_DIR = "shipped"


def shipped_root() -> Path:
    """The folder holding the shipped priors, inside the installed package (tests point it elsewhere)."""
    return Path(__file__).resolve().parent / SHIPPED_DIR


def shipped_names() -> list[str]:
    """The names of the shipped priors: the folders under :func:`shipped_root` (hidden ones and caches skipped)."""
    root = shipped_root()
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir()
                  if path.is_dir() and not path.name.startswith((".", "_")))


def shipped_folder(name: str) -> Path:
    """The folder of the shipped prior ``name``; a :class:`PriorError` listing the shipped priors when there is
    none of that name."""
    names = shipped_names()
    if name not in names:
        raise PriorError(f"no shipped prior {name!r} (shipped with this gfbench: {', '.join(names) or 'none'}; "
                         f"see 'gfbench ls priors')")
    return shipped_root() / name


def missing_kind_files(kind: str, folder: Path) -> list[str]:
    """The files a folder of ``kind`` must hold (``PriorKind.required_files``) that ``folder`` lacks."""
    return [name for name in KINDS[kind].required_files if not (folder / name).is_file()]


def kind_of(folder: Path) -> str | None:
    """The kind whose required files ``folder`` holds (the first such, in registration order), else None."""
    for kind in KINDS:
        if KINDS[kind].required_files and not missing_kind_files(kind, folder):
            return kind
    return None


def check_default(kind: str, name: str) -> str | None:
    """What is wrong with naming the shipped prior ``name`` as a suite's default ``kind`` prior, or None."""
    if kind not in KINDS:
        return f"unknown prior kind {kind!r} (kinds: {', '.join(KINDS)})"
    if not isinstance(name, str) or not name:
        return f"{kind}: expected the name of a shipped prior, got {name!r}"
    try:
        folder = shipped_folder(name)
    except PriorError as error:
        return f"{kind}: {error}"
    missing = missing_kind_files(kind, folder)
    if missing:
        return f"{kind}: shipped prior {name!r} ({folder}) is not a {kind} prior folder: it has no {missing[0]!r}"
    return None


@dataclass(frozen=True)
class ShippedPrior:
    """One shipped prior as ``gfbench ls priors`` shows it."""

    name: str
    kind: str | None
    path: Path
    size_bytes: int
    files_sha256: dict[str, str]

    @property
    def sha256(self) -> str:
        """The hash of its files' sha256: what a leaderboard label shows the start of."""
        from gfbench.priors import files_digest

        return files_digest(self.files_sha256)


def shipped_priors() -> list[ShippedPrior]:
    """Every shipped prior with its kind, size on disk and the sha256 of every file (hashes every file)."""
    from gfbench.priors import folder_fingerprint

    listed = []
    for name in shipped_names():
        folder = shipped_root() / name
        files = folder_fingerprint(folder)
        size = sum((folder / relative).stat().st_size for relative in files)
        listed.append(ShippedPrior(name, kind_of(folder), folder, size, files))
    return listed


__all__ = ["SHIPPED_DIR", "ShippedPrior", "check_default", "kind_of", "missing_kind_files", "shipped_folder",
           "shipped_names", "shipped_priors", "shipped_root"]
