"""The fused Triton sigmoid / elu+1 kernel (sinkinterp.models.triton_attention): outputs and gradients
against a float64 materialized reference, and the model's ``attn_backend="triton"`` against its plain
path, logits and parameter gradients. On a machine without a GPU the kernels run in Triton's
interpreter on CPU tensors; with one, compiled on CUDA tensors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    # conftest.py sets it before triton is imported; set later, Triton's own helpers stay compiled
    pytest.fail("TRITON_INTERPRET=1 must be set before triton is imported on a machine without a GPU")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO = Path(__file__).resolve().parents[1]

from sinkinterp.models import SinkTransformer, triton_attention  # noqa: E402
from sinkinterp.models.attention import Attention  # noqa: E402
from sinkinterp.models.testing import VARIANTS, tiny_config, tiny_model  # noqa: E402
from sinkinterp.models.triton_attention import (  # noqa: E402
    column_sums,
    column_sums_reference,
    sim_attention,
    sim_attention_reference,
    softmax_lse,
    softmax_lse_reference,
    triton_available,
)


def _qkv(h: int, hkv: int, t: int, d: int, dtype=torch.float64, seed: int = 0, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, t, d, generator=g, dtype=torch.float64).mul(1.5).to(DEVICE, dtype)
            for n in (h, hkv, hkv)]


def _output_grads(h: int, t: int, d: int):
    """Fixed random gradients of acc [2, h, t, d] and rowsum [2, h, t] (float64)."""
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, h, t, d, generator=g, dtype=torch.float64).to(DEVICE),
            torch.randn(2, h, t, generator=g, dtype=torch.float64).to(DEVICE))


def _value_and_grads(fn, q, k, v, g_acc, g_sum, **kw):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    acc, rowsum = fn(q, k, v, **kw)
    ((acc.double() * g_acc).sum() + (rowsum.double() * g_sum).sum()).backward()
    return [x.detach().double() for x in (acc, rowsum, q.grad, k.grad, v.grad)]


CASES = [  # op, heads, kv heads, T, d_head, window, sigmoid bias
    ("sigmoid", 2, 2, 40, 16, None, 0.0),
    ("sigmoid", 4, 2, 37, 24, None, -3.6),  # GQA, T not a multiple of the tile, d_head padded to 32
    ("sigmoid", 2, 1, 50, 16, 7, 0.0),  # a window shorter than a tile, keys skipped by tiles
    ("elu1", 2, 2, 33, 16, None, 0.0),
    ("elu1", 4, 1, 45, 8, 20, 0.0),  # d_head below the 16-wide tile
    # long enough for key tiles that every query of a block sees whole (scored without a mask), between
    # the masked diagonal and, with a window, the masked window edge: with 16-wide tiles (the interpreter
    # on CPU; also 16 x 32 and 32 x 16, test_asymmetric_tiles) and 64-wide ones (CUDA). The interpreter
    # runs each tile in Python, so on CPU shorter lengths that still hold those three kinds of tile
    ("sigmoid", 2, 1, 200 if DEVICE == "cuda" else 104, 16, 150 if DEVICE == "cuda" else 72, -1.0),
    ("elu1", 2, 2, 130 if DEVICE == "cuda" else 72, 16, None, 0.0),
]


@pytest.mark.parametrize("dq", ["two_pass", "atomic"])
@pytest.mark.parametrize("op,h,hkv,t,d,window,bias", CASES)
def test_kernel_matches_float64_reference(op, h, hkv, t, d, window, bias, dq):
    """Outputs and gradients against a materialized float64 reference, with dq from the second kernel
    or added atomically by the dk / dv kernel."""
    q, k, v = _qkv(h, hkv, t, d)
    g_acc, g_sum = _output_grads(h, t, d)
    kw = dict(op=op, bias=bias, window=window)
    expected = _value_and_grads(sim_attention_reference, q, k, v, g_acc, g_sum, **kw)
    kw_kernel = {**kw, "dq": dq}
    assert expected[0].abs().max() > 0.1 and expected[2].abs().max() > 0.01  # non-degenerate
    names = ("acc", "rowsum", "dq", "dk", "dv")
    # float64 through the kernel: the same numbers up to summation order
    got64 = _value_and_grads(sim_attention, q, k, v, g_acc, g_sum, **kw_kernel)
    for n, a, b in zip(names, got64, expected):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=n)
    # float32 (exact float32 products, no TF32): float32 rounding only
    q32, k32, v32 = (x.float() for x in (q, k, v))
    got32 = _value_and_grads(sim_attention, q32, k32, v32, g_acc, g_sum, **kw_kernel)
    for n, a, b in zip(names, got32, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=n)


@pytest.mark.parametrize("d", [8, 24, 16])
def test_the_kernels_never_mask_the_head_dimension(d, monkeypatch):
    """Heads narrower than the kernels' tile are zero-padded before the launch (on the H200 the
    kernel failed exactly where it masked the head dimension), for the attention kernels forward and
    backward and for the column kernels, and the results are those of the unpadded reference."""
    seen = []
    settings = triton_attention._launch_settings

    def spy(q, block, block_n=None):
        meta = settings(q, block, block_n)
        seen.append((q.shape[-1], meta["BLOCK_D"]))
        return meta

    monkeypatch.setattr(triton_attention, "_launch_settings", spy)
    q, k, v = _qkv(2, 1, 20, d)
    q.requires_grad_()
    acc, rowsum = sim_attention(q, k, v, op="sigmoid")
    assert acc.shape == q.shape
    acc.sum().backward()
    lse = softmax_lse(q.detach(), k)
    cols = column_sums(q.detach(), k, lse)
    assert len(seen) == 4 and all(got == tile == max(16, d if d & (d - 1) == 0 else 32) for got, tile in seen)
    ref = sim_attention_reference(q.detach(), k, v, op="sigmoid")
    torch.testing.assert_close(acc.detach(), ref[0], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(cols, column_sums_reference(q.detach(), k, lse), atol=1e-10, rtol=1e-10)


# (BLOCK_M, BLOCK_N) pairs: query rows and key columns per tile apart (FlashAttention's Triton forward
# uses 128 x 64 on Hopper, timed by bench_attention); here small float64 tiles that test the logic
PAIRS = [(16, 32), (32, 16)] if DEVICE == "cpu" else [(64, 32), (32, 64)]


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("case,dq", [(1, "two_pass"), (5, "atomic")])
def test_asymmetric_tiles_match_float64_reference(pair, case, dq):
    """Tiles of BLOCK_M query rows by BLOCK_N key columns: the ranges of whole and masked tiles, the
    grids of the three kernels, GQA, windows and T not a multiple of either, against float64."""
    op, h, hkv, t, d, window, bias = CASES[case]
    q, k, v = _qkv(h, hkv, t, d)
    g_acc, g_sum = _output_grads(h, t, d)
    kw = dict(op=op, bias=bias, window=window)
    expected = _value_and_grads(sim_attention_reference, q, k, v, g_acc, g_sum, **kw)
    got = _value_and_grads(sim_attention, q, k, v, g_acc, g_sum, **kw, block=pair, dq=dq)
    for n, a, b in zip(("acc", "rowsum", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=n)


def _spy_launches(monkeypatch) -> dict:
    """{kernel name: the positional arguments of its last launch}, for the five kernels."""
    kern = triton_attention._kernels_module()
    seen = {}

    class Spy:
        def __init__(self, name):
            self.name, self.kernel = name, getattr(kern, name)

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen[self.name] = args
                return self.kernel[grid](*args, **kwargs)
            return launch

    for name in ("fwd", "bwd_dkdv", "bwd_dq", "softmax_lse", "col_sums"):
        monkeypatch.setattr(kern, name, Spy(name))
    return seen


def test_atomic_dq_runs_one_backward_kernel(monkeypatch):
    """dq="atomic": the dk / dv kernel also gives dq (no second pass over the scores) and the
    gradients are those of the two-pass backward; an unknown mode is refused by name."""
    q, k, v = _qkv(2, 1, 40, 16)
    grads = {}
    for mode in ("two_pass", "atomic"):
        seen = _spy_launches(monkeypatch)
        x = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        sim_attention(*x, op="elu1", window=25, dq=mode)[0].pow(2).sum().backward()
        assert ("bwd_dq" in seen) == (mode == "two_pass"), (mode, sorted(seen))
        grads[mode] = [t.grad for t in x]
        monkeypatch.undo()
    for a, b in zip(grads["atomic"], grads["two_pass"]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="dq: one of 'two_pass', 'atomic', got 'fast'"):
        sim_attention(q, k, v, op="sigmoid", dq="fast")


def test_the_kernels_get_scale_and_bias_in_the_accumulation_dtype(monkeypatch):
    """No Python float reaches a kernel launch: a compiled Triton kernel takes a float argument as
    float32, which on the H200 put float64 results off by 1e-6 where 1 / sqrt(d_head) or the bias is
    no float32 number. Scale and bias come as one tensor in the accumulation dtype, with their exact
    values, to all five kernels."""
    seen = _spy_launches(monkeypatch)
    q, k, v = _qkv(2, 1, 20, 24)
    q.requires_grad_()
    sim_attention(q, k, v, op="sigmoid", bias=-3.6)[0].sum().backward()
    lse = softmax_lse(q.detach(), k)
    column_sums(q.detach(), k, lse, op="sigmoid", bias=-3.6)
    assert sorted(seen) == ["bwd_dkdv", "bwd_dq", "col_sums", "fwd", "softmax_lse"]
    for name, args in seen.items():
        assert not any(isinstance(a, float) for a in args), name
        sb = [a for a in args if isinstance(a, torch.Tensor) and a.shape == (2,)]
        assert len(sb) == 1 and sb[0].dtype == torch.float64, name
        assert sb[0][0].item() == 24 ** -0.5, name
        if name != "softmax_lse":
            assert sb[0][1].item() == -3.6, name


def test_sim_impl_is_resolved_for_the_device_and_checked(monkeypatch):
    """sim_impl None: "portable" in the interpreter and for float64 anywhere, "mufu" compiled on CUDA;
    the PTX ones are refused for float64 on CUDA, with the reason; an unknown one is refused by name;
    "portable" asked for is what None gives in the interpreter, to the bit, and reaches the kernels as
    their IMPL constant."""
    q, k, v = _qkv(2, 1, 24, 16, dtype=torch.float32)
    impls = []
    real = triton_attention._sim_settings

    def spy(*args):
        out = real(*args)
        impls.append(out[1]["IMPL"])
        return out

    monkeypatch.setattr(triton_attention, "_sim_settings", spy)
    base = sim_attention(q, k, v, op="sigmoid")[0]
    torch.testing.assert_close(sim_attention(q, k, v, op="sigmoid", sim_impl="portable")[0], base, atol=0, rtol=0)
    expected = 1 if DEVICE == "cuda" else 0
    assert impls == [expected, 0], impls
    assert triton_attention._sim_impl(q.double(), None) == "portable"
    if DEVICE == "cuda":
        with pytest.raises(ValueError, match=r"sim_impl: 'tanh' is PTX on float32 registers: float32, bfloat16 or "
                                             r"float16 inputs, got torch.float64"):
            sim_attention(q.double(), k.double(), v.double(), op="sigmoid", sim_impl="tanh")
    with pytest.raises(ValueError, match="sim_impl: one of 'portable', 'mufu', 'tanh' or None, got 'fast'"):
        sim_attention(q, k, v, op="sigmoid", sim_impl="fast")
    # a GPU Triton compiles for that is no NVIDIA one (ROCm), outside the interpreter: no PTX
    monkeypatch.setattr(triton_attention, "_compiled_for_cuda", lambda x: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="sim_impl: 'mufu' is PTX, for a kernel compiled on an NVIDIA GPU"):
        triton_attention._sim_impl(q, "mufu")
    assert triton_attention._sim_impl(q, None) == "portable"


@pytest.mark.skipif(DEVICE == "cuda", reason="exact only in the interpreter; on CUDA the PTX tests below")
@pytest.mark.parametrize("op,h,hkv,t,d,window,bias,sim_impl",  # (elu+1's "tanh" is its "mufu")
                         [(*CASES[1], "mufu"), (*CASES[1], "tanh"), (*CASES[4], "mufu"), (*CASES[5], "mufu"),
                          (*CASES[5], "tanh"), (*CASES[6], "mufu")])
def test_ptx_formulas_match_float64_in_the_interpreter(op, h, hkv, t, d, window, bias, sim_impl):
    """The "mufu" / "tanh" formulas (constants folded into one multiply-add, log2 units, sigmoid as
    0.5 + 0.5 tanh(x / 2), elu+1 as 2^min(u, 0) + max(u, 0) ln 2, sim' from sim) with exact exp2,
    reciprocal and tanh, as Triton's interpreter runs them: outputs and gradients equal the float64
    reference in both dq modes. What the GPU adds is only the hardware's rounding."""
    q, k, v = _qkv(h, hkv, t, d)
    g_acc, g_sum = _output_grads(h, t, d)
    expected = _value_and_grads(sim_attention_reference, q, k, v, g_acc, g_sum, op=op, bias=bias, window=window)
    for dq in ("two_pass", "atomic"):
        got = _value_and_grads(sim_attention, q, k, v, g_acc, g_sum, op=op, bias=bias, window=window, dq=dq,
                               sim_impl=sim_impl)
        for n, a, b in zip(("acc", "rowsum", "dq", "dk", "dv"), got, expected):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=f"{n} {dq}")


