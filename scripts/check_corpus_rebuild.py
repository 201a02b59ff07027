"""Check a rebuilt Debian corpus against the one the shipped models were trained on (docs/data.md).

    python scripts/check_corpus_rebuild.py [NEW_TOKENIZER.json]

1. With NEW_TOKENIZER (a BPE trained on the rebuild): how many token ids differ from the shipped
   models' tokenizer, and after which merge the merges diverge.
2. The shipped toy-softmax / toy-kv-bias on the rebuilt shards (data/debian/shards): validation loss
   on their runs' seed-0 held-out windows and Sink_1 / Sink_* on their tracking windows, beside what
   the runs logged (analyses/data/cpu_calibration/c_bos, c_kvbos).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_TOKENIZER = ROOT / "sinkinterp" / "assets" / "models" / "toy-softmax" / "tokenizer.json"


def compare_tokenizers(new: Path) -> None:
    a, b = json.loads(new.read_text())["model"], json.loads(SHIPPED_TOKENIZER.read_text())["model"]
    moved = sum(1 for tok, i in a["vocab"].items() if b["vocab"].get(tok) != i)
    same = next((n for n, (x, y) in enumerate(zip(a["merges"], b["merges"])) if x != y), len(a["merges"]))
    print(f"tokenizer: {moved} of {len(a['vocab'])} token ids differ; merges agree for the first {same}")


def check_models() -> None:
    import torch

    from sinkinterp.loading import load_model
    from sinkinterp.measure import measure
    from sinkinterp.train.config import TrainConfig
    from sinkinterp.train.trainer import held_out_batches, sink_tracking_tokens

    for name, run in (("toy-softmax", "c_bos"), ("toy-kv-bias", "c_kvbos")):
        snap = ROOT / "analyses" / "data" / "cpu_calibration" / run
        cfg = TrainConfig.from_dict(json.loads((snap / "train_config.json").read_text()))
        rows = [json.loads(line) for line in (snap / "metrics.jsonl").read_text().splitlines() if line]
        val = [r for r in rows if r.get("val_loss") is not None][-1]
        tracked = [r for r in rows if r.get("sink1") is not None][-1]
        lm = load_model(name)
        with torch.no_grad():
            loss = float(torch.stack([lm.model(x, return_type="loss").float() for x in held_out_batches(cfg)]).mean())
            rep = measure(lm.model.eval(), sink_tracking_tokens(cfg), eps=0.3, qk_heads="none")
        print(f"{name}: val loss {loss:.3f} (run logged {val['val_loss']:.3f}); Sink_1 {rep.sink_pct[0]:.1f}% "
              f"(logged {tracked['sink1']:.1f}%); Sink_* {rep.sink_bias_pct} (logged {tracked.get('sink_bias')})")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        compare_tokenizers(Path(sys.argv[1]))
    check_models()
