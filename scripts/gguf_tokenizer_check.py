"""Does the tokenizer a GGUF model loads with (``loading.gguf_tokenizer``: transformers' rebuild of the file's
vocabulary) cut text as the model's own tokenizer does? llama.cpp's source tree answers it for its
vocabulary-only files: beside each ``models/ggml-vocab-NAME.gguf`` its tokenizer tests keep ``.gguf.inp``
(texts, separated by ``__ggml_vocab_test__`` lines) and ``.gguf.out`` (the ids the original Hugging Face
tokenizer gives each, without special tokens). Prints a table: per file, the cases whose ids are equal, and
the first that differs. Where to get the folder: scripts/llama_cpp_metadata.py (extract the ``.inp`` / ``.out``
files too: ``--wildcards '*/models/ggml-vocab-*'``).

    python scripts/gguf_tokenizer_check.py /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/models

``--texts FILE ... --gguf PATH`` instead: what the load's tokenizer changes on your texts, against transformers'
rebuild alone (tokens per file, whether the ids are equal, the first token that differs, the lines cut
otherwise), e.g. on SmolLM2's (``sinkinterp.loading.smollm2_gguf_path()``).
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


def compare_texts(gguf: Path, files: list[Path]) -> list[dict]:
    """Per text file: tokens with transformers' rebuild alone and with the load's tokenizer, equal ids or not, the
    first differing token and the lines (0-based) whose ids differ."""
    import os

    from transformers import AutoTokenizer

    from sinkinterp.loading import gguf_tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder, name = os.path.split(os.path.abspath(gguf))
        plain = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        tok, note = gguf_tokenizer(str(gguf))
    out = []
    for f in files:
        text = Path(f).read_text(encoding="utf-8")
        a, b = (t(text, add_special_tokens=False)["input_ids"] for t in (plain, tok))
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))
        lines = [i for i, line in enumerate(text.split("\n"))
                 if plain(line, add_special_tokens=False)["input_ids"] != tok(line, add_special_tokens=False)["input_ids"]]
        out.append({"file": str(f), "tokens_transformers": len(a), "tokens_load": len(b), "equal": a == b,
                    "first_difference": first, "lines_differing": lines, "note": note})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, nargs="?", help="llama.cpp's models/ folder (ggml-vocab-*.gguf with .inp / .out)")
    ap.add_argument("--gguf", type=Path, help="with --texts: the GGUF file whose tokenizer to compare")
    ap.add_argument("--texts", type=Path, nargs="+", help="text files to tokenize both ways (needs --gguf)")
    args = ap.parse_args(argv)
    if (args.gguf is None) != (args.texts is None) or (args.folder is None) == (args.gguf is None):
        ap.error("give a llama.cpp models/ folder, or --gguf PATH with --texts FILE ...")
    if args.gguf is not None:
        rows = compare_texts(args.gguf, args.texts)
        print(f"load's tokenizer: {rows[0]['note'] or 'as transformers rebuilds it'}")
        print("| file | tokens (transformers' rebuild) | tokens (the load) | equal ids | first difference | lines differing |")
        print("| --- | ---: | ---: | --- | ---: | --- |")
        for r in rows:
            first = "-" if r["first_difference"] is None else r["first_difference"]
            print(f"| {r['file']} | {r['tokens_transformers']} | {r['tokens_load']} | {r['equal']} | {first} | "
                  f"{', '.join(map(str, r['lines_differing'])) or '-'} |")
        return 0
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
