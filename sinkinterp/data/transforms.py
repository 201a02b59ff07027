"""The paper's data interventions, as small composable functions, and the data config.

Gu et al. (section 4, "data") change what the model sees at fixed positions of every training
window: a uniformly random token at position 1 (or at 1 and 2, or at 2 only), or the same fixed
token at position 1, 2 or 3 -- and they vary how much text the model is trained on. Positions here
are 0-based like TransformerLens tensors: the paper's token 1 is position 0.

* :func:`random_tokens_at` ``(positions, vocab_size, generator=None)`` -- uniform random ids;
* :func:`fixed_token_at` ``(position, token_id)`` -- one fixed id (e.g. the BOS id);
* :func:`cap_data` ``(max_tokens)`` -- the loader only uses the first ``max_tokens`` tokens of
  the training split (applied to a :class:`~sinkinterp.data.loader.TokenWindows`, not to a batch).

A batch transform is a callable ``t(tokens, generator=None) -> tokens`` on a ``[..., T]`` numpy
array or torch tensor; it returns a new array/tensor (the input is not modified) that differs from
the input only at its positions. :class:`DataPipeline` applies them with a generator derived from
``(seed, step)``, so transformed batches are as resumable as the windows themselves.

:class:`DataConfig` is the one description of the data side of a training run, e.g.::

    DataConfig(shard_dir="data/debian", seq_len=512, batch_size=64, seed=0,
               transforms=[{"kind": "random_tokens", "positions": [0]}])
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from sinkinterp.data.loader import SAMPLING_MODES, TokenWindows, step_rng

__all__ = [
    "RandomTokensAt",
    "FixedTokenAt",
    "CapData",
    "random_tokens_at",
    "fixed_token_at",
    "cap_data",
    "apply_transforms",
    "TransformSpec",
    "TRANSFORM_KINDS",
    "DataConfig",
    "DataPipeline",
]

TRANSFORM_KINDS = ("random_tokens", "fixed_token")
SPLITS = ("train", "val")


def _positions(positions: int | Sequence[int], arg: str = "positions") -> tuple[int, ...]:
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        positions = [positions]
    try:
        out = tuple(int(p) for p in positions if not isinstance(p, bool) and int(p) == p)
        ok = len(out) == len(positions)
    except (TypeError, ValueError):
        ok = False
    if not ok or not out or any(p < 0 for p in out) or len(set(out)) != len(out):
        raise ValueError(f"{arg} must be a non-empty list of distinct integers >= 0 (0-based token positions), "
                         f"got {positions!r}")
    return out


def _check_room(tokens, positions: tuple[int, ...], name: str) -> None:
    if tokens.ndim < 1:
        raise ValueError(f"{name}: tokens must have a last (position) axis, got shape {tuple(tokens.shape)}")
    if max(positions) >= tokens.shape[-1]:
        raise ValueError(f"{name}: position {max(positions)} does not exist in windows of length {tokens.shape[-1]}")


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


@dataclass(frozen=True)
class RandomTokensAt:
    """Replace the tokens at ``positions`` by ids drawn uniformly from ``0 .. vocab_size - 1``,
    independently per window and position."""

    positions: tuple[int, ...]
    vocab_size: int
    generator: Any = None

    def __call__(self, tokens, generator=None):
        gen = generator if generator is not None else self.generator
        if gen is None:
            raise ValueError("generator: random_tokens_at needs a numpy or torch generator "
                             "(at construction or per call)")
        _check_room(tokens, self.positions, "random_tokens_at")
        shape = tuple(tokens.shape[:-1]) + (len(self.positions),)
        if _is_torch(tokens):
            import torch

            if isinstance(gen, torch.Generator):
                draws = torch.randint(0, self.vocab_size, shape, generator=gen, device=gen.device)
            else:
                draws = torch.from_numpy(gen.integers(0, self.vocab_size, size=shape, dtype=np.int64))
            out = tokens.clone()
            out[..., list(self.positions)] = draws.to(device=tokens.device, dtype=tokens.dtype)
            return out
        if not isinstance(gen, np.random.Generator):
            raise ValueError(f"generator: numpy tokens need a numpy.random.Generator, got {type(gen).__name__}")
        out = np.array(tokens, copy=True)
        out[..., list(self.positions)] = gen.integers(0, self.vocab_size, size=shape).astype(out.dtype)
        return out


@dataclass(frozen=True)
class FixedTokenAt:
    """Set the tokens at ``positions`` to ``token_id`` in every window."""

    positions: tuple[int, ...]
    token_id: int

    def __call__(self, tokens, generator=None):
        _check_room(tokens, self.positions, "fixed_token_at")
        out = tokens.clone() if _is_torch(tokens) else np.array(tokens, copy=True)
        out[..., list(self.positions)] = self.token_id
        return out


@dataclass(frozen=True)
class CapData:
    """Limit a token source to ``max_tokens`` tokens: its first ones, or with ``spread_block`` blocks
    of that many tokens spread evenly over it (``TokenWindows``)."""

    max_tokens: int
    spread_block: int | None = None

    def __call__(self, windows: TokenWindows) -> TokenWindows:
        return windows.capped(self.max_tokens, spread_block=self.spread_block)


def random_tokens_at(positions: int | Sequence[int], vocab_size: int, generator=None) -> RandomTokensAt:
    """A transform putting uniform random ids (``0 .. vocab_size - 1``) at the 0-based
    ``positions`` of every window (e.g. ``[0]``, or ``[0, 1]``). ``generator`` (numpy
    ``Generator`` or ``torch.Generator``) may be given here or per call; a per-call one wins."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    return RandomTokensAt(_positions(positions), int(vocab_size), generator)


