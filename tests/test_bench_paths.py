"""The path-patching benchmark runs end to end at the tiniest settings, both ways agree on every sweep and
model kind, a disagreement is recorded as a failure, and the JSON holds what benchmarks/README.md promises.
No timing assertions (performance claims live in docs/)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import bench_paths  # noqa: E402
from sinkinterp.fileio import read_json  # noqa: E402

TINY = ["--models", "tiny", "--seq-len", "6", "--num-seqs", "2", "--d-vocab", "50", "--threads", "1", "--quiet"]
SYNTHETIC = ["sink", "hooked", "bridge"]


def test_both_ways_agree_on_every_sweep_and_model_kind(tmp_path, capsys):
    out = tmp_path / "paths.json"
    assert bench_paths.main([*TINY, "--kinds", ",".join(SYNTHETIC), "--batch-rows", "6", "--repeats", "2",
                             "--json", str(out)]) == 0
    doc = read_json(out)
    assert doc["benchmark"] == "paths" and doc["schema_version"] == bench_paths.SCHEMA_VERSION
    assert "--seq-len" in doc["provenance"]["command"] and doc["machine"]["cpu_count"] >= 1
    rows = doc["rows"]
    assert [(r["kind"], r["sweep"]) for r in rows] == [(k, s) for k in SYNTHETIC for s in bench_paths.SWEEPS]
    # the tiny preset: 2 layers x 4 heads; blocks = embed (+ the HookedTransformer's learned positions) and
    # 2 x (attn, mlp), those of layer 0 reach the last layer's keys; the middle layer is 1
    for r in rows:
        reached = {"heads_to_logits": 8, "blocks_to_last_k": 4 if r["kind"] == "hooked" else 3, "heads_to_mid_q": 4}
        assert r["status"] == "ok" and r["agree"], r
        assert r["reached"] == reached[r["sweep"]] and r["ours_s"] > 0 and r["plain_s"] > 0
        assert r["max_abs_diff"] <= bench_paths.ATOL and len(r["ours_s_all"]) == 2
        assert r["value_range"][1] > r["value_range"][0]  # the senders' values differ: a real comparison
    assert rows[1]["senders"] == 5 and rows[4]["senders"] == 6 and rows[1]["receivers"] == ["L1H0.k", "L1H1.k", "L1H2.k", "L1H3.k"]
    table = capsys.readouterr().out
    assert "heads_to_mid_q" in table and "speedup" in table and f"results: {out}" in table


def test_a_disagreement_fails_the_row(tmp_path, monkeypatch, capsys):
    real = bench_paths.plain_path_patch
    monkeypatch.setattr(bench_paths, "plain_path_patch", lambda *a, **k: real(*a, **k) + 1e-2)
    out = tmp_path / "paths.json"
    assert bench_paths.main([*TINY, "--kinds", "sink", "--sweeps", "heads_to_logits", "--json", str(out)]) == 1
    row = read_json(out)["rows"][0]
    assert row["status"] == "failed" and "values differ" in row["reason"]
    assert np.isclose(row["max_abs_diff"], 1e-2)


@pytest.mark.parametrize(("args", "match"), [
    (["--kinds", "gpt"], "--kinds: unknown"),
    (["--sweeps", "heads"], "--sweeps: unknown"),
    (["--models", "2x30x4"], "--models"),
    (["--seq-len", "1"], "--seq-len must be >= 2"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_arguments(args, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        bench_paths.main([*TINY, *args, "--json", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