def test_the_model_hands_its_kernel_settings_to_every_layer(monkeypatch):
    """SinkTransformer.set_triton_kernel reaches sim_attention in every layer (the trainer's
    triton_sim_impl / triton_dq), and bad values are refused by name."""
    model = tiny_model("sigmoid").set_attn_backend("triton")
    calls = []
    real = triton_attention.sim_attention

    def spy(*args, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("sim_impl", "dq")})
        return real(*args, **{**kwargs, "sim_impl": None})  # "tanh" is PTX: run the default here

    monkeypatch.setattr(triton_attention, "sim_attention", spy)
    tokens = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with torch.no_grad():
        model.to(DEVICE).set_triton_kernel("tanh", "atomic")(tokens)
    assert calls and calls == [{"sim_impl": "tanh", "dq": "atomic"}] * model.cfg.n_layers
    with pytest.raises(ValueError, match=r"sim_impl: got 'fast', allowed values are \['portable', 'mufu', 'tanh'\]"):
        model.set_triton_kernel("fast")
    with pytest.raises(ValueError, match=r"dq: got 'one', allowed values are \['two_pass', 'atomic'\]"):
        model.set_triton_kernel(None, "one")


def test_launch_options_change_nothing_but_the_launch(monkeypatch):
    """num_warps / num_stages reach every kernel launch (forward and both backward kernels) and leave
    the results as they are; out-of-range values are refused with the argument's name."""
    q, k, v = _qkv(2, 2, 30, 16)
    q.requires_grad_()
    base = sim_attention(q, k, v, op="elu1")[0]
    (g_base,) = torch.autograd.grad(base.sum(), q)
    launches = []
    kern = triton_attention._kernels_module()

    class Spy:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((self.name, kwargs.get("num_warps"), kwargs.get("num_stages")))
                return getattr(kern, self.name)[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(triton_attention, "_kernels", lambda: (Spy("fwd"), Spy("bwd_dkdv"), Spy("bwd_dq")))
    tuned = sim_attention(q, k, v, op="elu1", num_warps=2, num_stages=3)[0]
    (g_tuned,) = torch.autograd.grad(tuned.sum(), q)
    assert launches == [("fwd", 2, 3), ("bwd_dkdv", 2, 3), ("bwd_dq", 2, 3)]
    torch.testing.assert_close(tuned, base, atol=0, rtol=0)
    torch.testing.assert_close(g_tuned, g_base, atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_warps: 1, 2, 4, 8, 16 or None, got 3"):
        sim_attention(q, k, v, op="elu1", num_warps=3)
    with pytest.raises(ValueError, match="num_stages: an integer from 1 to 8 or None, got 0"):
        sim_attention(q, k, v, op="elu1", num_stages=0)


def test_window_and_gqa_really_change_the_result():
    """The cases above would pass with a kernel that ignored the window or mixed kv heads up only if
    the reference did too: check the reference itself reacts to both."""
    q, k, v = _qkv(4, 2, 24, 16)
    full = sim_attention_reference(q, k, v, op="sigmoid")[0]
    assert (sim_attention_reference(q, k, v, op="sigmoid", window=5)[0] - full).abs().max() > 0.1
    swapped = torch.cat([k[:, 1:], k[:, :1]], dim=1)
    assert (sim_attention_reference(q, swapped, v, op="sigmoid")[0] - full).abs().max() > 0.1
    got = sim_attention(q, k, v, op="sigmoid", window=5)[0]
    torch.testing.assert_close(got, sim_attention_reference(q, k, v, op="sigmoid", window=5)[0],
                               atol=1e-10, rtol=1e-10)


def _loss_and_grads(model: SinkTransformer, tokens: torch.Tensor):
    model.zero_grad(set_to_none=True)
    logits, loss = model(tokens, return_type="both")
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


MODEL_CASES = {
    "sigmoid": {"attn_op": "sigmoid"},
    "sigmoid_logn": {"attn_op": "sigmoid", "sigmoid_bias": "-log n"},
    "sigmoid_norm": {"attn_op": "sigmoid_norm"},
    "elu1": {"attn_op": "elu1"},
    "elu1_norm_gqa": {"attn_op": "elu1_norm", "n_kv_heads": 2},
    "kv_sigmoid": {"attn_op": "sigmoid", "attn_bias": "kv"},
    "k_elu1_norm": {"attn_op": "elu1_norm", "attn_bias": "k"},
    "sink_token_sigmoid_norm": {"attn_op": "sigmoid_norm", "attn_bias": "sink_token"},
    "sink_logit_sigmoid_norm": {"attn_op": "sigmoid_norm", "attn_bias": "sink_logit"},
    "window_sigmoid": {"attn_op": "sigmoid", "window": 4},
    "gated_elu1": {"attn_op": "elu1", "attn_gate": True},
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_model_triton_backend_matches_plain_path(name, monkeypatch):
    model = SinkTransformer(tiny_config(**MODEL_CASES[name]), dtype=torch.float64, device=DEVICE)
    tokens = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    expected_logits, expected_grads = _loss_and_grads(model, tokens)

    def boom(*args, **kwargs):
        raise AssertionError("plain path used")

    monkeypatch.setattr(Attention, "_attend_plain", boom)  # the kernel must do every layer
    logits, grads = _loss_and_grads(model.set_attn_backend("triton"), tokens)
    assert expected_logits.abs().max() > 0.1
    torch.testing.assert_close(logits, expected_logits, atol=1e-10, rtol=0)
    assert grads.keys() == expected_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], expected_grads[n], atol=1e-10, rtol=0, msg=n)


def test_custom_operators_pass_opcheck():
    """The kernels are torch.library custom operators (so torch.compile treats them as one opaque
    node): their schemas, fake (shape-only) implementations and autograd registration are checked by
    PyTorch's own opcheck, which also runs them under AOT dispatch against eager."""
    q, k, v = (x.requires_grad_() for x in _qkv(4, 2, 37, 16))  # GQA, T not a multiple of the tile
    g = torch.Generator().manual_seed(1)
    dacc = torch.randn(2, 4, 37, 16, generator=g, dtype=torch.float64).to(DEVICE)
    drowsum = torch.randn(2, 4, 37, generator=g, dtype=torch.float64).to(DEVICE)
    bwd = torch.ops.sinkinterp.sim_attention_bwd.default
    checks = [(torch.ops.sinkinterp.sim_attention_fwd.default, (q, k, v, "sigmoid", -1.0, 0.25, 7, 16, 0, 0, 0, 0, 0)),
              (torch.ops.sinkinterp.sim_attention_fwd.default, (q, k, v, "elu1", 0.0, 0.25, 0, 16, 0, 0, 1, 32, 0)),
              (bwd, (q.detach(), k.detach(), v.detach(), dacc, drowsum, "elu1", 0.0, 0.25, 0, 16, 4, 2, 0, 0, 0)),
              (bwd, (q.detach(), k.detach(), v.detach(), dacc, drowsum, "sigmoid", -1.0, 0.25, 7, 32, 0, 0, 1, 16, 0))]
    for op, args in checks:
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, (op, result)


COMPILE_CHECK = """
import json, sys
import torch
from torch._dynamo.backends.common import aot_autograd
from sinkinterp.models import SinkTransformer
from sinkinterp.models.attention import Attention
from sinkinterp.models.testing import tiny_config

cfg, device = json.loads(sys.argv[1]), sys.argv[2]
model = SinkTransformer(tiny_config(**cfg), dtype=torch.float64, device=device).set_attn_backend("triton")
tokens = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(0)).to(device)

def loss_and_grads(m):
    model.zero_grad(set_to_none=True)
    logits, loss = m(tokens, return_type="both")
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

eager_logits, eager_grads = loss_and_grads(model)
targets = []

def backend(gm, example_inputs):  # records the captured graph, then runs it as AOT eager does
    targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    return aot_autograd(fw_compiler=lambda g, _: g, bw_compiler=lambda g, _: g)(gm, example_inputs)

def plain(*args, **kwargs):
    raise AssertionError("plain path used")

Attention._attend_plain = plain  # every layer must run in the kernel
logits, grads = loss_and_grads(torch.compile(model, fullgraph=True, backend=backend))
print(json.dumps({"kernel_nodes": targets.count("sinkinterp.sim_attention_fwd.default"),
                  "logits": (logits - eager_logits).abs().max().item(),
                  "grads": max((grads[n] - eager_grads[n]).abs().max().item() for n in grads),
                  "grad_norm": sum(g.norm().item() for g in grads.values())}))
"""


@pytest.mark.parametrize("name", ["sigmoid_norm_kv_gqa", "elu1_window"])
def test_compiled_training_step_is_one_graph(name):
    """torch.compile(fullgraph=True) of the model under the Triton backend: no graph break (the
    kernel is a custom operator, not a Python launcher Dynamo would have to trace), the kernel is in
    the graph once per layer, and the logits and every parameter gradient equal the eager ones. In a
    fresh interpreter: the suite's runtime shape checks wrap forward() in code Dynamo cannot trace."""
    cfg = {"sigmoid_norm_kv_gqa": {"attn_op": "sigmoid_norm", "attn_bias": "kv", "n_kv_heads": 2},
           "elu1_window": {"attn_op": "elu1", "window": 6}}[name]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # the GPU machine's wheels
    res = subprocess.run([sys.executable, "-c", COMPILE_CHECK, json.dumps(cfg), DEVICE], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["kernel_nodes"] == tiny_config().n_layers
    assert got["grad_norm"] > 0.1
    assert got["logits"] < 1e-10 and got["grads"] < 1e-10, got


@pytest.mark.parametrize("name", ["window_alibi_sigmoid", "kv_window_prefix", "rotary", "kv"])
def test_where_the_kernel_does_not_apply_the_model_falls_back(name):
    """ALiBi (a positional score bias), a prefix, softmax ops: the same numbers as "auto"."""
    model = tiny_model(name).to(DEVICE)
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with torch.no_grad():
        expected = model(tokens)
        got = model.set_attn_backend("triton")(tokens)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


def _grab(model: SinkTransformer, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """What the hooks ``names`` see in one forward pass (no gradients)."""
    got = {}
    hooks = [(n, lambda x, hook: got.__setitem__(hook.name, x.detach().clone())) for n in names]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens)
    return got


def test_column_hooks_under_the_triton_backend():
    model = SinkTransformer(tiny_config(attn_op="sigmoid_norm", attn_bias="kv"), dtype=torch.float64, device=DEVICE)
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    names = [f"blocks.{l}.attn.hook_{c}" for l in range(model.cfg.n_layers)
             for c in ("pattern_cols", "bias_col", "pattern_colsum")]

    plain = _grab(model, tokens, names)
    fused = _grab(model.set_attn_backend("triton"), tokens, names)
    for n in names:
        torch.testing.assert_close(fused[n], plain[n], atol=1e-10, rtol=0, msg=n)
    # and they are the observed pattern's first columns
    patterns = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern",
                                                 lambda x, hook: patterns.__setitem__(0, x.clone()))]):
        model(tokens)
    torch.testing.assert_close(fused["blocks.1.attn.hook_pattern_cols"], patterns[0][..., :10], atol=1e-10, rtol=0)
    causal = torch.ones(16, 16, dtype=torch.bool, device=DEVICE).tril()
    torch.testing.assert_close(fused["blocks.1.attn.hook_pattern_colsum"], (patterns[0] * causal).sum(-2),
                               atol=1e-10, rtol=0)