def fixed_token_at(position: int | Sequence[int], token_id: int) -> FixedTokenAt:
    """A transform setting the token at the 0-based ``position`` (or positions) to ``token_id``."""
    if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)) or token_id < 0:
        raise ValueError(f"token_id must be an integer >= 0, got {token_id!r}")
    return FixedTokenAt(_positions(position, "position"), int(token_id))


def cap_data(max_tokens: int, spread_block: int | None = None) -> CapData:
    """A source transform: ``cap_data(n)(windows)`` uses only the first ``n`` tokens;
    ``cap_data(n, spread_block=b)`` uses ``n`` tokens in blocks of ``b`` spread over the whole source."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if spread_block is not None and (isinstance(spread_block, bool) or not isinstance(spread_block, (int, np.integer))
                                     or spread_block < 1):
        raise ValueError(f"spread_block must be an integer >= 1 or None, got {spread_block!r}")
    return CapData(int(max_tokens), None if spread_block is None else int(spread_block))


def apply_transforms(tokens, transforms: Sequence, generator=None):
    """Apply batch transforms in order (later ones win where positions overlap)."""
    for t in transforms:
        tokens = t(tokens, generator)
    return tokens


# ----------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class TransformSpec:
    """One batch transform in a :class:`DataConfig`, as plain data."""

    kind: str
    """``"random_tokens"`` or ``"fixed_token"``."""
    positions: Union[int, Sequence[int]]
    """0-based positions in each window (the paper's token 1 is position 0); stored as a tuple."""
    token_id: Union[int, str, None] = None
    """fixed_token only: an id, or ``"bos"`` / ``"eos"`` for the tokenizer's."""
    vocab_size: int | None = None
    """random_tokens only: draw from ``0 .. vocab_size - 1`` (None: the tokenizer's vocabulary)."""

    def __post_init__(self) -> None:
        if self.kind not in TRANSFORM_KINDS:
            raise ValueError(f"transforms[].kind must be one of {', '.join(TRANSFORM_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "positions", _positions(self.positions, "transforms[].positions"))
        if self.kind == "fixed_token":
            t = self.token_id
            if not (t in ("bos", "eos") or (isinstance(t, int) and not isinstance(t, bool) and t >= 0)):
                raise ValueError(f"transforms[].token_id must be an integer >= 0, 'bos' or 'eos' for a "
                                 f"fixed_token transform, got {t!r}")
            if self.vocab_size is not None:
                raise ValueError("transforms[].vocab_size applies to random_tokens only, not fixed_token")
        else:
            if self.token_id is not None:
                raise ValueError("transforms[].token_id applies to fixed_token only, not random_tokens")
            v = self.vocab_size
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"transforms[].vocab_size must be None or an integer >= 1, got {v!r}")

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind, "positions": list(self.positions)}
        if self.token_id is not None:
            d["token_id"] = self.token_id
        if self.vocab_size is not None:
            d["vocab_size"] = self.vocab_size
        return d

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any] | TransformSpec") -> "TransformSpec":
        if isinstance(d, TransformSpec):
            return d
        if not isinstance(d, Mapping):
            raise ValueError("transforms[] must be mappings like {'kind': 'random_tokens', 'positions': [0]}, "
                             f"got {d!r}")
        d = dict(d)
        if "position" in d and "positions" not in d:
            d["positions"] = d.pop("position")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"transforms[]: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed))}")
        if "kind" not in d or "positions" not in d:
            raise ValueError(f"transforms[] needs 'kind' and 'positions', got {d!r}")
        return cls(**d)

    def build(self, vocab_size: int, eos_id: int, bos_id: int | None):
        """The callable transform, with symbolic ids resolved against a tokenizer."""
        if self.kind == "random_tokens":
            v = self.vocab_size or vocab_size
            if v > vocab_size:
                raise ValueError(f"transforms[].vocab_size={v} exceeds the tokenizer's vocab_size={vocab_size}")
            return random_tokens_at(self.positions, v)
        token = self.token_id
        if token == "bos":
            if bos_id is None:
                raise ValueError("transforms[].token_id='bos' but the tokenizer has no BOS token")
            token = bos_id
        elif token == "eos":
            token = eos_id
        if token >= vocab_size:
            raise ValueError(f"transforms[].token_id={token} is not below the tokenizer's vocab_size={vocab_size}")
        return fixed_token_at(self.positions, token)


