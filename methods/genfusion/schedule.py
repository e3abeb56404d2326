"""When GenFusion repairs, and how much the repaired views weigh.

The official loop (``Reconstruction/train.py``, ``TrainManager.run_with_repair`` and ``train``) counts
iterations from 1. It trains up to ``start``, runs a repair round, trains ``every`` more, runs the next...:
rounds happen after ``r`` iterations for every ``r`` in ``range(start, until + 1, every)`` with ``r < steps``
(a round at the last step would feed nothing). Each round replaces the previous round's repaired views
(``regset.clear()`` before populating). From iteration ``start + 1`` to ``until - 1`` one repaired view per
iteration adds ``w(it) * (RGB loss + depth loss)`` with ``w(it) = lambda_reg * sin(pi * (it - start) /
(until - start))``; the weight rises from 0 after the warm-up, peaks half way, and falls back to 0 at
``until``. With the masked script's numbers (start 3000, every 1000, until 7000, 7000 steps) the rounds are
at 3000, 4000, 5000 and 6000.

gfbench's loop counts steps from 0: step ``s`` is the code's iteration ``s + 1``. So a round ``r`` runs when
``r`` steps are done (before step ``r`` trains), and step ``s`` weighs the repaired view ``w(s + 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

SCHEDULE_KEYS = ("repair_start", "repair_every", "repair_until", "steps", "lambda_reg")


@dataclass(frozen=True)
class RepairSchedule:
    """Repair rounds and the repaired views' loss weight (numbers from a preset: :data:`SCHEDULE_KEYS`)."""

    start: int
    every: int
    until: int
    steps: int
    lambda_reg: float

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"repair_every must be at least 1, got {self.every}")
        if not 0 <= self.start < self.until:
            raise ValueError(f"repair_start ({self.start}) must be at least 0 and below repair_until ({self.until})")
        if self.lambda_reg < 0:
            raise ValueError(f"lambda_reg must not be negative, got {self.lambda_reg}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RepairSchedule":
        missing = [key for key in SCHEDULE_KEYS if key not in config]
        if missing:
            raise KeyError(f"repair schedule: the config lacks {', '.join(missing)}")
        return cls(
            start=int(config["repair_start"]),
            every=int(config["repair_every"]),
            until=int(config["repair_until"]),
            steps=int(config["steps"]),
            lambda_reg=float(config["lambda_reg"]),
        )

    def rounds(self) -> list[int]:
        """Step counts after which a repair round runs, in order."""
        return [r for r in range(self.start, self.until + 1, self.every) if r < self.steps]

    def round_index(self, steps_done: int) -> int | None:
        """The index of the round due once ``steps_done`` steps are done (None if none is): the index the
        code passes to its trajectory (the sparse protocol tilts its ellipse by it)."""
        rounds = self.rounds()
        return rounds.index(steps_done) if steps_done in rounds else None

    def weight(self, step: int) -> float:
        """The repaired views' loss weight at 0-based ``step`` (0 outside the code's ``start < it < until``)."""
        iteration = step + 1
        if not self.start < iteration < self.until:
            return 0.0
        return self.lambda_reg * math.sin(math.pi * (iteration - self.start) / (self.until - self.start))


__all__ = ["SCHEDULE_KEYS", "RepairSchedule"]
