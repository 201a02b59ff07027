"""Tokenized corpora on disk: uint16 ``.bin`` shards with a JSON manifest, and a compressed pack.

Layout of a shard folder (everything a training run needs, nothing else)::

    manifest.json        what is here: tokenizer, split rule, tokens and sha256 per shard, source
    tokenizer.json       the tokenizer the ids come from (``load_tokenizer`` opens it)
    train_000000.bin     raw little-endian uint16 token ids, no header
    ...
    val_000000.bin

The token stream is ``doc_1 EOS doc_2 EOS ...``: every document is followed by the tokenizer's
EOS id, so a document starts at position 0 or right after an EOS. The stream is split into train
and validation tokens by one of three rules (recorded in the manifest):

* ``"interleave"`` (default): the stream is cut into blocks of ``val_block_tokens``; every
  ``val_every``-th block (blocks ``val_every - 1``, ``2 * val_every - 1``, ...) goes to
  validation. Validation text then comes from all over the corpus, which matters because the
  corpus is read in sorted-path order. Train tokens on either side of a removed block are
  adjacent in the train stream (one seam per validation block).
* ``"tail"``: the last ``val_tokens`` tokens of the stream are the validation split.
* ``"none"``: no validation split.

Every file is written to a temporary name and renamed into place; ``manifest.json`` is written
last, so a folder with a manifest is complete, and :func:`verify_shards` checks it.

:func:`pack_compressed` writes the folder as one reproducible ``.tar.xz`` (xz preset 9 + extreme
by default: uint16 ids of an 8k BPE compress to about 0.75 bytes per token);
:func:`unpack_compressed` restores it and verifies every checksum before the folder appears.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import lzma
import os
import shutil
import tarfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sinkinterp.data.corpus import Document
from sinkinterp.data.tokenizer import TextTokenizer
from sinkinterp.fileio import default_file_mode
from sinkinterp.fileio import write_bytes as write_bytes_atomic
from sinkinterp.fileio import atomic_write, read_json

__all__ = [
    "MANIFEST_NAME",
    "TOKENIZER_NAME",
    "ChecksumError",
    "write_shards",
    "read_manifest",
    "verify_shards",
    "open_split",
    "pack_compressed",
    "unpack_compressed",
    "encode_document",
]

MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
FORMAT = "sinkinterp-token-shards"
VERSION = 1
DTYPE = np.dtype("<u2")
MAX_TOKEN_ID = int(np.iinfo(np.uint16).max)
SPLITS = ("train", "val")
VAL_POLICIES = ("interleave", "tail", "none")
_ENCODE_CHUNK_CHARS = 1 << 20


class ChecksumError(ValueError):
    """A shard folder or pack does not match its manifest (missing file, wrong size or sha256)."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ encoding

