"""`sinkinterp intervene` and `sinkinterp patch`: result folders, numbers equal to the Python API,
clear errors before any work, no results.json after a failure."""

import json

import numpy as np
import pytest
import torch

from sinkinterp import cli
from sinkinterp import interventions as iv
from sinkinterp import patching
from sinkinterp.inputs import make_tokens
from sinkinterp.loading import load_model

SMALL = ["--seq-len", "12", "--num-seqs", "4", "--inputs", "random", "--seed", "1"]


def run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_intervene_writes_a_result_folder_equal_to_the_api(tmp_path, capsys):
    out = tmp_path / "iv"
    code, stdout, _ = run(["intervene", *SMALL, "--do", "zero_value", "scale_key=0.5", "replace_first=bos",
                           "normalize_resid", "scale_resid=0.5", "--per-head", "--out", str(out)], capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    lm = load_model("default")
    assert [r["name"] for r in res["interventions"]] == ["zero_value", "scale_key", f"replace_first[{lm.bos_token_id}]",
                                                            "normalize_resid", "scale_resid"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["do"] == ["zero_value", "scale_key=0.5", "replace_first=bos", "normalize_resid",
                         "scale_resid=0.5"] and cfg["per_head"] is True
    # the same numbers from Python on the same tokens
    tokens = make_tokens("random", seq_len=12, num_seqs=4, seed=1, vocab_size=lm.d_vocab)
    ref = iv.run_intervention(lm.model, tokens, iv.first_token("zero_value"), per_head=True)
    got = res["interventions"][0]
    assert got["delta_loss"] == pytest.approx(ref.delta_loss, abs=1e-6)
    np.testing.assert_allclose(got["per_head_delta_loss"], ref.per_head, atol=1e-6)
    assert res["interventions"][2]["per_head_delta_loss"] is None
    resid = res["interventions"][3]  # a residual edit has no heads: --per-head gives per-layer effects
    assert resid["per_head_delta_loss"] is None and len(resid["per_layer_delta_loss"]) == lm.model.cfg.n_layers
    for fig in ("effects.png", "per_head_zero_value.png", "per_layer_normalize_resid.png"):
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    assert "zero_value" in stdout and "Δloss" in stdout


def test_patch_writes_first_token_grids(tmp_path, capsys):
    out = tmp_path / "p"
    code, stdout, _ = run(["patch", *SMALL, "--components", "k", "resid_pre", "--corrupt", "replace_first=7",
                           "--out", str(out)], capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    k = res["patches"]["k"]
    assert k["axes"] == ["layer", "head"] and np.array(k["values"]).shape == (4, 4)
    assert res["patches"]["resid_pre"]["axes"] == ["layer"]
    # patching token 1's residual at layer 0 restores the clean run exactly
    assert res["patches"]["resid_pre"]["values"][0] == pytest.approx(res["clean"], abs=1e-6)
    assert (out / "patch_k.png").read_bytes()[:4] == b"\x89PNG"
    assert "share of the gap" in stdout


def test_patch_with_the_last_token_loss(tmp_path, capsys):
    """--metric last-loss: the cross entropy of the last clean token, equal to the API with the
    same metric on full logits (passes unembed position T-2 only)."""
    clean = np.random.default_rng(1).integers(0, 258, (3, 9))
    np.save(tmp_path / "c.npy", clean)
    out = tmp_path / "p"
    code, _, _ = run(["patch", "--tokens", str(tmp_path / "c.npy"), "--corrupt", "replace_first=7", "--metric",
                      "last-loss", "--components", "v", "--no-figures", "--out", str(out)], capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metric"].startswith("cross entropy of the last clean token")
    lm = load_model("default")
    c = torch.as_tensor(clean)
    x = c.clone()
    x[:, 0] = 7

    def full(logits):
        return torch.nn.functional.cross_entropy(logits[:, -2].double(), c[:, -1])

    ref = patching.patch(lm.model, c, x, "v", full, by_pos=False, positions=[0])
    np.testing.assert_allclose(res["patches"]["v"]["values"], ref.values, atol=1e-6)
    assert res["clean"] == pytest.approx(ref.clean, abs=1e-9) and np.ptp(ref.values) > 1e-4


def test_patch_with_a_corrupted_tokens_file(tmp_path, capsys):
    clean = np.random.default_rng(0).integers(0, 258, (3, 10))
    corrupted = clean.copy()
    corrupted[:, 0] = 5
    np.save(tmp_path / "c.npy", clean)
    np.save(tmp_path / "x.npy", corrupted)
    out = tmp_path / "p"
    code, _, _ = run(["patch", "--tokens", str(tmp_path / "c.npy"), "--corrupted-tokens", str(tmp_path / "x.npy"),
                      "--components", "v", "--positions", "all", "--no-figures", "--out", str(out)], capsys)
    assert code == 0
    v = json.loads((out / "results.json").read_text())["patches"]["v"]
    assert v["axes"] == ["layer", "pos", "head"] and np.array(v["values"]).shape == (4, 10, 4)
    lm = load_model("default")
    ref = patching.patch(lm.model, clean, corrupted, "v", patching.loss_metric(torch.as_tensor(clean)))
    np.testing.assert_allclose(v["values"], ref.values, atol=1e-6)
    np.save(tmp_path / "bad.npy", corrupted[:, :5])
    code, _, err = run(["patch", "--tokens", str(tmp_path / "c.npy"), "--corrupted-tokens", str(tmp_path / "bad.npy"),
                        "--out", str(tmp_path / "q")], capsys)
    assert code == 2 and "--corrupted-tokens: shape (3, 5) differs" in err
    assert not (tmp_path / "q" / "results.json").exists()


def test_intervene_at_another_position_equals_the_api(tmp_path, capsys):
    lm = load_model("default")
    tokens = make_tokens("random", seq_len=12, num_seqs=4, seed=1, vocab_size=lm.d_vocab)
    tok = int(tokens[1, 4])
    out = tmp_path / "at"
    code, stdout, _ = run(["intervene", *SMALL, "--do", "zero_value@3", f"ablate@first:{tok}+1", "scale_key=2@0",
                           "--layers", "1", "--per-layer", "--out", str(out)], capsys)
    assert code == 0
    got = json.loads((out / "results.json").read_text())["interventions"]
    refs = [iv.at_position("zero_value", position=3), iv.at_position("ablate", token=tok, offset=1),
            iv.at_position("scale_key", position=0, factor=2.0)]
    assert [g["name"] for g in got] == [r.name for r in refs]
    for g, inter in zip(got, refs):
        ref = iv.run_intervention(lm.model, tokens, inter, layers=[1])
        assert g["delta_loss"] == pytest.approx(ref.delta_loss, abs=1e-6)
        assert g["delta_loss_from_edit"] == pytest.approx(ref.delta_loss_from_edit, abs=1e-6)
        assert g["edited_sequences"] == ref.edited
    assert got[0]["edited_sequences"] == 4 and 1 <= got[1]["edited_sequences"] <= 4
    # the per-layer value comes from batched passes started at the edited layer: float32 losses near
    # 5 nats, a few ulp (4.8e-7 each) apart from the plain pass, depending on the CPU's kernels
    assert got[1]["per_layer_delta_loss"][1] == pytest.approx(got[1]["delta_loss"], abs=5e-6)
    assert (out / "per_layer_ablate_first_of_" f"{tok}_1.png").read_bytes()[:4] == b"\x89PNG"
    assert "from the edited position on" in stdout


def test_a_token_given_as_text_is_resolved_by_the_model_tokenizer():
    from sinkinterp.cli_intervene import parse_spec

    lm = load_model("default")
    the = lm.tokenizer(" the", add_special_tokens=False)["input_ids"]
    assert len(the) == 1
    inter = parse_spec('zero_value@first:" the"-2', lm.bos_token_id, lm.tokenizer)
    assert inter.name == iv.at_position("zero_value", token=the[0], offset=-2).name
    assert parse_spec('ablate=norenorm@first:" the"', 0).params == {"where": "first_of[0]", "renormalize": False}
    with pytest.raises(ValueError, match=r"' the cat' is 2 tokens"):
        parse_spec('ablate@first:" the cat"', lm.bos_token_id, lm.tokenizer)
    with pytest.raises(ValueError, match="the model has no tokenizer"):
        parse_spec('ablate@first:" the"', 0, None)


@pytest.mark.parametrize("args, message", [
    (["intervene", "--do", "swap_position=2@3"], "--do: 'swap_position=2@3': @ applies to ablate"),
    (["intervene", "--do", "ablate@x"], "the place after @ must be @P"),
    (["intervene", "--do", "zero_key=1@2"], "zero_key takes no value"),
    (["intervene", "--do", "scale_value=x"], "--do: 'scale_value=x': scale_value needs =float"),
    (["intervene", "--do", "explode"], "--do: 'explode': unknown intervention"),
    (["intervene", "--do", "normalize_resid=2"], "--do: 'normalize_resid=2': normalize_resid takes no value"),
    (["intervene", "--do", "scale_resid"], "--do: 'scale_resid': scale_resid needs =float"),
    (["intervene", "--layers", "0,x"], "--layers: expected integers"),
    (["intervene", "--layers", "9"], "layers: 9 is outside the model"),
    (["intervene", "--heads", "7", "--do", "zero_key"], "heads: 7 is outside the model's 4 key/value heads"),
    (["intervene", "--do", "ablate_bias"], "needs a model with a bias slot"),
    (["patch", "--components", "foo"], "--components: got 'foo'"),
    (["patch", "--corrupt", "start_later=2"], "--corrupt: only replace_first"),
    (["patch", "--positions", "-1"], "--positions"),
    (["intervene", "--model", "/no/such/model"], "--model:"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, message):
    out = tmp_path / "o"
    code, _, err = run([*args, *SMALL, "--no-figures", "--out", str(out)], capsys)
    assert code == 2
    assert message in err
    assert not (out / "results.json").exists()
