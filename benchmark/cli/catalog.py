"""``gfbench ls`` and ``gfbench validate``: what specs and methods exist, and whether the specs are sound."""

from __future__ import annotations

import sys

import click

from gfbench import specs
from gfbench.paths import specs_root


@click.command("ls")
@click.argument("what", type=click.Choice(["suites", "datasets", "methods", "scenes", "priors"]))
@click.option("--suite", help="With 'scenes': the suite whose scenes to list.")
@click.option("--dataset", help="With 'scenes': the dataset whose scenes to list.")
def ls(what: str, suite: str | None, dataset: str | None) -> None:
    """List suites, datasets, methods (with the devices, protocols and priors each needs, and its presets),
    the priors shipped with gfbench (kind, size, sha256, the suites that take each by default), or the
    scenes of a suite or dataset."""
    try:
        if what == "suites":
            builtin = specs_root().resolve()
            for suite_id in specs.list_suites():
                spec = specs.load_suite(suite_id)
                where = "" if spec.path.resolve().is_relative_to(builtin) else f"  ({spec.path})"
                click.echo(f"{spec.id:32s} v{spec.version}  {spec.dataset:11s} {spec.protocol_type:7s} "
                           f"{len(spec.scenes):3d} scenes  {', '.join(spec.metrics)}{where}")
                if spec.notice:
                    click.echo(f"{'':32s} ! {spec.notice}")
        elif what == "datasets":
            for dataset_id in specs.list_datasets():
                spec = specs.load_dataset(dataset_id)
                click.echo(f"{spec.id:12s} v{spec.version}  {spec.layout:11s} {len(spec.scenes):3d} scenes")
        elif what == "methods":
            list_methods()
        elif what == "priors":
            list_shipped_priors()
        else:
            if bool(suite) == bool(dataset):
                raise click.UsageError("'gfbench ls scenes' needs exactly one of --suite or --dataset")
            scenes = specs.load_suite(suite).scenes if suite else specs.load_dataset(dataset).scenes
            for scene in scenes:
                click.echo(scene)
    except specs.SpecError as exc:
        raise click.ClickException(str(exc)) from exc


def list_methods() -> None:
    """One line per registered method: devices, protocols, priors needed, presets; a broken one says why."""
    from gfbench import methods

    for name in methods.available_methods():
        try:
            cls = methods.load_method_class(name)
            caps = methods.capabilities_of(cls)
            presets = methods.method_presets(name, cls)
        except (methods.MethodLoadError, methods.ConfigError) as exc:
            click.echo(f"{name:12s} BROKEN: {exc}")
            continue
        click.echo(f"{name:12s} devices: {', '.join(caps.devices):10s} protocols: {', '.join(caps.protocols):22s} "
                   f"priors: {', '.join(caps.priors) or 'none':8s} presets: {', '.join(presets.presets) or 'none'}")


def list_shipped_priors() -> None:
    """One line per shipped prior: name, kind, size, the sha256 over its files' sha256 (a leaderboard label shows
    its first 6 digits) and the suites whose default it is; then its folder."""
    from gfbench.priors.shipping import shipped_priors, shipped_root

    priors = shipped_priors()
    if not priors:
        click.echo(f"no priors shipped with this gfbench ({shipped_root()})")
        return
    users: dict[tuple[str, str], list[str]] = {}
    for suite_id in specs.list_suites():
        try:
            defaults = specs.load_suite(suite_id).default_priors
        except specs.SpecError:
            continue  # 'gfbench validate' names the problem
        for kind, name in defaults.items():
            users.setdefault((kind, name), []).append(suite_id)
    for prior in priors:
        suites = users.get((prior.kind, prior.name), [])
        click.echo(f"{prior.name:24s} {prior.kind or '?':6s} {prior.size_bytes / 2**20:7.2f} MiB  "
                   f"{len(prior.files_sha256):3d} files  sha256 {prior.sha256}  "
                   f"default of: {', '.join(suites) or 'no suite'}")
        click.echo(f"{'':24s} {prior.path}")


@click.command()
def validate() -> None:
    """Load and check every dataset and suite spec (built-in and your own; a suite's default priors must be
    shipped priors of their kind) and every frozen split file of every suite (format, checksum, suite version
    and protocol, frame roles); exit 1 naming each problem."""
    problems = specs.validate_all()
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    count = len(specs.list_datasets()) + len(specs.list_suites())
    frozen = sum(1 for suite_id in specs.list_suites()
                 for _ in (specs.splits_dir_of(specs.suite_path(suite_id)) / suite_id).glob("*.json"))
    if problems:
        click.echo(f"{len(problems)} problem(s) in {count} specs and {frozen} frozen split files", err=True)
        sys.exit(1)
    click.echo(f"{count} specs valid ({len(specs.list_datasets())} datasets, {len(specs.list_suites())} suites), "
               f"{frozen} frozen split files checked")
