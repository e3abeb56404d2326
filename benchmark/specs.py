"""Declarative dataset and suite specs (YAML), loaded and validated.

Specs live in spec folders (see ``gfbench.paths``): the built-in ``datasets/`` and folders of your own, each
with datasets at ``<dir>/<id>.yaml`` and suites at ``<dir>/suites/<id>.yaml`` (a folder of your own may also
keep suites at its top level: a YAML with ``kind: suite`` or an ``include:`` is a suite). A suite can also be
any file named by its path (``gfbench run --suite ./my-suite.yaml``); its dataset spec is looked up beside it
first.
Ids are unique across all folders: a spec of your own never shadows a built-in one, so results never mix.

A suite may name a default prior per kind, ``default_priors: {video: synthetic-video}``: a prior shipped inside
the package (``gfbench ls priors``), which a run takes when neither the kind's flag (``--prior``) nor its
environment variable (``$GFBENCH_VIDEO_PRIOR``) names a folder. A suite that includes another inherits its
default priors; ``default_priors: {video: null}`` drops one.

A suite may start with ``include: other-suite.yaml`` (a file beside it) or ``include: suite-id`` (any known
suite, e.g. a built-in one) and override fields of it (mappings merge key by key). Every problem is
reported as ``SpecError`` naming the file, the field and what is wrong.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gfbench.paths import spec_dirs, specs_root

SUITES_DIR = "suites"
SPLITS_DIR = "splits"
SUITE_FILE_SUFFIXES = (".yaml", ".yml")
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader where PyYAML was built with it
KNOWN_LAYOUTS = ("synthetic", "colmap", "nerfstudio")


class SpecError(ValueError):
    """A spec file is missing, unreadable or invalid; the message names file, field and problem."""


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    version: int
    layout: str
    scenes: tuple[str, ...]
    path: Path
    description: str = ""
    resolution: tuple[int, int] | None = None  # (width, height) of the stored frames
    options: dict[str, Any] = field(default_factory=dict)  # layout-specific: image folder, generator settings


@dataclass(frozen=True)
class SuiteSpec:
    id: str
    version: int
    dataset: str
    scenes: tuple[str, ...]
    protocol: dict[str, Any]
    metrics: tuple[str, ...]
    path: Path
    description: str = ""
    preset: str = "paper"
    seeds: tuple[int, ...] = (0,)
    quantize: str = "truncate"
    notice: str = ""  # a warning shown wherever the suite's numbers are (ls, leaderboards, --compare-paper)
    undistort: str | None = None  # the undistortion its dataset spec asks of distorted scenes (options.undistort)
    allow_oracle_depth: bool = False  # methods may use the dataset's own depth as the `oracle` depth prior
    # kind -> the shipped prior (gfbench.priors.shipping) a run takes when neither the kind's flag nor its
    # environment variable names one; not part of any hash: the prior itself is in each job's identity
    default_priors: dict[str, str] = field(default_factory=dict)

    @property
    def protocol_type(self) -> str:
        return self.protocol["type"]

    @property
    def splits_dir(self) -> Path:
        return splits_dir_of(self.path)


def splits_dir_of(suite_file: Path) -> Path:
    """Where a suite's frozen splits live: ``splits/`` of the spec folder its file is in (beside the file
    when it is not in a ``suites/`` folder)."""
    folder = Path(suite_file).parent
    return (folder.parent if folder.name == SUITES_DIR else folder) / SPLITS_DIR


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SpecError(f"{path}: file not found")
    try:
        data = yaml.load(path.read_text(), Loader=YAML_LOADER)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _include_path(include: str, path: Path) -> Path:
    """The file an ``include:`` names: a file beside the including one, else a known suite by id."""
    beside = path.parent / include
    if beside.is_file() and not _same_file(beside, path):
        return beside
    suite_id = include[: -len(Path(include).suffix)] if include.endswith(SUITE_FILE_SUFFIXES) else include
    for candidate in _found_suites(suite_id):
        if not _same_file(candidate, path):
            return candidate
    raise SpecError(f"{path}: field 'include': {include!r} is neither a file beside it nor a known suite "
                    f"(known suites: {', '.join(list_suites())})")


def _read_with_includes(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise SpecError(f"{path}: include cycle through {' -> '.join(p.name for p in seen)}")
    data = _read_yaml(path)
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str) or not include:
        raise SpecError(f"{path}: field 'include': expected a file name or a suite id, got {include!r}")
    return _deep_merge(_read_with_includes(_include_path(include, path), (*seen, path)), data)


class _Fields:
    """Typed access to a spec mapping that names the file and field on every problem."""

    def __init__(self, data: dict[str, Any], path: Path, allowed: set[str]):
        self.data, self.path = data, path
        unknown = sorted(set(data) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def fail(self, name: str, problem: str):
        raise SpecError(f"{self.path}: field '{name}': {problem}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if name not in self.data:
            if default is ...:
                self.fail(name, "missing")
            return default
        value = self.data[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.fail(name, f"expected {expected}, got {value!r}")
        return value

    def str_list(self, name: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(name, list, default)
        if not all(isinstance(v, str) and v for v in value):
            self.fail(name, "expected a list of non-empty strings")
        if len(set(value)) != len(value):
            self.fail(name, "has duplicate entries")
        return tuple(value)


def _resolution(fields: _Fields) -> tuple[int, int] | None:
    value = fields.get("resolution", dict, None)
    if value is None:
        return None
    if set(value) != {"width", "height"} or not all(isinstance(v, int) and v > 0 for v in value.values()):
        fields.fail("resolution", f"expected {{width: int > 0, height: int > 0}}, got {value!r}")
    return value["width"], value["height"]


def _holds_suite(path: Path) -> bool:
    """Whether a top-level YAML of a spec folder is a suite (``kind: suite`` or an ``include:``) rather than a
    dataset spec; unreadable files count as dataset specs, so that loading them reports the problem."""
    try:
        stat = path.stat()
    except OSError:
        return False
    return _holds_suite_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _holds_suite_cached(path: str, mtime_ns: int, size: int) -> bool:
    try:
        data = yaml.load(Path(path).read_text(), Loader=YAML_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and (data.get("kind") == "suite" or "include" in data)


def _found_datasets(dataset_id: str) -> list[Path]:
    """Every spec folder's dataset spec file for ``dataset_id``, in search order."""
    return [folder / f"{dataset_id}.yaml" for folder in spec_dirs()
            if (folder / f"{dataset_id}.yaml").is_file() and not _holds_suite(folder / f"{dataset_id}.yaml")]