def _safe_cuts(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into chunks of about ``max_chars`` only right after a newline that is followed
    by a non-space character: the GPT-2 pre-tokenizer never joins across such a point, so for a
    byte-level BPE the chunks tokenize exactly like the whole text. A text without such a point
    stays whole."""
    if len(text) <= max_chars:
        return [text]
    chunks, start, n = [], 0, len(text)
    while n - start > max_chars:
        cut = -1
        hi = start + max_chars
        while True:
            i = text.rfind("\n", start + 1, hi)
            if i == -1:
                break
            if i + 1 < n and not text[i + 1].isspace():
                cut = i + 1
                break
            hi = i
        if cut == -1:  # no safe point in this window: look forward for the next one
            j = start + max_chars
            while True:
                i = text.find("\n", j)
                if i == -1 or i + 1 >= n:
                    chunks.append(text[start:])
                    return chunks
                if not text[i + 1].isspace():
                    cut = i + 1
                    break
                j = i + 1
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks


def encode_document(tokenizer: TextTokenizer, text: str, *, chunk_chars: int = _ENCODE_CHUNK_CHARS) -> list[int]:
    """Ids of one document followed by EOS (long documents are encoded in safe chunks)."""
    ids: list[int] = []
    for piece in tokenizer.encode_batch(_safe_cuts(text, chunk_chars)):
        ids.extend(piece)
    ids.append(tokenizer.eos_id)
    return ids


def _encode_documents(tokenizer: TextTokenizer, texts: list[str], chunk_chars: int) -> list[np.ndarray]:
    chunks, owners = [], []
    for k, text in enumerate(texts):
        for piece in _safe_cuts(text, chunk_chars):
            chunks.append(piece)
            owners.append(k)
    encoded = tokenizer.encode_batch(chunks)
    per_doc: list[list[np.ndarray]] = [[] for _ in texts]
    for k, ids in zip(owners, encoded):
        per_doc[k].append(np.asarray(ids, dtype=np.int64))
    eos = np.array([tokenizer.eos_id], dtype=np.int64)
    out = []
    for parts in per_doc:
        arr = np.concatenate(parts + [eos])
        if arr.size and (arr.min() < 0 or arr.max() > MAX_TOKEN_ID):
            raise ValueError(f"token id {int(arr.max())} does not fit in uint16 (max {MAX_TOKEN_ID})")
        out.append(arr.astype(DTYPE))
    return out


# ------------------------------------------------------------------------------------- writing

class _SplitWriter:
    """Appends tokens to one split, writing a shard every ``shard_tokens`` tokens."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int) -> None:
        self.out_dir, self.split, self.shard_tokens = out_dir, split, shard_tokens
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.entries: list[dict] = []
        self.tokens = 0

    def add(self, arr: np.ndarray) -> None:
        if arr.size == 0:
            return
        self.buffer.append(arr)
        self.buffered += arr.size
        self.tokens += arr.size
        while self.buffered >= self.shard_tokens:
            data = np.concatenate(self.buffer)
            self._write(data[: self.shard_tokens])
            rest = data[self.shard_tokens:]
            self.buffer = [rest] if rest.size else []
            self.buffered = int(rest.size)

    def close(self) -> list[dict]:
        if self.buffered:
            self._write(np.concatenate(self.buffer))
        self.buffer, self.buffered = [], 0
        return self.entries

    def _write(self, data: np.ndarray) -> None:
        name = f"{self.split}_{len(self.entries):06d}.bin"
        raw = np.ascontiguousarray(data, dtype=DTYPE).tobytes()
        write_bytes_atomic(self.out_dir / name, raw)
        self.entries.append({"file": name, "tokens": int(data.size), "sha256": hashlib.sha256(raw).hexdigest()})


class _Router:
    """Sends the token stream to the train / val writers according to the split rule."""

    def __init__(self, train: _SplitWriter, val: _SplitWriter, split: dict) -> None:
        self.train, self.val, self.split = train, val, split
        self.position = 0  # tokens routed so far
        self.pending: list[np.ndarray] = []  # "tail": the last val_tokens tokens seen so far
        self.pending_count = 0

    def add(self, arr: np.ndarray) -> None:
        policy = self.split["policy"]
        if policy == "none":
            self.train.add(arr)
        elif policy == "interleave":
            block, every = self.split["val_block_tokens"], self.split["val_every"]
            i = 0
            while i < arr.size:
                index, offset = divmod(self.position + i, block)
                take = min(block - offset, arr.size - i)
                target = self.val if (index + 1) % every == 0 else self.train
                target.add(arr[i: i + take])
                i += take
        else:  # tail: hold back the last val_tokens tokens, release the rest in big pieces
            self.pending.append(arr)
            self.pending_count += arr.size
            keep = self.split["val_tokens"]
            if self.pending_count - keep >= max(keep, 1 << 20):
                data = np.concatenate(self.pending)
                cut = data.size - keep
                self.train.add(data[:cut])
                self.pending, self.pending_count = [data[cut:]], keep
        self.position += arr.size

    def close(self) -> None:
        if self.split["policy"] == "tail":
            data = np.concatenate(self.pending) if self.pending else np.zeros(0, DTYPE)
            keep = self.split["val_tokens"]
            if data.size <= keep:
                raise ValueError(f"val_tokens={keep} leaves no training tokens: the corpus has only "
                                 f"{self.position} tokens")
            self.train.add(data[: data.size - keep])
            self.val.add(data[data.size - keep:])


def _split_rule(val_policy: str, val_every: int, val_block_tokens: int, val_tokens: int | None) -> dict:
    if val_policy not in VAL_POLICIES:
        raise ValueError(f"val_policy must be one of {', '.join(VAL_POLICIES)}, got {val_policy!r}")
    if val_policy == "interleave":
        if not isinstance(val_every, int) or val_every < 2:
            raise ValueError(f"val_every must be an integer >= 2 (1 validation block in val_every), got {val_every!r}")
        if not isinstance(val_block_tokens, int) or val_block_tokens < 1:
            raise ValueError(f"val_block_tokens must be an integer >= 1, got {val_block_tokens!r}")
        return {"policy": "interleave", "val_every": val_every, "val_block_tokens": val_block_tokens}
    if val_policy == "tail":
        if not isinstance(val_tokens, int) or val_tokens < 1:
            raise ValueError(f"val_tokens must be an integer >= 1 with val_policy='tail', got {val_tokens!r}")
        return {"policy": "tail", "val_tokens": val_tokens}
    return {"policy": "none"}


def _existing_outputs(out_dir: Path) -> list[Path]:
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir()
                  if p.name == MANIFEST_NAME or (p.suffix == ".bin" and p.name.split("_")[0] in SPLITS))


