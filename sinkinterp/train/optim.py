"""AdamW with weight decay on the chosen parameters (``TrainConfig.decay_params``)."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig

__all__ = ["decays", "param_groups", "build_optimizer"]


def decays(name: str, param: torch.Tensor, decay_params: str) -> bool:
    """Whether the parameter called ``name`` gets weight decay.

    "matrices": weight matrices only -- parameters of 2 or more dimensions whose own name starts
    with ``W_`` (W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, W_gate, W_out, W_U). Norm weights/biases,
    k*/v*, the sink token and logits and relative-position tables are not decayed (decaying a
    learned bias towards zero would fight the very sink it is there to absorb). "all": everything.
    """
    if decay_params == "all":
        return True
    if decay_params != "matrices":
        raise ValueError(f"decay_params: got {decay_params!r}, allowed values are ['matrices', 'all']")
    return param.dim() >= 2 and name.rsplit(".", 1)[-1].startswith("W_")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Two AdamW groups: ``{"params", "names", "weight_decay": cfg.weight_decay}`` and the rest with 0.
    Parameters are listed in ``named_parameters`` order (a stable optimizer-state layout)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, p, cfg.decay_params) else no_decay).append((name, p))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (fused kernel on CUDA). The lr is set per step by the trainer."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps,
                             fused=True if device.type == "cuda" else None)
