"""Does the tokenizer a GGUF model loads with (``loading.gguf_tokenizer``: transformers' rebuild of the file's
vocabulary) cut text as the model's own tokenizer does? llama.cpp's source tree answers it for its
vocabulary-only files: beside each ``models/ggml-vocab-NAME.gguf`` its tokenizer tests keep ``.gguf.inp``
(texts, separated by ``__ggml_vocab_test__`` lines) and ``.gguf.out`` (the ids the original Hugging Face
tokenizer gives each, without special tokens). Prints a table: per file, the cases whose ids are equal, and
the first that differs. Where to get the folder: scripts/llama_cpp_metadata.py (extract the ``.inp`` / ``.out``
files too: ``--wildcards '*/models/ggml-vocab-*'``).

    python scripts/gguf_tokenizer_check.py /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/models
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

SEPARATOR = "\n__ggml_vocab_test__\n"


def check(path: Path) -> dict:
    """One vocabulary file against its tests: cases, equal, the differing texts with both id lists."""
    from sinkinterp.loading import gguf_tokenizer

    texts = Path(f"{path}.inp").read_text(encoding="utf-8").split(SEPARATOR)
    wanted = Path(f"{path}.out").read_text(encoding="utf-8").split("\n")
    if len(wanted) < len(texts):
        raise SystemExit(f"{path}.out: {len(wanted)} lines for {len(texts)} texts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok, _ = gguf_tokenizer(str(path))
    differ = []
    for text, line in zip(texts, wanted):
        want = [int(x) for x in line.split()]
        got = tok(text, add_special_tokens=False)["input_ids"]
        if got != want:
            differ.append({"text": text, "got": got, "want": want})
    return {"file": path.name, "tokenizer": type(tok).__name__, "cases": len(texts), "equal": len(texts) - len(differ),
            "differ": differ}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="llama.cpp's models/ folder (ggml-vocab-*.gguf with .inp / .out)")
    args = ap.parse_args(argv)
    paths = sorted(p for p in args.folder.glob("ggml-vocab-*.gguf") if Path(f"{p}.inp").is_file())
    if not paths:
        raise SystemExit(f"folder: no ggml-vocab-*.gguf with a .inp beside it in {args.folder}")
    print("| file | tokenizer | cases | equal | first that differs: text, ids (GGUF load / original) |")
    print("| --- | --- | ---: | ---: | --- |")
    for path in paths:
        try:
            r = check(path)
        except ValueError as e:  # an architecture transformers does not read
            print(f"| {path.name} | not read: {str(e).split('): ', 1)[-1][:90]} | | | |")
            continue
        first = r["differ"][0] if r["differ"] else None
        shown = (f"`{first['text'][:24]!r}`: {first['got'][:6]} / {first['want'][:6]}" if first else "")
        print(f"| {r['file']} | {r['tokenizer']} | {r['cases']} | {r['equal']} | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