def _found_suites(suite_id: str) -> list[Path]:
    """Every spec folder's suite file for ``suite_id`` (``suites/<id>.yaml``, or ``<id>.yaml`` holding a
    suite), in search order."""
    found = []
    for folder in spec_dirs():
        nested, flat = folder / SUITES_DIR / f"{suite_id}.yaml", folder / f"{suite_id}.yaml"
        found += [nested] if nested.is_file() else []
        found += [flat] if flat.is_file() and _holds_suite(flat) else []
    return found


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _check_unique(kind: str, spec_id: str, path: Path) -> None:
    """Refuse a spec whose id another spec folder also defines: results are filed by id and would mix."""
    for other in (_found_suites if kind == "suite" else _found_datasets)(spec_id):
        if not _same_file(other, path):
            raise SpecError(f"{path}: {kind} id {spec_id!r} is also defined by {other}; give one of them another "
                            "id (results are filed by id, so the two would mix)")


def dataset_path(dataset_id: str) -> Path:
    found = _found_datasets(dataset_id)
    return found[0] if found else specs_root() / f"{dataset_id}.yaml"


def suite_path(suite_id: str) -> Path:
    found = _found_suites(suite_id)
    return found[0] if found else specs_root() / SUITES_DIR / f"{suite_id}.yaml"


