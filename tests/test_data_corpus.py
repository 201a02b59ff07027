"""Corpus reading: HTML stripping, compressed files, jsonl, dedupe, skipping, order, caps."""

from __future__ import annotations

import bz2
import gzip
import json

import pytest

from sinkinterp.data.corpus import Corpus, html_to_text, split_long_text

PAGE = """<!DOCTYPE html><html><head><title>Guide &amp; Index</title>
<style>body { color: red; }</style>
<script type="text/javascript">var hidden = "<p>script text</p>";</script></head>
<body><h1>Chapter&nbsp;One</h1>
<p>Some   <b>bold</b>
   words &lt;not a tag&gt; caf&eacute; &#8212; done.</p>
<pre>  keep   this
    indentation</pre>
<ul><li>first</li><li>second</li></ul><noscript>enable js</noscript>after<br>break</body></html>"""


def test_html_to_text_strips_tags_scripts_styles_and_unescapes():
    text = html_to_text(PAGE)
    assert "Guide & Index" in text
    assert "Chapter One" in text
    assert "Some bold words <not a tag> café \u2014 done." in text
    for hidden in ("color: red", "script text", "var hidden", "enable js", "<b>", "<p>", "&amp;", "&lt;"):
        assert hidden not in text
    assert "  keep   this\n    indentation" in text  # <pre> whitespace kept
    lines = text.splitlines()
    assert "first" in lines and "second" in lines and "after" in lines and "break" in lines
    assert "\n\n\n" not in text


def _write(path, data: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_reads_plain_gzip_dictzip_bz2_and_compressed_html(tmp_path):
    _write(tmp_path / "a.txt", "plain text file")
    _write(tmp_path / "b" / "changelog.Debian.gz", gzip.compress(b"gzipped changelog"))
    _write(tmp_path / "c" / "gcide.dict.dz", gzip.compress(b"dictzip is gzip"))
    _write(tmp_path / "d" / "notes.md.bz2", bz2.compress(b"# bzipped markdown"))
    _write(tmp_path / "e" / "page.html.gz", gzip.compress(b"<p>compressed &amp; html</p><script>x()</script>"))
    corpus = Corpus(tmp_path)
    docs = list(corpus)
    assert [d.text for d in docs] == ["plain text file", "gzipped changelog", "dictzip is gzip",
                                     "# bzipped markdown", "compressed & html"]
    assert [d.source for d in docs] == ["a.txt", "b/changelog.Debian.gz", "c/gcide.dict.dz",
                                       "d/notes.md.bz2", "e/page.html.gz"]
    assert corpus.summary.files_read == 5 and corpus.summary.documents == 5
    assert corpus.summary.by_kind == {"text": 4, "html": 1}


def test_jsonl_uses_the_configured_field_and_counts_bad_lines(tmp_path):
    lines = [json.dumps({"body": "first doc", "text": "wrong field"}),
             "not json at all",
             json.dumps({"body": 17}),
             json.dumps(["a", "list"]),
             "",
             json.dumps({"body": "second doc"})]
    _write(tmp_path / "data.jsonl", "\n".join(lines))
    _write(tmp_path / "more.jsonl.gz", gzip.compress(json.dumps({"body": "third doc"}).encode()))
    corpus = Corpus(tmp_path, text_field="body")
    docs = list(corpus)
    assert [d.text for d in docs] == ["first doc", "second doc", "third doc"]
    assert [d.source for d in docs] == ["data.jsonl:1", "data.jsonl:6", "more.jsonl.gz:1"]
    assert corpus.summary.bad_jsonl_lines == 3
    # the default field is "text"
    assert [d.text for d in Corpus(tmp_path / "data.jsonl")] == ["wrong field"]


def test_exact_duplicates_dropped_unless_dedupe_is_off(tmp_path):
    _write(tmp_path / "1.txt", "same words\n")
    _write(tmp_path / "2.txt", "  same words")  # identical after stripping
    _write(tmp_path / "3.txt.gz", gzip.compress(b"same words"))
    _write(tmp_path / "4.txt", "different words")
    _write(tmp_path / "5.txt", "   \n\n")
    corpus = Corpus(tmp_path)
    assert [d.text for d in corpus] == ["same words", "different words"]
    assert corpus.summary.duplicates == 2 and corpus.summary.empty == 1
    assert [d.text for d in Corpus(tmp_path, dedupe=False)] == ["same words"] * 3 + ["different words"]


def test_binary_undecodable_and_skipped_extensions_are_counted(tmp_path):
    _write(tmp_path / "README", "readable text")
    _write(tmp_path / "blob.dat", b"abc\x00\x01\x02 binary")
    _write(tmp_path / "latin1.txt", "caf\xe9".encode("latin-1"))
    _write(tmp_path / "image.png", b"\x89PNG not even read")
    _write(tmp_path / "broken.gz", b"this is not gzip data")
    corpus = Corpus(tmp_path)
    assert [d.text for d in corpus] == ["readable text"]
    s = corpus.summary
    assert (s.files_seen, s.skipped_binary, s.skipped_undecodable, s.skipped_extension) == (5, 1, 2, 1)
    strict = Corpus(tmp_path, include_unknown=False)
    assert list(strict) == [] and strict.summary.skipped_unknown == 3  # README, blob.dat, broken.gz


def test_order_is_sorted_by_relative_path_and_repeatable(tmp_path):
    for name in ["z.txt", "a/b.txt", "a/a.txt", "m.md", "A.txt"]:
        _write(tmp_path / name, f"doc {name}")
    first = [d.source for d in Corpus(tmp_path)]
    assert first == sorted(first) == ["A.txt", "a/a.txt", "a/b.txt", "m.md", "z.txt"]
    assert [d.source for d in Corpus(tmp_path)] == first


def test_max_bytes_caps_the_total_text(tmp_path):
    for i in range(5):
        _write(tmp_path / f"{i}.txt", "x" * 100)  # dedupe off below: identical docs
    corpus = Corpus(tmp_path, max_bytes=250, dedupe=False)
    docs = list(corpus)
    assert [len(d.text) for d in docs] == [100, 100, 50]
    assert corpus.summary.bytes == 250 and corpus.summary.truncated_at_max_bytes
    uncut = Corpus(tmp_path, max_bytes=500, dedupe=False)  # exactly the corpus: nothing cut
    assert len(list(uncut)) == 5 and not uncut.summary.truncated_at_max_bytes


def test_long_documents_split_at_paragraphs(tmp_path):
    paragraphs = [f"paragraph {i} " + "word " * 20 for i in range(10)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    pieces = split_long_text(text, 300)
    assert "".join(pieces) == text and all(len(p) <= 300 for p in pieces) and len(pieces) > 1
    assert all(p.endswith("\n\n") for p in pieces[:-1])  # cut at paragraph breaks
    _write(tmp_path / "dict.txt", text)
    docs = list(Corpus(tmp_path, max_doc_chars=300))
    assert [d.source for d in docs] == [f"dict.txt#{i}" for i in range(len(pieces))]
    assert all(d.text.startswith("paragraph") for d in docs)


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="paths"):
        Corpus(tmp_path / "missing")
    with pytest.raises(ValueError, match="max_bytes"):
        Corpus(tmp_path, max_bytes=0)
    with pytest.raises(ValueError, match="text_field"):
        Corpus(tmp_path, text_field="")
    with pytest.raises(ValueError, match="max_doc_chars"):
        Corpus(tmp_path, max_doc_chars=-1)
