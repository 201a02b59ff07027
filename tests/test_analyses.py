"""The analysis scripts render their pages: the CPU calibration page from snapshots of training runs
alone, the massive-activation and toy-model pages from their own measurements."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

# whole analyses: each test makes 10^4-10^5 calls of sinkinterp functions that their own tests run with shape checks
pytestmark = pytest.mark.shape_checks_off

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_calibration_page_from_snapshots(tmp_path, monkeypatch):
    mod = load_script("analyses/cpu_calibration.py")
    base = json.loads((ROOT / "configs" / "cpu_calib_wd05.json").read_text())
    run = tmp_path / "runs" / "kv_run"
    run.mkdir(parents=True)
    cfg = {**base, "lr": 0.003, "model": {**base["model"], "attn_bias": "kv"}}
    (run / "train_config.json").write_text(json.dumps(cfg))
    rows = [{"step": 0, "val_loss": 9.0, "sink1": 0.0, "sink2": 0.0, "sink_bias": 0.0, "massive_ratio": 1.5,
             "tokens_seen": 0},
            {"step": 250, "val_loss": None, "sink1": 0.5, "sink2": 0.0, "sink_bias": 12.5, "massive_ratio": 2.0,
             "tokens_seen": 256000},
            {"step": 300, "val_loss": None, "sink1": None, "sink2": None, "sink_bias": None, "massive_ratio": None,
             "tokens_seen": 307200}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(mod, "DATA", tmp_path / "data")
    monkeypatch.setattr(mod, "DOC", tmp_path / "page.md")
    monkeypatch.setattr(mod, "FIG", tmp_path / "fig.png")
    monkeypatch.setattr(mod, "HEADS_FIG", tmp_path / "heads.png")
    assert mod.main([]) == 2  # nothing snapshotted yet
    assert mod.main(["--snapshot", str(tmp_path / "runs" / "missing")]) == 2
    assert mod.main(["--snapshot", str(run)]) == 0
    assert mod.main([]) == 0
    page = (tmp_path / "page.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| kv_run"))
    assert '`model.attn_bias="kv"`' in row and "`lr=0.003`" in row
    assert "250 of 6,000" in row and "| 0.50 |" in row and "| 12.50 |" in row and "9.000 (step 0)" in row
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    # two seeds of one recipe in the paper's rows: mean (min to max, n); a recipe not run says so
    seed1 = tmp_path / "runs" / "kv_run_s1"
    seed1.mkdir()
    (seed1 / "train_config.json").write_text(json.dumps({**cfg, "data": {**cfg["data"], "seed": 1}}))
    rows[1] = {**rows[1], "sink1": 1.5, "sink_bias": 20.5}
    (seed1 / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert mod.main(["--snapshot", str(seed1)]) == 0
    monkeypatch.setattr(mod, "PAPER_ROWS", [("kv", ["kv_run", "kv_run_s1"], "72.76"), ("k", ["k_run"], "73.34")])
    assert mod.main([]) == 0
    page = (tmp_path / "page.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| kv | 72.76 |"))
    assert "| kv_run, kv_run_s1 | 250 of 6,000 (stopped) / 250 of 6,000 (stopped) |" in row
    assert "| 1.00 (0.50 to 1.50, n=2) | 16.50 (12.50 to 20.50, n=2) |" in row
    # validation loss only where it is on the seed-0 windows: the data-seed-1 run's own is not
    assert "| 9.000 | - | - |" in row
    assert "| k | 73.34 | k_run: not run yet |" in page
    assert "Which heads" not in page and not (tmp_path / "heads.png").exists()  # no final.json yet

    # per-head numbers of a final checkpoint: the heads table, the angle-vs-norm column, the heat maps
    grid = [[0.1, 0.2, 0.3, 0.4]] * 4
    heads = {"alpha1": grid, "alpha_bias": None, "sink_rate1": [[0, 0, 0, 0], [0, 0, 0, 0], [0, 90, 0, 0], [0, 0, 0, 0]],
             "qk": {"cos_q_k1": [[0.5] * 4] * 4, "cos_q_krest": [[0.1, 0.1, 0.1, 0.9]] * 4,
                    "k1_norm": [[2.0] * 4] * 4, "k_rest_norm": [[4.0] * 4] * 4, "q_norm": [[1.0] * 4] * 4}}
    final = {"sink1": 20.0, "sink2": 0.0, "sink_bias": None, "massive_ratio": 3.0, "heads": heads,
             "val_loss_seed0_windows": 4.5, "interventions": {}}
    (tmp_path / "data" / "kv_run_s1" / "final.json").write_text(json.dumps(final))
    assert mod.main([]) == 0
    page = (tmp_path / "page.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| kv | 72.76 |"))
    assert "| 6.750 (4.500 to 9.000, n=2) |" in row  # now on the seed-0 windows too
    heads_row = next(line for line in page.splitlines() if line.startswith("| kv_run_s1 | alpha_1 |"))
    assert "| 0.10 / 0.20 / 0.30 / 0.40 |" in heads_row and "L2H1 (90%)" in heads_row
    assert "cos gap > 0 in 12 of 16 heads; sinking heads: gap +0.40, norm ratio 0.50-0.50" in heads_row
    assert (tmp_path / "heads.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Post-norm" not in page and "## Gated attention" not in page

    # a post-norm gated run: the block sums' massive ratio and the gates get their own tables
    post = tmp_path / "runs" / "post_run"
    post.mkdir()
    (post / "train_config.json").write_text(json.dumps(
        {**base, "model": {**base["model"], "norm_placement": "post", "attn_gate": True}}))
    (post / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert mod.main(["--snapshot", str(post)]) == 0
    gates = [[0.5, 0.25, 0.125, 0.75]] * 4
    (tmp_path / "data" / "post_run" / "final.json").write_text(json.dumps(
        {**final, "massive_ratio": 1.2, "massive_ratio_sums": [30.0, 2.5, 1.0, 1.0], "gate_mean": gates,
         "gate_mean_first": [[0.0, 1.0, 0.5, 0.5]] * 4}))
    assert mod.main([]) == 0
    page = (tmp_path / "page.md").read_text()
    assert "| post_run | 1.2 | 30.0 / 2.5 / 1.0 / 1.0 |" in page
    assert "| post_run | 2 | 0.50 / 0.25 / 0.12 / 0.75 | 0.00 / 1.00 / 0.50 / 0.50 | 0.10 / 0.20 / 0.30 / 0.40 |" in page
    assert "## Sliding windows" not in page and "## Prefix LM" not in page and "other tokens at the first" not in page

    # a windowed prefix-LM run trained with BOS at position 2: the window, prefix and moved-token tables
    masked = tmp_path / "runs" / "masked_run"
    masked.mkdir()
    moved = [{"kind": "fixed_token", "positions": [1], "token_id": "bos"}]
    (masked / "train_config.json").write_text(json.dumps(
        {**base, "model": {**base["model"], "window": 16, "prefix_len": 8}, "data": {**base["data"], "transforms": moved}}))
    (masked / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert mod.main(["--snapshot", str(masked)]) == 0
    win = {"window": 16, "sink1_within_window": 40.0, "sink_window_start": 2.5,
           "alpha1_within_window": [[0.5, 0.25, 0.125, 0.75]] * 4, "alpha_window_start": [[0.0, 0.1, 0.2, 0.3]] * 4,
           "reference": {"model": "toy-softmax", "sink1_within_window": 78.0, "sink_window_start": 0.0,
                         "alpha1_within_window": [[0.5] * 4] * 4, "alpha_window_start": [[0.0] * 4] * 4}}
    (tmp_path / "data" / "masked_run" / "final.json").write_text(json.dumps(
        {**final, "sink_by_key": [20.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 62.5, 0.0, 1.0], "window_stats": win,
         "with_transforms": {"transforms": moved, "sink_by_key": [1.0, 70.0, 0.0, 0.0], "massive_ratio": 1.5,
                             "massive_ratio_by_key": [1.5, 12.34, 1.0, 0.9],
                             "interventions": {"ablate": {"delta_loss": 0.25}, "zero_value": {"delta_loss": -0.125}}}}))
    assert mod.main([]) == 0
    page = (tmp_path / "page.md").read_text()
    assert ("| masked_run | 16 | 20.00 | 40.00 | 2.50 | " + "<br>".join(["0.50 / 0.25 / 0.12 / 0.75"] * 4)
            + " | " + "<br>".join(["0.00 / 0.10 / 0.20 / 0.30"] * 4) + " |") in page
    assert "| toy-softmax (no window, the same queries) | - | - | 78.00 | 0.00 | " in page
    assert "H_w / w 0.211 for w = 16" in page  # (1 + 1/2 + ... + 1/16) / 16
    assert "| masked_run | 8 | 20.00 | 0.00 | 0.00 | 5.00 | 0.00 | 0.00 | 0.00 | 62.50 | 0.00 | 1.00 |" in page
    assert ("| masked_run | fixed_token at [1] (bos) | 20.00 / 0.00 / 0.00 / 5.00 | 1.00 / 70.00 / 0.00 / 0.00 "
            "| 1.5 / 12.3 / 1.0 / 0.9 | +0.250 / -0.125 |") in page


def test_massive_activation_page_reports_its_own_measurements(tmp_path, monkeypatch):
    mod = load_script("analyses/massive_activation.py")
    monkeypatch.chdir(tmp_path)  # main() changes directory; restored afterwards
    for name, value in (("DOC", tmp_path / "page.md"), ("FIG", tmp_path / "fig.png"), ("OUT", tmp_path / "out"),
                        ("NUM_SEQS", 4)):
        monkeypatch.setattr(mod, name, value)
    assert mod.main() == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["config"]["num_seqs"] == 4
    page = (tmp_path / "page.md").read_text()
    for model in mod.MODELS:
        bos = res["results"][model]["bos"]
        first = " · ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(bos["resid_first"], bos["resid_rest"]))
        assert f"| {model} | BOS | {first} |" in page
        names = [x["name"] for x in bos["interventions"]]
        assert names[:3] == ["normalize_resid", "scale_resid", "zero_value"]
        for x in bos["interventions"]:
            assert f"| {model} | BOS | `{x['name']}` | {x['delta_loss']:+.4f} |" in page
        ne = bos["neurons"]
        assert f"| {model} | {ne['layer']} | neuron {ne['top'][0]['neuron']}: " in page
        assert f"| the strongest writer silenced | {ne['top1']['delta_loss']:+.4f} | {ne['top1']['sink1_after']:.2f} |" in page
    soft = res["results"]["toy-softmax"]["bos"]["neurons"]
    assert f"Sink_1 from {res['results']['toy-softmax']['bos']['sink1']:.2f}% to **{soft['top1']['sink1_after']:.2f}%**" in page
    kv = res["results"]["toy-kv-bias"]
    assert f"up to {max(kv['bos']['massive_ratio']):.1f}x the others" in page
    assert kv["bos"]["sink1"] == 0.0 and kv["bos"]["sink_bias"] > 20  # the shipped model's sink is on k*
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def test_massive_activation_along_training_snapshot(tmp_path, monkeypatch):
    """--along-training runs `sinkinterp massive --prepend-bos` on every checkpoint of a run and keeps
    one row per step (here the shipped toy-softmax twice, as two checkpoints); a folder without
    checkpoints is refused. The page section is made from the snapshots."""
    mod = load_script("analyses/massive_activation.py")
    shipped = Path(__file__).resolve().parents[1] / "sinkinterp" / "assets" / "models" / "toy-softmax"
    run = tmp_path / "c_fake"
    (run / "checkpoints").mkdir(parents=True)
    for step in ("step_0000010", "step_0000020"):
        (run / "checkpoints" / step).symlink_to(shipped, target_is_directory=True)
    (run / "train_config.json").write_text((shipped / "train_config.json").read_text())
    monkeypatch.setattr(mod, "TRAINING", tmp_path / "snaps")
    monkeypatch.setattr(mod, "TRAINING_FIG", tmp_path / "training.png")
    monkeypatch.setattr(mod, "OUT", tmp_path / "out")
    monkeypatch.setattr(mod, "NUM_SEQS", 4)
    monkeypatch.chdir(tmp_path)
    assert mod.main(["--along-training", str(tmp_path)]) == 2  # no checkpoints there
    assert mod.main(["--along-training"]) == 2
    assert mod.main(["--along-training", str(run)]) == 0
    snap = json.loads((tmp_path / "snaps" / "c_fake.json").read_text())
    assert [r["step"] for r in snap["rows"]] == [10, 20]
    a, b = snap["rows"]
    assert {**a, "step": 0} == {**b, "step": 0}  # the same model twice
    assert snap["command"].startswith("sinkinterp massive --model RUN_DIR/checkpoints/step_N --prepend-bos")
    lines = mod._training_neuron_lines()
    assert f"| 10 | {a['sink1']:.2f} | {a['massive_ratio']:.2f} | MLP {a['layer']}, {a['neuron']} " in "\n".join(lines)
    assert (tmp_path / "training.png").stat().st_size > 10_000


def test_toy_models_page_reports_the_report_command(tmp_path, monkeypatch):
    mod = load_script("analyses/toy_models.py")
    monkeypatch.chdir(tmp_path)
    args = [a if a != "100" else "6" for a in mod.ARGS]  # 6 sequences instead of 100
    for name, value in (("DOC", tmp_path / "page.md"), ("FIGS", tmp_path / "figs"), ("OUT", tmp_path / "out"),
                        ("ARGS", args)):
        monkeypatch.setattr(mod, name, value)
    assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    assert "--num-seqs 6" in page
    for model in mod.MODELS:
        r = json.loads((tmp_path / "out" / model / "random" / "results.json").read_text())
        assert r["num_seqs"] == 6
        assert f"| {model} | random | {r['sink_pct'][0]:.2f} | {r['sink_pct'][1]:.2f} |" in page
        assert (tmp_path / "figs" / f"toy-models-{model}-alpha_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert page.count("| L3H3 |") == 3  # one per-head table per model
    assert "| toy-sigmoid - toy-softmax |" in page and (tmp_path / "figs" / "toy-models-loss-by-position.png").is_file()


def test_streaming_window_page_reports_each_cell(tmp_path, monkeypatch):
    """The window page's cells are the intervene runs' loss changes; the sigmoid model's windows are
    not renormalized; a window as long as the sequence changes nothing."""
    mod = load_script("analyses/streaming_window.py")
    monkeypatch.chdir(tmp_path)
    common = [a if a != "32" else "4" for a in mod.COMMON]  # 4 sequences instead of 32
    for name, value in (("DOC", tmp_path / "page.md"), ("OUT", tmp_path / "out"), ("COMMON", common),
                        ("WINDOWS", (4, 64))):
        monkeypatch.setattr(mod, name, value)
    assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    for model in mod.MODELS:
        res = json.loads((tmp_path / "out" / model / "results.json").read_text())["interventions"]
        d = {(r["params"]["window"], r["params"]["keep_first"]): r for r in res}
        assert all(r["params"]["renormalize"] == (model != "toy-sigmoid") for r in res)
        assert all(abs(d[(64, k)]["delta_loss"]) < 1e-6 for k in mod.KEEP)
        cells = " / ".join(f"{d[(4, k)]['delta_loss']:+.3f}" for k in mod.KEEP)
        assert f"| {model} | {res[0]['loss_base']:.3f} | {cells} |" in page
    assert d[(4, 0)]["delta_loss"] > 0 and "--num-seqs 4" in page


def test_cpu_calibration_block_stats_see_through_post_norm_and_read_gates():
    """The final report's extra numbers: a massive first token written into the embedding shows in
    the sums a post-norm block normalizes even though the (normalized) residual stream hides it, and
    a gate with zero weights reads 0.5 for every head."""
    import torch

    from sinkinterp.measure import measure
    from sinkinterp.models import SinkTransformer
    from sinkinterp.models.config import ModelConfig

    mod = load_script("analyses/cpu_calibration.py")
    torch.manual_seed(0)
    tokens = torch.randint(1, 50, (3, 12))
    tokens[:, 0] = 0
    for placement in ("post", "pre"):
        cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, d_vocab=50, n_ctx=12,
                          norm_placement=placement, attn_gate=True)
        model = SinkTransformer(cfg).eval()
        with torch.no_grad():
            model.embed.W_E[0] *= 1000.0  # token 0 (first in every sequence) gets a massive embedding
            for block in model.blocks:
                block.attn.W_gate.zero_()
        stats = mod._block_stats(model, tokens.numpy())  # as final_report passes them
        resid = measure(model, tokens, norms=True).norms["resid"]["massive_ratio"]
        assert len(stats["massive_ratio_sums"]) == 2
        assert stats["massive_ratio_sums"][0] > 100  # x + attn_out of layer 0 carries the embedding
        if placement == "post":
            assert max(resid[1:]) < 3  # after the first norm the residual stream no longer shows it
        else:
            assert min(resid) > 100  # pre-norm: the residual stream carries it through every layer
        assert stats["gate_mean"] == [[0.5] * 4] * 2 and stats["gate_mean_first"] == [[0.5] * 4] * 2
    assert "gate_mean" not in mod._block_stats(SinkTransformer(ModelConfig(
        n_layers=1, d_model=32, n_heads=4, d_ff=64, d_vocab=50, n_ctx=12)).eval(), tokens)


def test_cpu_calibration_keeps_the_position_bias_of_the_decomposition():
    """An ALiBi run's final.json keeps the decomposition's logits and bias per head, and the angle-vs-norm
    column sets the bias gap (key 1 against keys 2..t) beside the q.k logit gap; a RoPE run with a k*/v*
    slot has no bias terms but k*'s angle and length."""
    import numpy as np
    import torch

    from sinkinterp.measure import measure
    from sinkinterp.models import SinkTransformer
    from sinkinterp.models.config import ModelConfig

    mod = load_script("analyses/cpu_calibration.py")
    tokens = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    for pos in ("alibi", "rotary"):
        torch.manual_seed(0)
        model = SinkTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, d_vocab=50, n_ctx=12,
                                            pos_emb=pos, attn_bias="kv" if pos == "rotary" else "none")).eval()
        report = measure(model, tokens, qk_heads="all")
        grids = mod._qk_grids(report.qk, 2, 4)
        text = mod._angle_vs_norm({"qk": grids, "sink_rate1": [[0.0] * 4] * 2})
        if pos == "rotary":  # no position bias; a learned k* instead
            assert "bias_q_k1" not in grids and "position bias" not in text
            np.testing.assert_allclose(np.ravel(grids["kstar_norm"]), report.qk["kstar_norm"], atol=1e-4)
            cos = report.qk["cos_q_kstar"]
            assert f"k*: cos(q, k*) {cos.min():+.2f} to {cos.max():+.2f}" in text
            continue
        assert "kstar_norm" not in grids and "k*" not in text
        np.testing.assert_allclose(np.ravel(grids["bias_q_k1"]), report.qk["bias_q_k1"], atol=1e-4)
        gap = report.qk["bias_q_k1"] - report.qk["bias_q_krest"]  # head 0's slope 1/4 the steepest
        assert f"position bias on key 1 minus keys 2..t: {gap.min():+.2f} to {gap.max():+.2f}" in text


