"""The measurement benchmark runs end to end at the tiniest settings and writes the JSON it promises.

No timing or memory assertions: performance claims live in docs/performance.md with the command that
produced them, never in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import bench_measure  # noqa: E402
from sinkinterp.fileio import read_json  # noqa: E402
TINY = ["--models", "tiny", "--seq-lens", "16", "--num-seqs", "2,4", "--batch-size", "2", "--repeats", "1",
        "--warmup", "1", "--d-vocab", "64", "--threads", "1", "--quiet"]
ROW_FIELDS = {"method", "model", "seq_len", "num_seqs", "batch_size", "dtype", "device", "status", "pattern_bytes"}
OK_FIELDS = {"times_s", "median_s", "min_s", "max_s", "peak_bytes", "baseline_bytes", "memory_meter"}


def _check_document(doc: dict, methods: list[str], skipped: set[tuple[str, int]] = frozenset()) -> None:
    assert doc["benchmark"] == "measure" and doc["schema_version"] == bench_measure.SCHEMA_VERSION
    # where it came from
    prov = doc["provenance"]
    assert {"date", "command", "versions", "git_commit"} <= prov.keys()
    assert "--seq-lens" in prov["command"]
    assert {"torch", "transformer-lens"} <= prov["versions"].keys()
    assert {"cpu_model", "cpu_count", "torch_threads", "device"} <= doc["machine"].keys()
    assert doc["models"]["tiny"]["config"]["n_layers"] == 2 and doc["models"]["tiny"]["num_params"] > 0
    # the parity check ran and both ways agree, on values that are not all 0 or all 100
    parity = doc["parity"]
    assert parity["status"] == "ok" and parity["passed"]
    assert parity["sink1_pct"]["measure"] == parity["sink1_pct"]["cache"]
    assert parity["sink1_by_eps"]["measure"] == parity["sink1_by_eps"]["cache"]
    assert parity["alpha_max_abs_diff"] <= parity["alpha_atol"]
    assert parity["non_trivial"]
    # one row per (method, N), in grid order, each with its measurements
    rows = doc["rows"]
    assert [(r["method"], r["num_seqs"]) for r in rows] == [(m, n) for n in (2, 4) for m in methods]
    for r in rows:
        assert ROW_FIELDS <= r.keys()
        assert r["model"] == "tiny" and r["seq_len"] == 16 and r["batch_size"] == 2
        if (r["method"], r["num_seqs"]) in skipped:
            assert r["status"] == "skipped" and "--max-cache-gb" in r["reason"]
            continue
        assert r["status"] == "ok", r
        assert OK_FIELDS <= r.keys()
        assert len(r["times_s"]) == 1 and r["median_s"] > 0 and r["peak_bytes"] >= 0
        assert r["ratio_to_forward"] > 0
    assert r["pattern_bytes"] == 4 * 2 * 4 * 16 * 16 * 4  # N * L * H * T * T * float32
    targets = {t["id"]: t for t in doc["targets"]}
    assert set(targets) == {"time_ratio", "time_ratio_first_keys", "time_ratio_triton", "memory_ratio", "memory_vs_n"}
    assert {i["num_seqs"] for i in targets["time_ratio"]["items"]} == {2, 4}
    if "measure_first" in methods:
        assert {i["num_seqs"] for i in targets["time_ratio_first_keys"]["items"]} == {2, 4}
        assert parity["first_keys_alpha_max_abs_diff"] <= parity["alpha_atol"]
    if "measure_triton" in methods:
        assert {i["num_seqs"] for i in targets["time_ratio_triton"]["items"]} == {2, 4}
    # the test suite runs Triton's interpreter (conftest.py): the column kernels were checked too
    assert parity["triton_alpha_max_abs_diff"] is not None
    assert parity["triton_alpha_max_abs_diff"] <= parity["alpha_atol"]
    assert targets["memory_vs_n"]["items"][0]["num_seqs"] == [2, 4]


def test_benchmark_tiny_in_process(tmp_path, capsys):
    out = tmp_path / "measure-cpu.json"
    # the cache of N=4 (32 KiB of patterns) exceeds the limit and is skipped, N=2 (16 KiB) runs
    rc = bench_measure.main([*TINY, "--isolation", "none", "--max-cache-gb", "0.00003", "--json", str(out)])
    assert rc == 0
    doc = read_json(out)
    _check_document(doc, list(bench_measure.METHODS), skipped={("cache", 4)})
    assert doc["settings"]["isolation"] == "none"
    assert doc["parity"]["num_seqs"] == 3  # 2 x 2 + 1 sequences' patterns (40 KiB) pass the limit: as many as fit
    printed = capsys.readouterr().out
    assert "cache/measure peak" in printed and "forward_materialized" in printed and str(out) in printed


def test_bad_arguments_fail_before_any_work(tmp_path):
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit):
        bench_measure.main(["--models", "3x10x4", "--json", str(out)])  # d_model not divisible by heads
    with pytest.raises(SystemExit):
        bench_measure.main(["--methods", "forward,nope", "--json", str(out)])
    with pytest.raises(SystemExit, match="seq-lens"):
        bench_measure.main(["--seq-lens", "1,16", "--json", str(out)])
    assert not out.exists()


def test_a_parity_check_that_cannot_fit_is_refused_before_any_work(tmp_path, capsys):
    """The parity check caches every pattern of its sequences: where two do not fit in
    --max-cache-gb (T = 4096 on a small machine) the script says so instead of being killed."""
    out = tmp_path / "x.json"
    rc = bench_measure.main([*TINY, "--isolation", "none", "--max-cache-gb", "0.00001", "--json", str(out)])
    assert rc == 2
    assert "do not fit in --max-cache-gb" in capsys.readouterr().err
    assert not out.exists()


def test_cache_way_matches_measure_on_a_sinking_model():
    """The independent cache-then-reduce code agrees with measure on a tiny model with real sinks."""
    import numpy as np
    import torch

    from sinkinterp.measure import measure
    from sinkinterp.models.testing import tiny_model

    model = tiny_model("rotary")
    tokens = torch.randint(0, model.cfg.d_vocab, (5, 12), generator=torch.Generator().manual_seed(3))
    report = measure(model, tokens, batch_size=2, norms=False, qk_heads="none")
    cached = bench_measure.cache_then_reduce(model, tokens, 2, 0.3, eps_grid=list(report.eps_grid))
    np.testing.assert_allclose(cached["alpha_by_key"], report.alpha_by_key, atol=1e-12)
    np.testing.assert_array_equal(cached["sink1_by_eps"], report.sink1_by_eps)
    assert cached["sink1_pct"] == pytest.approx(report.sink1_pct, abs=1e-12)


@pytest.mark.slow
def test_benchmark_tiny_fresh_processes(tmp_path):
    """The default CPU mode (each row in a fresh process) through the command line; ~1 min of imports."""
    out = tmp_path / "measure-cpu.json"
    methods = ["forward", "measure", "cache"]
    res = subprocess.run([sys.executable, "benchmarks/bench_measure.py", *TINY, "--methods", ",".join(methods),
                          "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())
    _check_document(doc, methods)
    assert doc["settings"]["isolation"] == "process"
    assert all("clear_refs" in r["memory_meter"] or "ru_maxrss" in r["memory_meter"] for r in doc["rows"])


def test_resume_reuses_finished_rows(tmp_path):
    out = tmp_path / "measure-cpu.json"
    first = ["--isolation", "none", "--json", str(out)]
    assert bench_measure.main([*TINY, *first, "--methods", "forward,measure"]) == 0
    before = {(r["method"], r["num_seqs"]): r["times_s"] for r in read_json(out)["rows"]}
    assert bench_measure.main([*TINY, *first, "--methods", "forward,measure,cache", "--resume"]) == 0
    doc = read_json(out)
    rows = {(r["method"], r["num_seqs"]): r for r in doc["rows"]}
    assert set(rows) == {(m, n) for m in ("forward", "measure", "cache") for n in (2, 4)}
    for key, times in before.items():  # reused as they were, derived ratios recomputed
        assert rows[key]["resumed"] and rows[key]["times_s"] == times and "ratio_to_forward" in rows[key]
    assert not rows[("cache", 2)].get("resumed") and rows[("cache", 2)]["status"] == "ok"
    assert "--methods forward,measure" in doc["provenance"]["resumed_commands"][0]
    # other settings: refuse instead of mixing rows measured differently
    with pytest.raises(SystemExit, match="batch_size"):
        bench_measure.main([*TINY, *first, "--batch-size", "4", "--resume"])


def test_measure_blocks_switches_the_cpu_column_sums_and_back():
    """measure_blocks times the blocked pass: the flash column sums are off for its row only, and
    both ways give the same alpha."""
    import numpy as np
    import torch

    from sinkinterp.models import attention
    from sinkinterp.models.testing import tiny_model

    real = attention._colsum_flash_cpu
    model = tiny_model("rotary").float()
    tokens = torch.randint(0, 50, (4, 24), generator=torch.Generator().manual_seed(0))
    run = bench_measure.streaming_measure("none")
    bench_measure._METHOD_FUNCS["measure_blocks"][0](model)
    assert attention._colsum_flash_cpu(None, None, None, 1.0) is None
    blocks = run(model, tokens, 2, 0.3)
    bench_measure._METHOD_FUNCS["measure"][0](model)
    assert attention._colsum_flash_cpu is real
    flash = run(model, tokens, 2, 0.3)
    np.testing.assert_allclose(blocks["alpha_by_key"], flash["alpha_by_key"], atol=1e-6)
    assert flash["alpha_by_key"].std() > 0.01


def test_paired_times_every_method_in_turns(tmp_path, monkeypatch):
    """--paired: the methods of each (model, T, N) share one process and take turns (the order
    rotating each round); 'x fwd' is the median of the per-round ratios to forward; no peaks; a
    cache row too big for --max-cache-gb is skipped, not timed."""
    import statistics

    order = []
    for name in ("forward", "measure", "cache"):
        prepare, fn = bench_measure._METHOD_FUNCS[name]
        monkeypatch.setitem(bench_measure._METHOD_FUNCS, name,
                            (prepare, lambda *a, _n=name, _f=fn: order.append(_n) or _f(*a)))
    out = tmp_path / "paired.json"
    rc = bench_measure.main([*TINY, "--repeats", "3", "--paired", "--isolation", "none", "--methods", "forward,measure,cache",
                             "--max-cache-gb", "0.00003", "--json", str(out)])
    assert rc == 0
    doc = read_json(out)
    rows = {(r["method"], r["num_seqs"]): r for r in doc["rows"]}
    assert rows[("cache", 4)]["status"] == "skipped" and rows[("cache", 2)]["status"] == "ok"
    for (method, n), r in rows.items():
        if r["status"] != "ok":
            continue
        assert r["paired"] and r["peak_bytes"] is None and len(r["times_s"]) == 3
        want = statistics.median(t / f for t, f in zip(r["times_s"], rows[("forward", n)]["times_s"]))
        assert r["ratio_to_forward"] == pytest.approx(want, rel=1e-3)
    assert rows[("forward", 2)]["ratio_to_forward"] == 1.0
    # warm-up then three rounds per (model, T, N), each starting one method later (N = 2, then N = 4)
    assert order[3:12] == ["forward", "measure", "cache", "measure", "cache", "forward", "cache", "forward", "measure"]
    assert order[12:14] == ["forward", "measure"] and "cache" not in order[12:]
    assert doc["settings"]["paired"] is True
