"""Leaderboards: the result records of a suite as a long table (CSV), a pivot like the paper's tables
(Markdown), a bar chart (PNG), and optionally a comparison with the paper's numbers.

Only records of the suite's current version and protocol hash are used; others are refused and listed,
never mixed in. An entry is a method with one resolved config: labelled by the preset's name when the
config equals that preset (as defined now), else by a short hash of the config (``cfg-1a2b3c4d``), so runs
with different settings are different entries. By default only the suite's preset is shown and every other
record is listed as left out, with the reason; ``all_configs`` shows every config as its own entry. Within
an entry, a scene and a seed, a successful record always wins over a failed one, and the newest over older
ones. A scene's score is the mean over its test frames (computed by the runner); with several seeds the
Markdown shows the mean over seeds while the CSV keeps each seed; a suite average is the unweighted mean
over the suite's scenes, shown only for an entry that has a result for every scene.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from gfbench import paper, results
from gfbench.priors import priors_label
from gfbench.specs import SuiteSpec
from gfbench.storage import reporting_disk_full

LONG_COLUMNS = ["suite", "scene", "method", "config", "seed", "metric", "value"]
FAILED_COLUMNS = ["scene", "method", "config", "seed", "error", "path"]
COMPARISON_COLUMNS = ["scene", "method", "metric", "ours", "paper", "delta", "paper_consistent"]
AVERAGE = "average"
ARROWS = {True: "↑", False: "↓"}
MISSING = "—"
DAGGER = "†"
PUBLISHED = Path("leaderboards")  # the checkout's published tables; written only on request (--publish)
LEADERBOARDS_IN_RESULTS = "leaderboards"  # default: <results>/leaderboards/
CONFIG_HASH_CHARS = 8


# ---------------------------------------------------------------- metric directions and formats


def higher_is_better(metric: str) -> bool:
    """Direction of a metric (or of a region score such as ``psnr_covered``) from ``gfbench.metrics``."""
    from gfbench import metrics  # imported late: it pulls in torch, which the paper tables do not need

    return metrics.higher_is_better(metric)


def decimals_for(metric: str) -> int:
    """Decimals the paper prints: 2 for PSNR (and its region scores), 3 for SSIM and LPIPS."""
    return 2 if metric.startswith("psnr") else 3


def format_value(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{decimals_for(metric)}f}"


def column_title(method: str, metric: str) -> str:
    return f"{method} {metric} {ARROWS[higher_is_better(metric)]}"


# ---------------------------------------------------------------- selecting records


def current_protocol_hash(spec: SuiteSpec) -> str:
    """The protocol hash the runner writes into records of ``spec``."""
    return results.protocol_hash(spec)


@dataclass(frozen=True)
class Refused:
    path: Path
    reason: str


def refusal_reason(record: dict[str, Any], spec: SuiteSpec, protocol_hash: str) -> str | None:
    """Why a record cannot be mixed into the current leaderboard of ``spec``; None when it can."""
    if record.get("suite") != spec.id:
        return f"suite {record.get('suite')!r}, not {spec.id!r}"
    if record.get("suite_version") != spec.version:
        return f"suite version {record.get('suite_version')!r}, current is {spec.version}"
    if record.get("protocol_hash") != protocol_hash:
        return f"protocol hash {str(record.get('protocol_hash'))[:12]}, current is {protocol_hash[:12]}"
    if record.get("scene") not in spec.scenes:
        return f"scene {record.get('scene')!r} is not in the suite"
    if record.get("status") not in ("ok", "failed"):
        return f"status {record.get('status')!r}"
    return None


# ---------------------------------------------------------------- entries: method + resolved config


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists), so configs compare as stored."""
    return json.loads(results.canonical_json(value))


def config_digest(config: Any) -> str:
    """The short hash that labels a config no preset matches."""
    return "cfg-" + results.config_hash({"config": config})[:CONFIG_HASH_CHARS]