def list_datasets() -> list[str]:
    return sorted({p.stem for folder in spec_dirs() for p in folder.glob("*.yaml") if not _holds_suite(p)})


def list_suites() -> list[str]:
    return sorted({p.stem for folder in spec_dirs()
                   for p in [*(folder / SUITES_DIR).glob("*.yaml"), *folder.glob("*.yaml")]
                   if p.parent.name == SUITES_DIR or _holds_suite(p)})


def is_suite_file(reference: str) -> bool:
    """Whether a ``--suite`` value names a file (a path or a ``.yaml`` name) rather than a suite id."""
    return reference.endswith(SUITE_FILE_SUFFIXES) or "/" in reference or os.sep in reference


def _check_undistort(options: dict, fields: _Fields) -> None:
    from gfbench.builders.undistort import UNDISTORT_OPTIONS  # late: builders are not needed to read specs

    if "undistort" in options and options["undistort"] not in UNDISTORT_OPTIONS:
        fields.fail("options", f"undistort: {options['undistort']!r} is not one of {', '.join(UNDISTORT_OPTIONS)}")


def parse_dataset(path: Path) -> DatasetSpec:
    fields = _Fields(
        _read_yaml(path), path,
        {"id", "kind", "version", "layout", "scenes", "description", "resolution", "options"},
    )
    if fields.get("kind", str) != "dataset":
        fields.fail("kind", "expected 'dataset'")
    spec_id = fields.get("id", str)
    if spec_id != path.stem:
        fields.fail("id", f"{spec_id!r} does not match the file name {path.stem!r}")
    layout = fields.get("layout", str)
    if layout not in KNOWN_LAYOUTS:
        fields.fail("layout", f"{layout!r} is not one of {', '.join(KNOWN_LAYOUTS)}")
    scenes = fields.str_list("scenes")
    if not scenes:
        fields.fail("scenes", "is empty")
    options = fields.get("options", dict, {})
    _check_undistort(options, fields)
    return DatasetSpec(
        id=spec_id,
        version=fields.get("version", int),
        layout=layout,
        scenes=scenes,
        path=path,
        description=fields.get("description", str, ""),
        resolution=_resolution(fields),
        options=options,
    )


def _suite_dataset(dataset_id: str, suite_file: Path) -> DatasetSpec:
    """A suite's dataset spec: the one in the suite file's own spec folder (beside it, or above its
    ``suites/`` folder), else the one found by id."""
    folder = suite_file.parent
    local = (folder.parent if folder.name == SUITES_DIR else folder) / f"{dataset_id}.yaml"
    if local.is_file() and not _holds_suite(local):
        _check_unique("dataset", dataset_id, local)
        return parse_dataset(local)
    return load_dataset(dataset_id)


