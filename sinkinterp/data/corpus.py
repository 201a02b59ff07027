"""Read a folder of text into documents, offline: plain text, markdown, HTML, jsonl, gzip'd or not.

``Corpus(paths)`` walks each path recursively in sorted order and yields one :class:`Document`
per file (one per line for jsonl). Files are classified by extension once any compression suffix
(``.gz``, ``.dz`` -- dictzip, as dictd ships -- ``.bz2``, ``.xz``) is stripped:

* ``.html .htm .xhtml``: tags removed with the standard library's ``html.parser``; ``<script>``,
  ``<style>`` and similar bodies dropped; entities unescaped; block tags become line breaks and
  ``<pre>`` keeps its whitespace;
* ``.jsonl``: one JSON object per line, the document is its ``text_field`` (default ``"text"``);
  lines that are not JSON objects with a string in that field are counted, not fatal;
* known binary extensions (images, fonts, archives, scripts and styles) are skipped unread;
* anything else (``.txt .md .rst .pod``, ``README``, ``changelog.Debian.gz``, ``gcide.dict.dz``)
  is read as UTF-8 text when ``include_unknown`` is true (the default); a file with a NUL byte in
  its first 8 KiB counts as binary and one that is not valid UTF-8 as undecodable: both are skipped
  and counted in :attr:`Corpus.summary`.

Exact duplicate documents (same text after stripping surrounding whitespace, by sha256) are dropped
by default; empty ones always are. ``max_bytes`` stops the corpus after that many UTF-8 bytes of
document text (the last document is cut to fit). ``max_doc_chars`` splits very long documents (a
whole dictionary in one file) into pieces at paragraph breaks, so that document-aligned training
windows (``doc_aligned`` in the loader) see more than the first page of them.

The iteration order is a pure function of the file tree and the options: two runs over the same
folder give the same documents in the same order.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import json
import lzma
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

__all__ = [
    "Document",
    "CorpusSummary",
    "Corpus",
    "html_to_text",
    "read_file_bytes",
    "split_long_text",
    "HTML_EXTENSIONS",
    "JSONL_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "SKIP_EXTENSIONS",
]

COMPRESSED_EXTENSIONS = {".gz": gzip.open, ".dz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml"})
JSONL_EXTENSIONS = frozenset({".jsonl"})
TEXT_EXTENSIONS = frozenset({".txt", ".text", ".md", ".markdown", ".rst", ".pod", ".tex"})
SKIP_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".svg", ".webp", ".tif", ".tiff", ".eps",
    ".pdf", ".ps", ".dvi", ".woff", ".woff2", ".ttf", ".otf", ".eot",
    ".zip", ".tar", ".tgz", ".jar", ".deb", ".7z", ".zst",
    ".so", ".a", ".o", ".pyc", ".pyo", ".class", ".mo", ".db", ".sqlite", ".bin", ".npy",
    ".js", ".css", ".map", ".inv", ".doctree", ".pickle",
})
_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Document:
    """One document: its text and where it came from (a path relative to its root, ``:N`` is the
    1-based jsonl line, ``#N`` the 0-based piece of a split long document)."""

    text: str
    source: str


@dataclass
class CorpusSummary:
    """Counts filled in while a :class:`Corpus` is iterated (complete once iteration ends)."""

    files_seen: int = 0
    files_read: int = 0
    documents: int = 0
    bytes: int = 0
    duplicates: int = 0
    empty: int = 0
    skipped_binary: int = 0
    skipped_undecodable: int = 0
    skipped_extension: int = 0
    skipped_unknown: int = 0
    bad_jsonl_lines: int = 0
    split_pieces: int = 0
    truncated_at_max_bytes: bool = False
    by_kind: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes, decompressed when its name ends in .gz/.dz/.bz2/.xz."""
    path = Path(path)
    opener = COMPRESSED_EXTENSIONS.get(path.suffix.lower())
    if opener is None:
        return path.read_bytes()
    with opener(path, "rb") as f:
        return f.read()


def _kind_of(path: Path) -> str:
    """'html', 'jsonl', 'text', 'unknown' or 'skip', from the name with compression stripped."""
    name = path.name.lower()
    suffix = Path(name).suffix
    if suffix in COMPRESSED_EXTENSIONS:
        name = name[: -len(suffix)]
        suffix = Path(name).suffix
    if suffix in HTML_EXTENSIONS:
        return "html"
    if suffix in JSONL_EXTENSIONS:
        return "jsonl"
    if suffix in TEXT_EXTENSIONS:
        return "text"
    if suffix in SKIP_EXTENSIONS:
        return "skip"
    return "unknown"


# ----------------------------------------------------------------------------------------- HTML

_DROP_TAGS = frozenset({"script", "style", "noscript", "template", "svg", "math", "object", "iframe"})
_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "div", "dl", "dt",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "title", "tr", "ul",
})
_PRE_SPACE, _PRE_TAB = "\ue000", "\ue001"  # private-use stand-ins while cleaning up
_VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                        "param", "source", "track", "wbr"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities in text are unescaped by the parser
        self.parts: list[str] = []
        self.drop_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in _DROP_TAGS:
            self.drop_depth += 1
        elif tag == "pre":
            self.pre_depth += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag, attrs):
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in _DROP_TAGS:
            self.drop_depth = max(0, self.drop_depth - 1)
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
        if tag in _BLOCK_TAGS and tag not in _VOID_TAGS:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.drop_depth:
            return
        if self.pre_depth:  # protect pre-formatted spaces from the whitespace clean-up below
            self.parts.append(data.replace(" ", _PRE_SPACE).replace("\t", _PRE_TAB))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """Visible text of an HTML page: tags stripped, script/style bodies dropped, entities
    unescaped, one line per block element, blank lines collapsed, whitespace kept inside <pre>."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r" {2,}", " ", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = text.replace(_PRE_SPACE, " ").replace(_PRE_TAB, "\t")
    return text.strip()


# ------------------------------------------------------------------------------------ splitting

def split_long_text(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters, preferring a paragraph break
    (blank line), then a line break, then a space in the second half of each piece; a piece is
    cut hard only when none exists. The pieces concatenate back to ``text``."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    pieces = []
    start = 0
    n = len(text)
    while n - start > max_chars:
        window = text[start: start + max_chars]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            i = window.rfind(sep, max_chars // 2)
            if i != -1:
                cut = i + len(sep)
                break
        if cut <= 0:
            cut = max_chars
        pieces.append(text[start: start + cut])
        start += cut
    pieces.append(text[start:])
    return pieces


# --------------------------------------------------------------------------------------- corpus

class Corpus:
    """Documents from files and folders, read lazily; iterate it (or call :meth:`documents`).

    Args:
        paths: one folder or file, or several (read in the given order; each folder's files in
            sorted relative-path order).
        text_field: the jsonl field holding the document text.
        max_bytes: stop after this many UTF-8 bytes of document text (None: no cap).
        dedupe: drop exact duplicate documents (sha256 of the stripped text).
        include_unknown: read files with an unrecognised extension as text (skipped if binary or
            not UTF-8); when false they are skipped and counted as ``skipped_unknown``.
        max_doc_chars: split documents longer than this many characters (None: never).

    :attr:`summary` (a :class:`CorpusSummary`) is reset at the start of each iteration and is
    complete when the iteration ends.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        text_field: str = "text",
        max_bytes: int | None = None,
        dedupe: bool = True,
        include_unknown: bool = True,
        max_doc_chars: int | None = None,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("paths: give at least one folder or file")
        for p in self.paths:
            if not p.exists():
                raise FileNotFoundError(f"paths: {str(p)!r} does not exist")
        if not isinstance(text_field, str) or not text_field:
            raise ValueError(f"text_field must be a non-empty string, got {text_field!r}")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"max_bytes must be None or an integer >= 1, got {max_bytes!r}")
        if max_doc_chars is not None and (not isinstance(max_doc_chars, int) or max_doc_chars < 1):
            raise ValueError(f"max_doc_chars must be None or an integer >= 1, got {max_doc_chars!r}")
        self.text_field = text_field
        self.max_bytes = max_bytes
        self.dedupe = dedupe
        self.include_unknown = include_unknown
        self.max_doc_chars = max_doc_chars
        self.summary = CorpusSummary()

    def options(self) -> dict:
        """The options, as recorded in a shard manifest."""
        return {"paths": [str(p) for p in self.paths], "text_field": self.text_field,
                "max_bytes": self.max_bytes, "dedupe": self.dedupe,
                "include_unknown": self.include_unknown, "max_doc_chars": self.max_doc_chars}

    def files(self) -> Iterator[tuple[Path, str]]:
        """(path, path relative to its root) for every file, in reading order."""
        for root in self.paths:
            if root.is_file():
                yield root, root.name
                continue
            found = []
            for dirpath, dirnames, filenames in os.walk(root):  # symlinked folders not followed
                for name in filenames:
                    full = Path(dirpath) / name
                    if full.is_file():
                        found.append((full.relative_to(root).as_posix(), full))
            for rel, full in sorted(found):
                yield full, rel

    def __iter__(self) -> Iterator[Document]:
        return self.documents()

    def texts(self) -> Iterator[str]:
        """Just the document texts (for tokenizer training)."""
        return (doc.text for doc in self.documents())

    def documents(self) -> Iterator[Document]:
        s = self.summary = CorpusSummary()
        seen: set[bytes] = set()
        for path, rel in self.files():
            s.files_seen += 1
            kind = _kind_of(path)
            if kind == "skip":
                s.skipped_extension += 1
                continue
            if kind == "unknown" and not self.include_unknown:
                s.skipped_unknown += 1
                continue
            text = self._read_text(path)
            if text is None:
                continue
            s.files_read += 1
            counted = "text" if kind == "unknown" else kind
            s.by_kind[counted] = s.by_kind.get(counted, 0) + 1
            if kind == "html":
                raw = [(html_to_text(text), rel)]
            elif kind == "jsonl":
                raw = self._jsonl_documents(text, rel)
            else:
                raw = [(text, rel)]
            for doc_text, source in raw:
                doc_text = doc_text.strip()
                if not doc_text:
                    s.empty += 1
                    continue
                if self.dedupe:
                    digest = hashlib.sha256(doc_text.encode("utf-8")).digest()
                    if digest in seen:
                        s.duplicates += 1
                        continue
                    seen.add(digest)
                if self.max_doc_chars is not None and len(doc_text) > self.max_doc_chars:
                    pieces = [p.strip() for p in split_long_text(doc_text, self.max_doc_chars)]
                    pieces = [(p, f"{source}#{i}") for i, p in enumerate(pieces) if p]
                    s.split_pieces += len(pieces)
                else:
                    pieces = [(doc_text, source)]
                for piece, piece_source in pieces:
                    data = piece.encode("utf-8")
                    if self.max_bytes is not None and s.bytes + len(data) > self.max_bytes:
                        room = self.max_bytes - s.bytes
                        piece = data[:room].decode("utf-8", errors="ignore").strip()
                        s.truncated_at_max_bytes = True
                        if piece:
                            s.documents += 1
                            s.bytes += len(piece.encode("utf-8"))
                            yield Document(piece, piece_source)
                        return
                    s.documents += 1
                    s.bytes += len(data)
                    yield Document(piece, piece_source)

    def _read_text(self, path: Path) -> str | None:
        s = self.summary
        try:
            data = read_file_bytes(path)
        except (OSError, EOFError, lzma.LZMAError) as exc:  # truncated or corrupt compressed file
            if isinstance(exc, PermissionError):
                raise
            s.skipped_undecodable += 1
            return None
        if b"\x00" in data[:_SNIFF_BYTES]:
            s.skipped_binary += 1
            return None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            s.skipped_undecodable += 1
            return None

    def _jsonl_documents(self, text: str, rel: str) -> list[tuple[str, str]]:
        out = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                self.summary.bad_jsonl_lines += 1
                continue
            value = obj.get(self.text_field) if isinstance(obj, dict) else None
            if not isinstance(value, str):
                self.summary.bad_jsonl_lines += 1
                continue
            out.append((value, f"{rel}:{lineno}"))
        return out