def test_cpu_calibration_window_stats_match_the_pattern_by_hand():
    """Under a window w < T the final report measures token 1 over the queries that still see it and
    the oldest visible key after that; both equal the means taken from the full pattern by hand, the
    window-start key's attention is exactly its pattern entry, and models without a window (or with
    one as long as the sequence) get None."""
    import torch

    from sinkinterp import tl_adapter
    from sinkinterp.models import SinkTransformer
    from sinkinterp.models.testing import tiny_config

    mod = load_script("analyses/cpu_calibration.py")
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (3, 12))
    model = SinkTransformer(tiny_config(window=4, n_ctx=12)).eval()
    stats = mod._window_stats(model, tokens.numpy(), eps=0.3)
    pats = {}
    with torch.no_grad(), tl_adapter.attached_hooks(model, [(f"blocks.{l}.attn.hook_pattern",
                                                            lambda x, hook: pats.__setitem__(hook.name, x.clone()))
                                                           for l in range(2)]):
        model(tokens)
    inside, edge = [], []
    for l in range(2):
        p = pats[f"blocks.{l}.attn.hook_pattern"].double()  # [b, H, T, T]
        assert float(p[:, :, 4:, 0].abs().max()) == 0.0  # token 1 has left the window
        inside.append(p[:, :, :4, 0].mean(-1))  # queries t <= w (1-based)
        edge.append(torch.stack([p[:, :, t, t - 3] for t in range(4, 12)], -1).mean(-1))
    inside, edge = torch.stack(inside), torch.stack(edge)  # [L, b, H]
    assert stats["window"] == 4
    assert stats["alpha1_within_window"] == inside.mean(1).round(decimals=4).tolist()
    assert stats["alpha_window_start"] == edge.mean(1).round(decimals=4).tolist()
    assert stats["sink1_within_window"] == pytest.approx(100 * float((inside > 0.3).double().mean()))
    assert stats["sink_window_start"] == pytest.approx(100 * float((edge > 0.3).double().mean()))
    assert 0 < stats["sink1_within_window"] <= 100  # t = 1 alone puts weight 1 on token 1
    full = SinkTransformer(tiny_config(n_ctx=12)).eval()
    assert mod._window_stats(full, tokens.numpy()) is None
    # a windowless reference measured on the same queries: token 1 over t <= 4, key t - 3 after that
    ref = mod._window_stats(full, tokens.numpy(), eps=0.3, window=4)
    with torch.no_grad(), tl_adapter.attached_hooks(full, [("blocks.1.attn.hook_pattern",
                                                           lambda x, hook: pats.__setitem__("ref", x.clone()))]):
        full(tokens)
    p = pats["ref"].double()
    assert ref["alpha1_within_window"][1] == p[:, :, :4, 0].mean(-1).mean(0).round(decimals=4).tolist()
    assert ref["alpha_window_start"][1] == torch.stack([p[:, :, t, t - 3] for t in range(4, 12)], -1).mean(
        -1).mean(0).round(decimals=4).tolist()
    assert mod.main(["--window-reference", "c_bos=toy-softmax"]) == 2  # c_bos has no window statistics
    assert mod._window_stats(SinkTransformer(tiny_config(window=12, n_ctx=12)).eval(), tokens.numpy()) is None


def test_cpu_calibration_transformed_tokens_follow_the_run():
    """The final report re-measures on inputs shaped like the run's training windows: a fixed BOS at
    position 2 or random ids at position 1 are applied (seeded, so reproducible), and runs trained
    only with BOS first get None (the report prepends BOS for them already)."""
    import numpy as np

    mod = load_script("analyses/cpu_calibration.py")

    class LM:  # what _transformed_tokens reads of a LoadedModel
        d_vocab, bos_token_id = 100, 7
        tokenizer = None

    tokens = np.arange(40, dtype=np.int64).reshape(4, 10) + 10
    bos_first = [{"kind": "fixed_token", "positions": [0], "token_id": "bos"}]
    assert mod._transformed_tokens(LM(), tokens, bos_first) is None
    bos2 = mod._transformed_tokens(LM(), tokens, [{"kind": "fixed_token", "positions": [1], "token_id": "bos"}])
    assert (bos2[:, 1] == 7).all() and (bos2[:, [0, *range(2, 10)]] == tokens[:, [0, *range(2, 10)]]).all()
    rand = mod._transformed_tokens(LM(), tokens, [{"kind": "random_tokens", "positions": [0]}])
    assert (rand[:, 1:] == tokens[:, 1:]).all() and ((rand[:, 0] >= 0) & (rand[:, 0] < 100)).all()
    assert len(set(rand[:, 0].tolist())) > 1  # drawn per sequence
    again = mod._transformed_tokens(LM(), tokens, [{"kind": "random_tokens", "positions": [0]}])
    assert (again == rand).all()
    assert (tokens[:, 0] == np.arange(10, 50, 10)).all()  # the input is not modified
    # the massive-activation ratio of positions other than the first, by hand: the max over layers
    resid = [[1.0, 4.0, 1.0, 1.0], [2.0, 2.0, 2.0, 6.0]]  # layer 0: 0.5 / 4 / 0.5 / 0.5, layer 1: 0.6 x3 / 3
    assert mod._massive_by_position(resid, 4) == [0.6, 4.0, 0.6, 3.0]


def test_cpu_calibration_final_report_of_a_window_run_with_bos_second(tmp_path):
    """The final report of a (2-step) run trained with a window and BOS at position 2 carries the
    window statistics and a second measurement on inputs with BOS at position 2, where Sink_2 is
    measured on that BOS; Sink_k for the first ten keys comes with every report."""
    import numpy as np

    from sinkinterp.train import train
    from sinkinterp.train.testing import make_tiny_shards, tiny_train_config

    mod = load_script("analyses/cpu_calibration.py")
    shards = make_tiny_shards(tmp_path / "shards")
    cfg = tiny_train_config(shards, steps=2, eval_every=0, sink_every=0, model=dict(window=16),
                            data=dict(transforms=[{"kind": "fixed_token", "positions": [1], "token_id": "bos"}]))
    train(cfg, tmp_path / "run", verbose=False)
    final = mod.final_report(tmp_path / "run" / "checkpoints" / "step_0000002")
    assert final["bos_first"] is False and len(final["sink_by_key"]) == 10
    assert final["sink_by_key"][:2] == [round(final["sink1"], 2), round(final["sink2"], 2)]
    win = final["window_stats"]
    assert win["window"] == 16 and np.asarray(win["alpha_window_start"]).shape == (2, 4)
    moved = final["with_transforms"]
    assert moved["transforms"] == cfg.to_dict()["data"]["transforms"]
    assert len(moved["sink_by_key"]) == 4 and np.asarray(moved["alpha_by_key"]).shape == (2, 4, 4)
    assert len(moved["massive_ratio_by_key"]) == 4 and moved["massive_ratio_by_key"][0] == pytest.approx(
        moved["massive_ratio"], abs=1e-3)  # position 1 against the others: the usual ratio
    assert moved["massive_ratio"] > 0
    assert set(moved["interventions"]) == set(final["interventions"]) == {"ablate", "ablate[norenorm]", "zero_value"}


def test_cpu_calibration_slot_logits_held_and_learned(tmp_path, monkeypatch):
    """A sink-logit run's final report keeps the slot's logit per layer and head (the held value, or the
    learned parameter, a shared one repeated over the heads); the slot table names it, and a run whose
    snapshot predates it says the learned value was not kept. ``--add-heads`` fills a final.json that
    lacks the logits from the same model and refuses another one. The curves' figure draws the slot runs
    only, as a palette PNG, labelled by the held value or the learned logit's start."""
    from safetensors.torch import load_file

    from sinkinterp.train import train
    from sinkinterp.train.config import TrainConfig
    from sinkinterp.train.schedule import lr_at
    from sinkinterp.train.testing import make_tiny_shards, tiny_train_config

    mod = load_script("analyses/cpu_calibration.py")
    shards = make_tiny_shards(tmp_path / "shards")
    finals, runs = {}, {}
    for name, model in (("held", {"attn_bias": "sink_logit", "sink_logit_fixed": -2.0}),
                        ("learned", {"attn_bias": "sink_logit", "attn_bias_shared": True, "sink_logit_init": -1.0}),
                        ("plain", {})):
        cfg = tiny_train_config(shards, steps=2, eval_every=0, sink_every=0, model=model)
        train(cfg, tmp_path / name, verbose=False)
        finals[name] = mod.final_report(tmp_path / name / "checkpoints" / "step_0000002")
        runs[name] = (cfg.to_dict(), [])
    n_layers, n_heads = cfg.model.n_layers, cfg.model.n_heads
    assert finals["held"]["heads"]["slot_logit"] == [[-2.0] * n_heads] * n_layers
    assert finals["plain"]["heads"]["slot_logit"] is None
    state = load_file(tmp_path / "learned" / "checkpoints" / "step_0000002" / "model.safetensors")
    learned = [float(state[f"blocks.{layer}.attn.sink_logit"][0]) for layer in range(n_layers)]
    assert [row[0] for row in finals["learned"]["heads"]["slot_logit"]] == pytest.approx(learned, abs=1e-4)
    assert all(len(set(row)) == 1 and len(row) == n_heads for row in finals["learned"]["heads"]["slot_logit"])
    # the learning-rate sum comes from the run's config: the calibration runs' 6,000-step schedule here
    calib = json.loads(mod.BASE.read_text())
    calib["model"] = {**calib["model"], **runs["learned"][0]["model"]}
    runs["learned"] = (calib, [])
    old = json.loads(json.dumps(finals["learned"]))
    del old["heads"]["slot_logit"]
    finals["old"], runs["old"] = old, runs["learned"]
    page = "\n".join(mod._variants_section(finals, runs))
    rows = {"/".join(line[2:].split(" | ")[:2]): line for line in page.splitlines()
            if line[2:].split(" | ")[0] in finals}
    # the figure of the slot runs' curves: drawn by main (never by the page's text), linked by the section
    assert "(figures/cpu-calibration-slot.png)" in page
    monkeypatch.setattr(mod, "SLOT_FIG", tmp_path / "slot.png")
    curve = [{"step": s, "sink1": 1.0, "sink_bias": 2.0} for s in (0, 1, 2)]
    assert mod._slot_figure({n: (cfg, curve) for n, (cfg, _) in runs.items()}) == ["held", "learned", "old"]
    assert (tmp_path / "slot.png").read_bytes()[25] == 3  # PNG colour type 3: a palette
    assert mod._slot_key(runs["held"][0]) == ("held -2", -2.0)
    assert mod._slot_key(runs["learned"][0]) == ("learned from -1", -1.0)
    assert mod._slot_figure({"plain": runs["plain"]}) == [] and "(figures/cpu-calibration-slot.png)" not in "\n".join(
        mod._variants_section({"plain": finals["plain"]}, {"plain": runs["plain"]}))
    assert "| held | 0 | held -2.0 |" in rows["held/0"]
    assert f"| learned | 1 | learned {learned[1]:+.2f} / " in rows["learned/1"]
    assert "| old | 0 | learned: not kept |" in rows["old/0"]
    assert not any(key.startswith("plain/") for key in rows)
    lo, hi = min(map(min, finals["learned"]["heads"]["slot_logit"])), max(map(max, finals["learned"]["heads"]["slot_logit"]))
    calib_cfg = TrainConfig.from_dict(calib)
    reach = sum(lr_at(calib_cfg, step) for step in range(calib_cfg.steps))
    assert reach > 1.0
    assert f"`sink_logit_init`): learned {lo:+.2f} to {hi:+.2f} (from -1.0)." in page
    assert -1.01 < lo <= hi < -0.99  # two small updates from the start
    assert f"learning-rate sum ({reach:.2f})" in page and "old " not in page.split("Where the learned")[1]

    monkeypatch.setattr(mod, "DATA", tmp_path / "data")
    for name in ("learned", "plain"):
        (tmp_path / "data" / name).mkdir(parents=True)
    (tmp_path / "data" / "learned" / "final.json").write_text(json.dumps(old))
    assert mod.main(["--add-heads", f"learned={tmp_path / 'learned' / 'checkpoints' / 'step_0000002'}"]) == 0
    filled = json.loads((tmp_path / "data" / "learned" / "final.json").read_text())
    assert filled["heads"]["slot_logit"] == finals["learned"]["heads"]["slot_logit"]
    assert filled["heads_source"].endswith("step_0000002")
    assert filled["heads_source_sink"] == {"sink1": finals["learned"]["sink1"], "sink_bias": finals["learned"]["sink_bias"]}
    note = "\n".join(mod._variants_section({"learned": filled}, {"learned": runs["learned"]}))
    assert f"- learned: `{filled['heads_source']}`, Sink_1 {old['sink1']:.2f} / {old['sink1']:.2f}" in note
    assert "another copy" not in page  # the runs measured on their own checkpoints say nothing
    # another model (no slot: Sink_* None against a number) is refused and the file left as it was
    (tmp_path / "data" / "plain" / "final.json").write_text(json.dumps(old))
    assert mod.main(["--add-heads", f"plain={tmp_path / 'plain' / 'checkpoints' / 'step_0000002'}"]) == 2
    assert json.loads((tmp_path / "data" / "plain" / "final.json").read_text()) == old
    assert mod.main(["--add-heads", "missing=toy-softmax"]) == 2
    # a copy further off than 0.5 points (the same recipe trained on another machine) only with --within
    shifted = json.loads(json.dumps(finals["held"]))
    del shifted["heads"]["slot_logit"]
    shifted["sink1"] += 1.0
    (tmp_path / "data" / "held").mkdir()
    (tmp_path / "data" / "held" / "final.json").write_text(json.dumps(shifted))
    held_ckpt = f"held={tmp_path / 'held' / 'checkpoints' / 'step_0000002'}"
    assert mod.main(["--add-heads", held_ckpt]) == 2
    assert mod.main(["--add-heads", held_ckpt, "--within", "x"]) == 2
    assert mod.main(["--add-heads", held_ckpt, "--within", "-1"]) == 2
    assert "slot_logit" not in json.loads((tmp_path / "data" / "held" / "final.json").read_text())["heads"]
    assert mod.main(["--add-heads", held_ckpt, "--within", "1.5"]) == 0
    filled = json.loads((tmp_path / "data" / "held" / "final.json").read_text())
    assert filled["heads"]["slot_logit"] == finals["held"]["heads"]["slot_logit"]
    assert filled["sink1"] == shifted["sink1"] and filled["heads_source_sink"]["sink1"] == finals["held"]["sink1"]


def test_cpu_calibration_recipes_make_valid_configs_and_match_their_snapshots():
    """Every toy-scale recipe builds a valid TrainConfig; every committed snapshot was trained with
    exactly its recipe's overrides, so ``--train NAME`` reproduces it; every paper row names recipes."""
    from sinkinterp.train.cli import load_config

    mod = load_script("analyses/cpu_calibration.py")
    base = load_config(mod.BASE).to_dict()
    for name, sets in mod.RECIPES.items():
        assert sorted(mod._overrides(load_config(mod.BASE, sets).to_dict(), base)) == sorted(sets), name
    snapshots = sorted(p.parent.name for p in mod.DATA.glob("*/train_config.json"))
    assert snapshots, "no committed snapshots"
    for name in snapshots:
        cfg = json.loads((mod.DATA / name / "train_config.json").read_text())
        got = [s for s in mod._overrides(cfg, base) if not s.startswith("device=")]
        assert sorted(got) == sorted(mod.RECIPES[name]), name
    assert {n for _, names, _ in mod.PAPER_ROWS for n in names} <= set(mod.RECIPES)


def test_cpu_calibration_total_decay_sums_the_schedule():
    """The weight-decay table's total decay is sum_t lr_t * wd over the run's updates: for the
    paper's constant schedule 4e-4 * (19,900 + 101 / 2) * wd; for ours (cosine 1e-3 -> 1e-4) half
    way between the two ends plus the warm-up's shortfall; every WD_RUNS / WD_LONG_RUNS name is a
    recipe with that weight decay."""
    from sinkinterp.train.cli import load_config

    mod = load_script("analyses/cpu_calibration.py")
    assert mod._paper_decay_total(2.0) == pytest.approx(2.0 * 4e-4 * (19_900 + 50.5), rel=1e-12)
    assert mod._paper_decay_total(0.0) == 0.0
    base = json.loads(mod.BASE.read_text())
    ours = mod._decay_total(base, weight_decay=1.0)
    # cosine from lr to lr / 10 over 5,900 updates averages 0.55 lr exactly (the cosine terms cancel in pairs); the 100 warm-up updates give 50.5 lr
    assert ours == pytest.approx(1e-3 * (5_900 * 0.55 + 50.5), rel=1e-9)
    assert mod._decay_total(base, weight_decay=2.0, steps=12_000) == pytest.approx(
        2.0 * 1e-3 * (11_900 * 0.55 + 50.5), rel=1e-9)
    for table in (mod.WD_RUNS, mod.WD_LONG_RUNS):
        for wd, names in table.items():
            for name in names:
                assert load_config(mod.BASE, mod.RECIPES[name]).weight_decay == wd, name


def test_cpu_calibration_long_runs_verdicts():
    """The paragraphs on the longer weight-decay runs say what the seeds say: above / below every
    seed of the shorter runs or within their spread, a shorter run of the same total decay (within
    25%) beside each, and where the curve at the longer length peaks."""
    mod = load_script("analyses/cpu_calibration.py")

    def pts(decay: float, *sinks: float) -> list[dict]:  # tracking ends at half the report, the peak at twice it
        return [dict(sink1=s, decay=decay, steps=6000, val=4.0, massive=3.0, tracking=s / 2, peak=2 * s,
                     peak_step=3000) for s in sinks]

    short = {0.5: pts(1.65, 18.0, 17.0), 1.0: pts(3.3, 10.0, 42.0), 2.0: pts(6.6, 23.0, 55.0), 5.0: pts(16.5, 18.0, 0.0)}
    long = {wd: [dict(p, steps=12000) for p in ps] for wd, ps in
            {0.5: pts(3.3, 30.0, 35.0), 2.0: pts(13.2, 72.0, 75.0), 5.0: pts(33.0, 1.0, 0.0)}.items()}
    text = "\n".join(mod._wd_long_paragraphs(short, long))
    assert "at wd 0.5 (total decay 3.3;" in text and "30.0 / 35.0% (higher in every seed than 18.0 / 17.0%" in text
    assert "1.0 / 0.0% (within the spread of 18.0 / 0.0%" in text
    # wd 0.5 x 12k has wd 1 x 6k's total decay; wd 2 x 12k is within 25% of wd 5 x 6k; wd 5 x 12k has no twin
    assert "wd 0.5 for 12,000 steps (total decay 3.3) sinks 30.0 / 35.0% and wd 1 for 6,000" in text
    assert "wd 2 for 12,000 steps (total decay 13.2) sinks 72.0 / 75.0% and wd 5 for 6,000 (total decay 16.5) " \
        "18.0 / 0.0%: higher in every seed" in text
    assert "wd 5 for 12,000 steps" not in text
    assert "Mean Sink_1 32.5 / 73.5 / 0.5% at wd 0.5 / 2 / 5: the sink rises to a peak at wd 2" in text
    # a tracking Sink_1 that ends more than a third below its peak in every seed (here at a quarter) is said
    assert "On the tracking windows the sink formed and then lost more than a third of its peak in every seed: " \
        "at wd 0.5 it peaked at " \
        "60.0 (3,000) / 70.0 (3,000) and ended at 15.0 / 17.5%; at wd 2" in text
    assert "at wd 5 it peaked" not in text  # a peak of 0 in seed 1: nothing faded
    long[0.5][0]["tracking"] = 45.0  # seed 0 ends at three quarters of its peak: wd 0.5 no longer counts
    text = "\n".join(mod._wd_long_paragraphs(short, long))
    assert "at wd 0.5 it peaked" not in text and "in every seed: at wd 2 it peaked" in text
    assert mod._wd_long_paragraphs(short, {}) == []
    long[2.0][1]["val"] = None  # a run without a val loss on the seed-0 windows: the mean is over the others
    assert "mean val loss 4.000 / 4.000 / 4.000" in "\n".join(mod._wd_long_paragraphs(short, long))
    for p in long[2.0]:
        p["val"] = None
    assert "mean val loss 4.000 / - / 4.000" in "\n".join(mod._wd_long_paragraphs(short, long))


