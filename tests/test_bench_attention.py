"""The attention benchmark end to end at tiny sizes on CPU, the Triton rows in Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported). No timing assertions."""

from __future__ import annotations

import json
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


def test_kernel_codegen_compare_pairs_each_timed_row_with_its_estimate(tmp_path, capsys):
    """kernel_codegen.py --compare reads a bench_attention JSON (no compile): op, dq and sim_impl from
    the row's name (the default where it has none), the tile from the row, and the estimate of exactly
    those kernels; an unmatched tile gets no estimate; a missing file is named."""
    from benchmarks import kernel_codegen as kc

    def row(kernel, op, impl, tile, cycles, **extra):
        return {"kernel": kernel, "op": op, "impl": impl, "tile": tile, "bound_cycles": cycles, **extra}

    rows = [row("fwd", "sigmoid", i, "64/64x4x3", c, x_softmax=329 / c) for i, c in (("mufu", 512), ("tanh", 280))]
    rows += [row(k, "sigmoid", i, "64/64x4x3", c) for i in ("mufu", "tanh")
             for k, c in (("dkdv", 512), ("dq", 400), ("dkdv_atomic", 640))]
    codegen = {"rows": rows}  # an older JSON: predictions made from the rows

    def timed(method, tile=None):
        return {"method": method, "seq_len": 2048, "status": "ok", "fwd_x_sdpa": 0.5, "fwd_bwd_x_sdpa": 0.6,
                "tile": tile}

    attention = {"rows": [timed("sdpa_softmax"), timed("triton_sigmoid"), timed("triton_sigmoid_atomic_tanh"),
                          timed("triton_sigmoid@64", {"block": 64, "num_warps": None, "num_stages": None}),
                          timed("triton_sigmoid@128/64x8x3", {"block": [128, 64], "num_warps": 8, "num_stages": 3}),
                          {**timed("triton_sigmoid_tanh"), "status": "error"}]}
    out = kc.compare(codegen, attention, default_impl="mufu")
    assert [r["method"] for r in out] == ["triton_sigmoid", "triton_sigmoid_atomic_tanh", "triton_sigmoid@64",
                                          "triton_sigmoid@128/64x8x3"]
    plain, fast, tiled, other = out
    assert (plain["impl"], plain["dq"], plain["tile"]) == ("mufu", "two_pass", "64/64x4x3")
    assert plain["predicted_fwd_bwd_x_sdpa"] == kc.SDPA_FWD_BWD_CYCLES_64 / (512 + 512 + 400)
    assert plain["predicted_fwd_x_sdpa"] == 329 / 512 and plain["measured_fwd_bwd_x_sdpa"] == 0.6
    assert (fast["impl"], fast["dq"]) == ("tanh", "atomic")
    assert fast["predicted_fwd_bwd_x_sdpa"] == kc.SDPA_FWD_BWD_CYCLES_64 / (280 + 640)
    assert tiled["predicted_fwd_bwd_x_sdpa"] == plain["predicted_fwd_bwd_x_sdpa"]  # the default launch's tile
    assert other["tile"] == "128/64x8x3" and other["predicted_fwd_bwd_x_sdpa"] is None
    assert kc.compare(codegen, attention, default_impl="portable")[0]["predicted_fwd_x_sdpa"] is None
    assert "triton_sigmoid_atomic_tanh" in kc.compare_table(out)
    (tmp_path / "codegen.json").write_text(json.dumps(codegen))
    (tmp_path / "attention.json").write_text(json.dumps(attention))
    assert kc.main(["--compare", str(tmp_path / "attention.json"), "--codegen-json", str(tmp_path / "codegen.json"),
                    "--json", str(tmp_path / "cmp.json")]) == 0
    assert json.loads((tmp_path / "cmp.json").read_text())["rows"] == json.loads(json.dumps(out))
    with pytest.raises(SystemExit, match="--compare .*no such file"):
        kc.main(["--compare", str(tmp_path / "missing.json")])