@dataclass(frozen=True)
class DataConfig:
    """Everything that decides which token windows a training run sees."""

    shard_dir: Union[str, os.PathLike]
    """Shard folder (manifest.json, tokenizer.json, *.bin) from ``sinkinterp data build-shards``."""
    seq_len: int = 512
    """T, tokens per window (>= 1)."""
    batch_size: int = 64
    """Windows per step (>= 1)."""
    seed: int = 0
    """Seed of window sampling and random transforms; with the step it fixes the batch (>= 0)."""
    split: str = "train"
    """Which split to read: "train" or "val"."""
    sampling: str = "random"
    """"random" (uniform window starts per step) or "sequential" (in order, seed unused)."""
    doc_aligned: bool = False
    """Start every window at a document start (after an EOS) instead of at arbitrary offsets."""
    transforms: Sequence[Union[TransformSpec, Mapping[str, Any]]] = ()
    """Batch transforms in order, e.g. [{"kind": "random_tokens", "positions": [0]}]; stored as a
    tuple of :class:`TransformSpec`."""
    max_train_tokens: int | None = None
    """Use only the first N tokens of the train split (None: all); ignored for split "val"."""
    max_train_tokens_spread: int | None = None
    """With max_train_tokens: take the N tokens as blocks of this many tokens spread evenly over the
    whole train split instead of its first N (None: the first N). The corpus is stored package by
    package, so its first tokens are a few packages' documents; spreading keeps the amount and
    draws it from everywhere."""

    def __post_init__(self) -> None:
        def integer(name: str, minimum: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"DataConfig.{name} must be an integer >= {minimum}, got {v!r}")

        if isinstance(self.shard_dir, os.PathLike):
            object.__setattr__(self, "shard_dir", os.fspath(self.shard_dir))
        if not isinstance(self.shard_dir, str) or not self.shard_dir:
            raise ValueError(f"DataConfig.shard_dir must be a folder path, got {self.shard_dir!r}")
        integer("seq_len", 1)
        integer("batch_size", 1)
        integer("seed", 0)
        if self.split not in SPLITS:
            raise ValueError(f"DataConfig.split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"DataConfig.sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.sampling!r}")
        if not isinstance(self.doc_aligned, bool):
            raise ValueError(f"DataConfig.doc_aligned must be true or false, got {self.doc_aligned!r}")
        if self.max_train_tokens is not None:
            integer("max_train_tokens", self.seq_len)
        if self.max_train_tokens_spread is not None:
            integer("max_train_tokens_spread", 1)
            if self.max_train_tokens is None:
                raise ValueError("DataConfig.max_train_tokens_spread needs max_train_tokens (the number of tokens "
                                 "to spread), got max_train_tokens=None")
        if isinstance(self.transforms, (str, bytes, Mapping)) or not isinstance(self.transforms, Sequence):
            raise ValueError(f"DataConfig.transforms must be a list of transform mappings, got {self.transforms!r}")
        specs = []
        for i, t in enumerate(self.transforms):
            try:
                spec = TransformSpec.from_dict(t)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"DataConfig.{str(exc).replace('transforms[]', f'transforms[{i}]')}") from None
            if max(spec.positions) >= self.seq_len:
                raise ValueError(f"DataConfig.transforms[{i}].positions: position {max(spec.positions)} does not "
                                 f"exist in windows of seq_len={self.seq_len} (allowed 0..{self.seq_len - 1})")
            specs.append(spec)
        object.__setattr__(self, "transforms", tuple(specs))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["transforms"] = [t.to_dict() for t in self.transforms]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DataConfig":
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"DataConfig: unknown field(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed))}")
        return cls(**dict(d))


