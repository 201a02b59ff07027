"""sinkinterp.massive and ``sinkinterp massive``: on a model with a massive activation planted in one
MLP neuron at a known token, the study must find that layer and that neuron, and silencing it at
token 1 must remove the activation while a control set of neurons changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sinkinterp import cli
from sinkinterp.massive import (
    DEFAULT_DO,
    massive_study,
    neuron_study,
    sublayer_norms,
    summary,
)
from sinkinterp.models import SinkTransformer
from sinkinterp.models.testing import tiny_config

BOS, NEURON, VOCAB, T = 0, 7, 40, 12


@pytest.fixture(scope="module")
def planted():
    """A 3-layer ReLU-MLP model whose layer-0 MLP neuron NEURON fires only where token BOS stands (its
    embedding alone is positive along coordinate 0, every other token's negative) and writes a vector
    of norm 30 per unit into the residual stream; BOS is every sequence's first token."""
    model = SinkTransformer(tiny_config(n_layers=3, ffn="relu", d_vocab=VOCAB, seed=3)).double().eval()
    with torch.no_grad():
        model.embed.W_E[:, 0] = -3.0
        model.embed.W_E[BOS, 0] = 3.0
        mlp = model.blocks[0].mlp
        mlp.W_in[:, NEURON] = 0.0
        mlp.W_in[0, NEURON] = 20.0
        direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        mlp.W_out[NEURON] = 30.0 * direction / direction.norm()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, VOCAB, (6, T), generator=gen)
    tokens[:, 0] = BOS
    return model, tokens


@pytest.fixture(scope="module")
def study(planted):
    model, tokens = planted
    with torch.no_grad():
        return massive_study(model, tokens, eps=0.3, seed=0, bos_token_id=BOS)


def test_the_study_finds_the_planted_neuron_and_its_layer(study):
    ratio = study["massive_ratio"]
    assert ratio[0] < 3 and min(ratio[1:-1]) > 50  # from layer 1's input on (the final norm keeps it too)
    a, b = study["sublayers"]["mlp_out"][0]
    assert a > 100 * b  # layer 0's MLP writes it at token 1
    ne = study["neurons"]
    assert ne["layer"] == 0 and ne["top"][0]["neuron"] == NEURON and ne["k"] == 1
    assert ne["share"][0] > 0.99 and ne["top"][0]["act_first"] > 20 and ne["top"][0]["act_rest"] == 0.0
    assert NEURON not in ne["control"] and len(ne["control"]) == 1


def test_silencing_the_neuron_removes_the_activation_and_the_control_changes_nothing(study):
    ne = study["neurons"]
    before = max(study["massive_ratio"])
    assert ne["top1"]["massive_ratio_after"] < 3 < before
    assert ne["interventions"][0]["massive_ratio_after"] == pytest.approx(ne["top1"]["massive_ratio_after"])
    control = ne["interventions"][1]
    assert control["massive_ratio_after"] == pytest.approx(before, rel=1e-9)
    assert control["delta_loss"] == pytest.approx(0.0, abs=1e-9)  # the control neurons are silent at token 1
    assert np.allclose(control["alpha1_after"], study["alpha1"])
    assert ne["top1"]["name"] == f"zero_neurons[L0:{NEURON}]"


def test_the_edits_at_every_layer_and_their_summary(study):
    assert [x["spec"] for x in study["interventions"]] == list(DEFAULT_DO)
    norm = study["interventions"][0]
    assert norm["name"] == "normalize_resid" and np.isfinite(norm["delta_loss"])
    per = study["normalize_per_layer"]  # h_1 rescaled at one layer: hardly matters where it is not massive
    assert len(per) == 3 and abs(per[0]) < 0.01 < max(abs(x) for x in per[1:])
    assert len(study["alpha1"]) == 3 and len(study["alpha1"][0]) == 4
    text = summary(study)
    assert f"MLP 0: neuron {NEURON} writes" in text and "normalize_resid" in text and "(control)" in text
    spread = study["key_first_spread"]  # token 1's key between texts, from the measurement's pairs of texts
    assert len(spread) == len(study["key_rest_spread"]) == 3 and all(0 <= x < 1.5 for x in spread)
    assert "by layer " + " ".join(f"{x:.2f}" for x in spread) in text


def test_the_mlp_searched_can_be_named(planted, study):
    """``layer`` names the MLP whose neurons are searched: the planted one (layer 0) gives the default's answer,
    another layer's MLP another answer; a layer the model lacks is refused, here and in massive_study."""
    model, tokens = planted
    sub = sublayer_norms(model, tokens)
    named = neuron_study(model, tokens, sub, layer=0)
    assert named["layer"] == 0 and named["top"][0]["neuron"] == study["neurons"]["top"][0]["neuron"] == NEURON
    other = neuron_study(model, tokens, sub, layer=2)
    assert other["layer"] == 2 and other["top1"]["name"].startswith("zero_neurons[L2:")
    assert other["top1"]["massive_ratio_after"] == pytest.approx(max(study["massive_ratio"]), rel=1e-3)
    for bad in (3, -1, True):
        with pytest.raises(ValueError, match="layer must be an MLP layer in 0..2"):
            neuron_study(model, tokens, sub, layer=bad)
    with pytest.raises(ValueError, match="mlp_layer must be a layer in 0..2"):
        massive_study(model, tokens, mlp_layer=3)


def test_bad_arguments_are_named(planted):
    model, tokens = planted
    with pytest.raises(ValueError, match="tokens must be"):
        massive_study(model, tokens[:, :1])
    sub = sublayer_norms(model, tokens)
    with pytest.raises(ValueError, match="share must be"):
        neuron_study(model, tokens, sub, share=1.5)
    with pytest.raises(ValueError, match="max_neurons must be"):
        neuron_study(model, tokens, sub, max_neurons=0)
    with pytest.raises(ValueError, match="unknown intervention|--do|not an intervention|zero_everything"):
        massive_study(model, tokens, do=["zero_everything"])


def test_cli_writes_the_study_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "m"
    assert cli.main(["massive", "--seq-len", "16", "--num-seqs", "4", "--prepend-bos", "--max-neurons", "4",
                     "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["do"] == list(DEFAULT_DO) and config["max_neurons"] == 4 and config["share"] == 0.95
    assert res["num_seqs"] == 4 and res["seq_len"] == 16 and res["prepend_bos"] is True
    assert len(res["neurons"]["top"]) == 4 and 1 <= res["neurons"]["k"] <= 4
    assert (out / "massive.png").stat().st_size > 10_000
    assert "||h_1|| / mean ||h_t||" in capsys.readouterr().out
    base = ["massive", "--num-seqs", "2", "--seq-len", "8", "--out", str(tmp_path / "x")]
    for bad in (["--do", "zero_everything"], ["--k-max", "3"]):
        assert cli.main([*base, *bad]) == 2
        assert bad[0] in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a share outside (0, 1)
        cli.main([*base, "--share", "1.5"])
    assert "--share" in capsys.readouterr().err
    assert not (tmp_path / "x" / "results.json").exists()