def preset_config(method: str, preset: str) -> dict[str, Any] | None:
    """The resolved config of ``preset`` for ``method`` as the presets define it now; None when it cannot
    be resolved here (the method is not installed, or has no such preset)."""
    from gfbench import runner  # imported late: it pulls in torch

    try:
        return _plain(runner.resolve_config(method, preset, {}, explicit_preset=False))
    except Exception:  # noqa: BLE001 - any failure to resolve means "not a known preset here"
        return None


@dataclass(frozen=True)
class Entry:
    """A leaderboard entry: a method and a config label (a preset name, or ``cfg-<hash>``)."""

    method: str
    config: str
    priors: str = ""  # gfbench.priors.priors_label of the record's priors

    def label(self, suite_preset: str) -> str:
        """``method`` for the suite's preset, ``method@<config>`` for any other, followed by the priors."""
        base = self.method if self.config == suite_preset else f"{self.method}@{self.config}"
        return base + self.priors


def method_label(record: dict[str, Any], spec: SuiteSpec, entries: "Entries | None" = None) -> str:
    """The label of the entry a record belongs to (method, config, priors)."""
    return (entries or Entries()).of(record).label(spec.preset)


class Entries:
    """Labels records by method and resolved config, resolving each (method, preset) once."""

    def __init__(self, resolve=None):
        self._resolve, self._presets = resolve or preset_config, {}
        self.configs: dict[Entry, dict[str, Any]] = {}
        self.differences: dict[Entry, str] = {}

    def preset(self, method: str, preset: str) -> dict[str, Any] | None:
        if (method, preset) not in self._presets:
            self._presets[method, preset] = self._resolve(method, preset)
        return self._presets[method, preset]

    def of(self, record: dict[str, Any]) -> Entry:
        method, preset, config = record["method"], record.get("preset"), _plain(record.get("config"))
        reference = self.preset(method, preset) if isinstance(preset, str) else None
        reference = for_record_protocol(reference, record)
        entry = Entry(method, preset if reference is not None and reference == config else config_digest(config),
                      priors_label(record.get("priors")))
        if entry not in self.configs:
            self.configs[entry] = config
            self.differences[entry] = describe_difference(config, reference, preset)
        return entry


def for_record_protocol(reference: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any] | None:
    """A preset's config with its per-protocol values (``{masked: a, sparse: b}``) resolved to the protocol the
    record ran under, as the runner resolved them; unchanged when it has none or the record names no protocol."""
    from gfbench.methods.config import ConfigError, for_protocol, is_per_protocol

    protocol = ((record.get("identity") or {}).get("protocol") or {}).get("type")
    if reference is None or protocol is None or not any(is_per_protocol(v) for v in reference.values()):
        return reference
    try:
        return for_protocol(reference, protocol)
    except ConfigError:
        return reference


def describe_difference(config: Any, reference: dict[str, Any] | None, preset: Any) -> str:
    """How ``config`` differs from its preset, e.g. ``quick with steps=30 (preset: 300)``."""
    if reference is None:
        return f"preset {preset!r} cannot be resolved here; config {results.canonical_json(config)[:120]}"
    if not isinstance(config, dict):
        return f"config {config!r}"
    if config == reference:
        return f"preset {preset}"
    keys = sorted(set(config) | set(reference), key=str)
    changed = [k for k in keys if config.get(k, MISSING) != reference.get(k, MISSING)]
    parts = [f"{k}={results.canonical_json(config.get(k, MISSING))} (preset: "
             f"{results.canonical_json(reference.get(k, MISSING))})" for k in changed[:5]]
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    return f"{preset} with {', '.join(parts)}{more}"


@dataclass
class Selection:
    records: list[tuple[Path, dict[str, Any], Entry]]
    refused: list[Refused]
    entries: Entries


def _newest(group: list[tuple[Path, dict[str, Any]]]) -> tuple[Path, dict[str, Any]]:
    return max(group, key=lambda pr: (str(pr[1].get("created", "")), str(pr[0])))


