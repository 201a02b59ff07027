"""``sinkinterp data ...`` (also ``python -m sinkinterp.data ...``): build the offline training data.

    build-tokenizer CORPUS... --out tokenizer.json [--vocab-size 8192]
    build-shards    CORPUS... --tokenizer tokenizer.json|HF_FOLDER --out SHARD_DIR
    pack            SHARD_DIR OUT.tar.xz
    unpack          OUT.tar.xz SHARD_DIR
    inspect         SHARD_DIR [--verify]

Every command prints one JSON object with what it did (counts, sizes, seconds) on stdout; a bad
argument or a failed check prints one ``error: ...`` line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from sinkinterp.argtypes import int_at_least as _int_at_least

__all__ = ["main", "build_parser"]




def _add_corpus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help="folders or files of text/markdown/HTML/jsonl (.gz ok)")
    p.add_argument("--text-field", default="text", help="jsonl field with the document text (default: text)")
    p.add_argument("--max-bytes", type=_int_at_least(1), default=None, help="stop after this many bytes of text")
    p.add_argument("--no-dedupe", action="store_true", help="keep exact duplicate documents")
    p.add_argument("--skip-unknown", action="store_true",
                   help="skip files with unrecognised extensions instead of reading them as text")
    p.add_argument("--max-doc-chars", type=_int_at_least(1), default=None,
                   help="split longer documents at paragraph breaks (default: never)")


def _corpus(args):
    from sinkinterp.data.corpus import Corpus

    return Corpus(args.corpus, text_field=args.text_field, max_bytes=args.max_bytes, dedupe=not args.no_dedupe,
                  include_unknown=not args.skip_unknown, max_doc_chars=args.max_doc_chars)


def build_parser(prog: str = "sinkinterp data") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build-tokenizer", help="train a byte-level BPE on a corpus")
    _add_corpus_args(p)
    p.add_argument("--out", required=True, metavar="FILE", help="tokenizer.json to write")
    p.add_argument("--vocab-size", type=_int_at_least(258), default=8192, help="default 8192 (max 65536)")
    p.add_argument("--min-frequency", type=_int_at_least(1), default=2, help="default 2")

    p = sub.add_parser("build-shards", help="tokenize a corpus into uint16 shards with a manifest")
    _add_corpus_args(p)
    p.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="tokenizer.json, or a local Hugging Face tokenizer folder")
    p.add_argument("--out", required=True, metavar="DIR", help="shard folder to write")
    p.add_argument("--shard-tokens", type=_int_at_least(1), default=1 << 24, help="tokens per shard (default 2^24)")
    p.add_argument("--val-policy", choices=["interleave", "tail", "none"], default="interleave",
                   help="train/val split rule (default interleave)")
    p.add_argument("--val-every", type=_int_at_least(2), default=100,
                   help="interleave: every N-th block is validation (default 100 = 1%%)")
    p.add_argument("--val-block-tokens", type=_int_at_least(1), default=16384,
                   help="interleave block size (default 16384)")
    p.add_argument("--val-tokens", type=_int_at_least(1), default=None, help="tail: the last N tokens are validation")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard folder")

    p = sub.add_parser("pack", help="compress a shard folder into one .tar.xz")
    p.add_argument("shard_dir", metavar="SHARD_DIR")
    p.add_argument("out", metavar="OUT.tar.xz")
    p.add_argument("--preset", type=int, choices=range(10), default=9, metavar="0-9", help="xz level (default 9)")
    p.add_argument("--no-extreme", action="store_true", help="drop xz's extreme flag (faster, a little larger)")

    p = sub.add_parser("unpack", help="restore a pack and verify every checksum")
    p.add_argument("pack", metavar="PACK.tar.xz")
    p.add_argument("out", metavar="SHARD_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty SHARD_DIR")

    p = sub.add_parser("inspect", help="summarise a shard folder")
    p.add_argument("shard_dir", metavar="SHARD_DIR")
    p.add_argument("--verify", action="store_true", help="also check every sha256")
    return parser


def _run(args) -> dict:
    t0 = time.perf_counter()
    if args.command == "build-tokenizer":
        from sinkinterp.data.tokenizer import train_bpe

        corpus = _corpus(args)
        tok = train_bpe(corpus.texts(), args.vocab_size, min_frequency=args.min_frequency)
        path = tok.save(args.out)
        return {"tokenizer": str(path), "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "bos_id": tok.bos_id,
                "corpus": corpus.summary.to_dict(), "seconds": round(time.perf_counter() - t0, 2)}
    if args.command == "build-shards":
        from sinkinterp.data.shards import write_shards
        from sinkinterp.data.tokenizer import load_tokenizer

        if args.val_policy == "tail" and args.val_tokens is None:
            raise ValueError("--val-tokens is required with --val-policy tail")
        tok = load_tokenizer(args.tokenizer)
        m = write_shards(_corpus(args), tok, args.out, shard_tokens=args.shard_tokens, val_policy=args.val_policy,
                         val_every=args.val_every, val_block_tokens=args.val_block_tokens,
                         val_tokens=args.val_tokens, overwrite=args.overwrite,
                         source={"command": "build-shards", "tokenizer_arg": args.tokenizer})
        return {"shard_dir": args.out, "total_tokens": m["total_tokens"], "documents": m["documents"],
                "train_tokens": m["splits"]["train"]["tokens"], "val_tokens": m["splits"]["val"]["tokens"],
                "shards": {k: len(v["shards"]) for k, v in m["splits"].items()},
                "bytes": 2 * m["total_tokens"], "corpus": m["source"].get("corpus_summary"),
                "seconds": round(time.perf_counter() - t0, 2)}
    if args.command == "pack":
        from sinkinterp.data.shards import pack_compressed

        return pack_compressed(args.shard_dir, args.out, preset=args.preset, extreme=not args.no_extreme)
    if args.command == "unpack":
        from sinkinterp.data.shards import unpack_compressed

        m = unpack_compressed(args.pack, args.out, overwrite=args.overwrite)
        return {"shard_dir": args.out, "total_tokens": m["total_tokens"], "verified": True,
                "seconds": round(time.perf_counter() - t0, 2)}
    if args.command == "inspect":
        from sinkinterp.data.shards import read_manifest, verify_shards

        m = verify_shards(args.shard_dir) if args.verify else read_manifest(args.shard_dir)
        return {"shard_dir": args.shard_dir, "total_tokens": m["total_tokens"], "documents": m["documents"],
                "tokenizer": m["tokenizer"], "split": m["split"],
                "splits": {k: {"tokens": v["tokens"], "shards": len(v["shards"])} for k, v in m["splits"].items()},
                "verified": bool(args.verify)}
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None, prog: str = "sinkinterp data") -> int:
    """Run one data command; returns the exit status (0 ok, 2 bad argument or failed check)."""
    from sinkinterp.data.shards import ChecksumError

    args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        result = _run(args)
    except (ValueError, FileNotFoundError, FileExistsError, ChecksumError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
