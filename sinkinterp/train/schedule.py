"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr_ratio * lr`` or constant.

``lr_at(cfg, s)`` is the learning rate of update ``s`` (0-based; the run makes updates
``0 .. steps - 1``)::

    s <  W:  lr * (s + 1) / W                                   (W = warmup_steps)
    s >= W:  constant: lr
             cosine:   min + (lr - min) * (1 + cos(pi * p)) / 2,  p = (s - W) / max(1, steps - 1 - W)
                       min = min_lr_ratio * lr  (so update W uses lr, the last update uses min)

A pure function of the config and the step, so a resumed run gets exactly the same values.
"""

from __future__ import annotations

import math

from .config import TrainConfig

__all__ = ["lr_at"]


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of update ``step`` (0-based) of a run configured by ``cfg``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")
    w = cfg.warmup_steps
    if step < w:
        return cfg.lr * (step + 1) / w
    if cfg.schedule == "constant":
        return cfg.lr
    lo = cfg.min_lr_ratio * cfg.lr
    progress = min(1.0, (step - w) / max(1, cfg.steps - 1 - w))
    return lo + (cfg.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))