COLUMN_CASES = [  # heads, kv heads, T, d_head, window, block
    (2, 2, 40, 16, None, None),
    (4, 2, 37, 24, None, None),  # GQA, T not a multiple of the tile, d_head padded
    (2, 1, 50, 16, 7, None),  # a window shorter than a tile
    (4, 1, 45, 8, 20, 32),  # a window across tiles, larger tiles
    # query tiles that see a key block whole (summed without a mask) before a partial last tile, with
    # 16-wide tiles on CPU (the interpreter: a shorter length that still holds them) and 64-wide ones on CUDA;
    # and 32-wide ones with a window's masked edge after them
    (2, 1, 150 if DEVICE == "cuda" else 88, 16, None, None),
    (2, 2, 104, 16, 72, 32),
]


@pytest.mark.parametrize("h,hkv,t,d,window,block", COLUMN_CASES)
def test_column_kernels_match_float64_reference(h, hkv, t, d, window, block):
    """softmax_lse and column_sums (softmax, sigmoid, elu+1) against materialized float64 maps, in
    float64 (summation order only) and float32 (float32 rounding)."""
    q, k, _ = _qkv(h, hkv, t, d)
    kw = {"window": window}
    lse = softmax_lse_reference(q, k, **kw)
    torch.testing.assert_close(softmax_lse(q, k, block=block, **kw), lse, atol=1e-12, rtol=0)
    torch.testing.assert_close(softmax_lse(q.float(), k.float(), **kw).double(), lse, atol=1e-5, rtol=0)
    cs = column_sums_reference(q, k, lse, **kw)
    torch.testing.assert_close(cs.sum(-1), torch.full_like(cs[..., 0], t))  # every row sums to 1
    assert cs.std() > 0.3  # not uniform: the test would catch a wrong column
    torch.testing.assert_close(column_sums(q, k, lse, block=block, **kw), cs, atol=1e-11, rtol=0)
    torch.testing.assert_close(column_sums(q.float(), k.float(), lse, **kw).double(), cs, atol=1e-4, rtol=1e-5)
    g = torch.Generator().manual_seed(2)
    log_total = torch.rand(q.shape[:3], generator=g, dtype=torch.float64).add(0.5).mul(t).log().to(DEVICE)
    for op, bias in (("sigmoid", 0.0), ("sigmoid", -2.5), ("elu1", 0.0)):
        want = column_sums_reference(q, k, log_total, op=op, bias=bias, **kw)
        got = column_sums(q, k, log_total, op=op, bias=bias, block=block, **kw)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=op)
        if DEVICE == "cpu":  # the PTX formulas with exact functions (the interpreter): the same numbers
            for impl in ("mufu", "tanh") if op == "sigmoid" else ("mufu",):  # elu+1's "tanh" is "mufu"
                got = column_sums(q, k, log_total, op=op, bias=bias, block=block, sim_impl=impl, **kw)
                torch.testing.assert_close(got, want, atol=1e-11, rtol=0, msg=f"{op} {impl}")
    if DEVICE == "cpu":
        torch.testing.assert_close(softmax_lse(q, k, block=block, sim_impl="mufu", **kw), lse, atol=1e-12, rtol=0)
        torch.testing.assert_close(column_sums(q, k, lse, block=block, sim_impl="mufu", **kw), cs, atol=1e-11,
                                   rtol=0)