def test_cpu_calibration_wd_points_onset_and_peak(tmp_path, monkeypatch):
    """The weight-decay table's onset is the first tracked step whose Sink_1 reaches 5% as the table
    rounds it (4.96 counts, 4.94 does not), never where none does; the peak is the largest tracked
    Sink_1 with its step; runs without a final.json are left out."""
    mod = load_script("analyses/cpu_calibration.py")
    monkeypatch.setattr(mod, "DATA", tmp_path)
    cfg = json.loads(mod.BASE.read_text())
    final = {"sink1": 12.5, "massive_ratio": 3.0, "val_loss_seed0_windows": 4.1,
             "interventions": {"ablate": {"delta_loss": 0.05}}}
    tracks = {"a": [0.0, 4.94, 4.96, 9.0, 7.0], "b": [0.0, 1.0, 4.94, 2.0, 0.5], "c": [0.0, 8.0, 8.0, 8.0, 8.0]}
    runs = {}
    for name, sinks in tracks.items():
        runs[name] = (cfg, [{"step": 250 * i, "sink1": v} for i, v in enumerate(sinks)])
        if name != "c":
            (tmp_path / name).mkdir()
            (tmp_path / name / "final.json").write_text(json.dumps(final))
    got = mod._wd_points(runs, {0.5: ["a", "b", "c"]})[0.5]
    assert [p["run"] for p in got] == ["a", "b"]
    assert [(p["onset"], p["peak"], p["peak_step"]) for p in got] == [(500, 9.0, 750), (None, 4.94, 500)]
    assert got[0]["tracking"] == 7.0 and got[0]["sink1"] == 12.5 and got[0]["ablate"] == 0.05
    assert mod._onsets(got) == "500 / never" and mod._peaks(got) == "9.0 (750) / 4.9 (500)"


def test_cpu_calibration_train_commands(capsys):
    mod = load_script("analyses/cpu_calibration.py")
    train, snap = mod.train_commands(["c_kvsharedbos"])
    assert train[2:8] == ["sinkinterp.train", "train", "configs/cpu_calib_wd05.json", "--out", "runs/cpu/c_kvsharedbos",
                          "--quiet"]
    assert train[8:] == ["--set", mod.BOS, "--set", 'model.attn_bias="kv"', "--set", "model.attn_bias_shared=true"]
    assert snap[1:] == ["analyses/cpu_calibration.py", "--snapshot", "runs/cpu/c_kvsharedbos"]
    assert mod.main(["--train", "c_nope"]) == 2
    assert "--train takes run names from RECIPES" in capsys.readouterr().err
    assert mod.main(["--train"]) == 2
    assert mod.main(["--train", "c_bos", "--dry-run"]) == 0
    assert "--snapshot runs/cpu/c_bos" in capsys.readouterr().out


def test_streaming_llm_page_reports_each_cell(tmp_path, monkeypatch):
    """The StreamingLLM page's cells are the stream runs' losses past the training length; the k*/v*
    model gets no stream-distance setting (k* is not rotated); the figures are copied."""
    mod = load_script("analyses/streaming_llm.py")
    monkeypatch.chdir(tmp_path)
    common = [{"256": "70", "16": "2"}.get(a, a) for a in mod.COMMON]  # 2 streams of 70 tokens
    for name, value in (("DOC", tmp_path / "page.md"), ("OUT", tmp_path / "out"), ("FIGS", tmp_path / "figs"),
                        ("COMMON", common), ("WINDOWS", (4,))):
        monkeypatch.setattr(mod, name, value)
    assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    for model in mod.MODELS:
        rows = {r["name"]: r for r in json.loads((tmp_path / "out" / model / "results.json").read_text())["settings"]}
        assert ("4+1,original" in rows) == (model != "toy-kv-bias")
        assert all(r["params"]["length"] == 70 and r["params"]["num_seqs"] == 2 for r in rows.values())
        assert (tmp_path / "figs" / f"streaming-llm-{model}.png").read_bytes()[:4] == b"\x89PNG"
    soft = {r["name"]: r for r in json.loads((tmp_path / "out" / "toy-softmax" / "results.json").read_text())["settings"]}
    kv = {r["name"]: r for r in json.loads((tmp_path / "out" / "toy-kv-bias" / "results.json").read_text())["settings"]}
    sig = {r["name"]: r for r in json.loads((tmp_path / "out" / "toy-sigmoid" / "results.json").read_text())["settings"]}
    assert (f"| `4+1` | {soft['4+1']['mean_nll_past']:.3f} | {kv['4+1']['mean_nll_past']:.3f} | "
            f"{sig['4+1']['mean_nll_past']:.3f} |") in page
    assert f"| `4+1,original` | {soft['4+1,original']['mean_nll_past']:.3f} | n/a |" in page
    assert "--num-seqs 2" in page and "How to read it" in page


def test_sink_vs_length_page_reports_the_lengths_runs(tmp_path, monkeypatch):
    """The page's cells are the `sinkinterp lengths` results at each length; the pretrained part runs
    on whatever model smollm2_gguf_path names (here toy-softmax, to keep the test small) and is
    replaced by a note when none is installed."""
    import sinkinterp.loading

    mod = load_script("analyses/sink_vs_length.py")
    for name, value in (("DOC", tmp_path / "page.md"), ("FIG", tmp_path / "fig.png"), ("OUT", tmp_path / "out"),
                        ("TOY_N", 3), ("BIG_T", 64), ("BIG_N", 2)):
        monkeypatch.setattr(mod, name, value)
    monkeypatch.setattr(sinkinterp.loading, "smollm2_gguf_path", lambda: "toy-softmax")
    assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    soft = json.loads((tmp_path / "out" / "toy-softmax" / "results.json").read_text())
    kv = json.loads((tmp_path / "out" / "toy-kv-bias" / "results.json").read_text())
    i = soft["lengths"].index(32)
    assert soft["num_seqs"] == 3 and soft["prepend_bos"] is True
    assert f"| toy-softmax | 32 | {soft['sink_pct'][i][0]:.1f} | - |" in page
    assert f"| toy-kv-bias | 32 | {kv['sink_pct'][i][0]:.1f} | {kv['sink_bias_pct'][i]:.1f} |" in page
    nat = json.loads((tmp_path / "out" / "smollm2-natural" / "results.json").read_text())
    assert nat["table_lengths"] == [10, 16, 32, 64] and nat["prepend_bos"] is False
    assert f"| natural | 64 | {nat['sink_pct'][nat['lengths'].index(64)][0]:.1f} |" in page
    assert "--lengths 10 16 32 64" in page and "smollm2_gguf_path as p" in page
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(sinkinterp.loading, "smollm2_gguf_path", lambda: None)
    assert mod.main() == 0
    assert "SmolLM2 part not run here" in (tmp_path / "page.md").read_text()


