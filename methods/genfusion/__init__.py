"""GenFusion (Wu et al. 2025): cyclic fusion of 2DGS with an RGB-D video diffusion prior, as pieces.

- :mod:`.schedule`: when repair rounds run and what a repaired view weighs at a step;
- :mod:`.trajectories`: the cameras a round renders (train poses at full frame, or the sparse protocol's
  tilted ellipse) and the per-clip crop to the prior's frame;
- :mod:`.windows`: the overlapping clips of a trajectory and each clip's reference frame;
- :mod:`.depth_loss` and :mod:`.losses`: the scale-and-shift-invariant depth loss and the terms per view kind;
- :mod:`.densification`: sparsity-aware densification as a gsplat strategy;
- :mod:`.contact_sheet`: a PNG per round showing what the prior did;
- :mod:`.presets` and ``methods/presets/genfusion.yaml``: the numbers, per protocol, with their sources;
- :mod:`.method`: :class:`GenFusion`, the method (entry point ``genfusion``) that puts the pieces together.

A round, for the training loop: at ``steps_done`` in ``RepairSchedule.rounds()``, drop the previous round's
repaired views; ``repair_trajectory`` -> ``overlapping_windows`` -> per clip ``diffusion_crop``, render RGB-D,
``reference_index``, ``prior.repair``, keep ``window.kept`` frames as repaired views; then one repaired view per
step weighted ``RepairSchedule.weight(step)`` with ``repaired_view_terms``, never feeding densification.
"""

from gfbench.methods.genfusion.contact_sheet import repair_contact_sheet, save_repair_contact_sheet
from gfbench.methods.genfusion.densification import SparsityAwareStrategy
from gfbench.methods.genfusion.depth_loss import scale_and_shift, ssi_depth_loss
from gfbench.methods.genfusion.losses import repaired_view_terms, train_view_depth_terms
from gfbench.methods.genfusion.method import GenFusion, RepairedViews
from gfbench.methods.genfusion.presets import for_protocol, resolve_preset
from gfbench.methods.genfusion.schedule import RepairSchedule
from gfbench.methods.genfusion.trajectories import (
    EllipseSettings,
    diffusion_crop,
    ellipse_trajectory,
    path_frame,
    repair_trajectory,
)
from gfbench.methods.genfusion.windows import Window, nearest_reference, overlapping_windows, reference_index

__all__ = [
    "EllipseSettings",
    "GenFusion",
    "RepairSchedule",
    "RepairedViews",
    "SparsityAwareStrategy",
    "Window",
    "diffusion_crop",
    "ellipse_trajectory",
    "for_protocol",
    "nearest_reference",
    "overlapping_windows",
    "path_frame",
    "reference_index",
    "repair_contact_sheet",
    "repair_trajectory",
    "repaired_view_terms",
    "resolve_preset",
    "save_repair_contact_sheet",
    "scale_and_shift",
    "ssi_depth_loss",
    "train_view_depth_terms",
]
