"""The learning-rate schedule of a fit (slice models and the series model alike)."""

from __future__ import annotations

import math

__all__ = ["LR_SCHEDULES", "LR_FLOOR", "MAX_RATE", "learning_rate_at"]

LR_SCHEDULES = ("cosine", "constant")
# The largest --lr (and --l2) taken: above 1 neither is a rate or a penalty anyone trains with, and the
# weights leave float32 within a few steps.
MAX_RATE = 1.0
LR_FLOOR = 0.05  # the cosine schedule's last epoch runs at this fraction of --lr


def learning_rate_at(cfg, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) for ``cfg`` (anything with ``lr_schedule``, ``learning_rate`` and
    ``epochs``). Cosine annealing settles the last epoch's weights, which the run keeps (docs/training.md has
    the measurement). A function of the epoch alone, so a resumed run continues it; raising --epochs stretches
    it (the rate rises again for the added epochs)."""
    if cfg.lr_schedule == "constant" or cfg.epochs == 1:
        return cfg.learning_rate
    t = min(epoch, cfg.epochs - 1) / (cfg.epochs - 1)
    return cfg.learning_rate * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * t)))
