"""Tokenizers for pre-training small models, offline.

* :func:`train_bpe` trains a byte-level BPE (GPT-2 style: lossless on any UTF-8 text, no unknown
  token) with the ``tokenizers`` library; special tokens ``<|endoftext|>`` (id 0, the document
  separator = EOS) and ``<|bos|>`` (id 1) come first.
* :func:`load_tokenizer` opens either a ``tokenizer.json`` file (as written by
  :meth:`TextTokenizer.save`) or a local Hugging Face tokenizer folder (``AutoTokenizer`` with
  ``local_files_only=True``: nothing is downloaded).

Both give a :class:`TextTokenizer`: ``encode(text) -> list[int]`` (never adds BOS/EOS: the caller
decides), ``decode(ids)``, ``vocab_size``, ``eos_id``, ``bos_id`` and ``to_hf()`` for handing the
tokenizer to TransformerLens / transformers.

For our own BPE, ``encode`` treats a literal ``<|endoftext|>`` in the text as ordinary characters,
so a document that mentions the separator cannot split itself in two.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "EOS_TOKEN",
    "BOS_TOKEN",
    "SPECIAL_TOKENS",
    "TextTokenizer",
    "train_bpe",
    "load_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|bos|>"
SPECIAL_TOKENS = (EOS_TOKEN, BOS_TOKEN)


class TextTokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` or a Hugging Face tokenizer.

    Use :func:`train_bpe` or :func:`load_tokenizer` to make one. A ``tokenizers.Tokenizer`` passed
    in is switched to ``encode_special_tokens = True`` (literal special-token text stays text).
    """

    def __init__(self, backend: Any, *, eos_token: str, bos_token: str | None, source: str) -> None:
        from tokenizers import Tokenizer

        self._raw: Tokenizer | None = backend if isinstance(backend, Tokenizer) else None
        self._hf = None if self._raw is not None else backend
        self.source = source
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.eos_id = self._token_id(eos_token, "eos_token")
        self.bos_id = None if bos_token is None else self._token_id(bos_token, "bos_token")
        if self._raw is not None:
            self._raw.encode_special_tokens = True  # literal special-token text stays text
            self._raw.no_padding()
            self._raw.no_truncation()

    def _token_id(self, token: str, arg: str) -> int:
        tid = self._raw.token_to_id(token) if self._raw is not None else self._hf.convert_tokens_to_ids(token)
        unk = None if self._raw is not None else getattr(self._hf, "unk_token_id", None)
        if tid is None or (unk is not None and tid == unk and token != getattr(self._hf, "unk_token", None)):
            raise ValueError(f"{arg}: {token!r} is not in the vocabulary of {self.source}")
        return int(tid)

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS/EOS is added."""
        if self._raw is not None:
            return self._raw.encode(text, add_special_tokens=False).ids
        return list(self._hf.encode(text, add_special_tokens=False, verbose=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, in parallel where the backend can."""
        texts = list(texts)
        if self._raw is not None:
            return [e.ids for e in self._raw.encode_batch_fast(texts, add_special_tokens=False)]
        return [list(ids) for ids in self._hf(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    def decode(self, ids: Iterable) -> str:
        """Text of ``ids`` (ints, a numpy array or a 1-D tensor; special tokens kept as their text)."""
        ids = [int(i) for i in ids]
        if self._raw is not None:
            return self._raw.decode(ids, skip_special_tokens=False)
        return self._hf.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added/special tokens included (ids are 0 .. vocab_size - 1)."""
        if self._raw is not None:
            return int(self._raw.get_vocab_size(with_added_tokens=True))
        return int(len(self._hf))

    # ------------------------------------------------------------------ conversion and files
    def to_json_str(self) -> str:
        """The ``tokenizers`` JSON of the fast backend (what ``tokenizer.json`` holds)."""
        if self._raw is not None:
            return self._raw.to_str()
        backend = getattr(self._hf, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{self.source}: a slow (Python) tokenizer has no tokenizer.json form; "
                             "use a folder with a fast tokenizer")
        return backend.to_str()

    def fingerprint(self) -> str:
        """sha256 of :meth:`to_json_str` (identifies the vocabulary and merges)."""
        return hashlib.sha256(self.to_json_str().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` to ``path`` (a file path, or a folder to write it into),
        atomically. Load it back with :func:`load_tokenizer` (pass the same EOS/BOS tokens if
        they are not the defaults)."""
        from sinkinterp.fileio import write_bytes as write_bytes_atomic

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        write_bytes_atomic(path, self.to_json_str().encode("utf-8"))
        return path

    def to_hf(self):
        """A ``transformers.PreTrainedTokenizerFast`` with the same vocabulary, EOS/BOS set and
        PAD = EOS. It does not add BOS by itself (no post-processor)."""
        from transformers import PreTrainedTokenizerFast

        if self._hf is not None:
            if getattr(self._hf, "is_fast", False):
                return self._hf
            raise ValueError(f"{self.source}: to_hf() needs a fast tokenizer, this one is {type(self._hf).__name__}")
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(self._raw.to_str())
        backend.encode_special_tokens = False
        kwargs = {"eos_token": self.eos_token, "pad_token": self.eos_token}
        if self.bos_token is not None:
            kwargs["bos_token"] = self.bos_token
        return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)

    def info(self) -> dict:
        """What a manifest records about the tokenizer."""
        return {"source": self.source, "vocab_size": self.vocab_size, "eos_token": self.eos_token,
                "eos_id": self.eos_id, "bos_token": self.bos_token, "bos_id": self.bos_id,
                "kind": "tokenizers" if self._raw is not None else type(self._hf).__name__}

    def __repr__(self) -> str:
        return (f"TextTokenizer(source={self.source!r}, vocab_size={self.vocab_size}, "
                f"eos_id={self.eos_id}, bos_id={self.bos_id})")


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 8192,
    *,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    show_progress: bool = False,
) -> TextTokenizer:
    """Train a byte-level BPE on ``texts`` (an iterable of documents; read once, lazily).

    ``special_tokens[0]`` is the EOS / document separator, ``special_tokens[1]`` (if given) the
    BOS; they get ids 0, 1, ... The 256 byte symbols are always in the vocabulary, so
    ``vocab_size`` must be at least ``256 + len(special_tokens)``. Training is deterministic.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special_tokens = list(special_tokens)
    if not special_tokens or not all(isinstance(t, str) and t for t in special_tokens):
        raise ValueError(f"special_tokens must be non-empty strings, EOS first, got {special_tokens!r}")
    minimum = 256 + len(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < minimum or vocab_size > 65536:
        raise ValueError(f"vocab_size must be an integer in [{minimum}, 65536] (uint16 shards), got {vocab_size!r}")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer)
    return TextTokenizer(tok, eos_token=special_tokens[0],
                         bos_token=special_tokens[1] if len(special_tokens) > 1 else None,
                         source=f"trained byte-level BPE (vocab {vocab_size})")


def load_tokenizer(
    path: str | os.PathLike,
    *,
    eos_token: str | None = None,
    bos_token: str | None = None,
) -> TextTokenizer:
    """Open a tokenizer from local files only.

    ``path`` is a ``tokenizer.json`` file (EOS/BOS default to ``<|endoftext|>`` / ``<|bos|>``;
    BOS is dropped if absent from the vocabulary) or a Hugging Face tokenizer folder (EOS/BOS
    default to the folder's own; a folder without an EOS token needs ``eos_token``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: tokenizer {str(path)!r} does not exist "
                                "(give a tokenizer.json file or a local Hugging Face tokenizer folder)")
    if path.is_file():
        from tokenizers import Tokenizer

        raw = Tokenizer.from_file(str(path))
        eos = eos_token or EOS_TOKEN
        bos = bos_token if bos_token is not None else (BOS_TOKEN if raw.token_to_id(BOS_TOKEN) is not None else None)
        return TextTokenizer(raw, eos_token=eos, bos_token=bos, source=str(path))
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    eos = eos_token or hf.eos_token
    if eos is None:
        raise ValueError(f"eos_token: the tokenizer in {str(path)!r} defines no EOS token; pass eos_token=... "
                         "(the token that separates documents)")
    bos = bos_token if bos_token is not None else hf.bos_token
    return TextTokenizer(hf, eos_token=str(eos), bos_token=None if bos is None else str(bos), source=str(path))
