"""Input sequences for the measurement: natural text, uniform random tokens, one token repeated,
random tokens whose second half copies the first, or an explicit array of ids. BOS is added only when asked (``prepend_bos``); the default is the paper's:
no BOS. ``seq_len`` always counts every position the model sees, a prepended BOS included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["INPUT_KINDS", "copy_first_half", "make_tokens", "load_token_file", "default_text", "read_texts"]

INPUT_KINDS = ("natural", "random", "repeat", "copy", "copy-natural")


def default_text() -> str:
    """The small natural-text sample shipped with sinkinterp (see sinkinterp/assets/README.md)."""
    return resources.files("sinkinterp.assets").joinpath("natural_text.txt").read_text(encoding="utf-8")


def read_texts(paths: Sequence[str | os.PathLike]) -> str:
    """Concatenate user text files (documents separated by a blank line)."""
    parts = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n\n".join(parts)


def load_token_file(path: str | os.PathLike) -> np.ndarray:
    """Load an integer array [N, T] of token ids from a .npy file, checking its form."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokens file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
        raise ValueError(f"tokens: could not read {path} as a .npy array ({err})") from None
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens: {path} must hold integer token ids, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"tokens: {path} must have shape [num_seqs, seq_len], got {arr.shape}")
    return arr.astype(np.int64)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def copy_first_half(tokens: Any, start: int = 0) -> np.ndarray:
    """``tokens`` [N, T] with the positions from ``start`` on split in two, the second half (from
    ``start`` + ceil((T - start) / 2)) replaced by a copy of the first: every query there has an earlier
    occurrence of its token whose successor predicts its own (``start`` = 1 keeps a BOS first out of it)."""
    ids = np.array(tokens, dtype=np.int64, copy=True)
    if ids.ndim != 2:
        raise ValueError(f"tokens must be [N, T], got shape {ids.shape}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= ids.shape[1] - 2:
        raise ValueError(f"start must be an integer in [0, {ids.shape[1] - 2}], got {start!r}")
    half = start + (ids.shape[1] - start + 1) // 2
    ids[:, half:] = ids[:, start:start + ids.shape[1] - half]
    return ids


def make_tokens(
    kind: str,
    *,
    seq_len: int,
    num_seqs: int,
    seed: int = 0,
    vocab_size: int,
    tokenizer: Any | None = None,
    text: str | None = None,
    prepend_bos: bool = False,
    bos_token_id: int | None = None,
    repeat_token: int | None = None,
) -> np.ndarray:
    """Build token ids [num_seqs, seq_len].

    * ``natural``: non-overlapping windows of ``text`` (default: the shipped sample) tokenized with
      ``tokenizer`` (a Hugging Face tokenizer; special tokens are not added), chosen at random
      without replacement with ``seed``;
    * ``random``: ids drawn uniformly from ``[0, vocab_size)``;
    * ``repeat``: one id repeated over the whole sequence (``repeat_token``, or a random id per
      sequence);
    * ``copy``: uniform random ids whose second half copies the first (the first ceil(n / 2) ids of
      the sequence, then as many of them again as fit): the induction-head test, where every token of
      the second half has an earlier occurrence whose successor predicts its own;
    * ``copy-natural``: the ``natural`` windows (the same ones, for the same seed) with their second half
      replaced by a copy of their first (``copy_first_half``): the induction test on real text, whose
      unrepeated windows are the control.

    With ``prepend_bos`` the first position holds ``bos_token_id`` and the rest ``seq_len - 1``
    tokens of the chosen kind.
    """
    if kind not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
    seq_len = _check_int("seq_len", seq_len, 2)
    num_seqs = _check_int("num_seqs", num_seqs, 1)
    seed = _check_int("seed", seed, 0)
    vocab_size = _check_int("vocab_size", vocab_size, 1)
    if prepend_bos and bos_token_id is None:
        raise ValueError("prepend_bos: this model's tokenizer has no BOS token; run without --prepend-bos")
    body = seq_len - 1 if prepend_bos else seq_len
    rng = np.random.default_rng(seed)
    if kind == "random":
        ids = rng.integers(0, vocab_size, size=(num_seqs, body), dtype=np.int64)
    elif kind == "repeat":
        if repeat_token is None:
            tok = rng.integers(0, vocab_size, size=(num_seqs, 1), dtype=np.int64)
        else:
            if not 0 <= int(repeat_token) < vocab_size:
                raise ValueError(f"repeat_token must be in [0, {vocab_size - 1}], got {repeat_token}")
            tok = np.full((num_seqs, 1), int(repeat_token), dtype=np.int64)
        ids = np.repeat(tok, body, axis=1)
    elif kind == "copy":
        half = rng.integers(0, vocab_size, size=(num_seqs, (body + 1) // 2), dtype=np.int64)
        ids = np.concatenate([half, half], axis=1)[:, :body]
    else:  # natural, copy-natural
        if tokenizer is None:
            raise ValueError(f"inputs={kind} needs a tokenizer, and this model has none; "
                             "use --inputs random|repeat|copy or --tokens IDS.npy")
        stream = np.asarray(tokenizer(text if text is not None else default_text(),
                                      add_special_tokens=False)["input_ids"], dtype=np.int64)
        n_chunks = len(stream) // body
        if n_chunks < num_seqs:
            raise ValueError(
                f"natural text gives {len(stream)} tokens = {n_chunks} windows of {body}; "
                f"num_seqs={num_seqs} needs more text (pass more --text files) or a shorter seq_len"
            )
        chosen = np.sort(rng.choice(n_chunks, size=num_seqs, replace=False))
        ids = np.stack([stream[c * body:(c + 1) * body] for c in chosen])
        if ids.max(initial=0) >= vocab_size:
            raise ValueError(f"the tokenizer produced ids >= the model's vocabulary size {vocab_size}")
        if kind == "copy-natural":
            ids = copy_first_half(ids)
    if prepend_bos:
        ids = np.concatenate([np.full((num_seqs, 1), int(bos_token_id), dtype=np.int64), ids], axis=1)
    return ids
