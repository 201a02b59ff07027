"""The attention benchmark end to end at tiny sizes on CPU, the Triton rows in Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported). No timing assertions."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import bench_attention  # noqa: E402
from sinkinterp.fileio import read_json  # noqa: E402

TINY = ["--device", "cpu", "--seq-lens", "20,32", "--batch-size", "1", "--heads", "2", "--d-head", "16",
        "--warmup", "0", "--repeats", "1", "--threads", "1", "--quiet"]


def test_every_method_runs_or_says_why(tmp_path, capsys):
    pytest.importorskip("triton")
    out = tmp_path / "a.json"
    assert bench_attention.main([*TINY, "--interpret", "--json", str(out)]) == 0
    doc = read_json(out)
    assert doc["benchmark"] == "attention" and doc["schema_version"] == bench_attention.SCHEMA_VERSION
    assert "--seq-lens" in doc["provenance"]["command"] and doc["settings"]["interpret"] is True
    rows = {(r["method"], r["seq_len"]): r for r in doc["rows"]}
    assert set(rows) == {(m, t) for m in bench_attention.METHODS for t in (20, 32)}
    for t in (20, 32):
        for m in ("sdpa_softmax", "triton_sigmoid", "triton_elu1", "plain_sigmoid"):
            r = rows[(m, t)]
            assert r["status"] == "ok", r
            assert r["rel_err"] < 1e-4  # checked against the float32 reference before timing
            assert math.isfinite(r["fwd_median_s"]) and r["fwd_bwd_median_s"] > 0 and r["fwd_x_sdpa"] > 0
        assert rows[("sdpa_softmax", t)]["fwd_x_sdpa"] == 1.0
        assert rows[("flex_sigmoid", t)]["status"] == "skipped" and "CPU" in rows[("flex_sigmoid", t)]["reason"]
        for m in ("triton_sigmoid_tanh", "triton_sigmoid_atomic_tanh"):  # PTX: compiled on CUDA only
            assert rows[(m, t)]["status"] == "skipped" and "PTX" in rows[(m, t)]["reason"]
        assert rows[("triton_sigmoid_portable", t)]["rel_err"] == rows[("triton_sigmoid", t)]["rel_err"]  # the default here
    assert doc["target"]["rows"] == 12  # the six fused methods that run in the interpreter, at two lengths
    table = capsys.readouterr().out
    assert "triton_sigmoid" in table and "target: fused sigmoid" in table


def test_without_interpret_the_triton_rows_are_skipped(tmp_path):
    out = tmp_path / "a.json"
    assert bench_attention.main([*TINY, "--methods", "sdpa_softmax,triton_elu1", "--json", str(out)]) == 0
    rows = read_json(out)["rows"]
    assert [r["status"] for r in rows] == ["ok", "skipped", "ok", "skipped"]
    assert "--interpret" in rows[1]["reason"]


def test_a_wrong_kernel_is_a_failed_row_not_a_time(tmp_path, monkeypatch):
    real = bench_attention._method

    def broken(method, device, interpret=False, tile=None):
        fn, why = real(method, device, interpret, tile)
        return (lambda q, k, v: fn(q, k, v) * 1.01), why

    monkeypatch.setattr(bench_attention, "_method", broken)
    out = tmp_path / "a.json"
    assert bench_attention.main([*TINY, "--methods", "plain_sigmoid", "--seq-lens", "20", "--json", str(out)]) == 0
    (row,) = read_json(out)["rows"]
    assert row["status"] == "failed" and "float32 reference" in row["reason"] and "fwd_median_s" not in row


def test_tiles_time_the_triton_rows_once_per_setting(tmp_path, monkeypatch):
    pytest.importorskip("triton")
    from sinkinterp.models import triton_attention

    seen = []
    real = triton_attention.sim_attention

    def spy(*args, **kw):
        seen.append((kw.get("block"), kw.get("num_warps"), kw.get("num_stages")))
        return real(*args, **kw)

    monkeypatch.setattr(triton_attention, "sim_attention", spy)
    out = tmp_path / "a.json"
    assert bench_attention.main([*TINY, "--interpret", "--seq-lens", "20", "--methods", "sdpa_softmax,triton_sigmoid",
                                 "--tiles", "16x2x3,32,32/16x2", "--json", str(out)]) == 0
    doc = read_json(out)
    assert [r["method"] for r in doc["rows"]] == ["sdpa_softmax", "triton_sigmoid@16x2x3", "triton_sigmoid@32",
                                                  "triton_sigmoid@32/16x2"]
    assert doc["rows"][1]["tile"] == {"block": 16, "num_warps": 2, "num_stages": 3} and doc["rows"][1]["status"] == "ok"
    assert doc["rows"][3]["tile"] == {"block": [32, 16], "num_warps": 2, "num_stages": None}
    assert doc["rows"][3]["status"] == "ok"
    assert doc["settings"]["tiles"] == [[16, 2, 3], [32, None, None], [[32, 16], 2, None]]
    assert doc["target"]["rows"] == 3
    assert {(16, 2, 3), (32, None, None), ((32, 16), 2, None)} <= set(seen)


@pytest.mark.parametrize("argv, needle", [
    (["--tiles", "24x4"], "--tiles"),
    (["--tiles", "64/24x4"], "--tiles"),
    (["--tiles", "64/32/16"], "--tiles"),
    (["--tiles", "64x3"], "--tiles"),
    (["--tiles", "64x4x9"], "--tiles"),
    (["--methods", "sdpa_softmax,nope"], "--methods"),
    (["--seq-lens", "0"], "--seq-lens"),
    (["--device", "tpu"], "--device"),
    (["--heads", "0"], "--heads"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, argv, needle, capsys):
    out = tmp_path / "a.json"
    with pytest.raises(SystemExit):
        bench_attention.main([*argv, "--json", str(out)])
    assert needle in capsys.readouterr().err
    assert not out.exists()
