"""``gfbench weights fetch``: download the LPIPS backbone files up front, into torch's hub cache."""

from __future__ import annotations

import click

from gfbench import metrics


@click.group("weights")
def weights_group() -> None:
    """Metric weights (LPIPS backbones): where they are, and fetching them."""


@weights_group.command("fetch")
@click.option("--net", "nets", type=click.Choice(sorted(metrics.LPIPS_BACKBONE_FILES)), multiple=True,
              help="Backbone to fetch (repeatable). Default: every LPIPS backbone (vgg and alex).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=metrics.LPIPS_DOWNLOAD_TIMEOUT_S,
              show_default=True, help="Seconds to wait on the network before giving up.")
@click.option("--lpips-weights", "weights_dir", type=click.Path(file_okay=False), default=None,
              help="Also look in this folder first (as $GFBENCH_LPIPS_WEIGHTS does).")
def fetch(nets: tuple[str, ...], timeout: float, weights_dir: str | None) -> None:
    """Make sure every LPIPS backbone file is here: found locally, else downloaded from torchvision's address
    into torch's hub cache (sha256 checked); print each file with its sha256."""
    for net in nets or sorted(metrics.LPIPS_BACKBONE_FILES):
        try:
            path = metrics.fetch_lpips_backbone(net, weights_dir, timeout=timeout)
        except metrics.LpipsWeightsMissing as exc:
            raise click.ClickException(str(exc)) from exc
        digest = metrics.sha256_file(path)
        note = "" if metrics.is_published_backbone(net, digest) else "  (not torchvision's published file)"
        click.echo(f"{net}: {path}  sha256 {digest}{note}")
