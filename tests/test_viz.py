"""Offline circuitsvis pages: nothing external, one bundle per page, closed divs with distinct ids,
token strings that reach the browser exactly, head_view = the model's hook_pattern, hooks removed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import word_tokenizer

from sinkinterp import tl_adapter, viz
from sinkinterp.models.testing import tiny_model

TRICKY = ["<bos>", "a&b", "</script>", '"quote"', "line\nbreak", "<!--", "plain"]
RENDER = re.compile(r'^\s*CircuitsVis\.render\("([\w-]+)", CircuitsVis\.(\w+), (\{.*\})\);\s*$', re.DOTALL)


class _Page(HTMLParser):
    """What a browser's tokenizer sees: every script (attributes, text) and every element event."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.scripts: list[tuple[dict, str]] = []
        self.events: list[tuple[str, str, dict]] = []
        self._in_script: dict | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.events.append(("start", tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_startendtag(self, tag, attrs):
        self.events.append(("self-closing", tag, dict(attrs)))

    def handle_endtag(self, tag):
        self.events.append(("end", tag, {}))
        self._in_script = None

    def handle_data(self, data):
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def render_calls(self) -> list[tuple[str, str, dict]]:
        calls = []
        for attrs, text in self.scripts:
            if "data-circuitsvis-bundle" not in attrs:
                view_id, element, props = RENDER.match(text).groups()
                calls.append((view_id, element, json.loads(props)))
        return calls


def _causal(n_heads: int, t: int) -> np.ndarray:
    p = np.tril(np.ones((n_heads, t, t)))
    return p / p.sum(-1, keepdims=True)


def _two_view_page(tmp_path) -> str:
    t = len(TRICKY)
    views = [viz.attention_heads_html(TRICKY, _causal(2, t), title="layer <0> & co", head_names=["<h0>", "h1"]),
             viz.attention_pattern_html(TRICKY, torch.from_numpy(_causal(1, t)[0]), title="one head")]
    path = viz.save_html(tmp_path / "views.html", viz.page(views, "tricky </title> tokens"))
    return path.read_text(encoding="utf-8")


def test_page_refers_to_nothing_outside_and_inlines_the_bundle_once(tmp_path):
    text = _two_view_page(tmp_path)
    for needle in ('src="http', "src='http", "unpkg", "cdn.", "<link", "sourceMappingURL"):
        assert needle not in text, needle
    parsed = _Page(text)
    assert all("src" not in attrs for attrs, _ in parsed.scripts)
    bundles = [body for attrs, body in parsed.scripts if "data-circuitsvis-bundle" in attrs]
    assert len(bundles) == 1 and len(bundles[0]) > 1_000_000
    assert text.count(bundles[0].strip()[:200]) == 1
    assert len(parsed.render_calls()) == 2


def test_each_view_has_an_explicitly_closed_div_with_its_own_id(tmp_path):
    parsed = _Page(_two_view_page(tmp_path))
    assert not [e for e in parsed.events if e[0] == "self-closing"]
    ids = []
    for i, (kind, tag, attrs) in enumerate(parsed.events):
        if kind == "start" and tag == "div":
            assert parsed.events[i + 1] == ("end", "div", {}), "view div must be closed before anything else"
            ids.append(attrs["id"])
    calls = parsed.render_calls()
    assert len(set(ids)) == 2 and [c[0] for c in calls] == ids
    assert [c[1] for c in calls] == ["AttentionHeads", "AttentionPattern"]


def test_token_strings_and_titles_reach_the_page_exactly(tmp_path):
    text = _two_view_page(tmp_path)
    parsed = _Page(text)
    for attrs, body in parsed.scripts:
        assert "</script" not in body.lower() and "<!--" not in body
    (_, _, heads), (_, _, single) = parsed.render_calls()
    assert heads["tokens"] == TRICKY and single["tokens"] == TRICKY
    assert heads["attentionHeadNames"] == ["<h0>", "h1"]
    np.testing.assert_allclose(heads["attention"], _causal(2, len(TRICKY)), atol=1e-6)
    assert "<title>tricky &lt;/title&gt; tokens</title>" in text
    assert "layer &lt;0&gt; &amp; co" in text


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's scripts")
def test_scripts_run_and_render_receives_the_exact_tokens(tmp_path):
    """Run the page's scripts in order, as a browser would, with CircuitsVis.render recorded."""
    scripts = [body for _, body in _Page(_two_view_page(tmp_path)).scripts]
    runner = tmp_path / "run.js"
    runner.write_text(
        "const vm = require('vm'); const scripts = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "const ctx = {console}; ctx.window = ctx; ctx.self = ctx; vm.createContext(ctx);\n"
        "vm.runInContext(scripts[0], ctx);\n"
        "const real = ctx.CircuitsVis, names = Object.keys(real), calls = [];\n"
        "ctx.CircuitsVis = Object.fromEntries(names.map(n => [n, real[n]]));  // exports are getters\n"
        "ctx.CircuitsVis.render = (id, el, props) => calls.push([id, names.find(n => real[n] === el), props]);\n"
        "for (const s of scripts.slice(1)) vm.runInContext(s, ctx);\n"
        "process.stdout.write(JSON.stringify(calls));\n"
    )
    out = subprocess.run(["node", str(runner)], input=json.dumps(scripts), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    calls = json.loads(out.stdout)
    assert [c[1] for c in calls] == ["AttentionHeads", "AttentionPattern"]
    assert all(c[2]["tokens"] == TRICKY for c in calls)


@pytest.mark.parametrize("tokens, pattern, error, match", [
    (["a", "b"], np.ones((1, 2, 3)), ValueError, r"pattern: expected shape \[heads, T, T\]"),
    (["a", "b", "c"], _causal(1, 2), ValueError, r"pattern: .*len\(tokens\) = 3"),
    (["a", "b"], _causal(2, 2)[0], ValueError, r"pattern: expected shape \[heads, T, T\]"),
    (["a", "b"], np.full((1, 2, 2), np.nan), ValueError, "pattern: holds NaN"),
    (["a", "b"], [[[1.0, 0.0], [0.5, 0.5]]], TypeError, "pattern: expected a numpy array or torch tensor"),
    (["a", 2], _causal(1, 2), TypeError, "tokens: entry 1"),
    ([], np.zeros((1, 0, 0)), ValueError, "tokens: expected at least one"),
])
def test_bad_input_names_the_argument(tokens, pattern, error, match):
    with pytest.raises(error, match=match):
        viz.attention_heads_html(tokens, pattern)


def test_bad_head_names_pattern_ndim_and_repeated_view():
    with pytest.raises(ValueError, match="head_names: expected 2 strings"):
        viz.attention_heads_html(["a", "b"], _causal(2, 2), head_names=["only one"])
    with pytest.raises(ValueError, match=r"pattern: expected shape \[T, T\]"):
        viz.attention_pattern_html(["a", "b"], _causal(1, 2))
    view = viz.attention_pattern_html(["a", "b"], _causal(1, 2)[0])
    with pytest.raises(ValueError, match="views: view 1 repeats element id"):
        viz.page([view, view], "twice")


def _embedded_patterns(page: str) -> list[tuple[list[str], np.ndarray]]:
    return [(props["tokens"], np.array(props["attention"])) for _, _, props in _Page(page).render_calls()]


def _reference(model, tokens: torch.Tensor) -> dict:
    _, cache = model.run_with_cache(tokens[None])
    return cache


def test_head_view_embeds_the_models_hook_pattern_and_removes_its_hooks():
    model = tiny_model("rotary")
    model.train()
    tokens = torch.tensor([1, 7, 3, 3, 9, 12, 4, 30])
    page = viz.head_view(model, tokens)
    assert model.training and tl_adapter.count_attached_hooks(model) == 0
    cache = _reference(model.eval(), tokens)
    views = _embedded_patterns(page)
    assert len(views) == model.cfg.n_layers
    assert [m for m in re.findall(r'<h3 class="sinkinterp-view-title">(.*?)</h3>', page)] == ["layer 0", "layer 1"]
    for l, (toks, pattern) in enumerate(views):
        assert toks == [str(i) for i in tokens.tolist()]
        ref = cache[f"blocks.{l}.attn.hook_pattern"][0].numpy()
        assert pattern.shape == (4, 8, 8) and pattern.std() > 0.05
        np.testing.assert_allclose(pattern, ref, atol=1e-6)


def test_head_view_removes_its_hooks_when_the_forward_fails():
    model = tiny_model("rotary")

    def boom(x, hook):
        raise RuntimeError("boom")

    model.add_hook("blocks.1.hook_resid_post", boom)  # the user's own hook: it must stay
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        viz.head_view(model, [1, 2, 3])
    assert tl_adapter.count_attached_hooks(model) == 1 and model.training
    model.reset_hooks()


def test_head_view_shows_the_bias_slot_as_a_leading_token():
    model = tiny_model("kv")
    tokens = torch.tensor([5, 6, 7, 8, 9, 10])
    views = _embedded_patterns(viz.head_view(model, tokens, layers=[1], token_strs=list("abcdef")))
    cache = _reference(model, tokens)
    (toks, pattern), = views
    assert toks == [viz.SLOT_TOKEN, *"abcdef"]
    assert pattern.shape == (4, 7, 7)
    np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pattern[:, 1:, 0], cache["blocks.1.attn.hook_bias_pattern"][0].numpy(), atol=1e-6)
    np.testing.assert_allclose(pattern[:, 1:, 1:], cache["blocks.1.attn.hook_pattern"][0].numpy(), atol=1e-6)
    assert pattern[:, 1:, 0].mean() > 0.05  # the slot takes a visible share


def test_head_view_token_strings_layers_and_bad_input():
    model = tiny_model("rotary")
    ids = np.array([1, 4, 2])
    (toks, _), = _embedded_patterns(viz.head_view(model, ids, layers=[0], tokenizer=word_tokenizer(50)))
    assert toks == ["t1", "t4", "t2"]
    with pytest.raises(ValueError, match=r"layers: 2 is not a layer index in \[0, 1\]"):
        viz.head_view(model, ids, layers=[2])
    with pytest.raises(ValueError, match="tokens_1d: expected one sequence"):
        viz.head_view(model, ids[None])
    with pytest.raises(ValueError, match=r"tokens_1d: token ids must lie in \[0, 49\]"):
        viz.head_view(model, [1, 50])
    with pytest.raises(ValueError, match="token_strs: expected 3 strings"):
        viz.head_view(model, ids, token_strs=["a"])
    assert tl_adapter.count_attached_hooks(model) == 0
