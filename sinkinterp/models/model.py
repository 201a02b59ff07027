"""``SinkTransformer``: one decoder-only transformer whose variants are ``ModelConfig`` fields.

Built on TransformerLens' ``HookedRootModule`` / ``HookPoint`` (through ``sinkinterp.tl_adapter``)
with TransformerLens module, parameter and hook names, so ``run_with_cache``, ``hooks(...)``,
``transformer_lens.patching`` and sinkinterp's measurement work unchanged::

    embed.W_E, pos_embed.W_pos (learned) / pos_embed (sinusoidal, no parameters), hook_embed, hook_pos_embed
    blocks.{l}.hook_resid_pre / hook_attn_out / hook_resid_mid / hook_mlp_out / hook_resid_post
    blocks.{l}.ln1 / ln2 (.w, .b, hook_scale, hook_normalized)
    blocks.{l}.attn.W_Q / W_K / W_V / W_O, hook_q / hook_k / hook_v / hook_rot_q / hook_rot_k,
                   hook_attn_scores, hook_pattern, hook_bias_pattern (bias-slot models), hook_gate, hook_z
    blocks.{l}.mlp.W_in / W_gate / W_out, hook_pre / hook_pre_linear (gated) / hook_post
    ln_final (an Identity for post-norm models), unembed.W_U, W_sink (sink-token models)

The model never adds a BOS token; ``forward(tokens)`` returns logits over the T given tokens.
See ``attention.py`` for the attention variants and the fast / observed paths.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from sinkinterp.tl_adapter import HookedRootModule, HookPoint

from .attention import ATTN_BACKENDS, Attention, AttnContext, build_context
from .config import ModelConfig

__all__ = ["SinkTransformer", "remove_attention_bias", "next_token_loss"]


def _identity_hook(x: Tensor) -> Tensor:
    return x


# =========================================================================================
# embeddings
# =========================================================================================
class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]


class LearnedPosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, n_pos: int, dtype: torch.dtype, device: torch.device) -> Float[Tensor, "pos d_model"]:
        return self.W_pos[:n_pos]


class SinusoidalPosEmbed(nn.Module):
    """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...), times
    ``cfg.sinusoidal_scale``. No parameters; computed on the fly (at least float32) so a bf16 model
    gets accurate positions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.d_model = cfg.d_model
        self.scale = cfg.sinusoidal_scale

    def forward(self, n_pos: int, dtype: torch.dtype, device: torch.device) -> Float[Tensor, "pos d_model"]:
        pdtype = torch.promote_types(dtype, torch.float32)
        pos = torch.arange(n_pos, device=device, dtype=pdtype)[:, None]
        i = torch.arange(0, self.d_model, 2, device=device, dtype=pdtype)
        angles = pos / (10000.0 ** (i / self.d_model))
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(n_pos, -1)[:, : self.d_model]
        return (pe * self.scale).to(dtype)


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return x @ self.W_U


class TiedUnembed(nn.Module):
    """Unembedding with the transposed embedding (``tie_embeddings=True``); no own parameter."""

    def __init__(self, embed: Embed):
        super().__init__()
        self._embed = [embed]  # a list: not registered twice as a submodule

    @property
    def W_U(self) -> Tensor:
        return self._embed[0].W_E.T

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return x @ self.W_U