def parse_suite(path: Path) -> SuiteSpec:
    fields = _Fields(
        _read_with_includes(path), path,
        {"id", "kind", "version", "dataset", "scenes", "protocol", "metrics", "description", "preset", "seeds",
         "quantize", "notice", "allow_oracle_depth", "default_priors"},
    )
    if fields.get("kind", str) != "suite":
        fields.fail("kind", "expected 'suite'")
    spec_id = fields.get("id", str)
    if spec_id != path.stem:
        fields.fail("id", f"{spec_id!r} does not match the file name {path.stem!r}")
    _check_unique("suite", spec_id, path)
    dataset = _suite_dataset(fields.get("dataset", str), path)
    scenes = fields.get("scenes", (str, list), "all")
    if scenes == "all":
        scenes = dataset.scenes
    elif isinstance(scenes, str):
        fields.fail("scenes", f"expected 'all' or a list of scene ids, got {scenes!r}")
    else:
        scenes = fields.str_list("scenes")
        unknown = [s for s in scenes if s not in dataset.scenes]
        if unknown:
            fields.fail("scenes", f"unknown scene {unknown[0]!r} (dataset {dataset.id!r} lists {len(dataset.scenes)} scenes)")
    protocol = fields.get("protocol", dict)
    _validate_protocol(protocol, fields)
    metrics = fields.str_list("metrics")
    _validate_metrics(metrics, fields)
    quantize = fields.get("quantize", str, "truncate")
    if quantize not in ("truncate", "round"):
        fields.fail("quantize", f"expected 'truncate' or 'round', got {quantize!r}")
    seeds = fields.get("seeds", list, [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        fields.fail("seeds", f"expected a non-empty list of integers, got {seeds!r}")
    return SuiteSpec(
        id=spec_id,
        version=fields.get("version", int),
        dataset=dataset.id,
        scenes=tuple(scenes),
        protocol=protocol,
        metrics=metrics,
        path=path,
        description=fields.get("description", str, ""),
        preset=fields.get("preset", str, "paper"),
        seeds=tuple(seeds),
        quantize=quantize,
        notice=" ".join(fields.get("notice", str, "").split()),
        undistort=dataset.options.get("undistort"),
        allow_oracle_depth=fields.get("allow_oracle_depth", bool, False),
        default_priors=_default_priors(fields),
    )


def _default_priors(fields: _Fields) -> dict[str, str]:
    """``default_priors: {kind: shipped prior name}``: each kind known and each prior shipped and of its kind;
    ``kind: null`` drops a default an included suite gives."""
    from gfbench.priors.shipping import check_default  # late: specs are read without the priors

    value = {kind: name for kind, name in fields.get("default_priors", dict, {}).items() if name is not None}
    for kind, name in value.items():
        problem = check_default(kind, name)
        if problem:
            fields.fail("default_priors", problem)
    return value


def _validate_protocol(protocol: dict, fields: _Fields) -> None:
    from gfbench import protocols  # imported late: protocols depends on the scene model, not on specs

    try:
        protocols.validate_protocol(protocol)
    except (ValueError, KeyError) as exc:
        fields.fail("protocol", str(exc))


def _validate_metrics(metrics: tuple[str, ...], fields: _Fields) -> None:
    from gfbench.metrics import METRICS

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        fields.fail("metrics", f"unknown metric {unknown[0]!r}; known: {', '.join(sorted(METRICS))}")


def load_dataset(dataset_id: str) -> DatasetSpec:
    path = dataset_path(dataset_id)
    if not path.exists():
        raise SpecError(f"{path}: no dataset spec {dataset_id!r}; known datasets: {', '.join(list_datasets())}")
    _check_unique("dataset", dataset_id, path)
    return parse_dataset(path)


def load_suite(reference: str) -> SuiteSpec:
    """A suite by id (searched in every spec folder) or by the path of its file."""
    if is_suite_file(reference):
        path = Path(reference).expanduser()
        if not path.is_file():
            raise SpecError(f"{path}: suite file not found")
        return parse_suite(path.resolve())
    path = suite_path(reference)
    if not path.exists():
        raise SpecError(f"{path}: no suite {reference!r}; known suites: {', '.join(list_suites())} "
                        "(or pass the path of a suite file)")
    return parse_suite(path)


def validate_all() -> list[str]:
    """Load every dataset and suite spec of every spec folder and check every frozen split file of every
    suite; return one message per problem (empty when all are valid)."""
    from gfbench.splits import check_frozen_splits  # late: splits depends on protocols and on this module

    problems = []
    for dataset_id in list_datasets():
        try:
            load_dataset(dataset_id)
        except SpecError as exc:
            problems.append(str(exc))
    suites = []
    for suite_id in list_suites():
        try:
            suites.append(load_suite(suite_id))
        except SpecError as exc:
            problems.append(str(exc))
    problems += check_frozen_splits(suites)
    return list(dict.fromkeys(problems))