def write_shards(
    documents: Iterable[str | Document],
    tokenizer: TextTokenizer,
    out_dir: str | os.PathLike,
    *,
    shard_tokens: int = 1 << 24,
    val_policy: str = "interleave",
    val_every: int = 100,
    val_block_tokens: int = 16384,
    val_tokens: int | None = None,
    batch_documents: int = 256,
    overwrite: bool = False,
    source: dict | None = None,
) -> dict:
    """Tokenize ``documents`` (strings or :class:`Document`, e.g. a ``Corpus``), write the shard
    folder ``out_dir`` and return its manifest.

    Args:
        shard_tokens: tokens per shard file (the last shard of a split may be shorter).
        val_policy, val_every, val_block_tokens, val_tokens: the train/val split rule (see the
            module docstring).
        batch_documents: documents encoded per ``encode_batch`` call.
        overwrite: replace an existing shard folder (its old shards are removed after the new
            manifest is written); without it an existing one is an error.
        source: extra facts to record under ``manifest["source"]``; when ``documents`` has a
            ``summary`` (a ``Corpus``) its counts and options are recorded too.
    """
    out_dir = Path(out_dir)
    if tokenizer.vocab_size > MAX_TOKEN_ID + 1:
        raise ValueError(f"tokenizer: vocab_size {tokenizer.vocab_size} does not fit uint16 shards "
                         f"(token ids must be <= {MAX_TOKEN_ID}, so vocab_size <= {MAX_TOKEN_ID + 1})")
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ValueError(f"shard_tokens must be an integer >= 1, got {shard_tokens!r}")
    if not isinstance(batch_documents, int) or batch_documents < 1:
        raise ValueError(f"batch_documents must be an integer >= 1, got {batch_documents!r}")
    split = _split_rule(val_policy, val_every, val_block_tokens, val_tokens)
    existing = _existing_outputs(out_dir)
    if existing and not overwrite:
        raise FileExistsError(f"out_dir: {str(out_dir)!r} already holds shards ({existing[0].name}); "
                              "pass overwrite=True (--overwrite) to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST_NAME).exists():
        (out_dir / MANIFEST_NAME).unlink()  # the folder reads as incomplete until the new manifest

    t0 = time.perf_counter()
    train = _SplitWriter(out_dir, "train", shard_tokens)
    val = _SplitWriter(out_dir, "val", shard_tokens)
    router = _Router(train, val, split)
    n_docs = 0
    batch: list[str] = []

    def flush() -> None:
        for arr in _encode_documents(tokenizer, batch, _ENCODE_CHUNK_CHARS):
            router.add(arr)
        batch.clear()

    for doc in documents:
        text = doc.text if isinstance(doc, Document) else doc
        if not isinstance(text, str):
            raise TypeError(f"documents: expected str or Document, got {type(doc).__name__}")
        batch.append(text)
        n_docs += 1
        if len(batch) >= batch_documents:
            flush()
    if batch:
        flush()
    router.close()
    if train.tokens == 0:
        raise ValueError("documents: no tokens to write (empty corpus?)")
    shards = {"train": train.close(), "val": val.close()}
    if split["policy"] != "none" and val.tokens == 0:
        warnings.warn(f"the validation split is empty: {train.tokens} tokens are fewer than one validation "
                      f"block in {split.get('val_every')} x {split.get('val_block_tokens')} tokens; use a smaller "
                      "val_block_tokens / val_every or val_policy='tail'", stacklevel=2)

    tok_json = tokenizer.to_json_str().encode("utf-8")
    write_bytes_atomic(out_dir / TOKENIZER_NAME, tok_json)
    source_info: dict[str, Any] = dict(source or {})
    summary = getattr(documents, "summary", None)
    if summary is not None and hasattr(summary, "to_dict"):
        source_info["corpus_summary"] = summary.to_dict()
    if hasattr(documents, "options"):
        source_info["corpus_options"] = documents.options()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": "uint16",
        "byte_order": "little",
        "separator": "eos after every document",
        "tokenizer": {**tokenizer.info(), "file": TOKENIZER_NAME,
                      "sha256": hashlib.sha256(tok_json).hexdigest()},
        "split": split,
        "splits": {name: {"tokens": sum(e["tokens"] for e in entries), "shards": entries}
                   for name, entries in shards.items()},
        "total_tokens": train.tokens + val.tokens,
        "documents": n_docs,
        "source": source_info,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    write_bytes_atomic(out_dir / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    keep = {e["file"] for entries in shards.values() for e in entries}
    for stale in _existing_outputs(out_dir):
        if stale.suffix == ".bin" and stale.name not in keep:
            stale.unlink()
    return manifest


# ------------------------------------------------------------------------------- reading, checks

def read_manifest(shard_dir: str | os.PathLike) -> dict:
    """The manifest of a shard folder (checked for format and version)."""
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"shard_dir: {str(shard_dir)!r} has no {MANIFEST_NAME} "
                                "(build it with write_shards / `sinkinterp data build-shards`)")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} manifest "
                         f"(format={manifest.get('format')!r}, version={manifest.get('version')!r})")
    return manifest


