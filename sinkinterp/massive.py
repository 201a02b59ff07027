"""Where the massive activation on token 1 is written, and whether the sink needs it.

Sun et al. (2024) found a few residual features on the first token about 10^4 x larger than
elsewhere, acting as fixed biases; Gu et al. (ICLR 2025) tie them to the sink ("no massive
activation <=> no sink"). ``massive_study`` answers, on any hooked model and token batch:

1. how large ||h_1|| is against the other positions' mean norm at every block's input (and
   token 1's key and value norms against the others', which the paper finds small);
2. which sublayer writes it (attn_out / mlp_out norm at token 1 against the other positions);
3. what the loss and Sink_1 lose with edits of token 1 at every layer (by default h_1 rescaled to
   the others' mean norm with its direction kept, h_1 halved, its value zeroed, token 1 removed),
   and with h_1 rescaled at one layer at a time;
4. which neurons of the MLP that writes the most into h_1 carry that write (|mean activation at
   token 1| x ||W_out row||), how few carry ``share`` of it, and what silencing them at token 1
   does to the loss, Sink_1, the massive ratio and every head's alpha_1: the strongest neuron
   alone, the fewest that carry ``share`` (at most ``max_neurons``), and as many drawn from the
   weaker half of the layer's writers as a control.

``sinkinterp massive`` (sinkinterp/cli_massive.py) runs it from the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["DEFAULT_DO", "massive_study", "sublayer_norms", "neuron_study", "summary"]

#: the edits of token 1 at every layer that the study reports by default
DEFAULT_DO = ("normalize_resid", "scale_resid=0.5", "zero_value", "ablate")


def sublayer_norms(model: Any, tokens: torch.Tensor) -> dict[str, list[list[float]]]:
    """Mean norm of each block's attn_out and mlp_out at position 0 and over the other positions:
    ``{"attn_out": [[first, rest], ...], "mlp_out": [...]}``, one pair per layer."""
    from sinkinterp import patching, tl_adapter

    n_layers = tl_adapter.model_dims(model)["n_layers"]
    kinds = ("attn_out", "mlp_out")
    acts = patching.capture(model, tokens, [f"blocks.{l}.hook_{k}" for k in kinds for l in range(n_layers)])
    out: dict[str, list[list[float]]] = {}
    for k in kinds:
        norms = [acts[f"blocks.{l}.hook_{k}"].float().norm(dim=-1) for l in range(n_layers)]
        out[k] = [[float(n[:, 0].mean()), float(n[:, 1:].mean())] for n in norms]
    return out


def _edit_result(x: Any) -> dict[str, Any]:
    bias = x.sink.sink_bias_pct
    return {"name": x.name, "delta_loss": x.delta_loss, "sink1_after": float(x.sink.sink_pct[0]),
            "sink_bias_after": None if bias is None else float(bias),
            "massive_ratio_after": float(max(x.sink.norms["resid"]["massive_ratio"])),
            "alpha1_after": x.sink.alpha.tolist()}


def neuron_study(model: Any, tokens: torch.Tensor, sublayers: dict[str, list[list[float]]], *, eps: float = 0.3,
                 seed: int = 0, max_neurons: int = 8, share: float = 0.95, layer: int | None = None) -> dict[str, Any]:
    """The MLP whose output at token 1 most exceeds its output elsewhere (or the MLP of ``layer``), its neurons
    ranked by what they write into h_1, and three edits at token 1: the strongest neuron silenced (``top1``), the
    fewest that carry ``share`` of the write along its own direction (at most ``max_neurons``), and
    as many of the weaker half of writers (drawn with ``seed``) as a control (``interventions``).

    The default picks by the norm difference, which in a model whose later MLPs write far more at every
    position than the early ones (Gemma 3) can point past the MLP that makes the massive activation: the
    massive ratio by layer says where it appears, and ``layer`` names that MLP."""
    from sinkinterp import interventions as iv
    from sinkinterp import patching, tl_adapter

    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    if isinstance(max_neurons, bool) or not isinstance(max_neurons, int) or max_neurons < 1:
        raise ValueError(f"max_neurons must be a positive integer, got {max_neurons!r}")
    mlp = sublayers["mlp_out"]
    if layer is None:
        layer = max(range(len(mlp)), key=lambda l: mlp[l][0] - mlp[l][1])
    elif isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(mlp):
        raise ValueError(f"layer must be an MLP layer in 0..{len(mlp) - 1} (or None: the largest write), got {layer!r}")
    names = [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"]
    acts = patching.capture(model, tokens, names)
    post, first_out = acts[names[0]].double(), acts[names[1]][:, 0].double().mean(0)
    w = tl_adapter.mlp_out_weight(model, layer).detach().double().to(post.device)
    write = post[:, 0].mean(0).abs() * w.norm(dim=-1)
    order = write.argsort(descending=True).tolist()
    max_neurons = min(max_neurons, len(order) // 2)

    def carried(k: int) -> float:  # of the mean mlp_out at token 1, along its own direction
        part = (post[:, 0, order[:k]] @ w[order[:k]]).mean(0)
        return float(part @ first_out / first_out.norm().clamp_min(1e-30) ** 2)

    shares = [carried(j) for j in range(1, max_neurons + 1)]
    k = next((j + 1 for j, s in enumerate(shares) if s >= share), max_neurons)
    gen = torch.Generator().manual_seed(seed)
    pool = order[len(order) // 2:]  # the lower half of writers
    control = sorted(pool[i] for i in torch.randperm(len(pool), generator=gen)[:k].tolist())
    edits = [iv.zero_neurons(layer, order[:1]), *([iv.zero_neurons(layer, order[:k])] if k > 1 else []),
             iv.zero_neurons(layer, control)]
    runs = iv.compare(model, tokens, edits, eps=eps, seed=seed)
    if k == 1:  # the strongest writer alone already carries the share: one run for both rows
        runs.insert(1, runs[0])
    return {
        "layer": layer, "k": k, "share": shares, "share_wanted": share, "control": control,
        "top": [{"neuron": i, "act_first": float(post[:, 0, i].mean()), "act_rest": float(post[:, 1:, i].abs().mean()),
                 "write": float(write[i])} for i in order[:max_neurons]],
        "top1": _edit_result(runs[0]),
        "interventions": [_edit_result(x) for x in runs[1:]],
    }


def massive_study(model: Any, tokens: Any, *, eps: float = 0.3, seed: int = 0,
                  do: Sequence[str] = DEFAULT_DO, bos_token_id: int | None = None, tokenizer: Any = False,
                  max_neurons: int = 8, share: float = 0.95, mlp_layer: int | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """The whole study (module docstring) on ``tokens`` [N, T] (a tensor or array of ids); ``do``: edits
    as ``sinkinterp intervene --do`` specs (``tokenizer`` for specs that name a token by its text);
    ``mlp_layer``: the MLP whose neurons are searched (``neuron_study``'s ``layer``).
    Returns plain lists and floats (JSON-ready)."""
    from sinkinterp import interventions as iv
    from sinkinterp import tl_adapter
    from sinkinterp.cli_intervene import parse_spec
    from sinkinterp.measure import measure

    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [N, T] with T >= 2 (token 1 against the others), got {tuple(tokens.shape)}")
    edits = [parse_spec(s, bos_token_id, tokenizer) for s in do]
    n_layers = tl_adapter.model_dims(model)["n_layers"]
    if mlp_layer is not None and (isinstance(mlp_layer, bool) or not isinstance(mlp_layer, int)
                                  or not 0 <= mlp_layer < n_layers):
        raise ValueError(f"mlp_layer must be a layer in 0..{n_layers - 1} (or None: the largest write), got {mlp_layer!r}")
    rep = measure(model, tokens, eps=eps, qk_heads=None)
    r = rep.norms["resid"]
    res: dict[str, Any] = {
        "resid_first": r["first"].tolist(), "resid_rest": r["rest"].tolist(),
        "massive_ratio": r["massive_ratio"].tolist(), "hooks": r["hooks"],
        "value_first": rep.norms["value"]["first"].mean(1).tolist(),
        "value_rest": rep.norms["value"]["rest"].mean(1).tolist(),
        "key_first": rep.norms["key"]["first"].mean(1).tolist(),
        "key_rest": rep.norms["key"]["rest"].mean(1).tolist(),
        # how much the keys differ between texts at the same position, relative to their RMS norm (mean over heads)
        "key_first_spread": rep.norms["key"]["first_spread"].mean(1).tolist(),
        "key_rest_spread": rep.norms["key"]["rest_spread"].mean(1).tolist(),
        "sink1": float(rep.sink_pct[0]), "alpha1": rep.alpha.tolist(),
        "sublayers": sublayer_norms(model, tokens),
    }
    res["interventions"] = [
        {"spec": spec, "name": x.name, "description": x.description, "delta_loss": x.delta_loss,
         "loss_base": x.loss_base, "sink1_after": float(x.sink.sink_pct[0])}
        for spec, x in zip(do, iv.compare(model, tokens, edits, eps=eps, seed=seed, progress=progress))]
    per = iv.compare(model, tokens, [parse_spec("normalize_resid", bos_token_id)], per_layer=True,
                     eps=eps, seed=seed, sinks=False)[0]
    res["normalize_per_layer"] = per.per_layer.tolist()
    res["neurons"] = neuron_study(model, tokens, res["sublayers"], eps=eps, seed=seed, max_neurons=max_neurons,
                                  share=share, layer=mlp_layer)
    return res


def summary(res: dict[str, Any]) -> str:
    """The study as a few lines of text (what ``sinkinterp massive`` prints)."""
    ratio = res["massive_ratio"]
    peak = max(range(len(ratio)), key=lambda i: ratio[i])
    subs = [(kind, l, v) for kind, vs in res["sublayers"].items() for l, v in enumerate(vs)]
    kind, layer, (a, b) = max(subs, key=lambda t: t[2][0] - t[2][1])
    vpeak = min(peak, len(res["value_first"]) - 1)
    lines = [(f"||h_1|| / mean ||h_t||: largest {ratio[peak]:.2f} at {res['hooks'][peak]} "
              f"({res['resid_first'][peak]:.1f} vs {res['resid_rest'][peak]:.1f}); by layer "
              + " ".join(f"{x:.1f}" for x in ratio)),
             (f"token 1's value / key norm against the others' at layer {vpeak}: "
              f"{res['value_first'][vpeak] / max(res['value_rest'][vpeak], 1e-30):.2f} / "
              f"{res['key_first'][vpeak] / max(res['key_rest'][vpeak], 1e-30):.2f}"),
             f"largest write into h_1: {kind} of layer {layer} ({a:.1f} at token 1, {b:.1f} elsewhere)",
             *([f"token 1's key differs between texts by {res['key_first_spread'][vpeak]:.3f} of its RMS norm at layer "
                f"{vpeak} (the other keys {res['key_rest_spread'][vpeak]:.3f}); by layer "
                + " ".join(f"{x:.2f}" for x in res["key_first_spread"])] if "key_first_spread" in res else []),
             f"Sink_1 {res['sink1']:.2f}%; the --do edits at every layer (delta loss, Sink_1 after):"]
    for x in res["interventions"]:
        lines.append(f"  {x['spec']:<18} {x['delta_loss']:+.4f} nats  {x['sink1_after']:6.2f}%")
    per = res["normalize_per_layer"]
    worst = max(range(len(per)), key=lambda i: per[i])
    lines.append(f"  normalize_resid at one layer: largest at layer {worst}, {per[worst]:+.4f} nats")
    ne = res["neurons"]
    top = ne["top"][0]
    lines.append(f"MLP {ne['layer']}: neuron {top['neuron']} writes {ne['share'][0]:.0%} of its output at token 1 "
                 f"(activation {top['act_first']:.2f} there, mean |activation| {top['act_rest']:.2f} elsewhere); "
                 f"{ne['k']} neurons write {ne['share'][ne['k'] - 1]:.0%}")
    for label, x in (("that neuron", ne["top1"]), (f"those {ne['k']}", ne["interventions"][0]),
                     (f"{ne['k']} weak writers (control)", ne["interventions"][1])):
        lines.append(f"  silenced at token 1, {label:<26} {x['delta_loss']:+.4f} nats  Sink_1 {x['sink1_after']:6.2f}%  "
                     f"massive ratio {x['massive_ratio_after']:.2f}")
    return "\n".join(lines)
