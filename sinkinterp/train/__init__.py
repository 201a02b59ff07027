"""Pre-training sinkinterp models with sink tracking along the way (see docs/training.md).

Public API::

    TrainConfig(model=..., data=..., steps=..., lr=...)   # frozen, validated; to_dict() / from_dict()
    train(cfg, out_dir, resume=True, *, until_step=None, verbose=True) -> TrainResult
    TrainingDiverged                                       # raised on a NaN / inf loss, names the step
    lr_at(cfg, step)                                       # the learning-rate schedule
    param_groups(model, cfg), decays(name, param, mode)    # which parameters get weight decay
    flops_per_token(model_cfg, seq_len), PEAK_FLOPS_BF16   # MFU accounting
    read_metrics(out_dir)                                  # rows of metrics.jsonl
    cli.train_main(argv), cli.sweep_main(argv)             # `sinkinterp train` / `sinkinterp sweep`

Code: ``config.py`` (TrainConfig), ``schedule.py``, ``optim.py``, ``flops.py``, ``trainer.py``
(the loop, checkpoints, DDP), ``cli.py``; ``testing.py`` has tiny fixtures. Tests:
``tests/test_train_*.py``.
"""

from .config import TrainConfig
from .flops import PEAK_FLOPS_BF16, flops_per_token, matmul_params, peak_flops
from .optim import build_optimizer, decays, param_groups
from .schedule import lr_at
from .trainer import METRIC_FIELDS, TrainingDiverged, TrainResult, read_metrics, train

__all__ = [
    "TrainConfig", "train", "TrainResult", "TrainingDiverged", "METRIC_FIELDS", "read_metrics",
    "lr_at", "param_groups", "decays", "build_optimizer",
    "flops_per_token", "matmul_params", "peak_flops", "PEAK_FLOPS_BF16",
]
