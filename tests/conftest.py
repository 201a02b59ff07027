"""Shared test fixtures: no network, slow tests opt-in, tiny models built from config."""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import importlib.util
import os
import pkgutil
import socket
from pathlib import Path

import pytest
import torch

# Triton kernels (sinkinterp.models.triton_attention) run in Triton's interpreter on a machine
# without a GPU. triton.jit reads this when triton is first imported (torch does not import it),
# so it is set here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _module_level_imports(package: Path) -> set[str]:
    """The modules outside sinkinterp that its modules import as they load: ``import`` statements at module
    level, also inside ``if`` / ``try`` / ``with`` blocks, not in functions or classes."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        todo = list(ast.parse(path.read_text(), str(path)).body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                todo += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
                todo += [n for h in getattr(node, "handlers", []) for n in h.body]
    return {n for n in names if n.split(".")[0] not in ("sinkinterp", "__future__")}


# jaxtyping's import hook (pyproject's --jaxtyping-packages) points importlib's bytecode cache at a name of its own
# while an instrumented sinkinterp module loads, so every module first imported from inside one (transformer_lens
# and everything it imports, transformers among them: thousands of modules for sinkinterp.tl_adapter) is compiled
# from source instead of read from its .pyc file: 5-10 s more per pytest process on this 2-core machine
# (docs/performance.md, "Where the suite's time goes"). Imported here first, outside the hook, they load from their
# .pyc files (checked by tests/test_shape_checks.py); so do beartype's submodules, which it imports as it first
# checks each kind of annotation.
def _import_first(names) -> None:
    for name in names:
        with contextlib.suppress(Exception):  # an optional dependency: sinkinterp's own import handles its absence
            importlib.import_module(name)


_import_first(sorted(_module_level_imports(Path(__file__).resolve().parents[1] / "sinkinterp")))
try:
    import beartype

    _import_first(info.name for info in pkgutil.walk_packages(beartype.__path__, "beartype."))
except ImportError:
    pass


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (real pretrained models)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        return _real_connect(self, address)
    raise RuntimeError(f"test tried to open a network connection to {address!r}: sinkinterp must work offline")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)


@pytest.fixture(autouse=True)
def _shape_checks(request):
    """jaxtyping checks the shapes and dtypes of every annotated sinkinterp function at each call (pyproject's
    ``--jaxtyping-packages``), at some tens of microseconds a call. A test marked ``shape_checks_off`` runs
    without them: one that runs whole analyses or studies, 10^4-10^5 calls of functions whose own tests run
    checked (the checks cost about a third of such a test's time)."""
    if request.node.get_closest_marker("shape_checks_off") is None:
        yield
        return
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test that builds a HookedTransformer is skipped, with the reason, on TransformerLens 4.x
    (which removed it); everything else it checks runs there as on 3.9."""
    from sinkinterp import tl_adapter

    try:
        return (yield)
    except tl_adapter.HookedTransformerUnavailable as err:
        pytest.skip(str(err))


def word_tokenizer(vocab_size: int, bos: bool = True):
    """A tiny Hugging Face tokenizer over words t0..t{V-1} (t1 = BOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kw = {"bos_token": "t1"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", eos_token="t2", **kw)


def tiny_llama(seed: int = 0, n_kv_heads: int = 2, vocab: int = 61, scale: float = 15.0):
    """A LLaMA-style HF model from config with sharpened attention (query/key weights scaled) so
    alpha values spread over (0, 1) instead of sitting at the uniform value."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=n_kv_heads, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(scale)
            layer.self_attn.k_proj.weight.mul_(scale)
    return model


def tiny_gpt2(seed: int = 0, vocab: int = 61, scale: float = 15.0):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, : 2 * 32].mul_(scale)  # q and k columns
    return model


def hooked_model(kind: str):
    """One tiny model of each kind the measurement speaks to: a sinkinterp model ("sinkinterp"), a
    HookedTransformer ("ht", rotary, RMSNorm) or a TransformerBridge over a Hugging Face LLaMA ("bridge")."""
    from sinkinterp import tl_adapter
    from sinkinterp.models.testing import tiny_model

    if kind == "ht":
        return tl_adapter.hooked_transformer_from_config(
            n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=50, act_fn="gelu",
            positional_embedding_type="rotary", normalization_type="RMS", seed=0)
    if kind == "bridge":
        return tl_adapter.boot_bridge(tiny_llama(), word_tokenizer(61), "tiny")
    if kind == "sinkinterp":
        return tiny_model("rotary").eval()
    raise ValueError(f"kind: got {kind!r}; allowed: 'sinkinterp', 'ht', 'bridge'")


def hf_attentions(model, tokens):
    """Reference attention probabilities [N, L, H, T, T] from HF eager attention (on a copy: the
    bridge later rewires the model it wraps)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        out = ref(tokens, output_attentions=True, output_hidden_states=True)
    return torch.stack(out.attentions, 1).double(), [h.double() for h in out.hidden_states]


def load_script(relpath: str):
    """A script of the repository that is not a package module (scripts/, analyses/), imported by path."""
    path = Path(__file__).resolve().parent.parent / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