def test_massive_activation_smollm2_measures_and_renders(tmp_path, monkeypatch):
    """`_measure_all` runs on any loadable model (here toy-softmax, 2 sequences); the page's numbers
    come from its results (a crafted 4-layer result with a massive activation from layer 2 on)."""
    import sinkinterp.loading

    mod = load_script("analyses/massive_activation_smollm2.py")
    monkeypatch.setattr(mod, "NUM_SEQS", 2)
    res, config = mod._measure_all("toy-softmax")
    assert len(res["resid_first"]) == 5 and len(res["normalize_per_layer"]) == 4
    assert [x["name"] for x in res["interventions"]][0] == "normalize_resid" and config["num_seqs"] == 2
    nu = res["neurons"]
    assert 1 <= nu["k"] <= 8 and len(nu["top"]) == 8 and len(nu["control"]) == nu["k"]
    assert not set(nu["control"]) & {t["neuron"] for t in nu["top"][:nu["k"]]}
    assert nu["share"][7] >= nu["share"][0] - 1e-9 or nu["k"] == 8
    crafted = {
        "resid_first": [1.0, 6.0, 500.0, 480.0, 90.0], "resid_rest": [1.0, 2.0, 4.0, 5.0, 6.0],
        "massive_ratio": [1.0, 3.0, 125.0, 96.0, 15.0], "hooks": [],
        "key_first": [1.0] * 4, "key_rest": [4.0] * 4, "value_first": [1.0] * 4, "value_rest": [2.0] * 4,
        "sink1": 60.0, "sublayers": {"attn_out": [[1.0, 1.0]] * 4,
                                     "mlp_out": [[1.0, 1.0], [490.0, 3.0], [1.0, 1.0], [400.0, 2.0]]},
        "interventions": [{"name": n, "description": n, "delta_loss": d, "loss_base": 3.0, "sink1_after": a}
                          for n, d, a in (("normalize_resid", 2.0, 20.0), ("scale_resid", 1.0, 10.0),
                                          ("zero_value", 0.3, 40.0), ("ablate", 0.1, 0.0))],
        "normalize_per_layer": [0.0, 0.5, 3.0, 0.2],
        "neurons": {"layer": 1, "k": 1, "share": [0.97] * 8, "control": [40],
                    "top": [{"neuron": 7, "act_first": 300.0, "act_rest": 0.5, "write": 480.0}] * 5,
                    "interventions": [{"name": "a", "delta_loss": 1.5, "sink1_after": 25.0, "massive_ratio_after": 3.0},
                                      {"name": "b", "delta_loss": 0.001, "sink1_after": 60.0,
                                       "massive_ratio_after": 125.0}]},
    }
    monkeypatch.setattr(mod, "_measure_all", lambda path: (crafted, {"versions": {}, "git_commit": "x"}))
    for name, value in (("DOC", tmp_path / "page.md"), ("FIG", tmp_path / "fig.png"), ("OUT", tmp_path / "out")):
        monkeypatch.setattr(mod, name, value)
    monkeypatch.setattr(sinkinterp.loading, "smollm2_gguf_path", lambda: "some.gguf")
    assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    assert "the mlp_out of layer 1 writes the massive one (490 at token 1 against 3.0 elsewhere): ratio 125 at layer 2" in page
    assert "layer 3 takes most of it away (||h_1|| 480 -> 90)" in page
    assert "costs +2.00 nats and lowers Sink_1 from 60.0% to 20.0%; halving it costs +1.00" in page
    assert "+0.50 to +0.50 at layers 1-1 (the first phase)" in page and "1 layers cost more alone" in page
    assert "**1 neuron writes it.** In layer 1's MLP, neuron 7 (activations 300 at token 1 against 0.5" in page
    assert "Silencing them at token 1 only costs +1.50 nats, takes the largest massive ratio to 3.0" in page
    assert "| the top 1 writers 7 | +1.500 | 25.0 | 3.0 |" in page
    assert "key norm is 0.25-0.25x" in page and (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(sinkinterp.loading, "smollm2_gguf_path", lambda: None)
    assert mod.main() == 0  # skipped without the wheel


def test_streaming_past_length_page_and_reuse(tmp_path, monkeypatch, capsys):
    """The past-the-training-length page on a stand-in (toy-softmax, a 'training length' of 32 in
    48-token streams): its cells are the stream runs' and the one-forward losses over the targets
    inside and past that length; a second run with the same tokens reuses the stream results."""
    import sinkinterp.cli
    import sinkinterp.loading

    mod = load_script("analyses/streaming_past_length.py")
    text = (ROOT / "sinkinterp" / "assets" / "natural_text.txt").read_text()
    books = []
    for i, part in enumerate((text[:4000], text[4000:8000])):
        books.append(tmp_path / f"book{i}.txt")
        books[-1].write_text(part)
    for name, value in (("DOC", tmp_path / "page.md"), ("FIG", tmp_path / "fig.png"), ("OUT", tmp_path / "out"),
                        ("BOOKS", books), ("N_CTX", 32), ("LENGTH", 48), ("FROM", 8), ("W", 4), ("K", 1),
                        ("CACHE", ["4+1", "4+1,original"])):
        monkeypatch.setattr(mod, name, value)
    monkeypatch.setattr(sinkinterp.loading, "smollm2_gguf_path", lambda: "toy-softmax")
    assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    rows = {r["name"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["settings"]}
    assert set(rows) == {"4+1", "4+1,original"} and rows["4+1"]["params"]["length"] == 48
    curve = rows["4+1,original"]["curve"]
    within, past = sum(curve[7:31]) / 24, sum(curve[31:47]) / 16
    assert f"| `4+1,original` | {within:.3f} | {past:.3f} | {past - within:+.3f} |" in page
    full = np.array(json.loads((tmp_path / "out" / "full_context.json").read_text())["per_stream"])
    assert full.shape == (2, 47)
    assert f"| full context, one forward | {full.mean(0)[7:31].mean():.3f} | {full.mean(0)[31:47].mean():.3f} |" in page
    assert "--tokens" in page and "smollm2_gguf_path as p" in page
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()

    def no_stream(args):
        raise AssertionError("the stream run should have been reused")

    monkeypatch.setattr(sinkinterp.cli, "main", no_stream)
    assert mod.main() == 0
    assert "reusing" in capsys.readouterr().out
    books[0].unlink()
    assert mod.main() == 0 and "Debian corpus is not built" in capsys.readouterr().out


def test_streaming_past_length_finding_follows_its_numbers():
    """The re-numbering finding says the cost grows with the distance only where every bin is above the
    one before, and that re-numbering does not help where keeping the stream positions costs nothing."""
    mod = load_script("analyses/streaming_past_length.py")
    grows = mod._renumbering_finding(0.182, 0.441, 0.77, [-0.01, 0.12, 0.268, 0.314, 0.441])
    assert grows.startswith("Re-numbering matters, and more the further back the kept tokens sit: keeping them at "
                            "their stream positions costs +0.182 nats inside the training length and +0.441 past it, "
                            "and they draw 77% of the attention they draw re-numbered.")
    assert "grows with the distance bin by bin (-0.010 / +0.120 / +0.268 / +0.314 / +0.441)" in grows
    flat = mod._renumbering_finding(0.2, 0.3, 0.8, [0.1, 0.3, 0.25, 0.4])
    assert "does not grow bin by bin with the distance (+0.100 / +0.300 / +0.250 / +0.400)" in flat
    assert "further back" not in flat and "grows with the distance" not in flat
    none = mod._renumbering_finding(-0.01, 0.0, 1.02, [0.0, -0.01])
    assert none == ("Re-numbering the kept first tokens does not help here: keeping them at their stream positions "
                    "costs -0.010 nats inside the training length and +0.000 past it, and they draw 102% of the "
                    "attention they draw re-numbered.")


def test_token_sinks_page_reports_the_tokens_runs(tmp_path, monkeypatch):
    """The page's rows are the `sinkinterp tokens` results (top tokens by sink rate, the first token's
    row); the pretrained part runs on whatever model smollm2_gguf_path names (here toy-softmax) and is
    replaced by a note when none is installed."""
    import sinkinterp.loading

    mod = load_script("analyses/token_sinks.py")
    for name, value in (("DOC", tmp_path / "page.md"), ("FIG", tmp_path / "fig.png"), ("OUT", tmp_path / "out"),
                        ("TOY_N", 6), ("BIG_T", 64), ("BIG_N", 6), ("MIN_COUNT", 3)):
        monkeypatch.setattr(mod, name, value)
    monkeypatch.setattr(sinkinterp.loading, "smollm2_gguf_path", lambda: "toy-softmax")
    assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    soft = json.loads((tmp_path / "out" / "toy-softmax" / "results.json").read_text())
    t = soft["tokens"]
    i = mod._top(soft)[0]
    assert t["count"][i] >= 3 and t["sink_rate"][i] == max(r for r, c in zip(t["sink_rate"], t["count"]) if c >= 3)
    assert f"| toy-softmax | `{t['text'][i]!r}` | {t['count'][i]} | {t['sink_rate'][i]:.2f} |" in page
    assert f"| toy-softmax | (first token) | 6 | {soft['sink1_pct']:.2f} |" in page
    first = json.loads((tmp_path / "out" / "smollm2-first" / "results.json").read_text())
    bos = json.loads((tmp_path / "out" / "smollm2-bos" / "results.json").read_text())
    assert first["first_occurrence"] is True and bos["prepend_bos"] is True
    assert sum(first["tokens"]["count"]) < sum(bos["tokens"]["count"])  # repeats left out
    assert "--first-occurrence" in page and "smollm2_gguf_path as p" in page
    every = json.loads((tmp_path / "out" / "smollm2-all" / "results.json").read_text())
    top = mod._top(every)
    if top and every["tokens"]["sink_rate"][top[0]] > 0:
        assert f"The strongest sink past the first position here is `{every['tokens']['text'][top[0]]!r}`" in page
    else:
        assert "No token seen 3 times or more sinks anywhere past the first position here." in page
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(sinkinterp.loading, "smollm2_gguf_path", lambda: None)
    assert mod.main() == 0
    assert "SmolLM2 part not run here" in (tmp_path / "page.md").read_text()


def test_token_sinks_head_split_matches_the_cached_pattern():
    """head_split's means are those of the head's cached pattern around each sequence's first
    occurrence of the token (toy-softmax, the most frequent token past position 1)."""
    import torch

    from sinkinterp.inputs import make_tokens
    from sinkinterp.loading import load_model

    mod = load_script("analyses/token_sinks.py")
    lm = load_model("toy-softmax")
    ids = make_tokens("natural", seq_len=32, num_seqs=5, seed=1, vocab_size=lm.d_vocab, tokenizer=lm.tokenizer,
                      prepend_bos=True, bos_token_id=lm.bos_token_id)
    tok = int(np.bincount(ids[:, 1:].ravel()).argmax())
    got = mod.head_split(lm.model, ids, 2, 1, tok, batch_size=2)
    with torch.no_grad():
        _, cache = lm.model.run_with_cache(torch.as_tensor(ids))
    p = cache["blocks.2.attn.hook_pattern"][:, 1].double()
    before, on_it, on_1, later = [], [], [], []
    for s in range(5):
        pos = [i for i in range(1, 32) if ids[s, i] == tok]
        if pos:
            f = pos[0]
            before += [float(p[s, 1:f, 0].mean())] if f > 1 else []
            on_it.append(float(p[s, f:, f].mean()))
            on_1.append(float(p[s, f:, 0].mean()))
            later += [float(p[s, q:, q].mean()) for q in pos[1:]]
    assert got["sequences"] == len(on_it) > 0 and got["layer"] == 2 and got["head"] == 1
    assert got["after_on_it"] == pytest.approx(np.mean(on_it), abs=1e-6)
    assert got["after_on_1"] == pytest.approx(np.mean(on_1), abs=1e-6)
    assert got["before_on_1"] == pytest.approx(np.mean(before), abs=1e-6)
    assert got["later_on_themselves"] == (pytest.approx(np.mean(later), abs=1e-6) if later else None)


def test_token_sink_interventions_specs_and_table_follow_the_cli_names():
    """The page's --do specs parse to at_position edits at the first ' the' and its two neighbours, and
    its tables put each result on its own row (names from the specs, in the order given)."""
    from sinkinterp.cli_intervene import parse_spec

    mod = load_script("analyses/token_sink_interventions.py")
    specs = [*mod.specs("ablate"), *mod.specs("zero_value"), "ablate", "zero_value"]
    inters = [parse_spec(s, 0) for s in specs]  # the text is not resolved: token 0
    assert [i.name for i in inters] == ["ablate@first_of[0]", "ablate@first_of[0+1]", "ablate@first_of[0-1]",
                                        "zero_value@first_of[0]", "zero_value@first_of[0+1]",
                                        "zero_value@first_of[0-1]", "ablate", "zero_value"]
    results = {"interventions": [
        {"name": i.name, "delta_loss": k / 100, "delta_loss_from_edit": k / 10 if k < 6 else None,
         "loss_from_edit_base": 3.0 if k < 6 else None, **({"edited_sequences": 60 - k} if k < 6 else {})}
        for k, i in enumerate(inters)]}
    rows = mod._table(results)[2:]
    assert len(rows) == 8
    assert rows[1].startswith("| key removed from later queries: the token after it | 59 | +0.0100 | +0.1000 |")
    assert rows[5].startswith("| value set to 0: the token before it | 55 | +0.0500 | +0.5000 |")
    assert rows[7] == f"| value set to 0: token 1 (for scale) | {mod.N} | +0.0700 | - | - |"
    assert mod._ratio(results, 0) == (0.0, pytest.approx(0.15))
    one = {"interventions": results["interventions"][:3] + results["interventions"][6:7]}
    rows = mod._table(one, ("ablate",))[2:]
    assert len(rows) == 4 and rows[3].startswith("| key removed from later queries: token 1 (for scale) |")


GPU_LOG = """device setup: transformer-lens ?
NVIDIA H200, 143771 MiB, 580.159.04
train_call: 2026-12-04T13:47:40Z commit abc1234 device cuda budget 190s
== train-kv_bias_small: limit 108s: python3 -m sinkinterp.train train configs/kv_bias_small.json
[train] step=3168 train_loss=2.206
[train] SIGTERM: checkpoint saved at step 3168; the same command resumes the run
== train-kv_bias_small: rc=124 after 111s (time limit)
== export-bf16: rc=0 after 16s
"""


def test_gpu_reference_reads_the_call_log_and_compares_at_the_reference_steps():
    mod = load_script("analyses/gpu_reference.py")
    facts = mod.device_facts(GPU_LOG)
    assert facts["gpu"] == "NVIDIA H200" and facts["gpu_memory_mib"] == 143771 and facts["budget_s"] == 190
    assert facts["started"] == "2026-12-04T13:47:40Z" and facts["stopped"] == {"signal": "SIGTERM", "step": 3168}
    assert facts["steps"] == [{"name": "train-kv_bias_small", "rc": 124, "seconds": 111, "time_limit": True},
                              {"name": "export-bf16", "rc": 0, "seconds": 16, "time_limit": False}]
    rows = [{"step": 0, "sink_bias": 0.0}, {"step": 1000, "sink_bias": 13.5, "tokens_per_s": 5e4, "mfu": 0.01},
            {"step": 1050, "tokens_per_s": 2e6, "mfu": 0.2}, {"step": 1100, "tokens_per_s": 1e6, "mfu": 0.1},
            {"step": 1150, "tokens_per_s": 3e6, "mfu": 0.3}]
    assert mod.comparison_rows("kv_bias_small", rows) == ["| kv_bias_small | Sink_* | 1,000 | 12 | 13.50 |",
                                                          "| kv_bias_small | Sink_* | 3,000 | 23 | not reached |"]
    assert mod.comparison_rows("unknown_run", rows) == []
    # the first interval (the compile) is left out of the medians
    assert mod.throughput(rows) == {"tokens_per_s": 2e6, "intervals": 3, "mfu": 0.2}


def test_gpu_reference_page_from_the_committed_snapshots(tmp_path, monkeypatch):
    mod = load_script("analyses/gpu_reference.py")
    monkeypatch.setattr(mod, "DOC", tmp_path / "page.md")
    monkeypatch.setattr(mod, "FIG", tmp_path / "fig.png")
    monkeypatch.setattr(mod, "HEADS_FIG", tmp_path / "heads.png")
    monkeypatch.setattr(mod, "MASSIVE_FIG", tmp_path / "massive.png")
    assert mod.main(["--snapshot", str(tmp_path)]) == 2  # triples only
    assert mod.main(["--snapshot", str(tmp_path), str(tmp_path), str(tmp_path / "log.txt")]) == 2  # no run there
    assert mod.main([]) == 0
    page = (tmp_path / "page.md").read_text()
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    assert (tmp_path / "heads.png").stat().st_size > 10_000 and "figures/gpu-reference-heads.png" in page
    if any((folder / "massive.json").is_file() for folder in mod.DATA.glob("*")):
        assert (tmp_path / "massive.png").stat().st_size > 10_000 and "figures/gpu-reference-massive.png" in page
    for folder in sorted(mod.DATA.glob("*")):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in rows if r.get("sink1") is not None][-1]
        row = next(line for line in page.splitlines() if line.startswith(f"| {folder.name} | `configs/"))
        assert f"| {last['sink1']:.2f} |" in row and f"{rows[-1]['step']:,} of 9,000" in row
        report = json.loads((folder / "report.json").read_text())
        rest = report["heads"]["qk"]["logit_q_krest"][0]
        assert f"| {folder.name} | 0 | " in page and f"{sum(rest) / len(rest):+.2f} | {min(rest):+.2f} / {max(rest):+.2f} |" in page
        step = json.loads((folder / "device.json").read_text())["model_step"]
        final = next(line for line in page.splitlines() if line.startswith(f"| {folder.name} | {step:,} |"))
        assert f"| {report['sink1']:.2f} |" in final and f"| {report['massive_ratio']:.2f} |" in final
        if (folder / "intervene.json").is_file():
            iv = json.loads((folder / "intervene.json").read_text())
            for r in iv["interventions"]:
                assert f"| {folder.name} | `{r['name']}` | {r['description']} | {r['delta_loss']:+.4f} |" in page
            assert iv["command"].startswith("sinkinterp intervene --model MODEL_DIR") and iv["command"] in page
        if (folder / "per_head.json").is_file():
            tab = json.loads((folder / "per_head.json").read_text())
            for iv in tab["interventions"]:
                best = max((v, li, hi) for li, layer in enumerate(iv["per_head_delta_loss"]) for hi, v in enumerate(layer))
                assert f"| {folder.name} | `{iv['name']}` | {iv['delta_loss']:+.4f} | L{best[1]}H{best[2]} | {best[0]:+.4f} |" in page
        if (folder / "tokens.json").is_file():
            tab = json.loads((folder / "tokens.json").read_text())
            assert len(tab["top"]) == 10 and tab["command"] in page
            first = tab["top"][0]
            assert f"| {first['id']} | {first['count']} | {first['sink_rate']:.2f} |" in page
        if (folder / "inputs.json").is_file():
            tab = json.loads((folder / "inputs.json").read_text())
            assert [r["inputs"] for r in tab["rows"]] == list(mod.INPUT_KINDS) and tab["command"] in page
            for r in tab["rows"]:
                assert f"| {folder.name} | {r['inputs']} | {r['sink1']:.2f} | {r['sink2']:.2f} |" in page
            natural = next(r for r in tab["rows"] if r["inputs"] == "natural")
            sweep = dict(zip(natural["eps_sweep"]["eps"], natural["eps_sweep"]["sink_bias"] or natural["eps_sweep"]["sink1"]))
            assert abs(sweep[0.3] - (natural["sink_bias"] or natural["sink1"])) < 1e-6  # the sweep holds eps 0.3 itself
            assert any(line.startswith(f"| {folder.name} | {sweep[0.05]:.2f} | {sweep[0.1]:.2f} |") for line in page.splitlines())
        if (folder / "massive.json").is_file():
            res = json.loads((folder / "massive.json").read_text())["results"]
            ratio = " | ".join(f"{a:.0f} / {b:.0f} ({r:.1f})" for a, b, r in
                               zip(res["resid_first"], res["resid_rest"], res["massive_ratio"]))
            assert f"| {folder.name} | {ratio} |" in page
            top1 = res["neurons"]["top1"]
            assert f"| {top1['delta_loss']:+.3f} | {top1['sink1_after']:.1f} | {top1['massive_ratio_after']:.1f} |" in page
            a = res["alpha1"]
            li, hi = max(((li, hi) for li in range(len(a)) for hi in range(len(a[li]))), key=lambda t: a[t[0]][t[1]])
            if a[li][hi] >= mod.ALPHA_SHOWN:  # the strongest head, before and after its writer is silenced
                assert f"| {folder.name} | L{li}H{hi} | {a[li][hi]:.3f} | {top1['alpha1_after'][li][hi]:.3f} |" in page
        if (folder / "lengths.json").is_file():
            tab = json.loads((folder / "lengths.json").read_text())
            assert [r["length"] for r in tab["rows"]] == mod.LENGTHS and tab["command"] in page
            for r in tab["rows"]:
                assert f"| {folder.name} | {r['length']} | {r['sink1']:.2f} |" in page


def test_gpu_reference_lengths_table_keeps_the_table_lengths():
    mod = load_script("analyses/gpu_reference.py")
    result = {"eps": 0.3, "num_seqs": 2, "seq_len": 8, "lengths": [2, 3, 4, 8], "table_lengths": [4, 8],
              "sink_pct": [[10.0, 1.0], [20.0, 2.0], [30.0, 3.0], [40.0, 4.0]], "sink_bias_pct": None,
              "mean_alpha1_by_layer": [[0.5, 0.5], [0.4, 0.2], [0.3, 0.1], [0.2, 0.0]],
              "max_massive_ratio": [1.0, 2.0, 3.0, 4.0]}
    tab = mod.lengths_table(result)
    assert tab["rows"] == [{"length": 4, "sink1": 30.0, "sink_bias": None, "mean_alpha1": 0.2, "massive_ratio": 3.0},
                           {"length": 8, "sink1": 40.0, "sink_bias": None, "mean_alpha1": 0.1, "massive_ratio": 4.0}]
    assert mod.main(["--lengths", "x"]) == 2


def test_gpu_reference_key_value_refuses_bad_arguments(tmp_path, capsys):
    mod = load_script("analyses/gpu_reference.py")
    assert mod.main(["--key-value", "baseline_small_wd05"]) == 2
    assert mod.main(["--key-value", "no_such_run", str(tmp_path)]) == 2
    assert "snapshot no_such_run first" in capsys.readouterr().err
    cmds = mod.key_value_commands("M", tmp_path, has_slot=True)
    assert cmds["intervene"][cmds["intervene"].index("--do") + 1:][-4:-2] == ["ablate_bias", "bias_to_first"]
    assert "ablate_bias" not in mod.key_value_commands("M", tmp_path, has_slot=False)["intervene"]


def test_gpu_reference_massive_step_on_a_shipped_model(tmp_path, monkeypatch):
    """``--massive`` runs ``sinkinterp massive`` on a sinkinterp checkpoint folder and keeps its results
    and settings as massive.json."""
    mod = load_script("analyses/gpu_reference.py")
    monkeypatch.setattr(mod, "DATA", tmp_path)
    monkeypatch.setattr(mod, "RUNS_OUT", tmp_path / "runs")
    monkeypatch.setattr(mod, "MASSIVE_SEQS", 4)
    model = str(Path(__file__).resolve().parents[1] / "sinkinterp" / "assets" / "models" / "toy-softmax")
    assert mod.main(["--massive", "toy", model]) == 2  # not snapshotted
    (tmp_path / "toy").mkdir()
    assert mod.main(["--massive", "toy", model]) == 0
    doc = json.loads((tmp_path / "toy" / "massive.json").read_text())
    res, cfg = doc["results"], doc["config"]
    from sinkinterp.massive import DEFAULT_DO

    assert doc["command"].startswith("sinkinterp massive --model MODEL_DIR --inputs natural --seq-len 64 --eps 0.3 "
                                     "--seed 0 --num-seqs 4 --no-figures --out ")
    assert cfg["num_seqs"] == 4 and cfg["do"] == list(DEFAULT_DO) and cfg["prepend_bos"] is False
    assert len(res["resid_first"]) == len(res["massive_ratio"]) == 5  # 4 layers' resid_pre and the output
    assert len(res["interventions"]) == len(DEFAULT_DO) and len(res["normalize_per_layer"]) == 4
    ne = res["neurons"]
    assert ne["top1"]["name"] == f"zero_neurons[L{ne['layer']}:{ne['top'][0]['neuron']}]"
    assert ne["top"][0]["write"] >= ne["top"][1]["write"] and ne["top"][0]["neuron"] not in ne["control"]


def _gate_page(tmp_path, monkeypatch, mod, seed: int, settings: tuple) -> Path:
    """A gate page script pointed at tmp_path: 4 windows of 12 random ids as its held-out inputs (data/val.npy, and
    data/val_bos.npy with BOS first), its page, figure, output and snapshot folder there, and ``settings``
    ((module attribute, value) pairs) set; main() changes directory, restored afterwards. Returns data/."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    toks = np.random.default_rng(seed).integers(2, 500, (4, 12))
    np.save(data / "val_bos.npy", np.concatenate([np.ones((4, 1), dtype=np.int64), toks[:, :-1]], axis=1))
    np.save(data / "val.npy", toks)
    for name, value in (("DOC", tmp_path / "page.md"), ("FIG", tmp_path / "fig.png"), ("OUT", tmp_path / "out"),
                        ("DATA", data), *settings):
        monkeypatch.setattr(mod, name, value)
    return data


def test_sink_gate_page_from_runs_and_snapshots(tmp_path, monkeypatch, capsys):
    from sinkinterp import gate as mod_gate

    mod = load_script("analyses/sink_gate.py")
    data = _gate_page(tmp_path, monkeypatch, mod, 0, (("NUM_SEQS", 4), ("SEQ_LEN", 12),
                                                     ("TOKENS", tmp_path / "data" / "val.npy"),
                                                     ("TOKENS_BOS", tmp_path / "data" / "val_bos.npy")))
    monkeypatch.setattr(mod, "MODELS", {"toy-softmax": ("toy-softmax", True, True, "shipped")})
    monkeypatch.setattr(mod, "INPUTS", {"toy-softmax": ("debian", "natural")})
    assert mod.main() == 0
    snap = json.loads((data / "toy-softmax__debian.json").read_text())
    nat = json.loads((data / "toy-softmax__natural.json").read_text())
    assert "mass_pos" not in snap and len(snap["pos_top"]) == mod.KEEP_POS
    assert f"--tokens {data / 'val_bos.npy'}" in snap["command"] and "--prepend-bos" in nat["command"]
    assert nat["num_seqs"] == 4 and snap["seq_len"] == 12
    opened, fixed, token, donor = snap["interventions"]
    page = (tmp_path / "page.md").read_text()
    assert "| toy-softmax, Debian held-out | token 1 |" in page and "| toy-softmax, English sample |" in page
    assert (f"| {opened['delta_loss']:+.3f} | {fixed['delta_loss']:+.4f} | {token['delta_loss']:+.4f} | "
            f"{donor['delta_loss']:+.4f} |") in page
    pooled = mod_gate.pooled_drivers(snap)  # the drivers row, from the snapshot's sums of squares
    assert (f"| toy-softmax, Debian held-out | {pooled['heads']} | {pooled['position']:.0%} | {pooled['token']:+.0%} | "
            f"{pooled['rest']:.0%} |") in page
    assert f"| {pooled['previous']:+.0%} | " in page.split(f"| toy-softmax, Debian held-out | {pooled['heads']} |")[1]
    split = mod_gate.pooled_logit_split(snap)  # the softmax split's row
    assert (f"| toy-softmax, Debian held-out | {split['heads']} | {split['median']:.0%} | {split['pooled']:.0%} | "
            f"{split['sink_led']} of {split['heads']} | {split['turn_median']:.0%} / {split['identity_median']:+.0%} | "
            f"{split['top_key_median']:.0%} | {split['spread_median']:.0%} |") in page
    # BOS first: token 1's key is the same in every text, so the sink's side is the query's turn alone
    assert abs(split["identity_pooled"]) < 1e-6 and "Where BOS comes first its key is the same in every text" in page
    # the turn by source: the run named in TURN_SOURCES has it, its snapshot keeps the shares within positions
    assert "--turn-sources" in snap["command"] and "--turn-sources" not in nat["command"]
    ts = snap["logit_split"]["turn_sources"]
    assert "share" not in ts and "std_within" not in ts and len(ts["names"]) == 2 * len(snap["sink_mass"]) + 1
    src = mod_gate.pooled_turn_sources(snap)
    assert (f"| toy-softmax, Debian held-out | {src['heads']} heads pooled | {src['turn']:.0%} | {src['embed']:+.0%} | "
            f"{src['attn']:+.0%} | {src['mlp']:+.0%} |") in page
    assert src["turn"] == pytest.approx(split["turn_pooled"], abs=1e-4)  # the snapshot keeps 6 significant digits
    assert (tmp_path / mod.FIG_SOURCES).stat().st_size > 1000 and f"](figures/{mod.FIG_SOURCES})" in page
    a, rep = np.asarray(snap["sink_mass"]), np.asarray(snap["drivers"]["repeat"])
    top = max((lh for lh in np.ndindex(*a.shape) if a[lh] >= 0.1), key=lambda lh: rep[lh])
    assert f"| toy-softmax, Debian held-out | L{top[0]}H{top[1]} | {a[top]:.3f} |" in page.split("follows a repeated")[1]
    assert f"- `{snap['command']}`" in page and "--per-head" in snap["command"] and "--per-head" not in nat["command"]
    per = np.asarray(fixed["per_head_delta_loss"])
    worst = np.unravel_index(np.argmax(per), per.shape)
    assert f"| toy-softmax, Debian held-out | L{worst[0]}H{worst[1]} |" in page
    assert f"| toy-softmax, Debian held-out | sum over all 16 heads | | | {per.sum():+.4f} |" in page
    # a model that is not here: its snapshot is used and named; one without a snapshot is left out
    (data / "ghost__natural.json").write_text((data / "toy-softmax__natural.json").read_text())
    monkeypatch.setattr(mod, "MODELS", {"ghost": (str(tmp_path / "no-model"), False, False, "absent"),
                                        "nobody": (str(tmp_path / "no-model"), False, False, "absent")})
    monkeypatch.setattr(mod, "INPUTS", {"ghost": ("natural",), "nobody": ("natural",)})
    assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    assert "| ghost, English sample | token 1 |" in page and "nobody" not in page.split("Commands:")[0]
    assert "(from analyses/data/sink_gate/ghost__natural.json: the model is not here; run at commit " in page
    assert "nobody__natural: model not here and no snapshot" in capsys.readouterr().out
    # --only: the model named runs, the other one here comes from its snapshot, said so
    monkeypatch.setattr(mod, "MODELS", {"toy-softmax": ("toy-softmax", True, False, "shipped"),
                                        "ghost": ("toy-softmax", True, False, "present, not run")})
    monkeypatch.setattr(mod, "INPUTS", {"toy-softmax": ("natural",), "ghost": ("natural",)})
    before = (data / "ghost__natural.json").read_text()
    assert mod.main(["--only", "toy-softmax"]) == 0
    page = (tmp_path / "page.md").read_text()
    assert "(from analyses/data/sink_gate/ghost__natural.json: an earlier run of this script at commit " in page
    assert (data / "ghost__natural.json").read_text() == before and "toy-softmax__natural.json" not in page
    assert mod.main(["--only", "ghost__natural"]) == 0  # one run by its key: the other model from its snapshot
    page = (tmp_path / "page.md").read_text()
    assert "(from analyses/data/sink_gate/toy-softmax__natural.json: an earlier run of this script at commit " in page
    assert "ghost__natural.json" not in page
    before = {p.name: p.read_text() for p in data.glob("*.json")}
    assert mod.main(["--snapshots"]) == 0  # the page alone: nothing runs, every run named as a snapshot
    page = (tmp_path / "page.md").read_text()
    assert {p.name: p.read_text() for p in data.glob("*.json")} == before
    assert "(from analyses/data/sink_gate/toy-softmax__natural.json: an earlier run of this script at commit " in page
    assert "(from analyses/data/sink_gate/ghost__natural.json: an earlier run of this script at commit " in page
    with pytest.raises(SystemExit):
        mod.main(["--only", "nobody"])
    assert "invalid choice: 'nobody'" in capsys.readouterr().err


def test_sink_gate_debian_text_is_the_held_out_windows_decoded(tmp_path, monkeypatch):
    """SmolLM2's second domain: each held-out Debian window decoded with the toy models' tokenizer, one per
    paragraph, made once; the gate run reads it as natural text with SmolLM2's own tokenizer."""
    from sinkinterp.loading import load_model

    mod = load_script("analyses/sink_gate.py")
    rng = np.random.default_rng(3)
    a, b = rng.integers(3, 500, (2, 12)), rng.integers(3, 500, (3, 12))
    for name, arr in (("TOKENS", a), ("TOKENS_B", b)):
        np.save(tmp_path / f"{name}.npy", arr)
        monkeypatch.setattr(mod, name, tmp_path / f"{name}.npy")
    monkeypatch.setattr(mod, "_debian_tokens", lambda: None)
    monkeypatch.setattr(mod, "DEBIAN_TEXT", tmp_path / "text.txt")
    mod._debian_text()
    tok = load_model("toy-softmax").tokenizer
    assert (tmp_path / "text.txt").read_text() == "\n\n".join(tok.decode(r.tolist()).strip() for r in [*a, *b]) + "\n"
    (tmp_path / "text.txt").write_text("kept")
    mod._debian_text()  # made once: an existing file is left alone
    assert (tmp_path / "text.txt").read_text() == "kept"
    assert mod.INPUTS["smollm2"][-2:] == ("debian_text", "debian_text_m")
    assert mod._label("smollm2__debian_text") == "smollm2, Debian held-out text"
    # the measurement-only run on the same text: more sequences, no loss runs, the turn by head
    commands: list[str] = []
    monkeypatch.setattr(mod, "OUT", tmp_path / "out")
    monkeypatch.setattr(mod, "DATA", tmp_path / "data")
    seen = {}

    def fake_run_cli(cli, args, commands, gguf):
        seen["args"] = args
        raise SystemExit(0)

    import _common

    monkeypatch.setattr(_common, "run_cli", fake_run_cli)
    with pytest.raises(SystemExit):
        mod._run("smollm2__debian_text_m", "model.gguf", "debian_text_m", False, False, commands, None)
    args = " ".join(seen["args"])
    assert f"--text {tmp_path / 'text.txt'}" in args and "--num-seqs 64" in args and "--no-interventions" in args
    assert "--turn-sources heads" in args


def test_sink_gate_page_reads_sigmoid_weights_against_softmax(tmp_path, monkeypatch):
    """A sigmoid model's gate is its rows' weight off token 1: the page gives what holding and swapping it cost
    (from the snapshot) and sets that beside the softmax counterpart's held gate."""
    mod = load_script("analyses/sink_gate.py")
    data = _gate_page(tmp_path, monkeypatch, mod, 1, (("NUM_SEQS", 4), ("SEQ_LEN", 12),
                                                     ("TOKENS", tmp_path / "data" / "val.npy"),
                                                     ("TOKENS_BOS", tmp_path / "data" / "val_bos.npy")))
    monkeypatch.setattr(mod, "MODELS", {"toy-softmax": ("toy-softmax", True, False, "shipped"),
                                        "toy-sigmoid": ("toy-sigmoid", True, False, "shipped")})
    monkeypatch.setattr(mod, "INPUTS", {"toy-softmax": ("debian",), "toy-sigmoid": ("debian",)})
    assert mod.main() == 0
    sig, soft = (json.loads((data / f"{n}__debian.json").read_text()) for n in ("toy-sigmoid", "toy-softmax"))
    assert sig["weights_from_row_weight"] and not sig["normalized"]
    held = {x["label"]: x["delta_loss"] for x in sig["interventions"]}
    held_soft = {x["label"]: x["delta_loss"] for x in soft["interventions"]}
    page = (tmp_path / "page.md").read_text()
    row = page.split("- **toy-sigmoid, Debian held-out** (not normalized; m is each row's weight off token 1")[1]
    assert f"costs {held['fixed']:+.3f} nats; m of position and query token {held['token']:+.3f}" in row.split("\n")[0]
    m = np.asarray(sig["mass"])
    assert f"m per head {m.min():.2f} to {m.max():.2f}" in row.split("\n")[0]
    assert (f"toy-sigmoid {held['fixed']:+.3f} / {held['donor']:+.3f} nats against toy-softmax "
            f"{held_soft['fixed']:+.3f} / {held_soft['donor']:+.3f}") in page.split("The gate without a sink")[1]


def test_sink_gate_compares_per_head_costs_across_domains():
    """A model with per-head effects in two domains: the rank correlation of its heads' costs and the heads
    among the eight costliest in both, from the two runs' per-head arrays; nothing without both runs."""
    mod = load_script("analyses/sink_gate.py")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4))
    b = a + 0.3 * rng.normal(size=(3, 4))
    b[0, 0] = np.nan  # a head without a measured effect in one domain is left out

    def run(per, token=False):
        return {"interventions": [{"label": "fixed", "per_head_delta_loss": per.tolist()},
                                  {"label": "open", "per_head_delta_loss": (-per).tolist()},
                                  {"label": "token", "per_head_delta_loss": (2 * per).tolist() if token else None}]}

    results = {"smollm2__natural": run(a, True), "smollm2__debian_text": run(b, True)}
    (note,) = mod._domains_note(results)
    ok = np.isfinite(b).ravel()
    x, y = a.ravel()[ok], b.ravel()[ok]
    rank = np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1]
    assert f"rank correlation of the 11 heads' costs {rank:+.2f}" in note.split("opened")[0]
    # the other edits where both runs have them per head (the token edit: twice the fixed costs, the same order)
    assert (f"the gate made to follow the position and token one head at a time: rank correlation of the 11 heads' "
            f"costs {rank:+.2f}") in note and "taken from another text" not in note
    assert "made to follow" not in mod._domains_note({"smollm2__natural": run(a, True), "smollm2__debian_text": run(b)})[0]
    # the limits say which edits the Debian run has per head
    assert mod._debian_per_head({}) == "per-head effects on the first only"
    assert mod._debian_per_head({"smollm2__debian_text": run(b)}).endswith("(on the Debian text for fixed, open only)")
    every = {"interventions": [{"label": k, "per_head_delta_loss": [[0.0]]} for k in ("open", "fixed", "token", "donor")]}
    assert mod._debian_per_head({"smollm2__debian_text": every}) == "per-head effects of every edit on both"
    top = lambda v: {i for i in np.argsort(-np.where(ok, v.ravel(), -np.inf))[:8]}
    shared = sorted(top(a) & top(b))
    assert f"{len(shared)} of the eight costliest heads in both (" + ", ".join(f"L{i // 4}H{i % 4}" for i in shared) in note
    assert note.startswith("- smollm2 in two domains (English sample / Debian held-out text): the gate fixed")
    assert mod._domains_note({"smollm2__natural": run(a)}) == []
    assert "largely the same in both domains" not in note  # both kinds of cost agree here
    shuffled = {"smollm2__natural": run(a), "smollm2__debian_text": run(a)}  # opened alike, fixed in another order
    shuffled["smollm2__debian_text"]["interventions"][0]["per_head_delta_loss"] = a.ravel()[::-1].reshape(3, 4).tolist()
    (note,) = mod._domains_note(shuffled)
    assert "rank correlation of the 12 heads' costs +1.00" in note.split("opened")[1]
    assert f"each costing at most {np.nanmax(a):.3f} nats alone, small enough for the noise" in note
    assert "nor are those of the gate made to follow" not in note  # (no token edit per head in these runs)
    # a replicate (other texts of the same domain) whose fixed costs rank apart too: the order is noise
    shuffled["smollm2__natural_s1"] = {"interventions": [{"label": "fixed",
                                                         "per_head_delta_loss": (-a).tolist()}]}
    domains, replicate = mod._domains_note(shuffled)
    assert replicate.startswith("- smollm2 on two sets of texts of its own domain (English sample / English sample, "
                                "seed 1): the gate fixed one head at a time: rank correlation of the 12 heads' costs -1.00")
    assert ("on a second set of texts of its own domain, the rank correlation of the same edit's costs: fixed -1.00 "
            "(against -0.20 across domains: at this size the order is mostly noise, not the domain).") in domains
    shuffled["smollm2__natural_s1"] = run(a)  # ... or alike: the domains differ beyond that noise
    assert "fixed +1.00 (against -0.20 across domains: the domains differ beyond that noise)." in mod._domains_note(shuffled)[0]
    # every edit that holds the gate, each against its own replicate (the token edit: reversed across the
    # domains, nearly the same order on the replicate's texts: the domains differ beyond the noise)
    for k in ("smollm2__natural", "smollm2__debian_text", "smollm2__natural_s1"):
        shuffled[k] = run(a, True) if k != "smollm2__debian_text" else shuffled[k]
    shuffled["smollm2__debian_text"]["interventions"][2]["per_head_delta_loss"] = (2 * a.ravel()[::-1]).reshape(3, 4).tolist()
    c = a.copy()
    c.ravel()[[0, 5]] = c.ravel()[[5, 0]]  # two heads swapped: nearly the same order
    shuffled["smollm2__natural_s1"]["interventions"][2]["per_head_delta_loss"] = (2 * c).tolist()
    domains = mod._domains_note(shuffled)[0]
    tok = np.corrcoef(np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(c.ravel())))[0, 1]
    assert f"fixed +1.00 (against -0.20 across domains: the domains differ beyond that noise), token {tok:+.2f}" in domains
    shuffled["smollm2__debian_text"]["interventions"][2]["per_head_delta_loss"] = (2 * c).tolist()  # token alike in both
    domains = mod._domains_note(shuffled)[0]
    assert "(nor are those" not in domains and f"token {tok:+.2f} (against {tok:+.2f} across domains: no clear difference)." in domains
    shuffled["smollm2__natural_s1"]["interventions"][2]["per_head_delta_loss"] = (-a).tolist()  # the replicate reversed
    assert f"token -1.00 (against {tok:+.2f} across domains: at this size the order is mostly noise" in mod._domains_note(shuffled)[0]