# every variant the column kernels apply to (softmax family and sigmoid / elu+1; causal or windowed;
# bias slots; GQA), and some they do not (ALiBi, relative, prefix, linear attention: PyTorch path)
COLSUM_VARIANTS = ["rotary", "softmax_scaled_2", "window", "gqa_kv", "mqa_sink_token", "sink_logit_window",
                   "sigmoid_logn", "sigmoid_norm", "k_elu1_norm", "sink_token_sigmoid_norm",
                   "alibi", "kv_window_prefix", "linear_elu"]
KERNEL_APPLIES = {"alibi": False, "kv_window_prefix": False, "linear_elu": False}


@pytest.mark.parametrize("name", COLSUM_VARIANTS)
def test_model_column_sums_from_the_triton_kernels(name, monkeypatch):
    """Backend "triton": hook_pattern_colsum (and softmax's row log-sum-exp behind it and
    hook_pattern_cols) comes from the column kernels where they apply, and equals the column sums of
    the materialized pattern over queries t >= k; elsewhere the PyTorch path gives the same."""
    model = SinkTransformer(tiny_config(**VARIANTS[name]), dtype=torch.float64, device=DEVICE)
    T = 20
    tokens = torch.randint(0, 50, (3, T), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    L = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_{c}" for l in range(L) for c in ("pattern_colsum", "pattern_cols")]
    calls = {"column_sums": 0, "softmax_lse": 0}
    for fn in calls:
        real = getattr(triton_attention, fn)

        def counted(*a, _fn=fn, _real=real, **k):
            calls[_fn] += 1
            return _real(*a, **k)

        monkeypatch.setattr(triton_attention, fn, counted)

    fused = _grab(model, tokens, names)
    assert calls["column_sums"] == 0  # backend "auto": the PyTorch pass
    model.set_attn_backend("triton")
    fused_triton = _grab(model, tokens, names)
    applies = KERNEL_APPLIES.get(name, True)
    assert calls["column_sums"] == (L if applies else 0)
    # softmax rows: the kernel's log-sum-exp, except on CPU without a slot or window (the flash kernel's;
    # on CUDA these float64 models have no flash kernel)
    softmax_rows = model.cfg.attn_op.startswith("softmax") and (model.cfg.has_slot or model.cfg.window
                                                                 or DEVICE == "cuda")
    assert calls["softmax_lse"] == (L if applies and softmax_rows else 0)
    observed = _grab(model, tokens, [f"blocks.{l}.attn.hook_pattern" for l in range(L)])
    at_or_after = torch.ones(T, T, dtype=torch.bool, device=DEVICE).tril()
    for l in range(L):
        pattern = observed[f"blocks.{l}.attn.hook_pattern"]
        want = (pattern * at_or_after).sum(-2)
        n = f"blocks.{l}.attn.hook_pattern_colsum"
        torch.testing.assert_close(fused_triton[n], want, atol=1e-12, rtol=0, msg=n)
        torch.testing.assert_close(fused[n], want, atol=1e-12, rtol=0, msg=n)
        n = f"blocks.{l}.attn.hook_pattern_cols"
        torch.testing.assert_close(fused_triton[n], pattern[..., :10], atol=1e-12, rtol=0, msg=n)
    assert want[..., 1:].abs().max() > 0.05  # non-degenerate


def test_column_kernels_bad_input_is_named():
    q, k, _ = _qkv(2, 2, 8, 16)
    lse = softmax_lse_reference(q, k)
    with pytest.raises(ValueError, match=r"op: got 'linear_elu', allowed values are \['softmax', 'sigmoid', 'elu1'\]"):
        column_sums(q, k, lse, op="linear_elu")
    with pytest.raises(ValueError, match=r"lse: expected a float tensor of shape \[2, 2, 8\]"):
        column_sums(q, k, lse[..., :5])
    with pytest.raises(ValueError, match=r"k: expected \[2, kv_head, 8, 16\]"):
        softmax_lse(q, k[:, :, :5])
    with pytest.raises(ValueError, match="kv heads do not divide"):
        softmax_lse(q, _qkv(2, 3, 8, 16)[1])
    with pytest.raises(ValueError, match="one float dtype"):
        column_sums(q, k.float(), lse)
    with pytest.raises(ValueError, match="window: a positive integer"):
        softmax_lse(q, k, window=0)
    with pytest.raises(ValueError, match=r"block: a power of two >= 16 or None, got 48"):
        column_sums(q, k, lse, block=48)


def test_bad_input_is_named():
    q, k, v = _qkv(2, 2, 8, 16)
    with pytest.raises(ValueError, match="op: got 'softmax'"):
        sim_attention(q, k, v, op="softmax")
    with pytest.raises(ValueError, match="block: a power of two"):
        sim_attention(q, k, v, op="sigmoid", block=24)
    for bad in ((16, 24), (8, 16), (16, True)):
        with pytest.raises(ValueError, match=r"block: a power of two >= 16, a pair of them \(BLOCK_M, BLOCK_N\), or "
                                             rf"None, got {re.escape(repr(bad))}"):
            sim_attention(q, k, v, op="sigmoid", block=bad)
    with pytest.raises(ValueError, match="window: a positive integer"):
        sim_attention(q, k, v, op="sigmoid", window=0)
    with pytest.raises(ValueError, match="kv heads do not divide"):
        sim_attention(q, *_qkv(2, 3, 8, 16)[1:], op="sigmoid")
    with pytest.raises(ValueError, match=r"k, v: expected \[2, kv_head, 8, 16\]"):
        sim_attention(q, k[:, :, :5], v[:, :, :5], op="sigmoid")
    with pytest.raises(ValueError, match="one float dtype"):
        sim_attention(q, k.float(), v, op="sigmoid")


def test_unavailable_without_a_gpu_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_available("cpu")
    q, k, v = (x.cpu() for x in _qkv(2, 2, 8, 16))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sim_attention(q, k, v, op="sigmoid")
    with pytest.raises(RuntimeError, match="softmax_lse: Triton cannot run on cpu"):
        softmax_lse(q, k)
    with pytest.raises(RuntimeError, match="column_sums: Triton cannot run on cpu"):
        column_sums(q, k, softmax_lse_reference(q, k))
    # the model then stays on its plain path instead of failing
    model = tiny_model("sigmoid")
    tokens = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.set_attn_backend("triton")(tokens),
                                   model.set_attn_backend("auto")(tokens), atol=0, rtol=0)


