"""Tiny training fixtures for tests (ours and other modules'): a synthetic shard folder and a
tiny ``TrainConfig``, fast enough to train a few steps on one CPU core.

``make_tiny_shards(directory)`` writes a shard folder (train + val split) of patterned synthetic
text with a byte-level BPE of 300 tokens, through the data package's own API.
``tiny_train_config(shard_dir, **overrides)`` is a 2-layer, d_model 32, T 16 run; ``model`` and
``data`` overrides are dicts merged into the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sinkinterp.data import train_bpe, write_shards

from .config import TrainConfig

__all__ = ["make_tiny_shards", "tiny_train_config", "TINY_VOCAB", "ddp_worker"]

TINY_VOCAB = 300

_WORDS = ("the cat sat on a mat while the dog ran to the park and a bird sang in the old tree "
          "then rain fell over the quiet town so everyone went home to read by the warm fire").split()


def _documents(n_docs: int) -> list[str]:
    docs = []
    for i in range(n_docs):
        k = len(_WORDS)
        words = [_WORDS[(i * 7 + j * (1 + i % 3)) % k] for j in range(40 + i % 17)]
        docs.append(" ".join(words).capitalize() + ".")
    return docs


def make_tiny_shards(directory: str | os.PathLike, n_docs: int = 120) -> Path:
    """Write (once) a tiny shard folder into ``directory`` and return it."""
    directory = Path(directory)
    if (directory / "manifest.json").is_file():
        return directory
    docs = _documents(n_docs)
    tok = train_bpe(docs, vocab_size=TINY_VOCAB, min_frequency=1)
    write_shards(docs, tok, directory, shard_tokens=4096, val_policy="interleave", val_every=5,
                 val_block_tokens=256)
    return directory


def tiny_train_config(shard_dir: str | os.PathLike, **overrides: Any) -> TrainConfig:
    model = dict(n_layers=2, d_model=32, n_heads=4, d_ff=64, d_vocab=TINY_VOCAB, n_ctx=64, seed=0)
    model.update(overrides.pop("model", {}))
    data = dict(shard_dir=str(shard_dir), seq_len=16, batch_size=8, seed=0)
    data.update(overrides.pop("data", {}))
    base: dict[str, Any] = dict(model=model, data=data, steps=8, lr=3e-3, warmup_steps=2, log_every=2,
                                eval_every=4, eval_batches=2, sink_every=4, sink_eval_seqs=8,
                                sink_seq_len=16, device="cpu")
    base.update(overrides)
    return TrainConfig.from_dict(base)


def ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out_dir: str, weights_dir: str) -> None:
    """One rank of a CPU/gloo DDP test run (``torch.multiprocessing.spawn`` target): trains, then
    saves its final weights to ``weights_dir/rank{rank}.pt``."""
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from .trainer import train

    res = train(TrainConfig.from_dict(cfg_dict), out_dir, verbose=False)
    torch.save({k: v.detach().cpu() for k, v in res.model.state_dict().items()},
               Path(weights_dir) / f"rank{rank}.pt")