def verify_shards(shard_dir: str | os.PathLike, *, checksums: bool = True) -> dict:
    """Check that every shard (and the tokenizer file) exists with the size and, unless
    ``checksums=False``, the sha256 the manifest records. Returns the manifest; raises
    :class:`ChecksumError` naming every bad file."""
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    problems = []
    for split in SPLITS:
        for entry in manifest["splits"][split]["shards"]:
            path = shard_dir / entry["file"]
            if not path.is_file():
                problems.append(f"{entry['file']}: missing")
                continue
            size = path.stat().st_size
            if size != entry["tokens"] * DTYPE.itemsize:
                problems.append(f"{entry['file']}: {size} bytes, manifest says {entry['tokens']} tokens "
                                f"= {entry['tokens'] * DTYPE.itemsize} bytes")
            elif checksums and _sha256_file(path) != entry["sha256"]:
                problems.append(f"{entry['file']}: sha256 differs from the manifest (corrupted)")
    tok = manifest["tokenizer"]
    tok_path = shard_dir / tok["file"]
    if not tok_path.is_file():
        problems.append(f"{tok['file']}: missing")
    elif checksums and _sha256_file(tok_path) != tok["sha256"]:
        problems.append(f"{tok['file']}: sha256 differs from the manifest (corrupted)")
    if problems:
        raise ChecksumError(f"{shard_dir}: " + "; ".join(problems))
    return manifest


