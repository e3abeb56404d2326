"""Priors: pretrained models a method may use (monocular depth, video diffusion).

A prior is loaded from a local folder (``from_pretrained(path)`` in diffusers / transformers), never downloaded
inside gfbench: the folder is named by a command-line flag, else an environment variable, else the suite's
``default_priors`` (a prior shipped inside the package, :mod:`gfbench.priors.shipping`), and a missing or broken
folder is a :class:`PriorError` raised before any training. The runner resolves priors and hands them to a
method's ``fit`` as a :class:`Priors` mapping (kind -> prior); every record lists each prior it used with the
sha256 of every file in its folder (:func:`folder_fingerprint`). Kinds: ``depth`` (:mod:`gfbench.priors.depth`),
``video`` (:mod:`gfbench.priors.video_kind`, the model in :mod:`gfbench.priors.video`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator



class PriorError(RuntimeError):
    """A prior is missing, incomplete or not what its kind expects; the message says what and how to fix it."""


FROM_FLAG, FROM_ENV, FROM_SUITE = "flag", "env", "suite default"  # PriorSource.origin: what named the prior


@dataclass(frozen=True)
class PriorSource:
    """Where a prior came from: its kind (``depth``, ``video``), its name (``oracle`` or a folder's name), the
    folder (None for built-in priors such as ``oracle``), the sha256 of each file in the folder, and what named
    it (``origin``: the flag, the environment variable or the suite's default; None where not known). The
    origin is recorded but is no part of :meth:`identity`: the same prior named another way is the same job."""

    kind: str
    name: str
    path: str | None = None
    files_sha256: dict[str, str] = field(default_factory=dict)
    origin: str | None = None

    def as_record(self) -> dict:
        record = {"kind": self.kind, "name": self.name, "path": self.path, "files_sha256": dict(self.files_sha256)}
        if self.origin is not None:
            record["origin"] = self.origin
        return record

    @property
    def digest(self) -> str:
        """sha256 over the name and every file's sha256: what identifies the prior in a job's identity."""
        payload = json.dumps({"name": self.name, "files": self.files_sha256}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    @property
    def is_oracle(self) -> bool:
        return self.name == ORACLE

    def identity(self) -> dict:
        return {"name": self.name, "sha256": self.digest}


ORACLE = "oracle"  # the prior name of a dataset's own measurements (depth), allowed only where a suite says so


class Priors(Mapping):
    """The priors one job's method gets, by kind: ``priors["depth"].predict(images)``.

    Asking for a kind the job was not given is a :class:`PriorError` that says how to provide it (a method
    lists the kinds it needs in its ``Capabilities.priors``; the run names them, e.g. ``--depth-prior``).
    """

    def __init__(self, items: dict[str, Any] | None = None):
        self._items = dict(items or {})

    def __getitem__(self, kind: str) -> Any:
        if kind not in self._items:
            raise PriorError(f"this job was given no {kind} prior; a method that uses one lists {kind!r} in its "
                             f"Capabilities.priors, and the run names it "
                             f"({KINDS[kind].how_to_name if kind in KINDS else 'see gfbench run --help'})")
        return self._items[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def records(self) -> dict[str, dict]:
        """kind -> :meth:`PriorSource.as_record` of every prior given (the record's ``priors`` entry)."""
        return {kind: prior.source.as_record() for kind, prior in self._items.items()}


@dataclass(frozen=True)
class NamedPrior:
    """What a run names for one kind: ``value`` (a folder, or ``oracle``) and its ``origin`` (FROM_FLAG,
    FROM_ENV, FROM_SUITE)."""

    value: str
    origin: str


@dataclass(frozen=True)
class PriorKind:
    """How the runner handles one kind of prior: the CLI flag and environment variable that name it,
    ``resolve(value, suite) -> PriorSource`` (planning time, no weights loaded; PriorError when wrong),
    ``load(source)`` (before the first job: load weights once, so a broken folder stops the run before any
    training) and ``for_scene(source, scene, train_views, device, cache_root)`` (the object a method gets,
    whose ``source`` is the one planned). ``required_files``: what every folder of the kind holds (checked
    without loading anything, e.g. for a suite's default prior when the spec is read)."""

    kind: str
    flag: str
    env_var: str
    resolve: Callable[[str | None, Any], PriorSource]
    load: Callable[[PriorSource], None]
    for_scene: Callable[..., Any]
    required_files: tuple[str, ...] = ()

    def named(self, value: str | None, suite: Any = None) -> NamedPrior | None:
        """What a run names for this kind: the flag's ``value``, else the environment variable, else the
        folder of the shipped prior ``suite`` names in its ``default_priors``, else None."""
        if value:
            return NamedPrior(str(value), FROM_FLAG)
        if os.environ.get(self.env_var):
            return NamedPrior(os.environ[self.env_var], FROM_ENV)
        default = (getattr(suite, "default_priors", None) or {}).get(self.kind)
        if default:
            from gfbench.priors.shipping import shipped_folder

            return NamedPrior(str(shipped_folder(default)), FROM_SUITE)
        return None

    def resolve_named(self, value: str | None, suite: Any) -> PriorSource:
        """The checked :class:`PriorSource` of what the run names (:meth:`named`), its origin recorded; the
        kind's clear PriorError when nothing names one."""
        named = self.named(value, suite)
        # the flag's value (or None) goes through as given, so that errors name the flag or the variable
        source = self.resolve(named.value if named and named.origin == FROM_SUITE else value, suite)
        return replace(source, origin=named.origin) if named else source

    @property
    def how_to_name(self) -> str:
        return f"{self.flag} or ${self.env_var}"


KINDS: dict[str, PriorKind] = {}


def register_kind(kind: PriorKind) -> None:
    KINDS[kind.kind] = kind


def prior_kind(kind: str) -> PriorKind:
    if kind not in KINDS:
        raise PriorError(f"no backend for {kind} priors in this gfbench (known kinds: {', '.join(KINDS) or 'none'})")
    return KINDS[kind]


def priors_label(priors_record: dict | None) -> str:
    """A suffix that names a job's priors on a leaderboard: ``+oracle-depth`` for the oracle of a kind, else
    ``+depth:<name>#<hash>`` (the folder's name and the start of the hash of its files' sha256), so runs with
    different priors are different entries."""
    parts = []
    for kind, entry in sorted((priors_record or {}).items()):
        if not isinstance(entry, dict):
            continue
        if entry.get("name") == ORACLE:
            parts.append(f"+{ORACLE}-{kind}")
        else:
            parts.append(f"+{kind}:{entry.get('name')}#{files_digest(entry.get('files_sha256') or {})[:6]}")
    return "".join(parts)


def files_digest(files_sha256: dict[str, str]) -> str:
    """sha256 over a folder's file -> sha256 table: one hash for all its files (labels show its start)."""
    return hashlib.sha256(json.dumps(files_sha256, sort_keys=True).encode()).hexdigest()


def training_defaults() -> dict[str, Any]:
    """``gfbench train-prior``'s settings, ``video_presets/training.json`` without its comments (read without
    torch, so that the command's help can quote them)."""
    from importlib import resources

    text = resources.files("gfbench.priors").joinpath("video_presets/training.json").read_text()
    return {key: value for key, value in json.loads(text).items() if not key.startswith("_")}


def folder_fingerprint(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (relative POSIX paths, sorted); hidden files skipped."""
    from gfbench.metrics import sha256_file  # imported here: gfbench.metrics loads torch

    root = Path(folder)
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }


def local_folder(source: PriorSource) -> Path:
    """The folder of ``source`` on this machine. Planning records the driver's path; a prior shipped in the
    package and named by a suite's default lives inside each machine's own install, so a Ray worker whose
    gfbench is installed at another path loads its own copy, found by name (loading checks every file's
    sha256 against the planned ones, so a worker with another version of the prior refuses it). Any other
    prior must be at the planned path on every machine: a clear error names the path and the host."""
    import platform

    path = Path(source.path)
    if path.is_dir():
        return path
    if source.origin == FROM_SUITE:
        from gfbench.priors.shipping import shipped_folder

        return shipped_folder(source.name)
    raise PriorError(f"{source.kind} prior {source.name!r}: {path} is not a folder on {platform.node()}; a prior "
                     "named by flag or variable must be at that path on every machine that runs jobs (shared "
                     "storage, or the same path on each)")


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


from gfbench.priors import depth as _depth  # noqa: E402,F401  registers the depth kind
from gfbench.priors import video_kind as _video_kind  # noqa: E402,F401  registers the video kind

__all__ = ["FROM_ENV", "FROM_FLAG", "FROM_SUITE", "KINDS", "NamedPrior", "ORACLE", "PriorError", "PriorKind",
           "PriorSource", "Priors", "files_digest", "folder_fingerprint", "prior_kind", "priors_label",
           "register_kind", "resolve_prior_folder", "training_defaults"]
