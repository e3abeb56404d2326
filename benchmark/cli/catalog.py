"""``gfbench ls`` and ``gfbench validate``: what specs and methods exist, and whether the specs are sound."""

from __future__ import annotations

import sys

import click

from gfbench import specs
from gfbench.paths import specs_root


@click.command("ls")
@click.argument("what", type=click.Choice(["suites", "datasets", "methods", "scenes"]))
@click.option("--suite", help="With 'scenes': the suite whose scenes to list.")
@click.option("--dataset", help="With 'scenes': the dataset whose scenes to list.")
def ls(what: str, suite: str | None, dataset: str | None) -> None:
    """List suites, datasets, methods (with the devices, protocols and priors each needs, and its presets),
    or the scenes of a suite or dataset."""
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


@click.command()
def validate() -> None:
    """Load and check every dataset and suite spec (built-in and your own) and every frozen split file of
    every suite (format, checksum, suite version and protocol, frame roles); exit 1 naming each problem."""
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