def test_sink_gate_grades_what_token_1s_own_key_adds():
    """Without BOS the page says how much token 1's own key moves the sink's logit against the query's turn:
    almost nothing (a tenth of the turn's spread or less), less than the turn, or more; with BOS, nothing."""
    mod = load_script("analyses/sink_gate.py")

    def case(key_std: float, key: float, turn: float = 0.3, name: str = "smollm2") -> str:
        res = {"sink_share": [[0.5, 0.05, 0.5]],  # the middle head sinks too little to be pooled
               "logit_split": {"turn_std_within": [[1.0, 9.0, 1.2]], "identity_std_within": [[key_std, 9.0, key_std]]}}
        x = {"turn_median": turn, "identity_median": key, "turn_pooled": turn, "identity_pooled": key}
        return mod._turn_summary([(f"{name}__natural", x)], {f"{name}__natural": res})

    small = case(0.05, 0.01)
    assert "smollm2 30% / +1% (30% / +1%)" in small
    assert "adds almost nothing: its part of the sink's logit moves by 0.05" in small and "against 1.10" in small
    assert "but not nothing (its part of the sink's logit moves by 0.50" in case(0.5, 0.2)
    assert "carries more of the sink's side than the query's turn" in case(0.5, 0.4)
    bos = case(0.0, 0.0, name="toy-softmax")
    assert "Where BOS comes first its key is the same in every text" in bos and "no BOS" not in bos
    assert mod._turn_summary([("smollm2__natural", {"median": 0.2})], {}) == ""  # no second pass in the run


def test_sink_gate_reads_the_turn_by_source():
    """The page names the kind of source that carries the query's turn, the kinds that pull the other way,
    and, over the sink heads, whether the attention layers' writes turn the query against the MLPs'."""
    mod = load_script("analyses/sink_gate.py")

    def case(attn: float, mlp: float, embed: float = 0.0) -> str:
        row = [embed, attn / 2, mlp / 2, attn / 2, mlp / 2]  # embed, attn 0, mlp 0, attn 1, mlp 1
        res = {"sink_share": [[0.05, 0.05, 0.05], [0.6, 0.5, 0.4]],
               "logit_split": {"logit_var_within": [[1.0] * 3, [1.0] * 3],
                               "turn_sources": {"names": ["embed", "attn 0", "mlp 0", "attn 1", "mlp 1"],
                                                "share_within": [[[embed, *[float("nan")] * 4]] * 3, [row] * 3],
                                                "rest_share_within": [[0.0] * 3, [0.0] * 3]}}}
        return mod._source_summary({"smollm2__natural_n120": res})

    against = case(-0.10, 0.30)
    assert "In smollm2 (English sample, 120 sequences, measured only) the query's turn (20% of the summed variance) " \
           "comes mostly from the MLPs (+30%), while the " \
           "attention layers (-10%) pull the other way" in against
    assert "In its 3 sink heads (a > 0.3) the MLPs carry +30% and attention -10% in the median head: in 3 of them" in against
    together = case(0.10, 0.30)
    assert "pull the other way" not in together and "attention +10% in the median head." in together
    assert "By block" not in against  # both blocks' attention pulls the same way
    res = {"sink_share": [[0.05, 0.05, 0.05], [0.6, 0.5, 0.4]],
           "logit_split": {"logit_var_within": [[1.0] * 3, [1.0] * 3],
                           "turn_sources": {"names": ["embed", "attn 0", "mlp 0", "attn 1", "mlp 1"],
                                            "share_within": [[[0.0] + [float("nan")] * 4] * 3,
                                                             [[0.0, 0.04, 0.3, -0.08, 0.0]] * 3],
                                            "rest_share_within": [[0.0] * 3, [0.0] * 3]}}}
    assert ("By block, the attention of the first 1 blocks turns the query toward the sink (+4%), that of the later "
            "ones away from it (-8%).") in mod._source_summary({"smollm2__natural_n120": res})
    assert mod._source_summary({"smollm2__natural": {"logit_split": {}}}) == ""  # no turn by source in the run
    # by head: the attention heads whose writes move the turn most, which of them are sink heads themselves
    res = {"sink_share": [[0.05, 0.05, 0.05], [0.6, 0.5, 0.4]],
           "logit_split": {"logit_var_within": [[1.0] * 3, [1.0] * 3],
                           "turn_sources": {"names": ["embed", "attn 0", "mlp 0", "attn 1", "mlp 1"],
                                            "share_within": [[[0.0] + [float("nan")] * 4] * 3,
                                                             [[0.0, -0.1, 0.3, float("nan"), float("nan")]] * 3],
                                            "rest_share_within": [[0.0] * 3, [0.0] * 3],
                                            "head_share_pooled": [[-0.06, -0.03, -0.01], [0.0, 0.0, 0.0]]}}}
    text = mod._source_summary({"smollm2__natural_n120": res})
    assert "By head, the attention writes that move the turn most: L0H0 -6.0%, L0H1 -3.0%, L0H2 -1.0%" in text
    assert "together the 6 heads -10.0% against the attention layers' -10.0%." in text and "(a sink head)" not in text
    res["logit_split"]["turn_sources"]["head_share_pooled"] = [[0.0, 0.0, 0.0], [-0.004, 0.0, 0.0]]
    text = mod._source_summary({"smollm2__natural_n120": res})
    assert "L1H0 -0.4% (a sink head)" in text and "(the rest their output biases')" in text
    assert "no one head carries much of it" in text


def test_gate_targets_controls_and_gate_by_attention_kind():
    """The closing test's controls: other sink heads of closest sink share under softmax, any other head of
    closest weight where attention does not normalize; the gate read is m wherever m is a weight."""
    mod = load_script("analyses/gate_targets.py")
    a = np.array([[0.2, 0.25], [0.9, 0.5]])
    assert mod._controls([(0, 0)], a) == [(1, 1)]  # among the sink heads (a > 0.3) only
    assert mod._controls([(0, 0)], a, sinks=False) == [(0, 1)]
    a[0, 1] = np.nan  # a head without a measured gate is never a control
    assert mod._controls([(0, 0)], a, sinks=False) == [(1, 1)]
    pos = [[[None, 0.5, 0.7, 0.9]]]
    res = {"normalized": False, "weights_from_row_weight": True, "mass_pos": pos, "gate_pos": [[[None, 9.0, 9.0, 9.0]]]}
    first, second, _ = mod._half_means(res, 2)
    assert first[0, 0] == 0.5 and second[0, 0] == pytest.approx(0.8)
    first, _, _ = mod._half_means({**res, "weights_from_row_weight": False}, 2)  # an older run: m was a share
    assert first[0, 0] == 9.0


