"""ModelConfig: defaults, validation with clear errors, dict round trip, TransformerLens aliases."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sinkinterp.models import ModelConfig
from sinkinterp.models.config import ATTN_BIASES, ATTN_OPS, FFNS, POS_EMBS
from sinkinterp.models.testing import VARIANTS, tiny_config


def test_defaults_are_resolved():
    cfg = ModelConfig(d_model=64, n_heads=4)
    assert cfg.d_head == 16 and cfg.n_kv_heads == 4 and cfg.d_ff == 256
    assert ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, d_head=8, d_ff=100).d_head == 8


def test_frozen():
    cfg = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layers = 3  # type: ignore[misc]


@pytest.mark.parametrize("overrides", list(VARIANTS.values()), ids=list(VARIANTS))
def test_round_trip_through_json(overrides):
    cfg = tiny_config(**overrides)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(d) == cfg
    assert set(d) == set(ModelConfig.field_names())


def test_every_field_has_a_docstring_line():
    import inspect

    src = inspect.getsource(ModelConfig)
    for name in ModelConfig.field_names():
        line = next(i for i, l in enumerate(src.splitlines()) if l.strip().startswith(f"{name}:"))
        assert src.splitlines()[line + 1].strip().startswith('"""'), name


def test_unknown_keys_are_rejected_with_their_names():
    d = ModelConfig().to_dict()
    d["n_layer"] = 3
    d["flash"] = True
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['flash', 'n_layer'\]"):
        ModelConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig().replace(heads=2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pos_emb="rope"), r"pos_emb: got 'rope', allowed values are \['none', 'sinusoidal'"),
        (dict(norm_placement="sandwich"), r"norm_placement: got 'sandwich', allowed values are \['pre', 'post'\]"),
        (dict(norm_type="batchnorm"), "norm_type"),
        (dict(ffn="swish"), r"ffn: got 'swish', allowed values are \['swiglu'"),
        (dict(attn_op="relu"), r"attn_op: got 'relu', allowed values are \['softmax', 'softmax_scaled'"),
        (dict(attn_bias="q"), r"attn_bias: got 'q', allowed values"),
        (dict(attn_bias_removed="k"), r"attn_bias_removed: got 'k'"),
        (dict(n_layers=0), "n_layers: must be >= 1"),
        (dict(d_model=30, n_heads=4), "d_head: d_model=30 is not divisible by n_heads=4"),
        (dict(n_kv_heads=3), "n_kv_heads: must divide n_heads=4"),
        (dict(d_head=7, pos_emb="rotary"), "rotary needs an even d_head"),
        (dict(softmax_alpha=2.0), "softmax_alpha: only applies to attn_op='softmax_scaled'"),
        (dict(attn_op="softmax_scaled", softmax_alpha=0.0), "softmax_alpha: must be > 0"),
        (dict(attn_op="sigmoid", sigmoid_bias="-log T"), "sigmoid_bias: a number or '-log n'"),
        (dict(sigmoid_bias=-2.0), "sigmoid_bias: only applies to attn_op in"),
        (dict(attn_op="linear_elu", pos_emb="alibi"), "not defined for kernel attention"),
        (dict(attn_bias="sink_logit", attn_op="linear_identity"), "sink_logit' needs a score-based attn_op"),
        (dict(attn_bias_shared=True), "attn_bias_shared: only applies to attn_bias in"),
        (dict(attn_bias="sink_token", attn_bias_shared=True), "attn_bias_shared"),
        (dict(attn_bias_removed="all"), "attn_bias_removed: the model has no attention bias"),
        (dict(attn_bias="k", attn_bias_removed="v"), "'v' needs a value bias"),
        (dict(window=0), "window: must be >= 1"),
        (dict(prefix_len=128), "prefix_len: must be < n_ctx=128"),
        (dict(prefix_len=-1), "prefix_len: must be >= 0"),
        (dict(rotary_base=500000.0, pos_emb="alibi"), "rotary_base: only applies to pos_emb='rotary'"),
        (dict(relative_num_buckets=16), "only apply to pos_emb='relative'"),
        (dict(sinusoidal_scale=0.1), "sinusoidal_scale: only applies to pos_emb='sinusoidal'"),
        (dict(pos_emb="sinusoidal", sinusoidal_scale=0.0), "sinusoidal_scale: must be > 0"),
        (dict(pos_emb="relative", relative_num_buckets=32, relative_max_distance=10), "relative_max_distance"),
        (dict(init_std=-0.1), "init_std: must be > 0"),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,field,message",
    [
        (dict(n_layers=2.0), "n_layers", "n_layers: expected an int"),
        (dict(n_layers=True), "n_layers", "n_layers: expected an int"),
        (dict(tie_embeddings=1), "tie_embeddings", "tie_embeddings: expected True or False"),
        (dict(attn_gate="yes"), "attn_gate", "attn_gate: expected True or False"),
        (dict(attn_op="sigmoid", sigmoid_bias=float("nan")), "sigmoid_bias", "sigmoid_bias: a finite number"),
        (dict(norm_eps="1e-5"), "norm_eps", "norm_eps: expected a finite number"),
    ],
)
def test_bad_types_are_rejected(kwargs, field, message):
    # under the test suite's runtime type checker (jaxtyping + beartype) the dataclass annotations
    # may reject the value first; either way the error names the field
    with pytest.raises(TypeError, match=field):
        ModelConfig(**kwargs)
    # __post_init__'s own message, without the runtime checker in front
    cfg = ModelConfig()
    for k, v in kwargs.items():
        object.__setattr__(cfg, k, v)
    with pytest.raises(TypeError, match=message):
        cfg.__post_init__()


def test_every_choice_is_accepted():
    for p in POS_EMBS:
        over = dict(pos_emb=p)
        assert ModelConfig(**over).pos_emb == p
    for f in FFNS:
        assert ModelConfig(ffn=f).gated_mlp == (f in ("swiglu", "geglu", "reglu"))
    for op in ATTN_OPS:
        assert ModelConfig(attn_op=op).attn_op == op
    for b in ATTN_BIASES:
        cfg = ModelConfig(attn_bias=b)
        assert cfg.has_slot == (b in ("kv", "k", "sink_token", "sink_logit"))
        assert cfg.has_v_bias == (b == "v")
    assert ModelConfig(attn_op="sigmoid", sigmoid_bias="-log n").sigmoid_bias == "-log n"


def test_transformer_lens_aliases():
    cfg = ModelConfig(n_heads=8, d_model=64, n_kv_heads=2, pos_emb="learned", norm_type="layernorm", ffn="geglu")
    assert cfg.n_key_value_heads == 2
    assert cfg.positional_embedding_type == "standard"
    assert ModelConfig().positional_embedding_type == "rotary"
    assert cfg.d_mlp == cfg.d_ff == 256
    assert cfg.normalization_type == "LN" and ModelConfig().normalization_type == "RMS"
    assert cfg.act_fn == "gelu" and cfg.attn_only is False


def test_removed_bias_state():
    cfg = ModelConfig(attn_bias="kv", attn_bias_removed="all")
    assert not cfg.has_slot
    assert ModelConfig(attn_bias="kv", attn_bias_removed="v").has_slot
    assert not ModelConfig(attn_bias="v", attn_bias_removed="all").has_v_bias
