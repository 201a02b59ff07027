"""Checkpoints: ``model.safetensors`` plus a human-readable ``config.json`` in one folder.

``config.json``::

    {
      "format_version": 1,
      "model_config": {... ModelConfig.to_dict() ...},
      "param_dtype": "float32",        # dtype of the model when saved (restored on load)
      "storage_dtype": "bfloat16",     # dtype of the tensors in model.safetensors
      "versions": {"torch": ..., "transformer_lens": ..., "python": ...},
      "git_commit": "..." | null,
      "extra": {... caller's JSON-able data: step, tokens seen, data position, seed ...}
    }

Both files are written atomically (a temporary file in the same folder, then ``os.replace``),
weights first, so a folder with a ``config.json`` always has matching weights. Older
``format_version`` values are migrated explicitly in ``_MIGRATIONS``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sinkinterp import provenance
from sinkinterp.fileio import atomic_write_path

from .config import ModelConfig
from .model import SinkTransformer

__all__ = [
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
]

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}

# format_version -> function upgrading the config.json dict to the next version
_MIGRATIONS: dict[int, Any] = {}


def _dtype_name(dtype: torch.dtype, arg: str) -> str:
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"{arg}: got {dtype}, allowed values are {list(_DTYPES.values())}")
    return _DTYPE_NAMES[dtype]


def save_checkpoint(
    directory: str | os.PathLike,
    model: SinkTransformer,
    extra: dict[str, Any] | None = None,
    storage_dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed).

    ``extra``: JSON-able data stored under "extra" (step, data position, seed ...).
    ``storage_dtype``: store floating tensors in this dtype (e.g. ``torch.bfloat16`` to halve the
    file); ``load_checkpoint`` casts them back to the model's dtype at save time.
    Returns the folder.
    """
    if not isinstance(model, SinkTransformer):
        raise TypeError(f"model: expected a SinkTransformer, got {type(model).__name__}")
    extra = dict(extra or {})
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as err:
        raise TypeError(f"extra: must be JSON-serializable ({err})") from err
    param_dtype = next(model.parameters()).dtype
    param_name = _dtype_name(param_dtype, "model dtype")
    store = storage_dtype or param_dtype
    store_name = _dtype_name(store, "storage_dtype")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(store) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "model_config": model.cfg.to_dict(),
        "param_dtype": param_name,
        "storage_dtype": store_name,
        "versions": provenance.versions(),
        "git_commit": provenance.git_commit(),
        "extra": extra,
    }
    atomic_write_path(directory / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
    atomic_write_path(directory / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return directory


def read_checkpoint_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed (and migrated) ``config.json`` of a checkpoint folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(directory)!r} does not exist")
    path = directory / CONFIG_NAME
    if not path.is_file():
        present = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(f"checkpoint folder {str(directory)!r} has no {CONFIG_NAME} (it holds {present})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{path}: missing or invalid 'format_version'")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version} is newer than this code supports ({FORMAT_VERSION})"
        )
    while version < FORMAT_VERSION:
        if version not in _MIGRATIONS:
            raise ValueError(f"{path}: no migration from format_version {version}")
        meta = _MIGRATIONS[version](meta)
        version = meta["format_version"]
    if "model_config" not in meta:
        raise ValueError(f"{path}: no 'model_config' entry")
    return meta


def load_checkpoint(
    directory: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> SinkTransformer:
    """Rebuild a ``SinkTransformer`` from a checkpoint folder.

    ``dtype``: the model's dtype (default: the dtype it had when saved, also when the weights were
    stored in bf16). Unknown config fields, missing files and mismatched weights raise clear errors.
    """
    directory = Path(directory)
    meta = read_checkpoint_info(directory)
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{directory / CONFIG_NAME}: invalid model_config: {err}") from err
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint folder {str(directory)!r} has no {WEIGHTS_NAME}")
    target = dtype or _DTYPES.get(meta.get("param_dtype", "float32"), torch.float32)
    state = load_file(str(weights))
    model = SinkTransformer(cfg)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{weights}: weights do not match the config (missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)})"
        )
    model.to(dtype=target)
    model.load_state_dict({k: v.to(target) if v.is_floating_point() else v for k, v in state.items()})
    return model.to(device=device)