def _pick(group: list[tuple[Path, dict[str, Any]]]) -> tuple[tuple[Path, dict[str, Any]], list[Refused]]:
    """The record that speaks for one (scene, entry, seed): the newest successful one, else the newest
    failed one; the others with their reason."""
    ok = [pr for pr in group if pr[1]["status"] == "ok"]
    chosen = _newest(ok or group)
    refused = []
    for path, record in group:
        if path == chosen[0]:
            continue
        if record["status"] == "failed" and ok:
            reason = (f"failed ({first_line(record.get('error'))}), while {chosen[0].name} of the same method, "
                      "config and seed succeeded")
        else:
            reason = f"superseded by the newer record {chosen[0].name} of the same method, config and seed"
        refused.append(Refused(path, reason))
    return chosen, refused


def _scene_build(record: dict[str, Any]) -> str | None:
    identity = record.get("identity")
    return identity.get("scene_sha256") if isinstance(identity, dict) else None


def _one_build_per_scene(chosen: list[tuple[Path, dict[str, Any], Entry]]) -> tuple[list, list[Refused]]:
    """Records of one scene that ran on different builds of its data are not mixed: the build of the newest
    record is kept."""
    kept, refused = [], []
    for scene in dict.fromkeys(record["scene"] for _, record, _ in chosen):
        rows = [row for row in chosen if row[1]["scene"] == scene]
        builds = {_scene_build(record) for _, record, _ in rows} - {None}
        if len(builds) <= 1:
            kept += rows
            continue
        current = _scene_build(_newest([(p, r) for p, r, _ in rows if _scene_build(r)])[1])
        for row in rows:
            build = _scene_build(row[1])
            if build in (None, current):
                kept.append(row)
            else:
                refused.append(Refused(row[0], f"ran on another build of scene {scene!r} (shard sha256 "
                                               f"{build[:12]}; the newest records used {current[:12]})"))
    return kept, refused


def select_records(pairs: Iterable[tuple[Path, dict[str, Any]]], spec: SuiteSpec, protocol_hash: str | None = None,
                   all_configs: bool = False, entries: Entries | None = None) -> Selection:
    """The records that make the leaderboard (one per scene, entry and seed) and the refused ones with their
    reason: another suite version or protocol, another config than the suite's preset (unless
    ``all_configs``), superseded, failed beside a success, or run on another build of the scene."""
    protocol_hash = protocol_hash or current_protocol_hash(spec)
    entries = entries or Entries()
    refused, groups = [], {}
    for path, record in pairs:
        path = Path(path)
        reason = refusal_reason(record, spec, protocol_hash)
        if reason:
            refused.append(Refused(path, reason))
            continue
        entry = entries.of(record)
        if not all_configs and entry.config != spec.preset:
            refused.append(Refused(path, f"{entry.method} config {entry.config} is not the suite's preset "
                                         f"{spec.preset!r} ({entries.differences[entry]})"))
            continue
        groups.setdefault((record["scene"], entry, record["seed"]), []).append((path, record))
    chosen = []
    for (_, entry, _), group in groups.items():
        (path, record), superseded = _pick(group)
        chosen.append((path, record, entry))
        refused += superseded
    kept, other_builds = _one_build_per_scene(chosen)
    return Selection(kept, refused + other_builds, entries)


# ---------------------------------------------------------------- tables


def long_table(selected: list[tuple[Path, dict[str, Any], Entry]], spec: SuiteSpec) -> pd.DataFrame:
    """One row per (scene, entry, seed, metric) of the successful records: the CSV. ``method`` is the entry's
    label (``3dgs``, ``3dgs@paper``, ``3dgs@cfg-1a2b3c4d``), ``config`` its preset name or config hash."""
    rows = [
        {"suite": spec.id, "scene": record["scene"], "method": entry.label(spec.preset), "config": entry.config,
         "seed": record["seed"], "metric": metric, "value": float(value)}
        for _, record, entry in selected if record["status"] == "ok"
        for metric, value in record.get("metrics", {}).items()
    ]
    table = pd.DataFrame(rows, columns=LONG_COLUMNS).astype({"value": float})
    scene_order = {scene: i for i, scene in enumerate(spec.scenes)}
    table = table.sort_values(["scene", "method", "seed", "metric"],
                              key=lambda col: col.map(scene_order) if col.name == "scene" else col)
    return table.reset_index(drop=True)


