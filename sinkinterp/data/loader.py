"""Training windows from a shard folder, memory-mapped, deterministic per step.

``TokenWindows(shard_dir, "train")`` sees the split's shards as one token stream of ``n_tokens``
ids (shards are memory-mapped with ``numpy.memmap``; a window may cross a shard boundary).
:meth:`TokenWindows.batch_at` returns the ``[batch_size, seq_len]`` int64 windows of one training
step, and the windows depend only on ``(seed, step)`` and the arguments, never on what was read
before. That is the whole resume story: a run restarted at step ``k`` calls
``batches(..., start_step=k)`` and gets exactly the batches it would have seen; the checkpoint only
needs to store the step.

Window starts for step ``s`` (``B`` = batch size, ``T`` = sequence length, ``N`` = tokens used):

* ``sampling="random"``: ``B`` starts drawn uniformly from ``0 .. N - T`` by
  ``numpy.random.default_rng([seed, s, 0])`` (with replacement, like nanoGPT);
* ``sampling="sequential"``: non-overlapping windows in order, window ``w = s * B + b`` starts at
  ``(w mod (N // T)) * T``; the seed is not used and an epoch is ``(N // T) / B`` steps;
* ``doc_aligned=True``: starts are restricted to document starts (position 0 and every position
  right after an EOS, as long as ``T`` tokens fit); random picks one uniformly (every document
  equally likely, whatever its length), sequential takes them in order. A window longer than its
  document runs on into the next one, as in the paper's "documents starting at chunk boundaries".
  With ``doc_aligned=False`` windows start at arbitrary offsets, mostly mid-document.

``max_tokens`` keeps only the first ``max_tokens`` tokens of the split (the paper's data-amount
study; see ``transforms.cap_data``): no window reads past it. With ``spread_block=B`` the
``max_tokens`` tokens are instead ``ceil(max_tokens / B)`` blocks of ``B`` tokens spaced evenly over
the whole split, read as one stream of ``n_tokens`` ids: the same amount of data, drawn from every
part of the corpus rather than from its first documents (the corpus is stored package by package,
so its first tokens are a few packages' documentation). A window may cross from one block into the
next (a seam, like a shard boundary).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import numpy as np

from sinkinterp.data.shards import open_split, read_manifest, verify_shards

__all__ = ["TokenWindows", "SAMPLING_MODES", "step_rng"]

SAMPLING_MODES = ("random", "sequential")


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    """The generator for one (seed, step): stream 0 draws window starts, stream 1 the data
    transforms. A pure function of its arguments."""
    return np.random.default_rng([int(seed), int(step), int(stream)])


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class TokenWindows:
    """The token stream of one split of a shard folder.

    Args:
        shard_dir: a folder written by ``write_shards`` (or restored by ``unpack_compressed``).
        split: ``"train"`` or ``"val"``.
        max_tokens: use only the first ``max_tokens`` tokens (None: all).
        spread_block: with ``max_tokens``, take them as blocks of this many tokens spread evenly
            over the split instead of from its start (None: from the start).
        verify: check every shard's sha256 first (sizes are always checked).
    """

    def __init__(self, shard_dir: str | os.PathLike, split: str = "train", *,
                 max_tokens: int | None = None, spread_block: int | None = None, verify: bool = False) -> None:
        self.shard_dir = Path(shard_dir)
        self.split = split
        manifest = verify_shards(self.shard_dir) if verify else read_manifest(self.shard_dir)
        self.manifest = manifest
        self._shards = open_split(self.shard_dir, split)
        sizes = np.array([len(s) for s in self._shards], dtype=np.int64)
        self._bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.total_tokens = int(self._bounds[-1])
        if self.total_tokens == 0:
            raise ValueError(f"split: {split!r} of {str(self.shard_dir)!r} holds no tokens")
        if max_tokens is not None:
            max_tokens = _check_int("max_tokens", max_tokens, 1)
        self.max_tokens = max_tokens
        self.n_tokens = self.total_tokens if max_tokens is None else min(max_tokens, self.total_tokens)
        self.eos_id = int(manifest["tokenizer"]["eos_id"])
        self.vocab_size = int(manifest["tokenizer"]["vocab_size"])
        self._doc_starts: np.ndarray | None = None
        self.spread_block = None if spread_block is None else _check_int("spread_block", spread_block, 1)
        self._blocks: np.ndarray | None = None  # [n_blocks] physical start of each logical block
        if self.spread_block is not None:
            if max_tokens is None:
                raise ValueError("spread_block: needs max_tokens (the number of tokens to spread), got None")
            n_blocks = -(-self.n_tokens // self.spread_block)
            if n_blocks * self.spread_block > self.total_tokens:
                raise ValueError(
                    f"spread_block: {n_blocks} blocks of {self.spread_block} tokens (max_tokens={max_tokens} "
                    f"rounded up) do not fit in the {self.total_tokens} tokens of split {split!r}; use a smaller "
                    "block or max_tokens")
            # block j starts at floor(j * total / n_blocks): evenly spaced, never overlapping (stride >= block)
            self._blocks = np.arange(n_blocks, dtype=np.int64) * self.total_tokens // n_blocks

    def capped(self, max_tokens: int, spread_block: int | None = None) -> "TokenWindows":
        """The same split limited to ``max_tokens`` tokens: its first ones, or with ``spread_block``
        blocks of that size spread evenly over it."""
        return TokenWindows(self.shard_dir, self.split, max_tokens=max_tokens, spread_block=spread_block)

    def __len__(self) -> int:
        return self.n_tokens

    # -------------------------------------------------------------------------------- reading
    def read(self, start: int | np.integer, length: int | np.integer) -> np.ndarray:
        """Tokens ``start .. start + length - 1`` of the stream as int64 (must lie in ``n_tokens``)."""
        start, length = int(start), int(length)
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"window [{start}, {start + length}) is outside the {self.n_tokens} tokens in use")
        if self._blocks is None:
            return self._read_stored(start, length)
        out = np.empty(length, dtype=np.int64)
        pos, filled, b = start, 0, self.spread_block
        while filled < length:  # logical block j holds stream tokens j*b .. (j+1)*b - 1
            j, lo = divmod(pos, b)
            take = min(length - filled, b - lo)
            out[filled: filled + take] = self._read_stored(int(self._blocks[j]) + lo, take)
            filled += take
            pos += take
        return out

    def _read_stored(self, start: int, length: int) -> np.ndarray:
        """Tokens ``start .. start + length - 1`` of the split as stored (before any spreading)."""
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self._bounds, start, side="right")) - 1
        pos, filled = start, 0
        while filled < length:
            lo = pos - int(self._bounds[i])
            take = min(length - filled, len(self._shards[i]) - lo)
            out[filled: filled + take] = self._shards[i][lo: lo + take]
            filled += take
            pos += take
            i += 1
        return out

    def doc_starts(self) -> np.ndarray:
        """Positions where a document starts (0 and right after every EOS), below ``n_tokens``."""
        if self._doc_starts is None and self._blocks is not None:
            parts = [np.zeros(1, dtype=np.int64)]
            b = self.spread_block
            for j in range(len(self._blocks)):
                block = self.read(j * b, min(b, self.n_tokens - j * b))
                parts.append(np.flatnonzero(block == self.eos_id).astype(np.int64) + j * b + 1)
            starts = np.concatenate(parts)
            self._doc_starts = starts[starts < self.n_tokens]
        if self._doc_starts is None:
            parts = [np.zeros(1, dtype=np.int64)]
            for shard, offset in zip(self._shards, self._bounds[:-1]):
                if offset >= self.n_tokens:
                    break
                eos = np.flatnonzero(np.asarray(shard[: self.n_tokens - offset]) == self.eos_id)
                parts.append(eos.astype(np.int64) + offset + 1)
            starts = np.concatenate(parts)
            self._doc_starts = starts[starts < self.n_tokens]
        return self._doc_starts

    # ------------------------------------------------------------------------------ windows
    def window_starts(self, step: int, batch_size: int, seq_len: int, seed: int = 0, *,
                      sampling: str = "random", doc_aligned: bool = False) -> np.ndarray:
        """The ``batch_size`` window starts of training step ``step`` (see the module docstring)."""
        step = _check_int("step", step, 0)
        batch_size = _check_int("batch_size", batch_size, 1)
        seq_len = _check_int("seq_len", seq_len, 1)
        seed = _check_int("seed", seed, 0)
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {sampling!r}")
        n = self.n_tokens
        if seq_len > n:
            raise ValueError(f"seq_len={seq_len} is longer than the {n} tokens in use of split {self.split!r}")
        if doc_aligned:
            starts = self.doc_starts()
            valid = starts[starts <= n - seq_len]
            if valid.size == 0:
                raise ValueError(f"doc_aligned: no document start leaves room for seq_len={seq_len} tokens")
            if sampling == "random":
                return valid[step_rng(seed, step, 0).integers(0, valid.size, size=batch_size)]
            w = step * batch_size + np.arange(batch_size, dtype=np.int64)
            return valid[w % valid.size]
        if sampling == "random":
            return step_rng(seed, step, 0).integers(0, n - seq_len + 1, size=batch_size, dtype=np.int64)
        w = step * batch_size + np.arange(batch_size, dtype=np.int64)
        return (w % (n // seq_len)) * seq_len

    def batch_at(self, step: int, batch_size: int, seq_len: int, seed: int = 0, *,
                 sampling: str = "random", doc_aligned: bool = False) -> np.ndarray:
        """The ``[batch_size, seq_len]`` int64 token windows of training step ``step``."""
        starts = self.window_starts(step, batch_size, seq_len, seed, sampling=sampling, doc_aligned=doc_aligned)
        return np.stack([self.read(int(s), seq_len) for s in starts])

    def batches(self, batch_size: int, seq_len: int, seed: int = 0, start_step: int = 0,
                num_steps: int | None = None, *, sampling: str = "random",
                doc_aligned: bool = False) -> Iterator[np.ndarray]:
        """``batch_at(step)`` for ``step = start_step, start_step + 1, ...`` (``num_steps`` of them,
        or forever). The i-th batch yielded is step ``start_step + i``."""
        start_step = _check_int("start_step", start_step, 0)
        if num_steps is not None:
            num_steps = _check_int("num_steps", num_steps, 0)
        # validate before the first next() so a bad argument fails at the call site
        self.window_starts(start_step, batch_size, seq_len, seed, sampling=sampling, doc_aligned=doc_aligned)
        steps = count(start_step) if num_steps is None else range(start_step, start_step + num_steps)

        def gen():
            for step in steps:
                yield self.batch_at(step, batch_size, seq_len, seed, sampling=sampling, doc_aligned=doc_aligned)

        return gen()