def open_split(shard_dir: str | os.PathLike, split: str = "train") -> list[np.memmap]:
    """Read-only memory maps of a split's shards, in order (sizes checked, not checksums)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    shard_dir = Path(shard_dir)
    manifest = verify_shards(shard_dir, checksums=False)
    return [np.memmap(shard_dir / e["file"], dtype=DTYPE, mode="r", shape=(e["tokens"],))
            for e in manifest["splits"][split]["shards"]]


# ----------------------------------------------------------------------------- compressed pack

def _pack_members(shard_dir: Path, manifest: dict) -> list[str]:
    names = [MANIFEST_NAME, manifest["tokenizer"]["file"]]
    for split in SPLITS:
        names += [e["file"] for e in manifest["splits"][split]["shards"]]
    return names


def pack_compressed(
    shard_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    *,
    preset: int = 9,
    extreme: bool = True,
) -> dict:
    """Write ``shard_dir`` (manifest, tokenizer, shards; verified first) as one ``.tar.xz``.

    The archive is reproducible (fixed member order, times and owners) and written atomically.
    Returns ``{"file", "bytes", "raw_bytes", "ratio", "bytes_per_token", "seconds"}``.
    """
    shard_dir, out_file = Path(shard_dir), Path(out_file)
    if not isinstance(preset, int) or not 0 <= preset <= 9:
        raise ValueError(f"preset must be an integer 0..9 (xz level), got {preset!r}")
    manifest = verify_shards(shard_dir)
    t0 = time.perf_counter()
    names = _pack_members(shard_dir, manifest)
    raw_bytes = 0

    mode = default_file_mode()

    def write(f) -> None:
        nonlocal raw_bytes
        os.fchmod(f.fileno(), mode)
        with lzma.open(f, "wb", preset=preset | (lzma.PRESET_EXTREME if extreme else 0)) as xz:
            with tarfile.open(fileobj=xz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in names:
                    path = shard_dir / name
                    info = tarfile.TarInfo(name)
                    info.size = path.stat().st_size
                    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
                    raw_bytes += info.size
                    with open(path, "rb") as src:
                        tar.addfile(info, src)

    atomic_write(out_file, write)
    size = out_file.stat().st_size
    return {"file": str(out_file), "bytes": size, "raw_bytes": raw_bytes,
            "ratio": round(raw_bytes / size, 3) if size else None,
            "bytes_per_token": round(size / max(1, manifest["total_tokens"]), 4),
            "seconds": round(time.perf_counter() - t0, 2)}


def unpack_compressed(
    pack_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> dict:
    """Restore a pack written by :func:`pack_compressed` into ``out_dir`` and verify every
    checksum; ``out_dir`` appears only if all match (else :class:`ChecksumError`, nothing left
    behind). Returns the manifest."""
    pack_file, out_dir = Path(pack_file), Path(out_dir)
    if not pack_file.is_file():
        raise FileNotFoundError(f"pack_file: {str(pack_file)!r} does not exist")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"out_dir: {str(out_dir)!r} is not empty; pass overwrite=True (--overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.unpack-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        with tarfile.open(pack_file, mode="r:xz") as tar:
            for member in tar.getmembers():
                if not member.isfile() or "/" in member.name or member.name.startswith("."):
                    raise ChecksumError(f"{pack_file}: unexpected member {member.name!r} (not a shard pack)")
            tar.extractall(staging, filter="data")
        manifest = verify_shards(staging)
        extra = sorted(set(p.name for p in staging.iterdir()) - set(_pack_members(staging, manifest)))
        if extra:
            raise ChecksumError(f"{pack_file}: files not in the manifest: {', '.join(extra)}")
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def describe(shard_dir: str | os.PathLike) -> str:
    """A few human-readable lines about a shard folder."""
    m = read_manifest(shard_dir)
    lines = [f"{shard_dir}: {m['total_tokens']:,} tokens from {m['documents']:,} documents",
             f"  tokenizer: vocab {m['tokenizer']['vocab_size']}, eos {m['tokenizer']['eos_id']}, "
             f"bos {m['tokenizer']['bos_id']} ({m['tokenizer']['source']})",
             f"  split: {json.dumps(m['split'])}"]
    for split in SPLITS:
        s = m["splits"][split]
        lines.append(f"  {split}: {s['tokens']:,} tokens in {len(s['shards'])} shard(s)")
    return "\n".join(lines)