def failed_table(selected: list[tuple[Path, dict[str, Any], Entry]], spec: SuiteSpec) -> pd.DataFrame:
    """The failed jobs (those without a successful record): scene, entry, seed, the error's first line, path."""
    rows = [
        {"scene": record["scene"], "method": entry.label(spec.preset), "config": entry.config,
         "seed": record["seed"], "error": first_line(record.get("error")), "path": str(path)}
        for path, record, entry in selected if record["status"] == "failed"
    ]
    return pd.DataFrame(rows, columns=FAILED_COLUMNS)


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "(no error message)"


@dataclass
class Leaderboard:
    spec: SuiteSpec
    long: pd.DataFrame
    failed: pd.DataFrame
    refused: list[Refused] = field(default_factory=list)
    problems: list[Refused] = field(default_factory=list)  # files that are not readable records
    configs: dict[str, str] = field(default_factory=dict)  # entry label -> how its config relates to its preset
    all_configs: bool = False

    @property
    def metrics(self) -> list[str]:
        """The suite's metrics first, then any other score found in the records (region scores)."""
        extra = sorted(set(self.long["metric"]) - set(self.spec.metrics))
        return list(self.spec.metrics) + extra


def build_leaderboard(pairs: Iterable[tuple[Path, dict[str, Any]]], spec: SuiteSpec,
                      protocol_hash: str | None = None, all_configs: bool = False,
                      problems: Iterable[tuple[Path, str]] = (), entries: Entries | None = None) -> Leaderboard:
    """A leaderboard from ``(path, record)`` pairs such as ``results.scan_records(results_dir, spec.id).records``
    (``problems``: the unreadable files, listed as such)."""
    selection = select_records(pairs, spec, protocol_hash, all_configs, entries)
    shown = {entry for _, _, entry in selection.records}
    configs = {entry.label(spec.preset): selection.entries.differences[entry]
               for entry in sorted(shown, key=lambda e: e.label(spec.preset))}
    return Leaderboard(spec, long_table(selection.records, spec), failed_table(selection.records, spec),
                       selection.refused, [Refused(Path(p), reason) for p, reason in problems], configs, all_configs)


