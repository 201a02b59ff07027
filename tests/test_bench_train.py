"""The training-throughput benchmark runs end to end at the tiniest settings and writes the JSON it
promises; its plain PyTorch reference is the same model as our softmax SinkTransformer.

No timing assertions: performance claims live in docs/performance.md with the command that produced
them, never in tests.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import bench_train  # noqa: E402
from sinkinterp.fileio import read_json  # noqa: E402

TINY = ["--models", "tiny", "--steps", "2", "--warmup", "1", "--repeats", "1", "--device", "cpu", "--no-compile",
        "--threads", "1", "--matmul-size", "64", "--quiet"]
VARIANTS = ["softmax", "kv", "sigmoid", "elu1"]
ROW_FIELDS = {"model", "method", "variant", "backend", "attn_op", "attn_bias", "seq_len", "batch_size", "device",
              "dtype", "compile", "status"}
OK_FIELDS = {"num_params", "tokens_per_step", "step_times_s", "step_median_s", "step_min_s", "step_max_s",
             "tokens_per_s", "tokens_per_s_best", "flops_per_token", "tflops", "mfu_table", "mfu_matmul",
             "first_step_s", "warmup_s", "peak_bytes", "peak_total_bytes", "memory_meter", "loss_first", "loss_last",
             "losses_finite"}


def test_benchmark_tiny_in_process(tmp_path, capsys):
    from sinkinterp.train.flops import flops_per_token

    out = tmp_path / "train-cpu.json"
    rc = bench_train.main([*TINY, "--variants", ",".join(VARIANTS), "--backends", "auto,flex,triton,triton_fast", "--json", str(out)])
    assert rc == 0
    doc = read_json(out)
    assert doc["benchmark"] == "train" and doc["schema_version"] == bench_train.SCHEMA_VERSION
    assert {"date", "command", "versions", "git_commit"} <= doc["provenance"].keys()
    assert "--variants" in doc["provenance"]["command"]
    assert {"cpu_model", "cpu_count", "torch_threads", "device"} <= doc["machine"].keys()
    # device-dependent defaults resolved and recorded
    s = doc["settings"]
    assert (s["device"], s["dtype"], s["compile"], s["warmup"], s["steps"], s["repeats"]) == \
        ("cpu", "float32", False, 1, 2, 1)
    assert doc["optimizer"]["fused"] is False and doc["optimizer"]["lr"] > 0
    assert doc["peak_flops_table"] is None  # CPU: no table peak
    assert doc["matmul_peak"]["status"] == "ok" and doc["matmul_peak"]["applies"] is False
    assert doc["matmul_peak"]["flops_per_s_best"] > 0

    # the reference has exactly our softmax model's parameters, hence the same FLOPs per token
    model = doc["models"]["tiny"]
    assert (model["seq_len"], model["batch_size"], model["tokens_per_step"]) == (16, 4, 64)
    check = model["reference_check"]
    assert check["passed"]
    assert check["num_params"] == check["reference_num_params"] > 0
    assert check["matmul_params"] == check["reference_matmul_params"]
    cfg = bench_train.model_config("tiny", seq_len=16)
    assert check["flops_per_token"] == flops_per_token(cfg, 16)

    # one row per (variant, backend) after the reference, in order
    rows = doc["rows"]
    assert [(r["method"], r["variant"], r["backend"]) for r in rows] == \
        [("reference", "softmax", "sdpa")] + [("sinkinterp", v, b) for v in VARIANTS for b in ("auto", "flex", "triton", "triton_fast")]
    by = {("reference" if r["method"] == "reference" else r["variant"], r["backend"]): r for r in rows}
    for r in rows:
        assert ROW_FIELDS <= r.keys()
        assert r["status"] in ("ok", "skipped", "failed"), r
        if r["status"] != "ok":
            assert r["reason"], r
            continue
        assert OK_FIELDS <= r.keys()
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
        assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"]) and r["losses_finite"]
        assert abs(r["loss_first"] - math.log(64)) < 0.5  # random tokens, small init: about log(vocab)
        assert r["flops_per_token"] == check["flops_per_token"]  # k*/v* are not matmul parameters
        assert r["tflops"] > 0 and r["mfu_table"] is None and r["mfu_matmul"] > 0 and r["peak_bytes"] >= 0
        assert len(r["step_times_s"]) == 1 and r["x_softmax"] > 0 and r["x_reference"] > 0
    for key in [("reference", "sdpa")] + [(v, "auto") for v in VARIANTS]:
        assert by[key]["status"] == "ok", by[key]
    # softmax ops have no FlexAttention path; sigmoid / elu+1 have one (no CPU backward: failed, the run goes on)
    for v in ("softmax", "kv"):
        assert by[(v, "flex")]["status"] == "skipped" and "FlexAttention" in by[(v, "flex")]["reason"]
    for v in ("sigmoid", "elu1"):
        assert by[(v, "flex")]["status"] in ("ok", "failed")
    # the Triton kernel: sigmoid / elu+1 only, and on CUDA only (the interpreter is for tests)
    for b in ("triton", "triton_fast"):
        for v in ("softmax", "kv"):
            assert by[(v, b)]["status"] == "skipped" and "no Triton kernel" in by[(v, b)]["reason"]
        for v in ("sigmoid", "elu1"):
            assert by[(v, b)]["status"] == "skipped" and "runs on CUDA" in by[(v, b)]["reason"]
    assert by[("softmax", "auto")]["num_params"] == by[("reference", "sdpa")]["num_params"] == check["num_params"]
    assert by[("kv", "auto")]["num_params"] > check["num_params"]  # + k*, v*
    assert by[("softmax", "auto")]["x_softmax"] == 1.0 and by[("reference", "sdpa")]["x_reference"] == 1.0

    summary = doc["summary"]["tiny"]
    assert summary["softmax_to_reference"] == pytest.approx(by[("softmax", "auto")]["x_reference"])
    assert set(summary["variants"]) == set(VARIANTS)
    assert summary["variants"]["softmax"]["backends"]["flex"] == "skipped"
    targets = {t["id"]: t for t in doc["targets"]}
    assert set(targets) == {"softmax_vs_reference", "softmax_mfu_matmul", "variant_vs_softmax"}
    mfu = targets["softmax_mfu_matmul"]
    assert mfu["met_all"] is None and "not applicable" in mfu["note"]
    assert [i["model"] for i in targets["softmax_vs_reference"]["items"]] == ["tiny"]
    assert {i["variant"] for i in targets["variant_vs_softmax"]["items"]} == {"sigmoid", "elu1"}

    printed = capsys.readouterr().out
    for column in ("tokens/s", "x softmax", "x reference", "TFLOP/s", "MFU(table)", "MFU(matmul)", "peak MB"):
        assert column in printed
    assert "reference" in printed and "elu1" in printed and str(out) in printed


def test_bad_arguments_fail_before_any_work(tmp_path):
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit):
        bench_train.main(["--models", "3x10x4", "--json", str(out)])  # presets only
    with pytest.raises(SystemExit):
        bench_train.main(["--variants", "softmax,nope", "--json", str(out)])
    with pytest.raises(SystemExit):
        bench_train.main(["--backends", "auto,cuda", "--json", str(out)])
    with pytest.raises(SystemExit, match="--steps"):
        bench_train.main(["--device", "cpu", "--steps", "0", "--json", str(out)])
    with pytest.raises(SystemExit, match="--seq-len"):
        bench_train.main(["--device", "cpu", "--seq-len", "1", "--json", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("preset", ["tiny", "reduced", "60m"])
def test_reference_has_our_parameters(preset):
    check = bench_train.reference_check(bench_train.model_config(preset), bench_train.MODEL_PRESETS[preset]["seq_len"])
    assert check["passed"], check


def test_reference_is_our_softmax_model():
    """With our weights copied in, the plain reference computes our model's loss: same function, so the
    FLOPs per token of flops_per_token(cfg, T) hold for both."""
    from sinkinterp.models import SinkTransformer

    cfg = bench_train.model_config("tiny", seq_len=16)
    ours = SinkTransformer(cfg)
    ref = bench_train.ReferenceLM(cfg)
    h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
    with torch.no_grad():
        ref.embed.weight.copy_(ours.embed.W_E)
        ref.lm_head.weight.copy_(ours.unembed.W_U.T)
        ref.norm.weight.copy_(ours.ln_final.w)
        for b_ref, b in zip(ref.blocks, ours.blocks):
            a = b.attn
            for lin, W in ((b_ref.wq, a.W_Q), (b_ref.wk, a.W_K), (b_ref.wv, a.W_V)):
                lin.weight.copy_(W.permute(0, 2, 1).reshape(-1, d))  # [head, d_model, d_head] -> [out, in]
            b_ref.wo.weight.copy_(a.W_O.reshape(h * dh, d).T)
            b_ref.w_gate.weight.copy_(b.mlp.W_gate.T)
            b_ref.w_up.weight.copy_(b.mlp.W_in.T)
            b_ref.w_down.weight.copy_(b.mlp.W_out.T)
            b_ref.attn_norm.weight.copy_(b.ln1.w)
            b_ref.ffn_norm.weight.copy_(b.ln2.w)
    tokens = torch.randint(0, cfg.d_vocab, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # float32: the reference's RMSNorm and loss run in float32 whatever the dtype
        assert float(ref(tokens)) == pytest.approx(float(ours(tokens, return_type="loss")), abs=2e-5)
        assert float(ref(tokens)) != pytest.approx(float(ours(tokens.flip(1), return_type="loss")), abs=2e-5)