# =========================================================================================
# norms and feed-forward
# =========================================================================================
class RMSNorm(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def _run(self, x: Tensor, hook_scale, hook_normalized) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        scale = hook_scale((xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return hook_normalized(xf / scale).to(x.dtype) * self.w

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self._run(x, self.hook_scale, self.hook_normalized)

    def normalize(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """The same computation without the hook points (for the sink token's stream)."""
        return self._run(x, _identity_hook, _identity_hook)


class LayerNorm(RMSNorm):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.b = nn.Parameter(torch.zeros(cfg.d_model))

    def _run(self, x: Tensor, hook_scale, hook_normalized) -> Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        xf = xf - xf.mean(-1, keepdim=True)
        scale = hook_scale((xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return hook_normalized(xf / scale).to(x.dtype) * self.w + self.b


NORMS = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}
ACTIVATIONS = {
    "swiglu": F.silu,
    "geglu": F.gelu,
    "reglu": F.relu,
    "gelu": F.gelu,
    "relu": F.relu,
}


class MLP(nn.Module):
    """Gated (act(x W_gate) * (x W_in)) W_out for swiglu / geglu / reglu, act(x W_in) W_out otherwise.
    Hook names follow TransformerLens' (Gated)MLP: hook_pre = the activation's input, hook_pre_linear
    = the linear branch, hook_post = the input of W_out."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.ffn]
        self.gated = cfg.gated_mlp
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_ff))
        if self.gated:
            self.W_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.d_ff))
            self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.W_out = nn.Parameter(torch.empty(cfg.d_ff, cfg.d_model))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def _run(self, x: Tensor, hook_pre, hook_pre_linear, hook_post) -> Tensor:
        if self.gated:
            post = self.act(hook_pre(x @ self.W_gate)) * hook_pre_linear(x @ self.W_in)
        else:
            post = self.act(hook_pre(x @ self.W_in))
        return hook_post(post) @ self.W_out

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        hpl = self.hook_pre_linear if self.gated else _identity_hook
        return self._run(x, self.hook_pre, hpl, self.hook_post)

    def compute(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """The same computation without the hook points (for the sink token's stream)."""
        return self._run(x, _identity_hook, _identity_hook, _identity_hook)


# =========================================================================================
# block
# =========================================================================================
class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.ln1 = NORMS[cfg.norm_type](cfg)
        self.attn = Attention(cfg)
        self.ln2 = NORMS[cfg.norm_type](cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        ctx: AttnContext,
        sink: Float[Tensor, "1 1 d_model"] | None = None,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], Float[Tensor, "1 1 d_model"] | None]:
        """The residual stream of the real tokens, and of the sink token when there is one (the
        sink token runs through the same weights, without hook points). ``past``: cached keys and
        values of earlier positions (see ``Attention.forward``)."""
        x = self.hook_resid_pre(x)
        if self.pre_norm:  # x + attn(ln1(x)), then + mlp(ln2(.)); the paper's default
            s_in = self.ln1.normalize(sink) if sink is not None else None
            attn_out, sink_attn = self.attn(self.ln1(x), ctx, s_in, past)
            mid = self.hook_resid_mid(x + self.hook_attn_out(attn_out))
            post = self.hook_resid_post(mid + self.hook_mlp_out(self.mlp(self.ln2(mid))))
            if sink is not None:
                sink = sink + sink_attn
                sink = sink + self.mlp.compute(self.ln2.normalize(sink))
        else:  # post-norm: ln1(x + attn(x)), then ln2(. + mlp(.))
            attn_out, sink_attn = self.attn(x, ctx, sink, past)
            mid = self.hook_resid_mid(self.ln1(x + self.hook_attn_out(attn_out)))
            post = self.hook_resid_post(self.ln2(mid + self.hook_mlp_out(self.mlp(mid))))
            if sink is not None:
                sink = self.ln1.normalize(sink + sink_attn)
                sink = self.ln2.normalize(sink + self.mlp.compute(sink))
        return post, sink

    def keys_values(self, x: Float[Tensor, "batch pos d_model"], cos_sin: tuple[Tensor, Tensor] | None
                    ) -> tuple[Tensor, Tensor]:
        """The keys (after rotary) and values this block's attention computes from block input ``x``
        (``cos_sin``: those positions' rotary tables), without hook points: what ``past`` holds."""
        return self.attn.keys_values(self.ln1.normalize(x) if self.pre_norm else x, cos_sin)

    def hooked(self) -> bool:
        """Whether any hook point of the block has a hook attached."""
        return any(m.fwd_hooks or m.bwd_hooks for m in self.modules() if isinstance(m, HookPoint))


# =========================================================================================
# loss
# =========================================================================================
def next_token_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    prefix_len: int = 0,
    loss_mask: Tensor | None = None,
) -> Float[Tensor, ""]:
    """Mean next-token cross entropy (computed in float32, or float64 for a float64 model).

    Target j (token j predicted at position j - 1) counts when j >= max(prefix_len, 1) and
    ``loss_mask[:, j]`` is non-zero; ``loss_mask`` is [batch, pos] over target positions.
    """
    nll = F.cross_entropy(
        logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, logits.shape[-1]),
        tokens[:, 1:].reshape(-1),
        reduction="none",
    ).view(tokens.shape[0], -1)
    weight = torch.ones_like(nll)
    if prefix_len > 1:
        weight[:, : prefix_len - 1] = 0.0
    if loss_mask is not None:
        weight = weight * loss_mask[:, 1:].to(weight.dtype)
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)


# =========================================================================================
# model
# =========================================================================================
class SinkTransformer(HookedRootModule):
    """A decoder-only transformer built from a ``ModelConfig``; see the module docstring.

    ``attn_backend`` (attribute, or ``set_attn_backend``): "auto" (default: SDPA for softmax ops,
    a plain masked path for the others), "reference" (always the materialized, hooked path),
    "flex" (FlexAttention for sigmoid / elu+1 / linear_elu; opt-in) or "triton" (the fused Triton
    kernel of ``triton_attention`` for sigmoid / elu+1, normalized or not, causal or windowed, without
    ALiBi / relative bias or prefix, on CUDA or in Triton's interpreter; as "auto" elsewhere; opt-in;
    it also computes the read-only column statistics below in Triton kernels, for softmax too).
    Whatever the backend, a hook on ``hook_attn_scores`` / ``hook_pattern`` / ``hook_bias_pattern``
    switches that layer to the materialized path for the call. The read-only ``hook_pattern_cols`` (first ``pattern_cols`` key
    columns), ``hook_bias_col`` and ``hook_pattern_colsum`` do not: they come from each row's log-sum-exp
    (attention.py).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg: expected a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.pos_emb in ("learned", "sinusoidal"):
            self.pos_embed = (LearnedPosEmbed if cfg.pos_emb == "learned" else SinusoidalPosEmbed)(cfg)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.attn_bias == "sink_token":
            self.W_sink = nn.Parameter(torch.empty(cfg.d_model))  # the learnable sink token
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = NORMS[cfg.norm_type](cfg) if cfg.norm_placement == "pre" else nn.Identity()
        self.unembed = TiedUnembed(self.embed) if cfg.tie_embeddings else Unembed(cfg)
        self._logit_positions: list[int] | None = None  # see logits_at
        self.init_weights()
        self.setup()
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    # ---------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) for matrices, init_std / sqrt(2 n_layers) for the output projections
        (W_O, W_out), ones / zeros for norms, ``sink_logit_init`` (0) for sink logits; drawn from a private
        generator seeded with ``cfg.seed`` in parameter-name order, so a config always gives the same model."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        for name, p in sorted(self.named_parameters(), key=lambda kv: kv[0]):
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "w":
                p.fill_(1.0)
            elif leaf == "b":
                p.zero_()
            elif leaf == "sink_logit":
                p.fill_(float(cfg.sink_logit_init))
            else:
                std = out_std if leaf in ("W_O", "W_out") else cfg.init_std
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)

    def set_attn_backend(self, backend: str) -> SinkTransformer:
        """Choose the attention backend of every layer: "auto" | "reference" | "flex" | "triton"."""
        if backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend: got {backend!r}, allowed values are {list(ATTN_BACKENDS)}")
        for block in self.blocks:
            block.attn.backend = backend
        return self

    def set_triton_kernel(self, sim_impl: str | None = None, dq: str = "two_pass") -> SinkTransformer:
        """How the fused kernel of ``attn_backend="triton"`` runs in every layer: ``sim_impl`` and ``dq`` as
        ``triton_attention.sim_attention`` takes them (None: the kernel's default for the device)."""
        from .triton_attention import DQ_MODES, SIM_IMPLS

        if sim_impl is not None and sim_impl not in SIM_IMPLS:
            raise ValueError(f"sim_impl: got {sim_impl!r}, allowed values are {list(SIM_IMPLS)} or None")
        if dq not in DQ_MODES:
            raise ValueError(f"dq: got {dq!r}, allowed values are {list(DQ_MODES)}")
        for block in self.blocks:
            block.attn.triton_kernel = {"sim_impl": sim_impl, "dq": dq}
        return self

    @property
    def attn_backend(self) -> str:
        return self.blocks[0].attn.backend

    @property
    def pattern_cols(self) -> int:
        """Key columns carried by the read-only ``blocks.{l}.attn.hook_pattern_cols`` (default 10)."""
        return self.blocks[0].attn.n_cols

    @pattern_cols.setter
    def pattern_cols(self, n: object) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"pattern_cols: a positive integer number of key columns, got {n!r}")
        for block in self.blocks:
            block.attn.n_cols = n

    @attn_backend.setter
    def attn_backend(self, backend: str) -> None:
        self.set_attn_backend(backend)

    # ---------------------------------------------------------------------------------
    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        return_type: str | None = "logits",
        loss_mask: Tensor | None = None,
        *,
        start_at_layer: int | None = None,
        resid: Float[Tensor, "batch resid_pos d_model"] | None = None,
        start_at_pos: int | None = None,
        past_kv: Sequence[tuple[Tensor, Tensor]] | None = None,
    ):
        """Logits [batch, pos, d_vocab] for token ids [batch, pos] (no BOS is added).

        ``return_type``: "logits", "loss" (mean next-token cross entropy; a prefix LM counts only
        targets after the prefix), "both" (a (logits, loss) tuple) or None. ``loss_mask``: optional
        [batch, pos] weights of the target tokens.

        ``start_at_layer`` (with ``resid``, the residual stream entering that block, as
        ``blocks.{start_at_layer}.hook_resid_pre`` sees it): skip the embedding and the blocks
        before it, as TransformerLens' ``start_at_layer`` does (activation patching starts each
        pass at the patched layer this way). ``tokens`` still give the shape and the loss targets.
        Sink-token models only from layer 0 (the sink token enters block 0 as ``W_sink``; at a later
        layer its state would also have to be passed).

        ``start_at_pos`` p (with ``start_at_layer``; see ``can_start_at_pos``): compute only positions
        p.. . ``resid`` is then the residual stream of those positions [batch, pos - p, d_model] and
        ``past_kv`` holds, for each block from ``start_at_layer`` on, the (k, v) [batch, p, kv_head,
        d_head] of positions 0..p-1 as the attention uses them (``hook_rot_k`` for rotary models, else
        ``hook_k``; ``hook_v``). Hooks see positions p.. only (attention patterns: those query rows,
        every key). Returns the logits of positions p.. only; return_type "logits" only.
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(
                f"return_type: got {return_type!r}, allowed values are ['logits', 'loss', 'both', None]"
            )
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
            raise TypeError("tokens: expected an integer tensor [batch, pos] of token ids")
        batch, n_pos = tokens.shape
        if n_pos > self.cfg.n_ctx:
            raise ValueError(f"tokens: {n_pos} positions exceed n_ctx={self.cfg.n_ctx}")
        if loss_mask is not None and tuple(loss_mask.shape) != (batch, n_pos):
            raise ValueError(f"loss_mask: expected shape {(batch, n_pos)}, got {tuple(loss_mask.shape)}")
        if return_type in ("loss", "both") and n_pos < 2:
            raise ValueError("tokens: a loss needs at least 2 positions")

        first, pos0 = 0, 0
        if start_at_pos is not None or past_kv is not None:
            pos0 = self._check_start_pos(start_at_pos, past_kv, start_at_layer, batch, n_pos, return_type)
        if start_at_layer is not None or resid is not None:
            first = self._check_start(start_at_layer, resid, batch, n_pos - pos0)
            x = resid
        else:
            x = self.hook_embed(self.embed(tokens))
            if hasattr(self, "pos_embed"):
                pe = self.pos_embed(n_pos, x.dtype, x.device)
                x = x + self.hook_pos_embed(pe.unsqueeze(0).expand(batch, n_pos, -1))
        full_ctx = build_context(self.cfg, n_pos, x.device, x.dtype)
        ctx = full_ctx.from_position(pos0)
        sink = None
        if self.cfg.attn_bias == "sink_token" and self.cfg.has_slot:
            sink = self.W_sink.view(1, 1, -1)
        keep = self._logit_positions
        if keep is not None and return_type != "logits":
            raise ValueError("logits_at: only return_type='logits' (the logits of the chosen positions)")
        blocks = list(self.blocks[first:])
        cut = self._last_block_from(keep, pos0, n_pos) if blocks else 0
        for i, block in enumerate(blocks):
            past = None if past_kv is None else past_kv[i]
            if cut and i == len(blocks) - 1:  # the last block: queries cut.. only; earlier keys and values unhooked
                rot = full_ctx.rotary
                k, v = block.keys_values(x[:, :cut], None if rot is None else (rot[0][pos0:pos0 + cut], rot[1][pos0:pos0 + cut]))
                if past is not None:
                    k, v = torch.cat([past[0].to(k.dtype), k], dim=1), torch.cat([past[1].to(v.dtype), v], dim=1)
                x, sink = block(x[:, cut:], full_ctx.from_position(pos0 + cut), sink, (k, v))
            else:
                x, sink = block(x, ctx, sink, past)
        x = self.ln_final(x)
        if keep is not None:  # after the final norm, so that its hooks see every position computed
            x = x[:, [p - cut for p in keep]]
        logits = self.unembed(x)

        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = next_token_loss(logits, tokens, self.cfg.prefix_len, loss_mask)
        return loss if return_type == "loss" else (logits, loss)

    @contextlib.contextmanager
    def logits_at(self, positions: Sequence[int] | None) -> Iterator[None]:
        """While inside, a forward pass returns the logits of ``positions`` only (indices into the
        positions it computes: all, or start_at_pos.. when given), in that order, [batch,
        len(positions), d_vocab]; None: every position. The last block then computes only the
        queries from the first of them on (its keys and values of earlier positions come from its
        projections alone), where nothing hooks that block or the final norm and a pass could start
        there (``can_start_at_pos``); otherwise it runs whole and the logits are cut after the
        final norm. ``tl_adapter.unembed_positions`` uses this for sinkinterp models (patching
        passes whose metric reads a few positions)."""
        if positions is not None:
            positions = [int(p) for p in positions]
            if not positions or min(positions) < 0:
                raise ValueError(f"logits_at: expected a non-empty list of non-negative positions, got {positions!r}")
        old, self._logit_positions = self._logit_positions, positions
        try:
            yield
        finally:
            self._logit_positions = old

    def _last_block_from(self, keep: list[int] | None, pos0: int, n_pos: int) -> int:
        """The first position (relative to the pass) the last block must compute for ``keep``, or 0
        where it must compute them all."""
        if keep is None:
            return 0
        if max(keep) >= n_pos - pos0:
            raise ValueError(f"logits_at: position {max(keep)} is outside the {n_pos - pos0} positions this pass computes")
        cut = min(keep)
        if cut == 0 or self.attn_backend == "flex" or (self.cfg.prefix_len > 1 and pos0 + cut < self.cfg.prefix_len):
            return 0
        norm_hooked = any(m.fwd_hooks or m.bwd_hooks for m in self.ln_final.modules() if isinstance(m, HookPoint))
        return 0 if norm_hooked or self.blocks[-1].hooked() else cut

    @torch.no_grad()
    def slot_keys(self) -> dict[int, Tensor]:
        """The key every query scores in each layer's bias slot, {layer: [kv_head, d_head]}: the learned
        k* of a kv / k bias, or the learnable sink token's key (computed through the model: the sink
        token sees only itself, so its keys do not depend on the input; at position -1, rotated there
        by RoPE). Empty for other models and for a sink token under a kernel feature map (linear
        attention scores phi(q).phi(k), not q.k)."""
        cfg = self.cfg
        if cfg.attn_bias in ("kv", "k"):
            learned = {i: block.attn.slot_key() for i, block in enumerate(self.blocks)}
            return {i: key for i, key in learned.items() if key is not None}
        if cfg.attn_bias != "sink_token" or not cfg.has_slot or self.blocks[0].attn.op.feature is not None:
            return {}
        keys: dict[int, Tensor] = {}
        for i, block in enumerate(self.blocks):  # read each layer's slot as the forward pass builds it
            def capture(ctx: AttnContext, sink: Tensor | None, i: int = i, build: Any = block.attn._slot) -> Any:
                slot, sink_z = build(ctx, sink)
                keys[i] = slot.key.detach().reshape(cfg.n_kv_heads, cfg.d_head)
                return slot, sink_z
            block.attn.__dict__["_slot"] = capture
        try:
            self(torch.zeros(1, 1, dtype=torch.long, device=self.W_sink.device))
        finally:
            for block in self.blocks:
                del block.attn.__dict__["_slot"]
        return keys

    @property
    def can_start_at_layer(self) -> bool:
        """Whether ``forward(..., start_at_layer=, resid=)`` applies at every layer (all but sink-token
        models, which start at layer 0 only)."""
        return not (self.cfg.attn_bias == "sink_token" and self.cfg.has_slot)

    def can_start_at_pos(self, pos: int, layer: int | None = None) -> bool:
        """Whether ``forward(..., start_at_pos=pos)`` applies (from ``start_at_layer=layer``; None: from
        any layer): no position before ``pos`` may see one after it (not for a prefix longer than
        ``pos``), not the FlexAttention backend, and a sink-token model only from layer 0."""
        return ((self.can_start_at_layer or layer == 0) and self.attn_backend != "flex"
                and (self.cfg.prefix_len <= 1 or pos >= self.cfg.prefix_len))

    def _check_start_pos(self, pos: int | None, past_kv: Any, start_at_layer: int | None, batch: int,
                         n_pos: int, return_type: str | None) -> int:
        if pos is None or past_kv is None or start_at_layer is None:
            raise ValueError("start_at_pos: give start_at_pos, past_kv, start_at_layer and resid together")
        if isinstance(pos, bool) or not isinstance(pos, int) or not 1 <= pos < n_pos:
            raise ValueError(f"start_at_pos: expected an integer in 1..{n_pos - 1}, got {pos!r}")
        if not self.can_start_at_pos(pos, start_at_layer):
            raise ValueError(f"start_at_pos: not supported here (prefix_len={self.cfg.prefix_len}, attn_bias="
                             f"{self.cfg.attn_bias!r}, backend {self.attn_backend!r}); see can_start_at_pos")
        if return_type != "logits":
            raise ValueError("start_at_pos: only return_type='logits' (the logits of positions start_at_pos..)")
        n_blocks = self.cfg.n_layers - (start_at_layer if isinstance(start_at_layer, int) else 0)
        want = (batch, pos, self.cfg.n_kv_heads, self.cfg.d_head)
        if len(past_kv) != n_blocks or any(len(kv) != 2 for kv in past_kv) or any(
                not isinstance(t, Tensor) or tuple(t.shape) != want for kv in past_kv for t in kv):
            raise ValueError(f"past_kv: expected {n_blocks} (k, v) pairs (one per block from start_at_layer on), "
                             f"each of shape {want}")
        return pos

    def _check_start(self, start_at_layer: int | None, resid: Tensor | None, batch: int, n_pos: int) -> int:
        if start_at_layer is None or resid is None:
            raise ValueError("start_at_layer and resid: give both (the residual stream entering that block) or neither")
        if isinstance(start_at_layer, bool) or not isinstance(start_at_layer, int) \
                or not 0 <= start_at_layer < self.cfg.n_layers:
            raise ValueError(f"start_at_layer: expected an integer in 0..{self.cfg.n_layers - 1}, got {start_at_layer!r}")
        if self.cfg.attn_bias == "sink_token" and self.cfg.has_slot and start_at_layer > 0:
            raise ValueError("start_at_layer: sink-token models start at layer 0 only (the sink token's own "
                             "residual stream at a later layer would also have to be passed)")
        want = (batch, n_pos, self.cfg.d_model)
        if not isinstance(resid, Tensor) or tuple(resid.shape) != want or not resid.is_floating_point():
            raise ValueError(f"resid: expected a float tensor of shape {want}, got "
                             f"{tuple(resid.shape) if isinstance(resid, Tensor) else type(resid).__name__}")
        return start_at_layer

    # ---------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.W_E.numel()
            if hasattr(self, "pos_embed") and hasattr(self.pos_embed, "W_pos"):
                n -= self.pos_embed.W_pos.numel()
        return n


# =========================================================================================
# removing a learned bias after training
# =========================================================================================
_REMOVABLE = {
    # which -> {attn_bias: resulting attn_bias_removed}
    "kv": {"kv": "all", "k": "all", "v": "all"},
    "k": {"kv": "all", "k": "all"},
    "v": {"kv": "v", "v": "all", "sink_token": "v"},
    "sink": {"sink_token": "all", "sink_logit": "all"},
}


def remove_attention_bias(model: SinkTransformer, which: str = "kv") -> SinkTransformer:
    """A copy of a trained model with its learned attention bias removed (the input is unchanged).

    * ``"kv"`` (kv / k / v models) and ``"k"`` (kv / k): drop the k*/v* slot (or the v* of a v-only
      model): rows of ``hook_pattern`` sum to 1 again and ``hook_bias_pattern`` no longer exists;
    * ``"v"``: treat v* as zero. kv model: the slot keeps its key and its attention mass but adds
      nothing to the output (the paper's "value bias contributes nothing" test); v model: the
      added v* is gone; sink token: the slot's value is zeroed;
    * ``"sink"`` (sink_token / sink_logit): drop the sink slot.

    The result's config records it in ``attn_bias_removed`` ("v" or "all"); parameters are kept,
    so a checkpoint of the result still loads into the trained architecture.
    """
    if not isinstance(model, SinkTransformer):
        raise TypeError(f"model: expected a SinkTransformer, got {type(model).__name__}")
    if which not in _REMOVABLE:
        raise ValueError(f"which: got {which!r}, allowed values are {list(_REMOVABLE)}")
    cfg = model.cfg
    allowed = _REMOVABLE[which]
    if cfg.attn_bias not in allowed:
        raise ValueError(
            f"which={which!r} does not apply to attn_bias={cfg.attn_bias!r}; it applies to "
            f"{sorted(allowed)}"
        )
    new_removed = allowed[cfg.attn_bias]
    if cfg.attn_bias_removed == "all" or cfg.attn_bias_removed == new_removed:
        raise ValueError(f"the attention bias is already removed (attn_bias_removed={cfg.attn_bias_removed!r})")
    return rebuilt(model, cfg.replace(attn_bias_removed=new_removed))


def rebuilt(model: SinkTransformer, cfg: ModelConfig) -> SinkTransformer:
    """A new model of config ``cfg`` holding ``model``'s state (parameters and buffers), on its device and
    dtype, with its attention backend and train / eval mode: model surgery whose change lives in the config."""
    param = next(model.parameters())
    new = SinkTransformer(cfg)
    new.to(device=param.device, dtype=param.dtype)
    new.load_state_dict(model.state_dict())
    new.set_attn_backend(model.attn_backend)
    new.train(model.training)
    return new