def seed_means(long: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each (scene, method, metric): columns scene, method, metric, value, seeds."""
    finite = long[np.isfinite(long["value"].astype(float))]
    grouped = finite.groupby(["scene", "method", "metric"], sort=False)["value"]
    return grouped.agg(value="mean", seeds="count").reset_index()


def missing_scenes(board: Leaderboard) -> dict[str, list[str]]:
    """Per method with at least one result, the suite's scenes it has no result for."""
    have = board.long.groupby("method")["scene"].agg(set)
    return {method: [s for s in board.spec.scenes if s not in scenes]
            for method, scenes in have.items() if set(board.spec.scenes) - scenes}


def suite_averages(board: Leaderboard) -> pd.DataFrame:
    """Unweighted mean over the suite's scenes of the seed means, per (method, metric), only where every
    scene of the suite has a value: columns method, metric, value."""
    means = seed_means(board.long)
    rows = []
    for (method, metric), group in means.groupby(["method", "metric"]):
        values = group.set_index("scene")["value"]
        if all(scene in values.index for scene in board.spec.scenes):
            rows.append({"method": method, "metric": metric,
                         "value": float(values.loc[list(board.spec.scenes)].mean())})
    return pd.DataFrame(rows, columns=["method", "metric", "value"])


# ---------------------------------------------------------------- Markdown


def best_methods(values: dict[str, float], metric: str) -> set[str]:
    """Methods holding the best value of a row at the printed precision (ties all win); none for one value."""
    shown = {m: round(v, decimals_for(metric)) for m, v in values.items() if math.isfinite(v)}
    if len(shown) < 2:
        return set()
    best = max(shown.values()) if higher_is_better(metric) else min(shown.values())
    return {m for m, v in shown.items() if v == best}


def pivot_row(label: str, cells: dict[tuple[str, str], float], methods: list[str], metrics: list[str]) -> str:
    """One Markdown row: ``cells`` maps (method, metric) to a value; the best per metric is bold."""
    out = [label]
    best = {metric: best_methods({m: cells[(m, metric)] for m in methods if (m, metric) in cells}, metric)
            for metric in metrics}
    for method in methods:
        for metric in metrics:
            text = format_value(metric, cells.get((method, metric)))
            out.append(f"**{text}**" if method in best[metric] else text)
    return "| " + " | ".join(out) + " |"


def pivot_markdown(board: Leaderboard, metrics: list[str]) -> list[str]:
    """Per-scene rows, method x metric columns, and an average row when some method covers every scene."""
    methods = sorted(board.long["method"].unique())
    header = ["scene"] + [column_title(m, k) for m in methods for k in metrics]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    means = seed_means(board.long)
    for scene in board.spec.scenes:
        rows = means[means["scene"] == scene]
        if not rows.empty:
            lines.append(pivot_row(scene, {(r.method, r.metric): r.value for r in rows.itertuples()}, methods, metrics))
    averages = suite_averages(board)
    averages = averages[averages["metric"].isin(metrics)]
    if not averages.empty:
        lines.append(pivot_row(AVERAGE, {(r.method, r.metric): r.value for r in averages.itertuples()},
                               methods, metrics))
    return lines


def seeds_caption(board: Leaderboard) -> str:
    seeds = sorted(board.long["seed"].unique())
    counts = seed_means(board.long)["seeds"]
    if len(seeds) == 1:
        return f"One run per scene and method (seed {seeds[0]})."
    uneven = " Some cells average fewer seeds than others (see the CSV)." if counts.nunique() > 1 else ""
    return (f"Each value is the mean over seeds ({', '.join(map(str, seeds))}); the CSV "
            f"`{board.spec.id}.csv` keeps every seed.{uneven}")


def notes_markdown(board: Leaderboard) -> list[str]:
    lines = []
    missing = missing_scenes(board)
    if missing:
        lines.append("Average withheld (a suite average needs a result for every scene):")
        lines += [f"- {method}: missing {', '.join(scenes)}" for method, scenes in sorted(missing.items())]
        lines.append("")
    return lines


def failed_markdown(board: Leaderboard) -> list[str]:
    if board.failed.empty:
        return []
    lines = ["## Failed jobs", "", "Jobs with no successful record; not counted in the table above.", ""]
    lines += [f"- {r.scene} / {r.method} / seed {r.seed}: {r.error}" for r in board.failed.itertuples()]
    return lines + [""]


def configs_markdown(board: Leaderboard) -> list[str]:
    """Which config each entry ran: the suite's preset, another preset, or a config no preset matches."""
    if not board.configs:
        return []
    if set(board.long["config"]) | set(board.failed["config"]) <= {board.spec.preset}:
        return [f"Every entry ran the suite's preset `{board.spec.preset}` as defined now "
                "(`methods/presets/<method>.yaml`).", ""]
    lines = ["## Configurations", "",
             "An entry is a method with one resolved config: `method` ran the suite's preset "
             f"`{board.spec.preset}`, `method@preset` another preset, `method@cfg-<hash>` a config that no "
             "preset matches (the hash is of the config).", ""]
    lines += [f"- `{label}`: {text}" for label, text in board.configs.items()]
    return lines + [""]


def refused_markdown(board: Leaderboard) -> list[str]:
    if not board.refused:
        return []
    lines = ["## Records left out", "", f"{len(board.refused)} record(s) not in the tables above, and why:", ""]
    lines += [f"- `{r.path}`: {r.reason}" for r in board.refused]
    return lines + [""]


def problems_markdown(board: Leaderboard) -> list[str]:
    if not board.problems:
        return []
    lines = ["## Problems", "", f"{len(board.problems)} file(s) where a record should be could not be read:", ""]
    lines += [f"- `{r.path}`: {r.reason}" for r in board.problems]
    return lines + [""]


def render_markdown(board: Leaderboard, comparison: pd.DataFrame | None = None) -> str:
    spec = board.spec
    main_metrics = [m for m in spec.metrics if m in set(board.long["metric"])] or list(spec.metrics)
    extra_metrics = [m for m in board.metrics if m not in spec.metrics]
    directions = ", ".join(f"{m} {ARROWS[higher_is_better(m)]}" for m in spec.metrics)
    lines = [f"# Leaderboard: {spec.id} (v{spec.version})", ""]
    if spec.notice:
        lines += [f"> **Note:** {spec.notice}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"Dataset `{spec.dataset}`, {len(spec.scenes)} scenes, protocol `{spec.protocol_type}` "
        f"(hash `{current_protocol_hash(spec)[:12]}`), metrics {directions}.", "",
    ]
    if board.long.empty:
        lines += ["No successful results yet.", ""]
    else:
        lines += [f"Per-scene scores (each the mean over the scene's test frames). {seeds_caption(board)} "
                  "**Bold**: best per scene and metric. The average row is the unweighted mean over the "
                  "suite's scenes.", ""]
        lines += pivot_markdown(board, main_metrics) + [""] + notes_markdown(board)
        if extra_metrics:
            lines += ["## Other scores", "", "Region scores: over the pixels some train view observed (`covered`) "
                      "and the rest (`uncovered`).", ""]
            lines += pivot_markdown(board, extra_metrics) + [""]
    lines += configs_markdown(board)
    if comparison is not None:
        lines += comparison_markdown(comparison, spec)
    lines += failed_markdown(board) + refused_markdown(board) + problems_markdown(board)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- comparison with the paper


def paper_comparison(board: Leaderboard, paper_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our seed means and suite averages beside the paper's numbers for the same suite, scene, method (via
    ``paper.PAPER_METHODS``) and metric: columns scene, method, metric, ours, paper, delta (ours - paper),
    paper_consistent (False where the printed average is not the mean of the printed scenes)."""
    if paper_rows is None:
        paper_rows = paper.paper_results(board.spec.id)
    ours = seed_means(board.long)[["scene", "method", "metric", "value"]]
    averages = suite_averages(board).assign(scene=AVERAGE)
    ours = pd.concat([ours, averages[["scene", "method", "metric", "value"]]], ignore_index=True)
    ours = ours.rename(columns={"value": "ours"})
    theirs = paper_rows[["scene", "method", "metric", "value"]].rename(columns={"value": "paper"})
    merged = theirs.merge(ours, on=["scene", "method", "metric"], how="left")
    merged = merged[merged["method"].isin(set(board.long["method"]))]
    merged["delta"] = merged["ours"] - merged["paper"]
    inconsistent = inconsistent_averages(paper_rows)
    merged["paper_consistent"] = [not (s == AVERAGE and (m, k) in inconsistent)
                                  for s, m, k in zip(merged["scene"], merged["method"], merged["metric"])]
    return merged[COMPARISON_COLUMNS].reset_index(drop=True)


def inconsistent_averages(paper_rows: pd.DataFrame) -> set[tuple[str, str]]:
    """(method, metric) pairs whose printed average disagrees with the printed scenes beyond rounding."""
    if paper_rows.empty:
        return set()
    check = paper.average_check(paper_rows.assign(suite="-"))
    return {(r.method, r.metric) for r in check.itertuples() if not r.consistent}


def format_delta(metric: str, delta: float) -> str:
    return MISSING if not math.isfinite(delta) else f"{delta:+.{decimals_for(metric)}f}"


def comparison_markdown(comparison: pd.DataFrame, spec: SuiteSpec) -> list[str]:
    lines = ["## Compared with the paper", ""]
    if spec.notice:
        lines += [f"> **Warning:** {spec.notice}", ""]
    if comparison.empty:
        return lines + [f"The paper has no numbers for suite `{spec.id}` and these methods.", ""]
    metrics = [m for m in spec.metrics if m in set(comparison["metric"])]
    header = ["scene", "method"] + [f"{m} {ARROWS[higher_is_better(m)]} {part}"
                                    for m in metrics for part in ("ours", "paper", "Δ")]
    lines += [f"GenFusion supplement numbers for `{spec.id}` (`leaderboards/paper/`); Δ = ours - paper. "
              f"{DAGGER}: the paper's printed average is not the mean of its printed scenes "
              "(see `leaderboards/paper/README.md`).", "",
              "| " + " | ".join(header) + " |", "|---|---" + "|---:" * (len(header) - 2) + "|"]
    scene_order = {scene: i for i, scene in enumerate([*spec.scenes, AVERAGE])}
    for (scene, method), group in sorted(comparison.groupby(["scene", "method"]),
                                         key=lambda item: (scene_order.get(item[0][0], len(scene_order)), item[0][1])):
        by_metric = group.set_index("metric")
        cells = [scene, method]
        for metric in metrics:
            if metric not in by_metric.index:
                cells += [MISSING] * 3
                continue
            row = by_metric.loc[metric]
            dagger = "" if row["paper_consistent"] else DAGGER
            cells += [format_value(metric, row["ours"]), format_value(metric, row["paper"]) + dagger,
                      format_delta(metric, row["delta"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


# ---------------------------------------------------------------- chart


def short_scene(scene: str) -> str:
    """DL3DV hashes are shown as the paper prints them: the first 10 characters."""
    return scene[:10] if len(scene) > 16 else scene


def chart_png(board: Leaderboard) -> bytes:
    """Grouped bars per scene (and the average, for methods that have one), one panel per suite metric."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    means, averages = seed_means(board.long), suite_averages(board)
    methods = sorted(board.long["method"].unique())
    metrics = [m for m in board.spec.metrics if m in set(means["metric"])]
    groups = [s for s in board.spec.scenes if s in set(means["scene"])] + ([AVERAGE] if not averages.empty else [])
    figure = Figure(figsize=(max(6.0, 0.45 * len(groups) * max(1, len(methods)) + 2), 3.2 * max(1, len(metrics))))
    FigureCanvasAgg(figure)
    width = 0.8 / max(1, len(methods))
    for row, metric in enumerate(metrics):
        axes = figure.add_subplot(len(metrics), 1, row + 1)
        for i, method in enumerate(methods):
            values = [_group_value(means, averages, group, method, metric) for group in groups]
            axes.bar([g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))], values, width,
                     label=method)
        axes.set_xticks(range(len(groups)), [short_scene(g) for g in groups], rotation=30, ha="right", fontsize=8)
        axes.set_ylabel(f"{metric} {ARROWS[higher_is_better(metric)]}")
        axes.grid(axis="y", alpha=0.3)
        if row == 0:
            axes.set_title(f"{board.spec.id} (v{board.spec.version})")
            axes.legend(fontsize=8, ncols=min(4, max(1, len(methods))))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _group_value(means: pd.DataFrame, averages: pd.DataFrame, group: str, method: str, metric: str) -> float:
    if group == AVERAGE:
        rows = averages[(averages["method"] == method) & (averages["metric"] == metric)]
    else:
        rows = means[(means["scene"] == group) & (means["method"] == method) & (means["metric"] == metric)]
    return float(rows["value"].iloc[0]) if not rows.empty else float("nan")


# ---------------------------------------------------------------- writing


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``; a full disk is ``DiskFull``."""
    with reporting_disk_full(path, "a leaderboard file", "the previous file, if any, is unchanged"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_leaderboard(board: Leaderboard, out_dir: Path, compare_paper: bool = False) -> list[Path]:
    """``<suite>.csv`` (long table, every seed), ``<suite>.md``, ``<suite>.png`` (when there are results), and
    with ``compare_paper`` ``<suite>-vs-paper.csv``; returns the paths written."""
    out_dir, suite = Path(out_dir), board.spec.id
    comparison = paper_comparison(board) if compare_paper else None
    written = {
        out_dir / f"{suite}.csv": board.long.to_csv(index=False).encode(),
        out_dir / f"{suite}.md": render_markdown(board, comparison).encode(),
    }
    chart = out_dir / f"{suite}.png"
    if board.long.empty:
        chart.unlink(missing_ok=True)  # a chart of earlier results would contradict the table
    else:
        written[chart] = chart_png(board)
    if comparison is not None:
        written[out_dir / f"{suite}-vs-paper.csv"] = comparison.to_csv(index=False).encode()
    for path, data in written.items():
        atomic_write(path, data)
    return list(written)