def test_gate_targets_page_from_runs_and_snapshots(tmp_path, monkeypatch, capsys):
    """The page's rows from the runs' snapshots (pooled targets; the copy test's halves from m by position),
    and a model that is not here taken from its snapshot."""
    from sinkinterp import gate as mod_gate
    from sinkinterp.inputs import copy_first_half

    mod = load_script("analyses/gate_targets.py")
    sink_gate = load_script("analyses/sink_gate.py")
    data = _gate_page(tmp_path, monkeypatch, mod, 0, (("NUM_SEQS", 6), ("SEQ_LEN", 12), ("INDUCTION", 0.0)))
    models = {"toy-softmax": ("toy-softmax", True, True, "shipped")}
    monkeypatch.setattr(mod, "_models", lambda: (models, data / "val.npy", data / "val_bos.npy"))
    monkeypatch.setattr(sink_gate, "_debian_tokens", lambda: None)
    monkeypatch.setitem(sys.modules, "sink_gate", sink_gate)  # what main() imports for the Debian windows
    assert mod.main() == 0
    dom, rnd, cpy = (json.loads((data / f"toy-softmax__{k}.json").read_text()) for k in ("debian", "random", "copy"))
    assert f"--tokens {data / 'val_bos.npy'}" in dom["command"] and "--inputs copy" in cpy["command"]
    assert cpy["prepend_bos"] and cpy["num_seqs"] == 6 and mod._copy_start(cpy) == 1 + 6
    page = (tmp_path / "page.md").read_text()
    p = mod_gate.pooled_targets(dom)
    assert (f"| toy-softmax, Debian held-out | {p['heads']} | 0% (0%) | {p['share']['self']:.0%} "
            f"({p['uniform']['self']:.0%}) |") in page
    # the copy row: every head is an induction head at a floor of 0; m's change on the copied half by hand
    m_r, m_c = (np.asarray([[[np.nan if x is None else x for x in r] for r in l] for l in s["mass_pos"]]) for s in (rnd, cpy))
    change = np.median(np.nanmean(m_c[..., 7:], -1) - np.nanmean(m_r[..., 7:], -1))
    control = np.median(np.nanmean(m_c[..., 1:7], -1) - np.nanmean(m_r[..., 1:7], -1))
    assert "| toy-softmax | 16 | " in page and f"| {change:+.3f} | {control:+.3f} |" in page
    again = json.loads((data / "toy-softmax__copy_r.json").read_text())  # the replicate: at most the model's context
    assert (again["seq_len"], again["seed"], cpy["seed"]) == (64, 1, 0) and "--seed 1" in again["command"]
    assert "| toy-softmax, replicate at T 64, seed 1 | 16 | " in page
    assert (data / "toy-softmax__closing_r.json").is_file()
    assert (tmp_path / "fig.png").stat().st_size > 0 and f"- `{cpy['command']}`" in page
    # the closing test: every head held at its random-ids level on the copied half (no sink head left for controls)
    close = json.loads((data / "toy-softmax__closing.json").read_text())
    assert close["start"] == 7 and close["target_start"] == 8 and close["tokens_sha256"] == cpy["tokens_sha256"]
    assert len(close["heads"]) == 16 and close["controls"] == [] and abs(close["control"]["delta_loss"]) < 1e-5
    assert abs(close["induction"]["delta_loss"]) > 1e-3  # the float64 round trip of the untouched pattern: 1e-7
    assert sorted((l, h) for l, h, _ in close["alone"]) == sorted(map(tuple, close["heads"]))  # each head alone
    top = max(close["alone"], key=lambda x: x[2])
    assert f"L{top[0]}H{top[1]} {top[2]:+.3f}" in mod._alone_text(close)
    assert (f"| toy-softmax | 16 | {close['induction']['delta_loss']:+.3f} | {mod._alone_text(close)} | 0 | - |"
            in page)
    # the third test: the own-domain windows against the same windows with their second half copied (after BOS)
    text = json.loads((data / "toy-softmax__copy_text.json").read_text())
    copied = np.load(data / "val_bos_copied.npy")
    np.testing.assert_array_equal(copied, copy_first_half(np.load(data / "val_bos.npy"), 1))
    assert f"--tokens {data / 'val_bos_copied.npy'}" in text["command"] and mod._copy_start(text) == 1 + 6
    assert "| toy-softmax, its own text copied | 16 | " in page
    close_t = json.loads((data / "toy-softmax__closing_t.json").read_text())
    assert close_t["tokens_sha256"] == text["tokens_sha256"] and close_t["num_seqs"] == 4
    # --only by key: that run and its pair's closing test alone
    before = (data / "toy-softmax__copy.json").read_text()
    (data / "toy-softmax__closing_t.json").unlink()
    assert mod.main(["--only", "toy-softmax__copy_text"]) == 0
    assert (data / "toy-softmax__closing_t.json").is_file() and (data / "toy-softmax__copy.json").read_text() == before
    # the model gone: its snapshots are used and named
    models.clear()
    models["ghost"] = (str(tmp_path / "no-model"), True, False, "absent")
    for k in ("debian", "random", "copy"):
        (data / f"ghost__{k}.json").write_text((data / f"toy-softmax__{k}.json").read_text())
    assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    assert "| ghost, Debian held-out |" in page and "(from analyses/data/gate_targets/ghost__copy.json: the model is not here" in page
    assert mod.main(["--snapshots"]) == 0


def test_sink_paths_page_from_runs_and_snapshots(tmp_path, monkeypatch, capsys):
    """The page's rows from the runs' snapshots, its figures drawn from them, and a model that is not here
    (SmolLM2 without its wheel) taken from its snapshot."""
    from sinkinterp import loading

    mod = load_script("analyses/sink_paths.py")
    for attr, value in (("DOC", tmp_path / "page.md"), ("FIGS", tmp_path / "figs"), ("DATA", tmp_path / "data"),
                        ("OUT", tmp_path / "runs")):
        monkeypatch.setattr(mod, attr, value)
    small = ["--inputs", "natural", "--seq-len", "16", "--num-seqs", "2", "--prepend-bos", "--layers", "3"]
    monkeypatch.setattr(mod, "RUNS", {"toy-softmax__debian": ("toy-softmax", small, "toy-softmax, small"),
                                      "toy-softmax__debian_free": ("toy-softmax", [*small, "--free-mlps"], "free"),
                                      "smollm2__natural": (None, small, "SmolLM2, small"),
                                      "ghost": (str(tmp_path / "no-model"), small, "a GPU model not here")})
    monkeypatch.setattr(loading, "smollm2_gguf_path", lambda: None)
    (tmp_path / "data").mkdir()
    assert mod.main(["--only", "toy-softmax__debian", "toy-softmax__debian_free"]) == 0
    snap = json.loads((tmp_path / "data" / "toy-softmax__debian.json").read_text())
    free = json.loads((tmp_path / "data" / "toy-softmax__debian_free.json").read_text())
    assert snap["command"].startswith("sinkinterp paths --model toy-softmax --inputs natural") and free["free_mlps"]
    row = snap["layers"][0]
    page = (tmp_path / "page.md").read_text()
    k = row["key"]
    top = min(zip(k["senders"], (v - k["base"] for v in k["values"])), key=lambda x: x[1])
    assert (f"| L3 | {', '.join(map(str, row['heads']))} | {row['base']:.3f} | {k['together'] - row['base']:+.3f} | "
            f"{top[0]} {top[1]:+.3f}") in page
    assert f"- `{snap['command']}`" in page and "**toy-softmax** (Debian, L3's sink head" in page
    assert (tmp_path / "figs" / "sink-paths-toy-softmax__debian.png").stat().st_size > 10_000
    assert "SmolLM2" not in page.split("## Reading")[1].split("## Limits")[0]  # no SmolLM2 run, no snapshot
    # SmolLM2 not here: its snapshot stands (here the toy run's, renamed), and the page reads it
    (tmp_path / "data" / "smollm2__natural.json").write_text((tmp_path / "data" / "toy-softmax__debian.json").read_text())
    assert mod.main([]) == 0
    printed = capsys.readouterr().out
    assert "smollm2__natural: the model is not here; its snapshot stands" in printed
    assert "ghost: the model is not here and has no snapshot; left out" in printed
    page = (tmp_path / "page.md").read_text()
    assert "### SmolLM2, small" in page and "**SmolLM2, key side**" in page and "**SmolLM2, query side**" in page
    assert "a GPU model not here" not in page
    before = page
    assert mod.main(["--snapshots"]) == 0 and (tmp_path / "page.md").read_text() == before


def test_sink_paths_neuron_groups_come_from_the_neuron_run(tmp_path, monkeypatch, capsys):
    """A group run's --neurons are the strongest neurons of its neuron run's ranking (k at a time), and the
    page's neuron table reads both runs; without its neuron run a group run is left out."""
    mod = load_script("analyses/sink_paths.py")
    for attr, value in (("DOC", tmp_path / "page.md"), ("FIGS", tmp_path / "figs"), ("DATA", tmp_path / "data"),
                        ("OUT", tmp_path / "runs")):
        monkeypatch.setattr(mod, attr, value)
    small = ["--inputs", "natural", "--seq-len", "16", "--num-seqs", "2", "--prepend-bos", "--layers", "3"]
    monkeypatch.setattr(mod, "RUNS", {
        "toy-softmax__debian_neurons": ("toy-softmax", [*small, "--senders", "neuron", "--sender-layers", "0", "1"],
                                        "toy-softmax, by neuron"),
        "toy-softmax__debian_groups": ("toy-softmax", [*small, "--senders", "mlp_out", "--sender-layers", "0", "1"],
                                       "toy-softmax, groups"),
        "toy-softmax__debian_search": ("toy-softmax", [*small, "--sides", "key", "--senders", "mlp_out",
                                                       "--sender-layers", "0", "--search-neurons", "0", "--search-size",
                                                       "2"], "toy-softmax, search"),
        "toy-softmax__r_groups": ("toy-softmax", [*small, "--seed", "1", "--sides", "key", "--senders", "mlp_out",
                                                  "--sender-layers", "0"], "toy-softmax, the search's groups, seed 1")})
    monkeypatch.setattr(mod, "SEARCH_VS", {"toy-softmax__debian_search": "toy-softmax__debian_groups"})
    monkeypatch.setattr(mod, "SEARCH_GROUPS", {"toy-softmax__r_groups": ("toy-softmax__debian_search", ("key", 3, 0))})
    monkeypatch.setattr(mod, "GROUPS", {"toy-softmax__debian_groups": (
        "toy-softmax__debian_neurons", [("key", 3, 0, (1, 2)), ("query", 3, 1, (1, 4))], ["0:7,9"])})
    (tmp_path / "data").mkdir()
    assert mod.main(["--only", "toy-softmax__debian_groups"]) == 1  # nothing to write a page from
    assert "its neuron run toy-softmax__debian_neurons is neither run nor in a snapshot; left out" in capsys.readouterr().out
    assert not (tmp_path / "data" / "toy-softmax__debian_groups.json").exists()
    assert mod.main(["--only", "toy-softmax__r_groups"]) == 1
    assert "its search run toy-softmax__debian_search is neither run nor in a snapshot; left out" in capsys.readouterr().out
    assert mod.main([]) == 0
    single = json.loads((tmp_path / "data" / "toy-softmax__debian_neurons.json").read_text())
    groups = json.loads((tmp_path / "data" / "toy-softmax__debian_groups.json").read_text())
    row = single["layers"][0]
    key = sorted((v - row["key"]["base"], n) for n, v in zip(row["key"]["senders"], row["key"]["values"]) if n.startswith("L0N"))
    query = sorted((v - row["query"]["base"], n) for n, v in zip(row["query"]["senders"], row["query"]["values"])
                   if n.startswith("L1N"))
    top_key = [int(n[3:]) for _, n in key[:2]]
    expected = [f"0:{top_key[0]}", f"0:{','.join(map(str, sorted(top_key)))}", f"1:{query[0][1][3:]}",
                f"1:{','.join(str(u) for u in sorted(int(n[3:]) for _, n in query[:4]))}", "0:7,9"]
    assert groups["command"].endswith("--neurons " + " ".join(dict.fromkeys(expected)) + " --out "
                                      + str(tmp_path / "runs" / "toy-softmax__debian_groups"))
    assert groups["senders"][:2] == ["mlp 0", "mlp 1"] and len(groups["senders"]) == 2 + len(set(expected))
    g = groups["layers"][0]
    whole = g["key"]["values"][0] - g["key"]["base"]
    page = (tmp_path / "page.md").read_text()
    assert "**toy-softmax, by neuron** (`toy-softmax__debian_neurons`, then `toy-softmax__debian_groups`" in page
    assert f"| L3, key | 0 | {whole:+.3f} | {key[0][1]} {key[0][0]:+.3f}" in page
    assert "L0N7+9, the massive-activation writers:" in page and "- L3, query side, MLP 1:" in page
    assert (tmp_path / "figs" / "sink-paths-toy-softmax__debian_neurons.png").is_file()
    assert not (tmp_path / "figs" / "sink-paths-toy-softmax__debian_groups.png").exists()
    # the search: its table row (the best group of each size, the backup pair), its best groups against the
    # ranking's k strongest on the same windows, its figure
    search = json.loads((tmp_path / "data" / "toy-softmax__debian_search.json").read_text())
    s = search["layers"][0]["key"]["search"][0]
    best = "; ".join(f"N{'+'.join(map(str, b['neurons']))} {b['effect']:+.3f} ({b['share']:.0%})" for b in s["best"])
    held = (s["whole"] - np.asarray(s["others"])) / s["whole"]
    assert f"| toy-softmax | L3, key | 0 | {s['whole']:+.3f} | {best} | N253+261: " in page
    assert f" | N253 {held[253]:.0%}, N261 {held[261]:.0%}" in page and held[253] > 0.5
    by_k = {n.count("+") + 1: v - g["key"]["base"] for n, v in zip(g["key"]["senders"], g["key"]["values"])
            if n.startswith("L0N") and n != "L0N7+9"}
    assert (f"- toy-softmax, L3 key side, MLP 0: the search's best k against the k strongest of the single-neuron "
            f"ranking: k = 1 {s['best'][0]['share']:.0%} / {by_k[1] / s['whole']:.0%}, "
            f"k = 2 {s['best'][1]['share']:.0%} / {by_k[2] / s['whole']:.0%}.") in page
    assert (tmp_path / "figs" / "sink-paths-toy-softmax__debian_search-search.png").stat().st_size > 10_000
    assert ("**What the search adds.** On the ranking's own windows, at k <= 2" in page
            and f"MLP 0: N253 and N261 ablated alone {s['alone'][253] / s['whole']:.0%}" in page)
    # the search's best groups as senders on other windows (seed 1): their shares of MLP 0's path there
    rep = json.loads((tmp_path / "data" / "toy-softmax__r_groups.json").read_text())
    assert rep["command"].endswith("--neurons 0:253 0:253,261 --out " + str(tmp_path / "runs" / "toy-softmax__r_groups"))
    eff = {n: v - rep["layers"][0]["key"]["base"] for n, v in zip(rep["senders"], rep["layers"][0]["key"]["values"])}
    assert (f"- **The search's groups out of sample.** On 2 other windows (`toy-softmax__r_groups`), MLP 0's path at L3, "
            f"key side, is {eff['mlp 0']:+.3f}") in page
    assert (f"the search's best groups carry 1: {eff['L0N253'] / eff['mlp 0']:.0%} ({s['best'][0]['share']:.0%} on the "
            f"search's windows), 2: {eff['L0N253+261'] / eff['mlp 0']:.0%} ({s['best'][1]['share']:.0%} on the "
            "search's windows) of it.") in page


def test_sink_paths_query_search_reading():
    """A query-side search's sentence: the MLP's path and its part of the queries' whole one, the best groups'
    shares, the neurons carrying a tenth or more alone (as shown, rounded), whether the strongest pairs add up."""
    mod = load_script("analyses/sink_paths.py")
    row = {"layer": 5, "base": 0.5, "query": {"together": 0.1}}  # the queries' whole path: -0.4
    srch = {"mlp": 2, "whole": -0.1, "alone": [-0.05, -0.0096, -0.02, 0.004],
            "best": [{"neurons": [0], "effect": -0.05}, {"neurons": [0, 2], "effect": -0.07},
                     {"neurons": [0, 1, 2], "effect": -0.08}],
            "pairs": [{"neurons": [0, 2], "effect": -0.07, "synergy": 0.0}, {"neurons": [0, 1], "synergy": -0.002}]}
    assert mod._query_search("M", row, srch) == (
        "M L5, MLP 2 (-0.100, 25% of the queries' whole path): its best groups carry 1: 50% (N0), 2: 70% (N0+2), "
        "3: 80% (N0+1+2) of it; 3 neurons carry a tenth or more alone, and the pairs of the strongest kept alone add "
        "up (synergy at most 2.0% of the path)")
    srch["pairs"][1]["synergy"] = -0.03
    srch["alone"][1] = -0.009
    assert mod._query_search("M", row, srch).endswith("2 neurons carry a tenth or more alone, and the pairs of the "
                                                      "strongest kept alone do not add up (synergy up to 30.0% of the path)")


def test_sink_paths_total_reading():
    """The query side with nothing frozen against the direct paths: each layer's two leading senders (direct in
    brackets), the sums by kind, and the senders whose direct path is under a quarter of their total."""
    mod = load_script("analyses/sink_paths.py")

    def run(values):  # one layer (13), query side; base 0.5, together 0.1
        senders = ["embed", "attn 0", "mlp 0", "attn 1"]
        return {"layers": [{"layer": 13, "base": 0.5, "query": {"senders": senders, "base": 0.5, "together": 0.1,
                                                                "values": [0.5 + v for v in values]}}]}

    total, direct = run([0.01, -0.2, 0.1, -0.08]), run([0.0, -0.15, -0.05, -0.01])
    assert mod._total_reading({"smollm2__natural_total": total}) == []  # (no direct run to set it against)
    (line,) = mod._total_reading({"smollm2__natural_total": total, "smollm2__natural": direct})
    assert "the leading senders by layer: L13 attn 0 -0.200 (-0.150), attn 1 -0.080 (-0.010)." in line
    assert "Summed by kind: L13 attention -0.280 (-0.160), MLPs +0.100 (-0.050), the embedding +0.010 (+0.000)." in line
    assert "(direct under a quarter of the total): attn 1 at L13." in line


def test_sink_paths_triples_note(tmp_path, monkeypatch):
    """A search rerun with triples against the same search without: the best triple either way, the strongest
    triple tried, and whether it beats the beam's best triple."""
    mod = load_script("analyses/sink_paths.py")
    monkeypatch.setattr(mod, "FIGS", tmp_path)

    def run(best3, triples=None, k=None):
        srch = {"mlp": 11, "direction": "decrease", "best": [{"neurons": [1], "effect": -0.1},
                                                             {"neurons": [1, 2], "effect": -0.2}, best3]}
        if triples is not None:
            srch["triples"] = triples
        return {"search_triples": k, "layers": [{"layer": 13, "key": {"search": [srch]}}]}

    beam = {"neurons": [1, 2, 3], "effect": -0.3}
    tried = [{"neurons": [4, 5, 6], "effect": -0.25}, {"neurons": [1, 2, 4], "effect": -0.28}]
    results = {"smollm2__natural_search": run(beam), "smollm2__natural_search_t": run(beam, tried, 4)}
    (line,) = mod._triples_note(results)
    assert line.startswith("- **Triples** (`smollm2__natural_search_t`: the same search with every triple of the 4 "
                           "neurons strongest kept alone tried at size 3, 2 triples): L13 key side, MLP 11: the best "
                           "triple is N1+2+3 -0.300, the beam's own; the strongest of the triples tried, N1+2+4, -0.280.")
    assert line.endswith("No triple of neurons that each suffice does more than the beam found.")
    better = {"neurons": [4, 5, 6], "effect": -0.4}
    results["smollm2__natural_search_t"] = run(better, [better, *tried], 4)
    (line,) = mod._triples_note(results)
    assert "the best triple is N4+5+6 -0.400, against the beam's N1+2+3 -0.300" in line
    assert line.endswith("A triple out of the beam's reach does more: the beam missed it.")
    assert mod._triples_note({"smollm2__natural_search": run(beam)}) == []
    # groups of four likewise, read at size 4
    four = {"neurons": [1, 2, 3, 7], "effect": -0.35}
    base = run(beam)
    base["layers"][0]["key"]["search"][0]["best"].append(four)
    quad = run(beam)
    quad["search_quads"] = 8
    quad["layers"][0]["key"]["search"][0].update(best=[*base["layers"][0]["key"]["search"][0]["best"]],
                                                 quads=[{"neurons": [4, 5, 6, 8], "effect": -0.31}])
    (line,) = mod._triples_note({"smollm2__natural_search": base, "smollm2__natural_search_q": quad})
    assert line == ("- **Groups of four** (`smollm2__natural_search_q`: the same search with every group of four of "
                    "the 8 neurons strongest kept alone tried at size 4, 1 quads): L13 key side, MLP 11: the best group "
                    "of four is N1+2+3+7 -0.350, the beam's own; the strongest of the quads tried, N4+5+6+8, -0.310. "
                    "No group of four of neurons that each suffice does more than the beam found.")


