"""The ``gfbench`` command line."""

from __future__ import annotations

import click

from gfbench import __version__
from gfbench.methods.core.memory import retain_freed_memory
from gfbench.paths import set_user_spec_dirs
from gfbench.cli.build_real import colmap_command, dl3dv_command, mipnerf360_command, nerfstudio_command, tnt_command
from gfbench.cli.catalog import ls, validate
from gfbench.cli.data import build_data, show
from gfbench.cli.evaluate import evaluate
from gfbench.cli.leaderboard import leaderboard
from gfbench.cli.prior import prior_group
from gfbench.cli.protocol import protocol_group, splits_group
from gfbench.cli.run import run
from gfbench.cli.suite import suite_group
from gfbench.cli.train_prior import train_prior
from gfbench.cli.weights import weights_group


class _Commands(click.Group):
    """The command group; a full disk anywhere is one line naming the path, not a traceback."""

    def invoke(self, ctx: click.Context):
        from gfbench.storage import DiskFull, is_disk_full

        try:
            return super().invoke(ctx)
        except DiskFull as exc:
            raise click.ClickException(str(exc)) from exc
        except Exception as exc:  # a library may wrap the OSError it got
            if is_disk_full(exc):
                name = getattr(exc, "filename", None) or "a file"
                raise click.ClickException(f"{name}: disk full (no space left on device)") from exc
            raise


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gfbench")
@click.option("--specs", "spec_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A folder of your own specs (<dir>/<id>.yaml datasets, <dir>/suites/<id>.yaml suites, "
                   "<dir>/splits/), added to the built-in ones (repeatable; also $GFBENCH_SPEC_PATH).")
def main(spec_dirs: tuple[str, ...]) -> None:
    """gfbench: datasets, suites, methods and leaderboards for sparse and partial-capture 3D reconstruction.

    \b
    Typical use:
      gfbench build-data synthetic          # render the built-in scenes into shards
      gfbench run --suite synthetic-masked  # train and score every method on a suite
      gfbench leaderboard --suite synthetic-masked
    """
    set_user_spec_dirs(list(spec_dirs))
    retain_freed_memory()  # CPU renders reuse freed memory instead of faulting in fresh pages


for command in (ls, validate, build_data, show, run, leaderboard, evaluate, protocol_group, splits_group,
                weights_group, suite_group, prior_group, train_prior):
    main.add_command(command)
for command in (colmap_command, nerfstudio_command, dl3dv_command, tnt_command, mipnerf360_command):
    build_data.add_command(command)
