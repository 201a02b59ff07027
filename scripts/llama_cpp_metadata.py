"""Extract the model metadata of llama.cpp's vocabulary-only GGUF files (``models/ggml-vocab-*.gguf`` in its
source tree: real files its converter wrote from released checkpoints, with every key but the weights) into
tests/data/llama_cpp_vocab_metadata.json, for tests/test_gguf_architectures.py: what the load builds from the
key sets and types llama.cpp's converter really writes. The tokenizer's arrays are left out (only their
lengths are kept), so the fixture is a few kilobytes. llama.cpp is MIT-licensed.

Where the files come from (no model hub): the source distribution of llama-cpp-python on PyPI vendors
llama.cpp, e.g.

    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d /tmp/lcp
    tar xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp --wildcards '*/models/ggml-vocab-*.gguf'
    python scripts/llama_cpp_metadata.py /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/models \
        --source "llama-cpp-python 0.3.36 (PyPI sdist), vendor/llama.cpp/models"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "llama_cpp_vocab_metadata.json"


def _value(field):
    """A field's value as JSON (``ReaderField.contents``) and its GGUF type name (arrays: ARRAY:ITEMTYPE)."""
    from gguf import GGUFValueType

    kinds = [GGUFValueType(t).name for t in field.types]
    return field.contents(), kinds[0] if len(kinds) == 1 else f"{kinds[0]}:{kinds[1]}"


def extract(folder: Path, source: str) -> dict:
    from gguf import GGUFReader

    files = {}
    for path in sorted(folder.glob("ggml-vocab-*.gguf")):
        reader = GGUFReader(str(path))
        meta, lengths = {}, {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            value, kind = _value(field)
            if name.startswith("tokenizer.") and kind.startswith("ARRAY"):
                lengths[name] = len(value)
                continue
            meta[name] = [kind, value]
        files[path.name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "tensors": len(reader.tensors),
                            "metadata": meta, "tokenizer_array_lengths": lengths}
    if not files:
        raise SystemExit(f"folder: no ggml-vocab-*.gguf files in {folder}")
    return {"source": source, "license": "MIT (llama.cpp)", "files": files}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="llama.cpp's models/ folder (its ggml-vocab-*.gguf files)")
    ap.add_argument("--source", required=True, help="where the folder came from, recorded in the JSON")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    data = extract(args.folder, args.source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(data['files'])} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