def test_gate_paths_page_from_runs_and_snapshots(tmp_path, monkeypatch, capsys):
    """The page's rows from the runs' snapshots (the shares, the rest), its figures, a replicate read against
    its first run, and a model that is not here (SmolLM2 without its wheel) taken from its snapshot."""
    from sinkinterp import loading

    mod = load_script("analyses/gate_paths.py")
    for attr, value in (("DOC", tmp_path / "page.md"), ("FIGS", tmp_path / "figs"), ("DATA", tmp_path / "data"),
                        ("OUT", tmp_path / "runs")):
        monkeypatch.setattr(mod, attr, value)
    small = ["--inputs", "natural", "--seq-len", "16", "--num-seqs", "4", "--prepend-bos", "--layers", "3"]
    monkeypatch.setattr(mod, "RUNS", {"toy-softmax__debian": ("toy-softmax", small, "toy-softmax, small"),
                                      "toy-softmax__natural": ("toy-softmax", [*small, "--seed", "1"], "toy, seed 1"),
                                      "smollm2__natural": (None, small, "SmolLM2, small"),
                                      "ghost": (str(tmp_path / "no-model"), small, "a GPU model not here")})
    monkeypatch.setattr(mod, "REPLICATES", {"toy-softmax__natural": "toy-softmax__debian"})
    monkeypatch.setattr(loading, "smollm2_gguf_path", lambda: None)
    (tmp_path / "data").mkdir()
    assert mod.main(["--only", "toy-softmax__debian", "toy-softmax__natural"]) == 0
    snap = json.loads((tmp_path / "data" / "toy-softmax__debian.json").read_text())
    assert snap["command"].startswith("sinkinterp paths --model toy-softmax --gate --inputs natural")
    assert snap["reading"] == "gate" and snap["git_commit"] and snap["seconds"] > 0
    row = snap["layers"][0]
    page = (tmp_path / "page.md").read_text()
    q = row["query"]
    top = max(zip(q["senders"], q["values"]), key=lambda x: abs(x[1]))
    assert (f"| L3 | {', '.join(map(str, row['heads']))} | {row['weight']:.3f} | {row['variance']:.3f} | "
            f"{100 * q['together']:+.0f}% | {top[0]} {100 * top[1]:+.0f}%") in page
    assert f"{100 * row['rest']:+.0f}% |" in page and f"- `{snap['command']}`" in page
    assert row["rest"] == pytest.approx(1 - sum(row[s]["together"] for s in ("query", "sink_key", "keys")), abs=1e-5)
    # BOS opens every text: token 1's key carries nothing, and the reading says why
    assert "Where BOS opens every text (2 rows)" in page
    assert "- **Replicate** (`toy-softmax__natural` against `toy-softmax__debian`" in page
    assert (tmp_path / "figs" / "gate-paths-toy-softmax__debian.png").stat().st_size > 10_000
    # SmolLM2 not here: its snapshot stands (here the toy run's, renamed), and the page reads it
    (tmp_path / "data" / "smollm2__natural.json").write_text((tmp_path / "data" / "toy-softmax__debian.json").read_text())
    assert mod.main([]) == 0
    printed = capsys.readouterr().out
    assert "smollm2__natural: the model is not here; its snapshot stands" in printed
    assert "ghost: the model is not here and has no snapshot; left out" in printed
    page = (tmp_path / "page.md").read_text()
    assert "### SmolLM2, small" in page and "a GPU model not here" not in page
    before = page
    assert mod.main(["--snapshots"]) == 0 and (tmp_path / "page.md").read_text() == before


def test_gate_paths_reading_names_the_leading_side_the_outlier_text_and_the_replicate_gap():
    mod = load_script("analyses/gate_paths.py")

    def side(together, by_text, values=(0.1, 0.05)):
        return {"senders": ["embed", "mlp 0"], "values": list(values), "base": 0.0, "together": together,
                "together_by_text": by_text}

    def row(layer, q, k, by_text_k, rest):
        return {"layer": layer, "heads": [0, 1], "weight": 0.5, "variance": 1.0,
                "weight_by_text": [0.5, 0.2, 0.5, 0.6], "resid_peak": [2.0, 80.0, 3.0, 2.5],
                "resid_peak_at": [5, 1, 7, 9], "peak_weight": [0.01, 0.4, 0.02, 0.01],
                "query": side(q, [q / 4] * 4), "sink_key": side(0.02, [0.005] * 4), "keys": side(k, by_text_k),
                "rest": rest}

    first = {"inputs": "natural", "sides": ["query", "sink_key", "keys"],
             "layers": [row(3, 0.1, 0.7, [0.05, 0.55, 0.05, 0.05], 0.18), row(13, 0.9, -0.1, [-0.025] * 4, 0.18)]}
    rep = {"inputs": "natural", "sides": ["query", "sink_key", "keys"],
           "layers": [row(3, 0.12, 0.6, [0.15] * 4, 0.26), row(13, 0.8, 0.3, [0.075] * 4, -0.12)]}
    lines = "\n".join(mod._reading({"smollm2__natural": first, "smollm2__natural_s1": rep}))
    assert ("The queries' own text-driven part carries the most (by size) in 2 of 4 (run, layer) rows "
            "(SmolLM2-135M English L13, SmolLM2-135M English (replicate) L13); the other keys' in 2") in lines
    assert "The other keys' share is negative in 1 rows (SmolLM2-135M English L13)" in lines
    assert "docs/sink-gate.md splits" not in lines  # the query leads in half the rows only, not most
    assert ("SmolLM2-135M English L3, other keys: text 1 carries +55% of +70%; its largest residual after token 1 is "
            "80 x the median (position 2), its heads' weight on the sink 0.20 (the other texts' median 0.50) and on "
            "that position 0.40") in lines
    assert "at most 40 (L13 other keys: -10% against +30%)" in lines
    assert "Where the first word opens the text (4 rows) its key carries +2% to +2%" in lines
    assert ("- **Second massive tokens, run by run** (the texts with a residual after token 1 over 20 x the median at "
            "a layer read; then the other keys' whole share and their largest path, by layer): SmolLM2-135M English: "
            "texts 1; L3 +70% (embed +10%), L13 -10% (embed +10%); SmolLM2-135M English (replicate): texts 1;") in lines


def test_gate_paths_kept_windows_leave_out_the_second_sink_texts_and_are_checked():
    mod = load_script("analyses/gate_paths.py")

    def side(together):
        return {"senders": ["embed"], "values": [0.0], "base": 0.0, "together": together, "together_by_text": [together]}

    def run(peaks_by_layer, weights, q, k):
        return {"inputs": "natural", "sides": ["query", "keys"], "seq_len": 64, "num_seqs": len(weights),
                "layers": [{"layer": l, "heads": [0], "weight": 0.5, "variance": 1.0, "weight_by_text": list(weights),
                            "resid_peak": peaks, "resid_peak_at": [1] * len(peaks), "query": side(q), "keys": side(k),
                            "rest": 1 - q - k} for l, peaks in peaks_by_layer]}

    source = run([(13, [2.0, 175.0, 3.0, 19.9]), (24, [1.0, 63.0, 25.0, 1.0])], [0.4, 0.2, 0.5, 0.45], 0.64, 0.77)
    assert mod._outlier_texts(source) == [1, 2]  # over 20 x at either layer
    kept = run([(13, [2.0, 19.9]), (24, [1.0, 1.0])], [0.4, 0.45], 0.9, 0.2)
    mod._check_kept(source, kept)
    kept_bad = run([(13, [2.0, 19.9]), (24, [1.0, 1.0])], [0.4, 0.5], 0.9, 0.2)
    with pytest.raises(RuntimeError, match="are not the source run's windows without texts"):
        mod._check_kept(source, kept_bad)
    first = run([(13, [2.0] * 4), (24, [2.0] * 4)], [0.5] * 4, 0.86, 0.29)
    lines = "\n".join(mod._reading({"smollm2__natural": first, "smollm2__natural_s1": source,
                                    "smollm2__natural_s1_kept": kept}))
    assert ("- **Without the texts with a second massive token** (`smollm2__natural_s1_kept`: `smollm2__natural_s1`'s "
            "windows without 2 texts, text 1: 175 x, text 2: 25 x at most): query / other keys, by layer, the replicate "
            "without them against the replicate and the first set: L13 +90% / +20% against +64% / +77% and +86% / +29%"
            ) in lines
    assert ("Without them the replicate agrees with the first set within 9 points at every layer (with them: up to 48): "
            "the replicate's difference came from those texts. 2 of 4 texts with a second massive token move a side's "
            "share by up to 48 points") in lines
    # counted on the windows without those texts: the kept run in place of the replicate (which the keys lead)
    assert ("Counting each run on its windows without the texts with a second massive token (below; a run without them "
            "in place of its source), the query leads in 4 of 4 rows.") in lines
    assert "The queries' own text-driven part carries the most (by size) in 2 of 4 (run, layer) rows" in lines
    # a source that is not a replicate (the Debian text): the kept run against its source alone
    monkeypatch = pytest.MonkeyPatch()
    try:
        monkeypatch.setattr(mod, "KEPT", {"smollm2__debian_text_kept": ("smollm2__debian_text", 0, "x.txt", "x.npy")})
        lines = "\n".join(mod._reading({"smollm2__debian_text": source, "smollm2__debian_text_kept": kept}))
    finally:
        monkeypatch.undo()
    assert ("(`smollm2__debian_text_kept`: `smollm2__debian_text`'s windows without 2 texts, text 1: 175 x, text 2: 25 x "
            "at most): query / other keys, by layer, without them against with them: L13 +90% / +20% against +64% / "
            "+77%; L24 +90% / +20% against +64% / +77%. Leaving them out moves a side's whole share by up to 57 points "
            "(L13 other keys: +20% against +77%). The other keys' largest path, by layer, without them against with "
            "them: L13 embed +0% against embed +0%") in lines
    assert "SmolLM2-135M Debian (without its outlier texts)" in mod._label("smollm2__debian_text_kept", kept)


def test_gate_paths_kept_windows_of_a_text_file_are_the_cli_windows_without_the_outliers(tmp_path):
    """_write_kept makes the source run's windows of its --text file as the CLI does, and leaves the outliers out."""
    from sinkinterp import inputs
    from sinkinterp.loading import load_model

    mod = load_script("analyses/gate_paths.py")
    text_file = "analyses/data/sink_gate/debian_val_text.txt"
    source = {"seq_len": 16, "num_seqs": 5,
              "layers": [{"resid_peak": [1.0, 30.0, 2.0, 1.0, 21.0]}, {"resid_peak": [1.0, 2.0, 2.0, 1.0, 1.0]}]}
    path = tmp_path / "kept.npy"
    assert mod._write_kept(source, 3, text_file, str(path), "toy-softmax") == [1, 4]
    lm = load_model("toy-softmax")
    want = inputs.make_tokens("natural", seq_len=16, num_seqs=5, seed=3, vocab_size=lm.d_vocab, tokenizer=lm.tokenizer,
                              text=inputs.read_texts([str(mod.ROOT / text_file)]))
    got = np.load(path)
    assert got.dtype == np.int32 and np.array_equal(got, want[[0, 2, 3]])
    # the shipped sample's windows (text None) differ from the Debian text's
    mod._write_kept(source, 3, None, str(path), "toy-softmax")
    assert not np.array_equal(np.load(path), want[[0, 2, 3]])


def test_gate_paths_resampled_run_is_read_against_the_mean_and_left_out_of_the_counts():
    mod = load_script("analyses/gate_paths.py")

    def side(together, values):
        return {"senders": ["embed", "attn 0", "mlp 0"], "values": list(values), "base": 0.0, "together": together,
                "together_by_text": [together / 2] * 2}

    def run(q, q_values, k, **extra):
        return {"inputs": "natural", "sides": ["query", "keys"], "num_seqs": 2, **extra,
                "layers": [{"layer": 3, "heads": [0], "weight": 0.5, "variance": 1.0, "weight_by_text": [0.5, 0.5],
                            "resid_peak": [1.0, 1.0], "resid_peak_at": [1, 1], "query": side(q, q_values),
                            "keys": side(k, [0.01, 0.0, 0.0]), "rest": 1 - q - k}]}

    mean = run(0.8, [0.05, 0.1, 0.6], 0.1)
    resampled = run(0.7, [0.3, 0.1, 0.4], 0.15, ablation="resample", shifts=[8, 16, 24])
    lines = "\n".join(mod._reading({"smollm2__natural": mean, "smollm2__natural_resample": resampled}))
    assert ("`smollm2__natural_resample` (shifts 8, 16, 24) against `smollm2__natural`: L3 query: all +80% against "
            "+70%, embedding +5% against +30%, largest path mlp 0 +60% against mlp 0 +40%.") in lines
    assert "L3 other keys" not in lines.split("Other texts' writes")[1]  # under 20% in both
    assert ("The side that carries the most (query or other keys) is the same in 1 of 1 (run, layer) rows; the query's "
            "and the other keys' whole shares move by a median 8 points, at most 10 (`smollm2__natural_resample` L3 "
            "query).") in lines
    assert "in 1 of 1 (run, layer) rows (SmolLM2-135M English L3)" in lines
    flipped = run(0.3, [0.1, 0.1, 0.1], 0.5, ablation="resample", shifts=[8, 16, 24])
    lines = "\n".join(mod._reading({"smollm2__natural": mean, "smollm2__natural_resample": flipped}))
    assert ("is the same in 0 of 1 (run, layer) rows (not at `smollm2__natural_resample` L3: query with the mean, "
            "other keys with other texts' writes)") in lines
    assert "second massive token: every row" not in lines  # the flip is on windows without one
    peaked = run(0.8, [0.05, 0.1, 0.6], 0.1)
    peaked["layers"][0]["resid_peak"] = [1.0, 30.0]  # text 1 holds a second massive token
    lines = "\n".join(mod._reading({"smollm2__natural": mean, "smollm2__natural_resample": resampled,
                                    "smollm2__natural_s1": peaked, "smollm2__natural_s1_resample": flipped}))
    assert ("is the same in 1 of 2 (run, layer) rows (not at `smollm2__natural_s1_resample` L3: query with the mean, "
            "other keys with other texts' writes), and in 1 of 1 on windows without a text that holds a second "
            "massive token: every row where it changes is on windows with such a text;") in lines
    assert mod._label("smollm2__natural_resample", resampled) == "SmolLM2-135M English (other texts' writes)"
    assert (mod._label("smollm2__natural_free_resample", resampled)
            == "SmolLM2-135M English (paths through later MLPs, other texts' writes)")
    assert (mod._label("smollm2__debian_text_free_resample", resampled)
            == "SmolLM2-135M Debian (paths through later MLPs, other texts' writes)")
    assert mod._label("smollm2__debian_text_resample", resampled) == "SmolLM2-135M Debian (other texts' writes)"
    assert (mod._label("smollm2__natural_s1_resample", resampled)
            == "SmolLM2-135M English (replicate, other texts' writes)")


def test_gate_paths_shift_by_shift_run_gives_the_spread_and_the_fewer_shifts_mean():
    """A run that keeps each shift's shares: its whole share over the shifts (mean, range, sd), the mean of the
    fewer-shift run's shifts alone beside that run's value, the tokens alone through later MLPs, the embedding's
    path, and how far a mean of K shifts moves; it is left out of the counts and the per-run lines."""
    mod = load_script("analyses/gate_paths.py")
    shifts = [4, 8, 12, 16, 20, 24, 28]

    def side(together, **extra):
        return {"senders": ["embed", "attn 0", "mlp 0"], "values": [0.0, 0.1, 0.6], "base": 0.0,
                "together": together, "together_by_text": [together / 2] * 2, **extra}

    def run(q, k, **extra):
        return {"inputs": "natural", "sides": ["query", "keys"], "num_seqs": 32, **extra,
                "layers": [{"layer": 24, "heads": [0], "weight": 0.5, "variance": 1.0, "weight_by_text": [0.5, 0.5],
                            "resid_peak": [1.0, 1.0], "resid_peak_at": [1, 1], "query": q, "keys": k,
                            "rest": 0.0}]}

    each = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # mean 0.4, sd 0.216; shifts 8, 16, 24: 0.2, 0.4, 0.6
    seven = run(side(0.4, together_by_shift=each, values_by_shift=[[0.0, 0.1, 0.6]] * 7), side(0.05),
                ablation="resample", shifts=shifts)
    results = {"smollm2__natural": run(side(1.2), side(0.1)),
               "smollm2__natural_resample": run(side(0.4), side(0.1), ablation="resample", shifts=[8, 16, 24]),
               "smollm2__natural_resample7": seven}
    lines = "\n".join(mod._reading(results))
    assert ("`smollm2__natural_resample7` (shifts 4, 8, 12, 16, 20, 24, 28): L24 query: all +40% (one shift at a time "
            "+10% to +70%, sd 22 points; shifts 8, 16, 24 alone +40%, `smollm2__natural_resample` +40%), the mean by "
            "position +120%. The standard deviation over shifts is a median 22 points, at most 22 points "
            "(`smollm2__natural_resample7` L24 query); were the shifts independent, a mean of 3 shifts would move by "
            "about sd / sqrt(3): a median 12 points, at most 12; of 7, 8 and 8. The mean over the shifts lies more "
            "than three times one shift's sd from the mean by position's in 1 of 1 readings (the gap a median 80 "
            "points, at most 80 points): the gaps between other texts' writes and the mean by position are the two "
            "edits' difference, not the pairings' noise.") in lines
    bullet = next(x for x in lines.split("\n") if x.startswith("- **One shift at a time**"))
    assert "L24 other keys: all" not in bullet  # under 20%
    assert "the embedding" not in bullet  # direct paths: the embedding's share is not read shift by shift
    assert mod._label("smollm2__natural_resample7", seven) == "SmolLM2-135M English (other texts' writes, 7 shifts)"
    base = "\n".join(mod._reading({k: v for k, v in results.items() if k != "smollm2__natural_resample7"}))
    # the run adds its bullet (no per-run line, no count) and says so in the limits
    assert lines.replace(bullet + "\n", "").split("## Limits")[0] == base.split("## Limits")[0]
    assert "(7 in the runs read one shift at a time" in lines and "(7 in the runs" not in base
    # through later MLPs: the tokens alone (whole share less every attention write's), shift by shift
    free = side(0.3, together_by_shift=[0.3] * 7, attention_all_by_shift=[0.6, 0.8, 0.4, 0.8, 0.2, 0.8, 0.6],
                attention_all=0.6, values_by_shift=[[0.8, 0.0, 0.0], [0.9, 0.0, 0.0]] + [[0.8, 0.0, 0.0]] * 5)
    results = {"smollm2__natural_free": run(side(0.9), side(0.3, attention_all=0.4), free_mlps=True),
               "smollm2__natural_free_resample": run(side(0.9), side(0.3, attention_all=0.5), free_mlps=True,
                                                     ablation="resample", shifts=[8, 16, 24]),
               "smollm2__natural_free_resample7": {**run(free, free, free_mlps=True, ablation="resample",
                                                         shifts=shifts), "sides": ["keys"]}}
    lines = next(x for x in mod._reading(results) if x.startswith("- **One shift at a time**"))
    assert ("L24 other keys: all +30% (one shift at a time +30% to +30%, sd 0 points; shifts 8, 16, 24 alone +30%, "
            "`smollm2__natural_free_resample` +30%), the mean by position +30%; the tokens alone -30% (one shift at a "
            "time -50% to +10%, sd 23 points; shifts 8, 16, 24 alone -50%, `smollm2__natural_free_resample` -20%), "
            "the mean by position -10%; the embedding +81% (one shift at a time +80% to +90%, sd 4 points; shifts "
            "8, 16, 24 alone +83%).") in lines
    assert "L24 query" not in lines  # a side the run did not read
    # without the fewer-shift run: no "shifts ... alone" (nothing to set it beside)
    lines = next(x for x in mod._reading({k: v for k, v in results.items() if k != "smollm2__natural_free_resample"})
                 if x.startswith("- **One shift at a time**"))
    assert "L24 other keys: all +30% (one shift at a time +30% to +30%, sd 0 points), the mean by position" in lines
    assert "shifts alone" not in lines and "8, 16, 24 alone" not in lines and "average" not in lines
    assert [mod._points(x) for x in (0.0, 0.01, 0.014, 0.226)] == ["0 points", "1 point", "1 point", "23 points"]
    # the whole share's gap (0: the same +30% both ways) and the tokens alone's (20 points, sd 23) are not far
    assert ("lies more than three times one shift's sd from the mean by position's in 0 of 2 readings (the gap a median "
            "10 points, at most 20 points).") in lines


