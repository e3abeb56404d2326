"""Typed method settings and presets, read from a method's presets file.

A presets file (``methods/presets/<method>.yaml``, or the file a method class names in ``presets_file``) is::

    include: gaussian-base        # optional: another presets file, merged under this one
    settings:                     # the schema: every setting's type and allowed values
      steps: {type: int, min: 1, help: training steps}
      depth_mode: {type: str, choices: [expected, median]}
    presets:
      paper: {steps: 7000, ...}
      quick: {extends: paper, steps: 300}

``include`` names a file (``.yaml`` optional) beside the including one, else in gfbench's own presets folder,
so a method outside the package can build on ``gaussian-base``. The included file's ``settings`` and
``presets`` are merged key by key under the including file's (a preset both define is merged setting by
setting). ``extends`` makes a preset start from another one of the same (merged) file.

Setting fields: ``type`` (``int``, ``float``, ``bool``, ``str``), bounds ``min`` / ``max`` (inclusive) and
``gt`` / ``lt`` (exclusive), ``choices``, ``odd`` (ints), ``nullable`` (null allowed), ``optional`` (a preset
may leave it out: the setting is only read by some configurations, e.g. the MCMC strategy's), ``help``.

A preset value may differ per suite protocol: ``{masked: 0.5, sparse: 1.0}`` (keys among
:data:`PROTOCOLS`), each value checked against the setting; :meth:`MethodPresets.config` with ``protocol=``
picks the protocol's value (the runner passes the suite's protocol type, so a method only ever sees plain
values and a record's config holds the numbers that ran).

Every preset must give every non-optional setting a valid value and nothing else; ``--set`` overrides are
checked against the same schema. A :class:`ConfigError` names the file or method, the setting, the value and
what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gfbench.specs import YAML_LOADER

TYPES = ("int", "float", "bool", "str")
PROTOCOLS = ("masked", "corner", "sparse")  # suite protocol types a preset value may be given per
_SETTING_FIELDS = {"type", "min", "max", "gt", "lt", "choices", "odd", "nullable", "optional", "help"}
_FILE_FIELDS = {"include", "settings", "presets"}


class ConfigError(ValueError):
    """A method setting, preset or presets file is wrong; the message says which and what is allowed."""


def builtin_presets_dir() -> Path:
    return Path(str(resources.files("gfbench.methods") / "presets"))


@dataclass(frozen=True)
class Setting:
    """One typed setting of a method's config."""

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    odd: bool = False
    nullable: bool = False
    optional: bool = False
    help: str = ""

    def allowed(self) -> str:
        """What the setting accepts, in words: ``an integer >= 1``, ``a number in (0, 1)``, ``one of a, b``."""
        if self.choices is not None:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.type == "bool":
            text = "true or false"
        elif self.type == "str":
            text = "a string"
        else:
            noun = "an odd integer" if self.odd else "an integer" if self.type == "int" else "a number"
            text = noun + self._bounds()
        return text + (" or null" if self.nullable else "")

    def _bounds(self) -> str:
        low = (f"[{_num(self.min)}" if self.min is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        high = (f"{_num(self.max)}]" if self.max is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f" in {low}, {high}"
        if low:
            return f" {'>=' if self.min is not None else '>'} {low[1:]}"
        if high:
            return f" {'<=' if self.max is not None else '<'} {high[:-1]}"
        return ""

    def check(self, value: Any) -> Any:
        """``value`` as the setting's type (an int or a numeric string is accepted for a float; YAML reads
        ``1e-3`` as a string); ConfigError when it is not allowed. A per-protocol mapping has each of its
        values checked."""
        if is_per_protocol(value):
            return {protocol: self.check(item) for protocol, item in value.items()}
        if value is None and self.nullable:
            return None
        checked = self._typed(value)
        if checked is None or not self._in_range(checked):
            raise ConfigError(f"setting {self.name!r} = {_show(value)} is not allowed: expected {self.allowed()}")
        return checked

    def _typed(self, value: Any) -> Any:
        if self.type == "bool":
            return value if isinstance(value, bool) else None
        if self.type == "str":
            return value if isinstance(value, str) else None
        if isinstance(value, bool):
            return None
        if self.type == "int":
            return value if isinstance(value, int) else None
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                return None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)

    def _in_range(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.type not in ("int", "float"):
            return True
        return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.gt is None or value > self.gt) and (self.lt is None or value < self.lt)
                and (not self.odd or value % 2 == 1))


