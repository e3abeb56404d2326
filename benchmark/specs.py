"""Declarative dataset and suite specs (YAML under ``datasets/``), loaded and validated.

Datasets live at ``datasets/<id>.yaml``, suites at ``datasets/suites/<id>.yaml``. A suite may start with
``include: other-suite.yaml`` and override fields of it (mappings merge key by key). Every problem is
reported as ``SpecError`` naming the file, the field and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gfbench.paths import specs_root

SUITES_DIR = "suites"
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
    allow_oracle_depth: bool = False  # methods may use the dataset's own depth as the `oracle` depth prior

    @property
    def protocol_type(self) -> str:
        return self.protocol["type"]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SpecError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
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


def _read_with_includes(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise SpecError(f"{path}: include cycle through {' -> '.join(p.name for p in seen)}")
    data = _read_yaml(path)
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str):
        raise SpecError(f"{path}: field 'include': expected a file name, got {include!r}")
    return _deep_merge(_read_with_includes(path.parent / include, (*seen, path)), data)


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


def dataset_path(dataset_id: str) -> Path:
    return specs_root() / f"{dataset_id}.yaml"


def suite_path(suite_id: str) -> Path:
    return specs_root() / SUITES_DIR / f"{suite_id}.yaml"


def list_datasets() -> list[str]:
    return sorted(p.stem for p in specs_root().glob("*.yaml"))


def list_suites() -> list[str]:
    return sorted(p.stem for p in (specs_root() / SUITES_DIR).glob("*.yaml"))


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
    return DatasetSpec(
        id=spec_id,
        version=fields.get("version", int),
        layout=layout,
        scenes=scenes,
        path=path,
        description=fields.get("description", str, ""),
        resolution=_resolution(fields),
        options=fields.get("options", dict, {}),
    )


def parse_suite(path: Path) -> SuiteSpec:
    fields = _Fields(
        _read_with_includes(path), path,
        {"id", "kind", "version", "dataset", "scenes", "protocol", "metrics", "description", "preset", "seeds",
         "quantize", "allow_oracle_depth"},
    )
    if fields.get("kind", str) != "suite":
        fields.fail("kind", "expected 'suite'")
    spec_id = fields.get("id", str)
    if spec_id != path.stem:
        fields.fail("id", f"{spec_id!r} does not match the file name {path.stem!r}")
    dataset = load_dataset(fields.get("dataset", str))
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
        allow_oracle_depth=fields.get("allow_oracle_depth", bool, False),
    )


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
    return parse_dataset(path)


def load_suite(suite_id: str) -> SuiteSpec:
    path = suite_path(suite_id)
    if not path.exists():
        raise SpecError(f"{path}: no suite {suite_id!r}; known suites: {', '.join(list_suites())}")
    return parse_suite(path)


def validate_all() -> list[str]:
    """Load every dataset and suite spec; return one message per problem (empty when all are valid)."""
    problems = []
    for dataset_id in list_datasets():
        try:
            load_dataset(dataset_id)
        except SpecError as exc:
            problems.append(str(exc))
    for suite_id in list_suites():
        try:
            load_suite(suite_id)
        except SpecError as exc:
            problems.append(str(exc))
    return problems