# the largest error, relative to the reference's largest entry, of bf16 inputs per sim_impl: bf16
# rounding (2^-9) dominates "portable" and "mufu"; "tanh" adds the hardware tanh's (1.1e-5 relative)
BF16_TOL = {"portable": 2e-2, "mufu": 2e-2, "tanh": 3e-2}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tiles run compiled on CUDA only")
@pytest.mark.parametrize("sim_impl", ["portable", "mufu", "tanh"])
@pytest.mark.parametrize("op", ["sigmoid", "elu1"])
def test_bf16_on_cuda_is_close_to_float64(op, sim_impl):
    q, k, v = _qkv(4, 2, 300, 64, dtype=torch.bfloat16)
    got = sim_attention(q, k, v, op=op, sim_impl=sim_impl)[0].double()
    ref = sim_attention_reference(q.double(), k.double(), v.double(), op=op)[0]
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    print(f"bf16 {op} {sim_impl}: relative max error {err:.3g}")
    assert err < BF16_TOL[sim_impl]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled on CUDA only")
@pytest.mark.parametrize("sim_impl", ["mufu", "tanh"])
def test_ptx_weights_on_cuda_against_float64(sim_impl):
    """float32 inputs, scores about N(0, 1) plus a bias of -4 (weights from about 1e-4 to 0.5, mostly
    small, as in the trained sigmoid models whose scores are all negative): the weights' sum (rowsum) of
    "mufu" within float32 rounding, "tanh" within the hardware tanh's error (measured elsewhere at up
    to 1.1e-5 relative on tanh: about 6e-6 absolute per weight; bound here with a margin, the mean per
    weight printed for the record)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 2, 256, 64, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 256, 64, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 256, 64, generator=g, dtype=torch.float64)
    bias = -4.0
    ref_acc, ref_sum = sim_attention_reference(q, k, v, op="sigmoid", bias=bias)
    acc, rowsum = sim_attention(*(x.float().cuda() for x in (q, k, v)), op="sigmoid", bias=bias, sim_impl=sim_impl)
    n = torch.arange(1, 257, dtype=torch.float64)  # keys each row sums over
    per_weight = ((rowsum.double().cpu() - ref_sum).abs() / n).max().item()
    print(f"float32 sigmoid {sim_impl}: mean |error| per weight at most {per_weight:.3g}")
    assert per_weight < (1e-6 if sim_impl == "mufu" else 3e-5)
    torch.testing.assert_close(acc.double().cpu(), ref_acc, atol=1e-4 if sim_impl == "mufu" else 2e-2,
                               rtol=1e-4 if sim_impl == "mufu" else 2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tiles run compiled on CUDA only")
@pytest.mark.parametrize("sim_impl", ["portable", "mufu", "tanh"])
@pytest.mark.parametrize("dq", ["two_pass", "atomic"])
def test_bf16_gradients_on_cuda_are_close_to_float64(dq, sim_impl):
    """bf16 backward in both dq modes and every sim_impl (T 300: whole tiles between the masked ones,
    a partial last tile) against the float64 reference's gradients, each relative to its largest entry."""
    q, k, v = _qkv(4, 2, 300, 64, dtype=torch.bfloat16)
    g_acc, g_sum = _output_grads(4, 300, 64)
    g_sum = torch.zeros_like(g_sum)
    got = _value_and_grads(sim_attention, q, k, v, g_acc, g_sum, op="sigmoid", window=200, dq=dq, sim_impl=sim_impl)
    ref = _value_and_grads(sim_attention_reference, q.double(), k.double(), v.double(), g_acc, g_sum, op="sigmoid",
                           window=200)
    for name, a, b in zip(("acc", "rowsum", "dq", "dk", "dv"), got, ref):
        assert ((a - b).abs().max() / b.abs().max()).item() < 5e-2, name