def is_per_protocol(value: Any) -> bool:
    """Whether ``value`` is a per-protocol mapping such as ``{masked: 0.5, sparse: 1.0}``."""
    return isinstance(value, dict) and bool(value) and set(value) <= set(PROTOCOLS)


def for_protocol(config: dict[str, Any], protocol: str, where: str = "") -> dict[str, Any]:
    """``config`` with every per-protocol value replaced by ``protocol``'s; ConfigError when one has none."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    out = {}
    for key, value in config.items():
        if is_per_protocol(value):
            if protocol not in value:
                raise ConfigError(f"{where}setting {key!r} has no value for the {protocol} protocol: {value}")
            value = value[protocol]
        out[key] = value
    return out


def _num(value: float) -> str:
    return f"{value:g}"


def _show(value: Any) -> str:
    """``value`` as it would be written in YAML or after ``--set``: null, true, 1.5, 'abc'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def parse_setting(name: str, spec: Any, where: str) -> Setting:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: setting {name!r}: expected a mapping like {{type: int, min: 1}}, got {spec!r}")
    unknown = sorted(set(spec) - _SETTING_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: setting {name!r}: unknown field {unknown[0]!r} "
                          f"(allowed: {', '.join(sorted(_SETTING_FIELDS))})")
    if spec.get("type") not in TYPES:
        raise ConfigError(f"{where}: setting {name!r}: type must be one of {', '.join(TYPES)}, "
                          f"got {spec.get('type')!r}")
    for bound in ("min", "max", "gt", "lt"):
        if bound in spec and (not isinstance(spec[bound], (int, float)) or isinstance(spec[bound], bool)):
            raise ConfigError(f"{where}: setting {name!r}: {bound} must be a number, got {spec[bound]!r}")
    choices = spec.get("choices")
    if choices is not None and (not isinstance(choices, list) or not choices):
        raise ConfigError(f"{where}: setting {name!r}: choices must be a non-empty list, got {choices!r}")
    return Setting(name=name, type=spec["type"], min=spec.get("min"), max=spec.get("max"), gt=spec.get("gt"),
                   lt=spec.get("lt"), choices=tuple(choices) if choices else None, odd=bool(spec.get("odd", False)),
                   nullable=bool(spec.get("nullable", False)), optional=bool(spec.get("optional", False)),
                   help=str(spec.get("help", "")))


# ---------------------------------------------------------------- presets files


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=YAML_LOADER)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the presets file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'settings' and 'presets'")
    unknown = sorted(set(data) - _FILE_FIELDS)
    if unknown:
        raise ConfigError(f"{path}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(_FILE_FIELDS))})")
    for key in ("settings", "presets"):
        if not isinstance(data.get(key, {}), dict):
            raise ConfigError(f"{path}: field {key!r}: expected a mapping")
    for name, preset in data.get("presets", {}).items():
        if not isinstance(preset, dict):
            raise ConfigError(f"{path}: preset {name!r}: expected a mapping of settings")
    return data


def find_include(name: str, beside: Path) -> Path:
    """The presets file ``name`` (``.yaml`` optional): beside the including file, else gfbench's own."""
    file_name = name if name.endswith(".yaml") else f"{name}.yaml"
    for folder in (beside.parent, builtin_presets_dir()):
        if (folder / file_name).is_file():
            return folder / file_name
    raise ConfigError(f"{beside}: include {name!r}: no {file_name} beside it or in {builtin_presets_dir()}")


