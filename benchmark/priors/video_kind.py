"""The ``video`` prior kind: how ``gfbench run`` names, checks, loads and hands out the RGB-D video prior
(:mod:`gfbench.priors.video`).

Named by ``--prior PATH``, else ``$GFBENCH_VIDEO_PRIOR``, else the suite's ``default_priors: {video: NAME}`` (a
prior shipped in the package, :mod:`gfbench.priors.shipping`). Planning checks the folder (every file
``save_pretrained`` writes) and fingerprints it (the sha256 of every file go into the job's identity and its
record); the runner loads it once before the first job, so a broken folder stops the run before any training;
each scene's method gets the loaded prior on the job's device. This module stays light (no torch, no diffusers)
until a video prior is actually named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gfbench.priors import (PriorKind, PriorSource, folder_fingerprint, local_folder, register_kind,
                            resolve_prior_folder)

KIND = "video"
FLAG = "--prior"
ENV_VAR = "GFBENCH_VIDEO_PRIOR"  # the same as gfbench.priors.video.ENV_VAR (not imported: it loads diffusers)
WHAT = "video prior"
# what check_video_prior_folder requires of a folder (gfbench.priors.video: PRIOR_JSON and CONFIG_FILES), without
# loading diffusers; weights are checked when the folder is resolved
REQUIRED_FILES = ("prior.json", "unet/config.json", "vae/config.json", "image_encoder/config.json",
                  "image_proj/config.json", "scheduler/scheduler_config.json")

_loaded: dict[tuple[str, str], Any] = {}  # (prior digest, device) -> the loaded prior, shared by a run's jobs


def resolve_source(value: str | None, suite: Any = None) -> PriorSource:
    """The prior folder named by ``value`` or ``$GFBENCH_VIDEO_PRIOR``, checked and fingerprinted (no weights
    loaded); a :class:`~gfbench.priors.PriorError` naming the flag, the variable or the missing file."""
    from gfbench.priors.video import check_video_prior_folder

    folder = resolve_prior_folder(value, env_var=ENV_VAR, what=WHAT, flag=FLAG)
    check_video_prior_folder(folder)
    return PriorSource(kind=KIND, name=folder.name, path=str(folder.resolve()), files_sha256=folder_fingerprint(folder))


def loaded_prior(source: PriorSource, device: str = "cpu"):
    """The prior of ``source`` on ``device``, loaded once per run. Its own ``source`` (what the record names) is
    the one planning resolved, so a folder changed between planning and loading cannot go unrecorded; a later
    source of the same content (another path or origin) takes its place."""
    from gfbench.priors.video import DiffusionVideoPrior

    key = (source.digest, str(device))
    if key not in _loaded:
        folder = local_folder(source)
        prior = DiffusionVideoPrior.from_pretrained(folder, device=device)
        if prior.source.files_sha256 != source.files_sha256:
            from gfbench.priors import PriorError

            raise PriorError(f"{WHAT}: {folder} is not the prior the run planned (its files changed, or this "
                             f"machine's copy differs from {source.path}); run again")
        _loaded[key] = prior
    _loaded[key].source = source
    return _loaded[key]


def _load(source: PriorSource) -> None:
    loaded_prior(source)


def prior_for_scene(source: PriorSource, scene, train_views, *, device: str, cache_root: Path | None):
    return loaded_prior(source, device)


register_kind(PriorKind(kind=KIND, flag=f"{FLAG} PATH", env_var=ENV_VAR, resolve=resolve_source, load=_load,
                        for_scene=prior_for_scene, required_files=REQUIRED_FILES))

__all__ = ["ENV_VAR", "FLAG", "KIND", "REQUIRED_FILES", "loaded_prior", "prior_for_scene", "resolve_source"]
