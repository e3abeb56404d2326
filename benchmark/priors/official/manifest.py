"""The key-and-shape manifest of the released GenFusion checkpoint, and its check against the project's models.

``data/official_manifest.json.gz`` holds the ``state_dict()`` names and shapes of the official
``LatentVisualDiffusion`` built from ``Reconstruction/generation_infer.yaml`` with the public GenFusion code on
the meta device (no weights), plus where it came from. :func:`compare_with_project` maps every manifest key
through :class:`KeyMap` and builds the project's models at an architecture on the meta device: a complete
match has no missing, unexpected, unmapped or mis-shaped key.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from importlib import resources

from gfbench.priors.official.architecture import OfficialArchitecture
from gfbench.priors.official.key_map import COMPONENTS, KeyMap

MANIFEST_RESOURCE = "data/official_manifest.json.gz"


@dataclass(frozen=True)
class Manifest:
    keys: dict[str, tuple[int, ...]]
    source: dict

    @classmethod
    def official(cls) -> "Manifest":
        raw = resources.files("gfbench.priors.official").joinpath(MANIFEST_RESOURCE).read_bytes()
        data = json.loads(gzip.decompress(raw))
        return cls({key: tuple(shape) for key, shape in data["keys"].items()}, data["source"])

    def parameter_count(self, prefix: str = "") -> int:
        total = 0
        for key, shape in self.keys.items():
            if key.startswith(prefix):
                count = 1
                for size in shape:
                    count *= size
                total += count
        return total


@dataclass
class ManifestComparison:
    """Per component: how many keys matched; and every key that did not, by kind of mismatch."""

    matched: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    unexpected: list[tuple[str, str, str]] = field(default_factory=list)
    misshaped: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    not_invertible: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unmapped or self.unexpected or self.misshaped or self.missing or self.not_invertible)


def compare_with_project(manifest: Manifest, architecture: OfficialArchitecture) -> ManifestComparison:
    key_map = KeyMap(architecture.unet)
    expected = {component: {key: tuple(t.shape) for key, t in architecture.build(component, device="meta")
                            .state_dict().items()} for component in COMPONENTS}
    result = ManifestComparison(matched={component: 0 for component in COMPONENTS})
    seen: dict[str, set[str]] = {component: set() for component in COMPONENTS}
    for key, shape in manifest.keys.items():
        target = key_map.to_project(key)
        if target.dropped:
            result.dropped[key] = target.dropped
        elif target.component is None:
            result.unmapped.append(key)
        elif target.key not in expected[target.component]:
            result.unexpected.append((key, target.component, target.key))
        elif expected[target.component][target.key] != shape:
            result.misshaped.append((key, shape, expected[target.component][target.key]))
        else:
            result.matched[target.component] += 1
            seen[target.component].add(target.key)
            if key_map.to_official(target.component, target.key) != key:
                result.not_invertible.append((key, key_map.to_official(target.component, target.key)))
    result.missing = [(component, key) for component in COMPONENTS for key in expected[component]
                      if key not in seen[component]]
    return result
