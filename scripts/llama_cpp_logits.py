"""What llama.cpp computes for a GGUF file, kept as a small JSON fixture for sinkinterp's parity tests: the tokens of a
text as llama.cpp cuts them (BOS first where the file asks for it) and, at each position, the log-probability of
the next token, the top-K tokens with theirs, and the entropy of the distribution.

llama.cpp multiplies quantized weights by activations it rounds to 8 bits, where sinkinterp dequantizes the weights
and computes in float32; so the reference is llama.cpp run on a float32 copy of the file that llama.cpp itself
writes (``llama_model_quantize`` to ALL_F32, the same weights dequantized, nothing else changed). The file as it
is runs too: its next-token log-probabilities are kept beside (``next_logprob_quantized``) to show what the
8-bit activations alone move.

    python scripts/llama_cpp_logits.py --model FILE.gguf --json tests/data/llama_cpp_logits_NAME.json

Needs llama-cpp-python (built from source here: `pip install llama-cpp-python==0.3.36`; it is no dependency of
sinkinterp, whose tests only read the fixture). tests/test_llama_cpp_parity.py loads the same file through
sinkinterp (transformers' GGUF reader, dequantized to float32, TransformerBridge) and compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a .gguf file")
    p.add_argument("--text", default=str(REPO / "sinkinterp" / "assets" / "natural_text.txt"),
                   help="text file (default: the shipped sample); its first --chars characters are used")
    p.add_argument("--chars", type=int, default=400)
    p.add_argument("--tokens", type=int, default=48, help="at most this many tokens, BOS included (default 48)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", required=True, help="output file (written whole, then renamed)")
    args = p.parse_args(argv)
    import llama_cpp
    import numpy as np

    model = Path(args.model)
    text = Path(args.text).read_text(encoding="utf-8")[: args.chars]

    def run(path: Path) -> tuple[list[int], np.ndarray]:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(64, args.tokens), logits_all=True,
                              n_threads=args.threads, n_batch=max(64, args.tokens), verbose=False,
                              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)  # cache: not f16
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[: args.tokens]
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        top = logits.max(-1, keepdims=True)
        return ids, logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))

    ids_q, logp_q = run(model)
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "f32.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_ALL_F32, True, args.threads
        if llama_cpp.llama_model_quantize(str(model).encode(), str(f32).encode(), params) != 0:
            raise SystemExit(f"llama.cpp could not write a float32 copy of {model}")
        ids, logp = run(f32)
    if ids != ids_q:
        raise SystemExit("the float32 copy cuts the text into other tokens than the file itself")
    top = np.argsort(-logp, axis=-1)[:, : args.top_k]
    rows = []
    for t in range(len(ids)):
        probs = np.exp(logp[t])
        last = t + 1 >= len(ids)
        rows.append({
            "next_logprob": None if last else round(float(logp[t, ids[t + 1]]), 6),
            "next_logprob_quantized": None if last else round(float(logp_q[t, ids[t + 1]]), 6),
            "top_ids": [int(i) for i in top[t]],
            "top_logprobs": [round(float(logp[t, i]), 6) for i in top[t]],
            "entropy": round(float(-(probs * logp[t]).sum()), 6),
        })
    moved = [abs(r["next_logprob"] - r["next_logprob_quantized"]) for r in rows[:-1]]
    doc = {
        "description": "llama.cpp's log-probabilities for a GGUF file (scripts/llama_cpp_logits.py)",
        "command": "python scripts/llama_cpp_logits.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "llama_cpp_python": llama_cpp.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_file": model.name, "model_sha256": sha256(model),
        "text_file": Path(args.text).name, "chars": args.chars, "text": text,
        "ids": [int(i) for i in ids],
        "mean_next_nll": round(-float(np.mean([r["next_logprob"] for r in rows[:-1]])), 6),
        "mean_next_nll_quantized": round(-float(np.mean([r["next_logprob_quantized"] for r in rows[:-1]])), 6),
        "quantized_vs_f32": {"mean_abs": round(float(np.mean(moved)), 6), "max_abs": round(float(np.max(moved)), 6)},
        "positions": rows,
    }
    assert all(math.isfinite(r["entropy"]) for r in rows)
    sys.path.insert(0, str(REPO))
    from sinkinterp.fileio import write_bytes

    def write_json(path: str, obj: dict) -> object:  # one line per position: a 640-token file stays under 100 kB
        rows = ",\n".join(json.dumps(r, separators=(",", ":")) for r in obj["positions"])
        head = json.dumps({k: v for k, v in obj.items() if k != "positions"}, indent=1)[:-2]
        return write_bytes(path, f'{head},\n "positions": [\n{rows}\n]\n}}\n'.encode())

    print(f"{len(ids)} tokens; mean next-token NLL {doc['mean_next_nll']:.4f} (float32 copy), "
          f"{doc['mean_next_nll_quantized']:.4f} (the file, 8-bit activations); |log p| between the two: mean "
          f"{doc['quantized_vs_f32']['mean_abs']:.4f}, max {doc['quantized_vs_f32']['max_abs']:.4f}; "
          f"wrote {write_json(args.json, doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