def test_gate_paths_free_run_is_read_against_its_direct_run_and_left_out_of_the_counts():
    mod = load_script("analyses/gate_paths.py")

    def side(together, values):
        return {"senders": ["embed", "attn 0", "mlp 0"], "values": list(values), "base": 0.0, "together": together,
                "together_by_text": [together / 2] * 2}

    def run(q_values, k_values):
        return {"inputs": "natural", "sides": ["query", "keys"], "num_seqs": 2,
                "layers": [{"layer": 3, "heads": [0], "weight": 0.5, "variance": 1.0, "weight_by_text": [0.5, 0.5],
                            "resid_peak": [1.0, 1.0], "resid_peak_at": [1, 1], "query": side(0.8, q_values),
                            "keys": side(0.1, k_values), "rest": 0.1}]}

    direct = run([0.0, 0.1, 0.6], [0.0, 0.05, 0.05])
    free = run([0.6, 0.5, 0.6], [0.0, 0.05, 0.05])
    lines = "\n".join(mod._reading({"smollm2__natural": direct, "smollm2__natural_free": free}))
    assert ("- **Through later MLPs** (each run against its direct-path run on the same windows") in lines
    assert ("`smollm2__natural_free` against `smollm2__natural`: L3 query (all +80%): MLPs +60%, attention +10%, "
            "embedding +0% (mlp 0 +60%) against MLPs +60%, attention +50%, embedding +60% (embed +60%). The token "
            "embeddings at the side's positions carry at most 0% by their direct path and "
            "+60% to +60% through the MLPs after them, at least 75% of the side's whole share in every row: which "
            "tokens stand there is needed") in lines
    lines = "\n".join(mod._reading({"smollm2__natural": direct, "smollm2__natural_free": free,
                                    "smollm2__natural_free_resample": run([0.7, 0.5, 0.6], [0.0, 0.05, 0.05])}))
    assert ("at least 75% of the side's whole share in every row (with other texts' tokens in place of the mean: "
            "+70% to +70% in `smollm2__natural`'s rows (`smollm2__natural_free_resample`)): which tokens") in lines
    weak = run([0.3, 0.5, 0.6], [0.0, 0.05, 0.05])  # under half the side's share through the MLPs: the bare numbers
    lines = "\n".join(mod._reading({"smollm2__natural": direct, "smollm2__natural_free": weak}))
    assert "is needed" not in lines and "carry at most 0% by their direct path and +30% to +30% through" in lines
    assert "L3 other keys" not in lines  # a whole share under 20%
    # the free run repeats the direct run's windows: counted once
    assert "in 1 of 1 (run, layer) rows (SmolLM2-135M English L3)" in lines
    alone = run([0.6, 0.5, 0.6], [0.0, 0.05, 0.05])
    alone["layers"][0]["query"]["attention_all"] = 0.2  # every attention write made its mean: 20 of the 80 points
    lines = "\n".join(mod._reading({"smollm2__natural": direct, "smollm2__natural_free": alone}))
    assert ("`smollm2__natural_free`: L3 query +60% of +80%. That is on the query 75% to 75% of the side's whole "
            "share (1 row): the tokens at those positions decide most of it on their own.") in lines
    alone["layers"][0]["query"]["attention_all"] = 0.6
    lines = "\n".join(mod._reading({"smollm2__natural": direct, "smollm2__natural_free": alone}))
    assert "L3 query +20% of +80%. That is on the query 25% to 25% of the side's whole share (1 row): most of it" in lines
    assert "The tokens alone" not in "\n".join(mod._reading({"smollm2__natural": direct, "smollm2__natural_free": free}))
    assert mod._label("smollm2__natural_free", free) == "SmolLM2-135M English (paths through later MLPs)"
    assert mod._label("smollm2__natural_s1_free", free) == "SmolLM2-135M English (replicate, paths through later MLPs)"


def test_gate_paths_total_run_is_read_against_the_side_and_left_out_of_the_counts():
    mod = load_script("analyses/gate_paths.py")

    def side(together, values):
        return {"senders": ["embed", "attn 0", "mlp 0", "attn 1"], "values": list(values), "base": 0.0,
                "together": together, "together_by_text": [together / 2] * 2}

    def run(q_values, k_values, **extra):
        return {"inputs": "natural", "sides": ["query", "keys"], "num_seqs": 2, **extra,
                "layers": [{"layer": 3, "heads": [0], "weight": 0.5, "variance": 1.0, "weight_by_text": [0.5, 0.5],
                            "resid_peak": [1.0, 1.0], "resid_peak_at": [1, 1], "query": side(0.8, q_values),
                            "keys": side(0.1, k_values), "rest": 0.1}]}

    direct = run([0.0, 0.1, 0.6, 0.05], [0.0, 0.05, 0.05, 0.0])
    free = run([0.6, 0.5, 0.6, 0.05], [0.0, 0.05, 0.05, 0.0])
    total = run([0.9, 0.7, 0.2, 0.4], [0.3, 0.05, 0.05, 0.0], free_attn=True)
    runs = {"smollm2__natural": direct, "smollm2__natural_free": free, "smollm2__natural_total": total}
    lines = "\n".join(mod._reading(runs))
    assert ("`smollm2__natural_total`: L3 query (all +80%): embedding +90% (+60% through later MLPs alone); attn 0 "
            "+70%, attn 1 +40%, mlp 0 +20%. The embeddings' total share against the side's whole share, two edits "
            "that reach the input by different routes (the tokens made their mean and the model run on, against the "
            "input made its mean): within 10 points on the query (the largest gap at L3). After the embeddings, on the "
            "query attn 0 carries the most in 1 of 1 rows (78% to 78% of the embeddings' share).") in lines
    assert "L3 other keys (all" not in lines.split("Total effects")[1]  # a whole share under 20%
    assert "in 1 of 1 (run, layer) rows (SmolLM2-135M English L3)" in lines  # the same windows: counted once
    assert "recompute too: total effects) on `smollm2__natural_total`." in lines and "is not run." not in lines
    # the keys side too, and a second run on windows with a second massive token whose keys another MLP leads
    both = run([0.9, 0.7, 0.2, 0.4], [0.9, 0.05, 0.6, 0.0], free_attn=True)
    direct2 = run([0.0, 0.1, 0.6, 0.05], [0.0, 0.05, 0.05, 0.0])
    direct2["layers"][0]["keys"]["together"] = 0.3
    peaked = run([0.0, 0.1, 0.6, 0.05], [0.0, 0.05, 0.05, 0.0])
    peaked["layers"][0]["keys"]["together"] = 0.3
    peaked["layers"][0]["resid_peak"] = [1.0, 30.0]
    other = run([0.9, 0.7, 0.2, 0.4], [0.9, 0.05, 0.1, 0.5], free_attn=True)
    lines = "\n".join(mod._reading({"smollm2__natural": direct2, "smollm2__natural_total": both,
                                    "smollm2__natural_s1": peaked, "smollm2__natural_s1_total": other}))
    assert ("within 10 points on the query (the largest gap at L3), within 60 points on other keys (the largest gap "
            "at L3). After the embeddings, on the query attn 0 carries the most in 2 of 2 rows (78% to 78% of the "
            "embeddings' share). After the embeddings, on other keys mlp 0 carries the most in 1 of 2 rows (67% to "
            "67% of the embeddings' share); attn 1 in 1, each on windows with a second massive token.") in lines
    without = "\n".join(mod._reading({"smollm2__natural_free": free, "smollm2__natural_total": total}))
    assert "Total effects" not in without and "is not run." in "\n".join(mod._reading({"smollm2__natural": direct}))
    assert mod._label("smollm2__natural_total", total) == "SmolLM2-135M English (total effects)"
    assert mod._label("smollm2__natural_s1_total", total) == "SmolLM2-135M English (replicate, total effects)"


def test_pretrained_gemma3_page_reports_its_runs(tmp_path, monkeypatch):
    """The Gemma 3 page's numbers are its runs' results (here a tiny LLaMA GGUF file stands in for Gemma 3's, with
    3 and 2 sequences); BOS goes in the middle of the text at the page's position; without the wheels the analysis
    is skipped and writes nothing."""
    import warnings

    from gguf_export import write_gguf
    from test_architectures import _build

    import sinkinterp.loading
    from sinkinterp.inputs import make_tokens

    mod = load_script("analyses/pretrained_gemma3.py")
    path = write_gguf(_build("llama"), tmp_path / "tiny.gguf")
    (tmp_path / "words.txt").write_text(" ".join(f"t{3 + i % 50}" for i in range(2000)))  # its word vocabulary
    for name, value in (("DOC", tmp_path / "page.md"), ("OUT", tmp_path / "out"), ("FIGS", tmp_path / "figs"),
                        ("N_REPORT", 3), ("N_INTERVENE", 2), ("N_MASSIVE", 2), ("TEXT", tmp_path / "words.txt"),
                        ("T_WINDOW", 24), ("N_WINDOW", 2), ("SPLIT", 8)):  # the tiny model has no window: a split
        monkeypatch.setattr(mod, name, value)
    monkeypatch.setattr(sinkinterp.loading, "gemma3_gguf_path", lambda: str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert mod.main() == 0
    page = (tmp_path / "page.md").read_text()
    out = tmp_path / "out"
    res = {(b, k): json.loads((out / b / k / "results.json").read_text())
           for b in ("nobos", "bos") for k in ("natural", "random", "repeat")}
    assert res["nobos", "natural"]["prepend_bos"] is False and res["bos", "natural"]["prepend_bos"] is True
    assert ("| Gemma 3 270M, no BOS (the paper's protocol) | "
            + " | ".join(f"{res['nobos', k]['sink_pct'][0]:.2f}" for k in ("natural", "random", "repeat"))) in page
    insert = json.loads((out / "insert-bos" / "results.json").read_text())["interventions"][0]
    assert insert["name"].startswith("insert_first") and f"brings it to {insert['loss']:.3f}" in page
    keyval = json.loads((out / "bos-key-value" / "results.json").read_text())
    assert [r["name"] for r in keyval["interventions"]][-1] == "ablate[norenorm]"
    for r in keyval["interventions"]:
        assert f"| `{r['name']}` | {r['delta_loss']:+.4f} |" in page
    from sinkinterp.massive import summary

    massive = json.loads((out / "bos-massive" / "results.json").read_text())
    assert json.loads((out / "bos-massive" / "config.json").read_text())["prepend_bos"] is True
    assert summary(massive) in page
    tokens = np.load(out / "bos-at-9" / "tokens.npy")
    tok, _ = sinkinterp.loading.gguf_tokenizer(str(path))
    text = make_tokens("natural", seq_len=63, num_seqs=2, seed=0, vocab_size=len(tok), tokenizer=tok,
                       text=(tmp_path / "words.txt").read_text())
    assert tokens.shape == (2, 64) and (tokens[:, 8] == tok.bos_token_id).all()
    np.testing.assert_array_equal(np.delete(tokens, 8, axis=1), text)  # the text around it as the other runs read it
    middle = json.loads((out / "bos-at-9" / "results.json").read_text())
    assert ", ".join(f"{v:.2f}" for v in middle["sink_pct"]) in page
    assert "gemma3_gguf_path as p" in page and str(path) not in page
    assert (tmp_path / "figs" / "pretrained-gemma3-bos-natural-norms.png").read_bytes()[:4] == b"\x89PNG"
    # past the split: both `windows` runs and the norms by token, on the same text, BOS first or not
    win = {b: json.loads((out / f"windows-{b}" / "results.json").read_text()) for b in ("bos", "nobos")}
    assert win["bos"]["prepend_bos"] and not win["nobos"]["prepend_bos"] and win["bos"]["split"] == 8
    assert win["bos"]["seq_len"] == 24 and win["bos"]["num_seqs"] == 2 and win["bos"]["windowed_layers"] == []
    g = win["nobos"]["summary"]["global"]["past"]
    assert (f"| no BOS (token 1 = text) | global (2) | past | {g['first']:.3f} | {g['first_rate']:.1f} | "
            f"{g['top']:.3f} | {g['top_rate']:.1f} |") in page
    assert json.loads((out / "tokens-bos" / "config.json").read_text())["prepend_bos"] is True
    assert "sinkinterp windows --model" in page and "--split 8" in page
    assert (tmp_path / "figs" / "pretrained-gemma3-window-sinks.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "page.md").unlink()
    monkeypatch.setattr(sinkinterp.loading, "gemma3_gguf_path", lambda: None)
    assert mod.main() == 0 and not (tmp_path / "page.md").exists()


def test_pretrained_gemma3_window_section_reads_its_numbers():
    """The section past the sliding window, on `window_sinks` results of hand-built patterns (tests/
    test_window_sinks.py): at eps 0.5 the windowed layer's sinks off token 1 go from 1 in 6 (query, head) pairs
    inside to 1 in 2 past, all on the oldest key in view; the global layer keeps token 1."""
    import torch
    from test_window_sinks import WindowPatternModel

    from sinkinterp.window_sinks import window_sinks

    mod = load_script("analyses/pretrained_gemma3.py")
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 1], [9, 8, 7, 6, 5, 4, 3, 2, 1, 9]])
    win = window_sinks(WindowPatternModel(window=4), tokens, eps=0.5).to_dict(lambda t: f"w{t}")
    by_token = {"tokens": {"id": [3, 5], "max_resid_ratio": [1.25, 9.0]}, "first_resid_ratio": [1.0, 17.5]}
    text = "\n".join(mod._window_lines(win, win, by_token))
    summary = win["summary"]["windowed"]
    assert summary["inside"]["top_rate"] == pytest.approx(100 / 6) and summary["past"]["top_rate"] == 50.0
    assert "| BOS first | windowed (1) | past | 0.000 | 0.0 | 0.475 | 50.0 |" in text
    assert "| 0 | 4 | 0.400 | 0.000 | 16.7 | 50.0 |" in text  # token 1 inside: head 0 0.6, head 1 (1/3 + 1/6 + 1/10) / 3
    past = win["sink_tokens"]["windowed"]["past"]
    assert past["total"] == 12 and past["top"][0] == {"id": 3, "pairs": 2, "text": "w3"}  # head 0's edge keys
    assert "When BOS leaves the window the windowed layers do not spread their weight: 50% of" in text
    assert "mean largest weight of 0.47, about what they gave BOS inside (0.40). 17% of those sinks fall on 'w3', " \
           "a token that takes 0% of them inside" in text  # the inside list is whole: w2 and w8 only
    assert "not the oldest key in view" not in text  # every one of them is
    assert "The rise is in layer 0 (by more than 15 points" in text
    assert "Without BOS, inside the window, 17% of the windowed layers' pairs have a sink off token 1 (with BOS 17%) " \
           "and 50% one on token 1." in text  # 17% is not about the 50% past the window: no sentence on it
    assert "100.0% on the oldest key in view" in text
    assert "'w3' carries no massive activation: its mean residual norm is at most 1.25x the mean at any layer " \
           "(BOS: 17.5x" in text
    assert "The global layers keep BOS past the split: mean weight 0.35" in text
    v = win["sink_value"]["windowed"]  # ||v_s|| = the token id in layer 0: the sink keys hold 3..7, token 1 1 and 9
    assert v["past"]["sink_keys"] == pytest.approx(5.0) and v["past"]["all_keys"] == pytest.approx(5.0)
    assert "values of norm 5.00 against 5.00 over all keys (1.00x; each pair's own key / value head), about the " \
           "others'; BOS's value in the same layers is 1.00x the others'." in text


def test_pretrained_gemma3_drop_section_picks_its_control_and_reads_the_losses():
    """The control token is the one as frequent as the top sink past the window among those taking under a tenth of
    its share (a token the cut list leaves out took at most the smallest listed share); the reading names the new
    sink used only when hiding it costs more past the window than inside and than the control."""
    mod = load_script("analyses/pretrained_gemma3.py")
    win = {"sink_tokens": {"windowed": {"past": {"total": 100, "top": [
        {"id": 5, "pairs": 50}, {"id": 6, "pairs": 30}, {"id": 7, "pairs": 4}]}}}}
    tokens = {"tokens": {"id": [5, 6, 7, 8, 9], "count": [40, 41, 30, 38, 60]}}
    assert mod._control_token(win, tokens) == 8  # 6 takes too many; 7 and 8 (unlisted: at most 4) qualify
    win["sink_tokens"]["windowed"]["past"]["total"] = 84  # the list is whole: 8 took none
    assert mod._control_token(win, tokens) == 8
    tokens["tokens"]["id"], tokens["tokens"]["count"] = [5, 6], [40, 41]
    assert mod._control_token(win, tokens) is None

    def drop(token, inside, past):
        return {"token_ids": [token], "tokens": [f"w{token}"], "layers": [0, 1], "loss": {"inside": 3.0, "past": 3.5},
                "delta": {"inside": inside, "past": past}, "weight_dropped": {"inside": 0.05, "past": 0.2}}

    text = "\n".join(mod._drop_lines({"sink": drop(5, 0.01, 0.08), "control": drop(8, 0.0, 0.01)}, tokens))
    assert "| the top sink past the window | 'w5' | 40 | 0.050 | 0.200 | +0.0100 | +0.0800 |" in text
    assert "| control | 'w8' | 0 | 0.050 | 0.200 | +0.0000 | +0.0100 |" in text  # not counted: 0
    assert "Hiding 'w5' costs +0.080 nats a token past the window and +0.010 inside, its keys holding 0.20 of the " \
           "windowed layers' weight past it and 0.05 inside. The control costs +0.010 past the window (+0.000 " \
           "inside) for 0.20 of the weight. The windowed layers lean on 'w5' more past the window than while BOS is " \
           "in view and more than on the control. Per unit of weight moved, hiding it costs 0.40 nats past the " \
           "window against the control's 0.05." in text
    control = drop(8, 0.0, 0.09)
    control["weight_dropped"]["past"] = 0.05  # 1.8 nats a unit of weight: w5's 0.40 is under half of it
    text = "\n".join(mod._drop_lines({"sink": drop(5, 0.07, 0.08), "control": control}, tokens))
    assert "The loss does not single 'w5' out past the window. Per unit of weight moved, hiding it costs 0.40 nats " \
           "past the window against the control's 1.80: much of its weight can be moved onto the other keys at a " \
           "small price." in text
    assert mod._drop_lines({}, tokens) == []
