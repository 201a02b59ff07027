"""Multi-process training (DDP) on CPU: two gloo ranks started with torch.multiprocessing.spawn,
the same code path torchrun uses (WORLD_SIZE / RANK / LOCAL_RANK / MASTER_* in the environment)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from sinkinterp.train import read_metrics, train
from sinkinterp.train.testing import ddp_worker, make_tiny_shards, tiny_train_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_ranks_agree_and_learn(tmp_path):
    shards = make_tiny_shards(tmp_path / "shards")
    cfg = tiny_train_config(shards, steps=10, lr=1e-2, warmup_steps=1, log_every=5, eval_every=5,
                            sink_every=10, ckpt_every=5, model={"attn_bias": "kv"})
    out, weights = tmp_path / "ddp", tmp_path / "weights"
    weights.mkdir()
    mp.spawn(ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(out), str(weights)), nprocs=2, join=True)

    w0, w1 = (torch.load(weights / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # both ranks end with identical weights

    rows = read_metrics(out)  # only rank 0 writes: every step appears once
    assert [r["step"] for r in rows] == [0, 5, 10]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.3
    assert rows[2]["train_loss"] < rows[1]["train_loss"]
    assert rows[-1]["sink_bias"] is not None
    assert (out / "checkpoints" / "latest").read_text() == "step_0000010"

    # the global batch split over 2 ranks with averaged gradients = one process on the whole batch
    single = train(cfg, tmp_path / "single", verbose=False).model.state_dict()
    for k in w0:
        torch.testing.assert_close(w0[k], single[k], rtol=1e-4, atol=1e-5)
