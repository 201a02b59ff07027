"""Offline data pipeline for pre-training small models (see docs/data.md).

corpus      folders of text / markdown / HTML / jsonl (gzip'd too) -> documents
tokenizer   byte-level BPE training, tokenizer.json or local Hugging Face folders, ``to_hf()``
shards      uint16 shards + manifest (sha256), train/val split, compressed .tar.xz pack
loader      memory-mapped windows, deterministic per (seed, step), document-aligned or not
transforms  the paper's data interventions (random / fixed token at a position, data cap) and
            ``DataConfig``, the one description of a run's data
cli         ``sinkinterp data build-tokenizer | build-shards | pack | unpack | inspect``

Nothing here touches the network; ``datasets`` is never imported.
"""

from sinkinterp.data.corpus import Corpus, CorpusSummary, Document, html_to_text
from sinkinterp.data.loader import TokenWindows
from sinkinterp.data.shards import (
    ChecksumError,
    pack_compressed,
    read_manifest,
    unpack_compressed,
    verify_shards,
    write_shards,
)
from sinkinterp.data.tokenizer import BOS_TOKEN, EOS_TOKEN, TextTokenizer, load_tokenizer, train_bpe
from sinkinterp.data.transforms import (
    DataConfig,
    DataPipeline,
    TransformSpec,
    cap_data,
    fixed_token_at,
    random_tokens_at,
)

__all__ = [
    "Corpus", "CorpusSummary", "Document", "html_to_text",
    "TextTokenizer", "train_bpe", "load_tokenizer", "EOS_TOKEN", "BOS_TOKEN",
    "write_shards", "read_manifest", "verify_shards", "pack_compressed", "unpack_compressed", "ChecksumError",
    "TokenWindows",
    "DataConfig", "DataPipeline", "TransformSpec", "random_tokens_at", "fixed_token_at", "cap_data",
]