class DataPipeline:
    """Windows + cap + transforms of a :class:`DataConfig`: ``batch_at(step)`` is the exact
    ``[batch_size, seq_len]`` int64 numpy batch of a training step, a pure function of the config
    and the step (``torch.from_numpy`` it for training)."""

    def __init__(self, config: DataConfig) -> None:
        self.config = config
        windows = TokenWindows(config.shard_dir, config.split)
        if config.max_train_tokens is not None and config.split == "train":
            windows = cap_data(config.max_train_tokens, config.max_train_tokens_spread)(windows)
        self.windows = windows
        tok = windows.manifest["tokenizer"]
        self.transforms = [spec.build(int(tok["vocab_size"]), int(tok["eos_id"]), tok.get("bos_id"))
                           for spec in config.transforms]
        # fail now, not at step 0 of training, if the windows cannot be drawn
        windows.window_starts(0, config.batch_size, config.seq_len, config.seed,
                              sampling=config.sampling, doc_aligned=config.doc_aligned)

    def batch_at(self, step: int) -> np.ndarray:
        c = self.config
        tokens = self.windows.batch_at(step, c.batch_size, c.seq_len, c.seed,
                                       sampling=c.sampling, doc_aligned=c.doc_aligned)
        if self.transforms:
            tokens = apply_transforms(tokens, self.transforms, step_rng(c.seed, step, 1))
        return tokens

    def batches(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[np.ndarray]:
        """``batch_at(s)`` for ``s = start_step, start_step + 1, ...`` (``num_steps`` of them or forever)."""
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be an integer >= 0, got {start_step!r}")
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield self.batch_at(step)
            step += 1

    def tokens_seen(self, step: int) -> int:
        """Tokens consumed before ``step`` (for logs and checkpoints)."""
        return step * self.config.batch_size * self.config.seq_len
