"""scripts/build_debian_corpus.sh on an installed package's docs, without apt-get: the collection,
an existing tokenizer reused (TOKENIZER=) instead of a new BPE, and the pack left out (SKIP_PACK=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_debian_corpus.sh"
TOKENIZER = REPO / "sinkinterp" / "assets" / "models" / "toy-softmax" / "tokenizer.json"

needs_dpkg = pytest.mark.skipif(
    shutil.which("dpkg") is None or not any(Path("/usr/share/doc/bash").glob("*")),
    reason="needs dpkg and the bash package's docs under /usr/share/doc/bash",
)


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(tmp_path / "out"), "PACKAGES": "bash", "SKIP_INSTALL": "1",
            "PYTHON": sys.executable, "VAL_EVERY": "2", **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=600)


@needs_dpkg
def test_reuses_the_given_tokenizer_and_skips_the_pack(tmp_path):
    proc = _run(tmp_path, TOKENIZER=str(TOKENIZER), SKIP_PACK="1")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    # the tokenizer is the given one, byte for byte, in the output and in the shard folder
    assert (out / "tokenizer.json").read_bytes() == TOKENIZER.read_bytes()
    assert "(not trained)" in proc.stdout
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 8192
    assert manifest["total_tokens"] > 1000 and manifest["splits"]["val"]["tokens"] > 0
    assert not (out / "debian-shards.tar.xz").exists()
    assert any((out / "corpus" / "bash").rglob("*"))


@needs_dpkg
def test_a_missing_tokenizer_is_an_error(tmp_path):
    proc = _run(tmp_path, TOKENIZER=str(tmp_path / "nope.json"), SKIP_PACK="1")
    assert proc.returncode == 2
    assert "TOKENIZER=" in proc.stderr and "no such file" in proc.stderr
    assert not (tmp_path / "out" / "shards").exists()