def _merged_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``settings`` and ``presets`` of ``path`` with its includes merged under them."""
    if path in seen:
        raise ConfigError(f"{path}: include cycle through {' -> '.join(p.name for p in seen)}")
    data = _read_yaml(path)
    settings, presets = dict(data.get("settings") or {}), {k: dict(v) for k, v in (data.get("presets") or {}).items()}
    include = data.get("include")
    if include is None:
        return {"settings": settings, "presets": presets}
    if not isinstance(include, str) or not include:
        raise ConfigError(f"{path}: field 'include': expected a presets file name, got {include!r}")
    base = _merged_file(find_include(include, path), (*seen, path))
    merged_presets = {name: dict(values) for name, values in base["presets"].items()}
    for name, values in presets.items():
        merged_presets[name] = {**merged_presets.get(name, {}), **values}
    return {"settings": {**base["settings"], **settings}, "presets": merged_presets}


def _resolve_extends(raw: dict[str, dict], name: str, path: Path, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in chain:
        raise ConfigError(f"{path}: preset {name!r}: 'extends' cycle through {' -> '.join(chain)}")
    values = dict(raw[name])
    parent = values.pop("extends", None)
    if parent is None:
        return values
    if parent not in raw:
        raise ConfigError(f"{path}: preset {name!r} extends {parent!r}, which is not a preset "
                          f"(presets: {', '.join(raw)})")
    return {**_resolve_extends(raw, parent, path, (*chain, name)), **values}


@dataclass(frozen=True)
class MethodPresets:
    """A method's typed settings and its resolved, checked presets (both empty for a method without a presets
    file: it then takes no settings at all)."""

    method: str
    path: Path | None
    settings: dict[str, Setting]
    presets: dict[str, dict[str, Any]]

    def config(self, preset: str, protocol: str | None = None) -> dict[str, Any]:
        """The settings of ``preset``; with ``protocol``, every per-protocol value resolved to that protocol's."""
        where = f"{self.path}: " if self.path else ""
        if preset not in self.presets:
            known = ", ".join(self.presets) or "none (the method has no presets file)"
            raise ConfigError(f"{where}method {self.method!r} has no preset {preset!r}; presets: {known}")
        config = dict(self.presets[preset])
        return config if protocol is None else for_protocol(config, protocol, f"{where}preset {preset!r}: ")

    def check_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """``overrides`` with each value typed; ConfigError for an unknown setting or a value not allowed."""
        checked = {}
        for key, value in overrides.items():
            if key not in self.settings:
                known = ", ".join(sorted(self.settings)) or "none (the method has no presets file)"
                raise ConfigError(f"method {self.method!r} has no setting {key!r}; settings: {known}")
            try:
                checked[key] = self.settings[key].check(value)
            except ConfigError as exc:
                raise ConfigError(f"method {self.method!r}: {exc}") from None
        return checked

    def describe(self, key: str) -> str:
        setting = self.settings[key]
        return f"{key}: {setting.allowed()}" + (f" ({setting.help})" if setting.help else "")


def read_presets(path: Path, method: str) -> MethodPresets:
    """The settings and presets of ``method`` from ``path``; every preset checked against the schema."""
    merged = _merged_file(Path(path))
    settings = {name: parse_setting(name, spec, str(path)) for name, spec in merged["settings"].items()}
    presets = {}
    for name in merged["presets"]:
        values = _resolve_extends(merged["presets"], name, path)
        unknown = sorted(set(values) - set(settings))
        if unknown:
            raise ConfigError(f"{path}: preset {name!r}: {unknown[0]!r} is not a declared setting")
        missing = [key for key, setting in settings.items() if not setting.optional and key not in values]
        if missing:
            raise ConfigError(f"{path}: preset {name!r} gives no value for setting {missing[0]!r}")
        try:
            presets[name] = {key: settings[key].check(value) for key, value in values.items()}
        except ConfigError as exc:
            raise ConfigError(f"{path}: preset {name!r}: {exc}") from None
    return MethodPresets(method=method, path=Path(path), settings=settings, presets=presets)


def no_presets(method: str) -> MethodPresets:
    return MethodPresets(method=method, path=None, settings={}, presets={})


__all__ = ["PROTOCOLS", "ConfigError", "MethodPresets", "Setting", "builtin_presets_dir", "find_include",
           "for_protocol", "is_per_protocol", "no_presets", "parse_setting", "read_presets"]
