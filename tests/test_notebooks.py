"""The notebooks in notebooks/ run top to bottom on the embedded default model, and are stored clean.

How a notebook is run here: nbclient starts a fresh IPython kernel whose Python is this test's own
interpreter (``sys.executable``, through a kernelspec written to a temporary folder), so the kernel sees
the same packages as the tests, in any virtual environment. The kernel's working directory is
notebooks/, its ``PYTHONPATH`` starts with the folder holding the ``sinkinterp`` package under test, and
its environment names the model (``SINKINTERP_MODEL=default``) and a temporary output folder
(``SINKINTERP_OUT``); every other ``SINKINTERP_*`` variable is removed, so the notebooks' own defaults for
N, T and eps are what runs. Nothing is written inside the repository. torch runs single-threaded in the
kernel (``OMP_NUM_THREADS=1`` unless already set; see ``_kernel_env``).

Network: the kernel is a separate process, out of reach of the socket guard in tests/conftest.py. The
first cell of the copy that is executed (never of the file) installs that same guard in the kernel (the
source of ``conftest._guarded_connect``: loopback and Unix sockets only). The client side needs no
exception: nbclient talks to the kernel over ZMQ on 127.0.0.1, which the guard allows, and ZMQ opens its
sockets in C, not through ``socket.socket.connect``. jaxtyping's run-time checks are not turned on in the
kernel: instrumenting the imports roughly triples the kernel's start-up, and the functions the notebooks
call are checked by their own tests.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbclient
import nbformat
import pytest
from conftest import _guarded_connect  # tests/ is on sys.path under pytest, as in test_viz.py

import sinkinterp

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 300  # per cell; each notebook takes well under a minute on 2 CPU cores
KERNEL_NAME = "sinkinterp-test-python"
KINDS = ("natural", "random", "repeat")
KEY_VS_VALUE = ["zero_value", "mean_value", "zero_key", "ablate"]


# =========================================================================================
# running a notebook
# =========================================================================================
def _kernel_manager(tmp_path: Path):
    """A kernel manager whose only extra kernelspec runs ``sys.executable -m ipykernel_launcher``."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "sinkinterp tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def _kernel_env(out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINKINTERP_")}
    package_root = str(Path(sinkinterp.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.update(SINKINTERP_MODEL="default", SINKINTERP_OUT=str(out), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # One torch thread unless told otherwise: the default model is tiny, and when the machine's other cores
    # are busy an OpenMP thread waiting for one made each forward pass ~30x slower (2 shared cores:
    # 1.2 s instead of 35 ms for 8 x 32 tokens).
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _setup_cell() -> str:
    return "\n".join([
        "# added by tests/test_notebooks.py to the executed copy only: no network connections",
        "import socket",
        "_real_connect = socket.socket.connect",
        inspect.getsource(_guarded_connect),
        "socket.socket.connect = _guarded_connect",
    ])


def _execute(name: str, tmp_path: Path):
    """Run notebooks/<name> in a fresh kernel; returns the executed notebook and the output folder."""
    return _run(nbformat.read(NOTEBOOKS / name, as_version=4), tmp_path)


def _run(nb, tmp_path: Path):
    """Execute ``nb`` in a fresh kernel after the setup cell; returns it (setup cell removed) and the
    output folder. A cell that raises fails the test with its traceback."""
    nb.cells.insert(0, nbformat.v4.new_code_cell(_setup_cell(), id="test-setup"))
    out = tmp_path / "out"
    client = nbclient.NotebookClient(
        nb, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT_S, allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute(env=_kernel_env(out))
    nb.cells.pop(0)
    return nb, out


def _cell(nb, cell_id: str):
    cells = [c for c in nb.cells if c.get("id") == cell_id]
    assert len(cells) == 1, f"expected one cell with id {cell_id!r}"
    return cells[0]


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _count(nb, mime: str) -> int:
    return sum(mime in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


class _Scripts(HTMLParser):
    """Every <script> element of a page: its attributes and text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.scripts: list[tuple[dict, str]] = []
        self._open = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append((dict(attrs), ""))
            self._open = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._open = False

    def handle_data(self, data):
        if self._open:
            attrs, body = self.scripts[-1]
            self.scripts[-1] = (attrs, body + data)


def _assert_offline_page(text: str) -> None:
    for needle in ('src="http', "src='http", "unpkg", "cdn.", "<link", "sourceMappingURL"):
        assert needle not in text, needle
    scripts = _Scripts(text).scripts
    assert scripts and all("src" not in attrs for attrs, _ in scripts)


# =========================================================================================
# what each notebook must show
# =========================================================================================
def _check_quickstart(nb, out: Path) -> None:
    table = _stdout(_cell(nb, "measure"))
    assert "Sink table" in table and "Sink_1 %" in table and "Sink_2 %" in table and "Sink_* %" in table
    rows = {m[1]: m for m in re.finditer(r"^(natural|random|repeat)\s+([\d.]+)\s+([\d.]+)\s+(-|[\d.]+)", table, re.M)}
    assert sorted(rows) == sorted(KINDS), table
    for kind, m in rows.items():
        # the default model (toy-softmax, trained with BOS first) sinks on token 1, not on token 2
        assert float(m[2]) > 5.0 and float(m[3]) < float(m[2]), f"{kind}: {m[0]}"
        assert m[4] == "-", "the default model has no bias slot"
    assert _count(nb, "image/png") >= len(KINDS) + 2  # alpha per kind, norms, q.k
    for name in [f"alpha_{k}.png" for k in KINDS] + ["norms_natural.png", "qk_natural.png"]:
        assert (out / name).stat().st_size > 1000, name

    html_outputs = [o for o in _cell(nb, "heads").outputs if "text/html" in o.get("data", {})]
    assert len(html_outputs) == 1
    inline = html_outputs[0]["data"]["text/html"]
    path = out / "head_view.html"
    saved = path.read_text(encoding="utf-8")
    assert inline == saved
    _assert_offline_page(saved)
    assert saved.count("CircuitsVis.render(") == 2  # layers 0 and 3 of the default model
    assert "layer 0" in saved and "layer 3" in saved


def _check_key_bias(nb, out: Path) -> None:
    res = json.loads((out / "key_bias_results.json").read_text())
    assert res["model"] == "default" and res["sink1_pct"] > 0.0  # the trained default sinks on token 1
    assert [r["name"] for r in res["key_vs_value"]] == KEY_VS_VALUE
    for r in res["key_vs_value"]:
        assert math.isfinite(r["delta_loss"]) and r["loss_base"] > 0
    for kind in ("zero_value", "ablate"):
        grid = res["per_head_delta_loss"][kind]
        assert len(grid) == 4 and all(len(row) == 4 for row in grid)
        assert all(math.isfinite(v) for row in grid for v in row) and any(v != 0 for row in grid for v in row)
    p = res["patching"]
    assert p["clean"] != p["corrupted"]
    for c in ("k", "v"):
        assert p["per_head"][c]["axes"] == ["layer", "head"]
        assert len(p["share_restored_per_head"][c]) == 4 and len(p["share_restored_per_layer"][c]) == 4
    # token 1's residual stream before layer 0 carries everything the corruption changed
    assert p["share_restored_per_layer"]["resid_pre"][0] == pytest.approx(1.0, abs=1e-2)
    control = res["control_at_position"]
    for kind in ("ablate", "zero_value"):  # the edit at position T/2 reaches only the predictions from there on
        c = control[kind]
        assert c["edited_sequences"] == res["num_seqs"] and c["params"]["where"] == f"pos[{control['position']}]"
        assert abs(c["delta_loss"]) < abs(c["delta_loss_from_edit"])
    assert re.search(r"^ablate\s+[-+][\d.]+\s+[-+][\d.]+$", _stdout(_cell(nb, "control")), re.M)

    kvv = _stdout(_cell(nb, "kvv"))
    assert all(re.search(rf"^{name}\s", kvv, re.M) for name in KEY_VS_VALUE), kvv
    assert "loss clean" in _stdout(_cell(nb, "patch"))
    assert len(re.findall(r"^\s+\d+\s+-?[\d.]+%", _stdout(_cell(nb, "per-layer")), re.M)) == 4
    # path patching: the default model (toy-softmax, BOS first) has sink heads, and MLP 0's write at BOS makes
    # their key (docs/sink-paths.md); with the MLPs free, BOS's embedding does it through MLP 0
    direct, free = res["paths"]["direct"], res["paths"]["mlps_free"]
    assert direct["layers"] and [r["layer"] for r in free["layers"]] == [r["layer"] for r in direct["layers"]]
    last = direct["layers"][-1]["key"]
    assert min(zip(last["values"], last["senders"]))[1] == "mlp 0"
    assert min(zip(free["layers"][-1]["key"]["values"], free["layers"][-1]["key"]["senders"]))[1] in ("embed", "mlp 0")
    text = _stdout(_cell(nb, "paths"))
    assert len(re.findall(r"^L\d+ heads [\d,]+: weight [\d.]+; key: all [-+][\d.]+", text, re.M)) == 2 * len(direct["layers"])
    # by neuron: MLP 0's neurons, of which 253 (the massive activation's writer, docs/massive-activation.md) leads
    neurons = res["paths"]["neurons"]
    assert neurons["senders"] == [f"L0N{u}" for u in range(344)] and neurons["sender_layers"] == [0]
    key = neurons["layers"][0]["key"]
    assert min(zip(key["values"], key["senders"]))[1] == "L0N253"
    assert "mlp 0; its neurons, each alone:" in _stdout(_cell(nb, "paths-neurons"))
    # the search: 253 first, then 261 beside it, its backup (nearly nothing alone: 253 still writes the key)
    search = res["paths"]["search"]
    assert search["mlp"] == 0 and [b["neurons"] for b in search["best"]] == [[253], [253, 261]]
    assert abs(search["alone"][261]) < 0.1 * abs(search["alone"][253])
    assert "backup pair N253+N261:" in _stdout(_cell(nb, "paths-search"))
    assert _count(nb, "image/png") >= 8  # effect bars, 2 per-head maps, 3 patching maps, the paths, the search
    for name in ("key_vs_value.png", "per_head_zero_value.png", "per_head_ablate.png", "patch_k.png",
                 "patch_v.png", "patch_resid_pre.png", "paths.png", "search.png"):
        assert (out / name).stat().st_size > 1000, name


def pooled_turn(res: dict) -> float:
    from sinkinterp.gate import pooled_logit_split

    return pooled_logit_split(res)["turn_pooled"]


def _check_gate(nb, out: Path) -> None:
    res = json.loads((out / "gate_results.json").read_text())
    assert res["model"] == "default" and res["normalized"] and res["sink"] == "first"
    assert max(max(r) for r in res["sink_mass"]) > 0.3  # the trained default has sink heads
    assert [x["label"] for x in res["interventions"]] == ["open", "fixed", "token", "donor"]
    assert all(math.isfinite(x["delta_loss"]) for x in res["interventions"])
    assert res["interventions"][0]["delta_loss"] > 0 and res["interventions"][0]["sink1_after"] == 0.0
    split = res["logit_split"]
    assert split is not None and split["scores_error"] < 1e-3
    study = _stdout(_cell(nb, "study"))
    assert "what the gate follows" in study and "which side of the softmax moves the gate" in study
    assert len(re.findall(r"^L\d+H\d+\s+[\d.]+", _stdout(_cell(nb, "heads")), re.M)) == 8
    drivers = _stdout(_cell(nb, "drivers"))
    shares = {k: float(v) / 100 for k, v in re.findall(r"^  (position|rest)\s+([-+\d.]+)%", drivers, re.M)}
    token = float(re.search(r"^  query token \(added\)\s+([-+\d.]+)%", drivers, re.M)[1]) / 100
    assert shares["position"] + token + shares["rest"] == pytest.approx(1.0, abs=2e-3)  # printed to 0.1%
    assert re.search(r"^  a constant per text \(added\)\s+[-+][\d.]+%", drivers, re.M)
    split_out = _stdout(_cell(nb, "split"))
    assert "the sink's logit carries" in split_out and "the best-matching other key carries" in split_out
    # BOS first: token 1's key is the same in every text, so the sink's side is the query's turn alone
    turn = re.search(r"query's turn toward token 1's mean key (\d+)% and what token 1's own key adds ([-+]\d+)%", split_out)
    assert turn and abs(int(turn[2])) == 0 and max(abs(x) for r in split["identity_side_within"] for x in r if math.isfinite(x)) < 1e-6
    # the turn by source: embedding, attention, MLPs and the rest sum to the turn's share (printed to 0.1%)
    src = re.search(r"the turn by source \(of the summed variance\): the embedding ([-+][\d.]+)%, attention ([-+][\d.]+)%, "
                    r"MLPs ([-+][\d.]+)%, rest ([-+][\d.]+)% \(sum ([-\d.]+)%\)", split_out)
    assert src and sum(float(src[i]) for i in range(1, 5)) == pytest.approx(float(src[5]), abs=0.25)
    assert float(src[5]) == pytest.approx(100 * pooled_turn(res), abs=0.06) and abs(float(src[4])) < 0.1
    assert re.search(r"^open\s+\+[\d.]+\s+100%", _stdout(_cell(nb, "edits")), re.M)
    targets = _stdout(_cell(nb, "targets"))
    shares = [float(x) for x in re.findall(r"^  (?:token 1|itself|the token before|induction target|earlier copy|other)"
                                            r"\s+([\d.]+)%", targets, re.M)]
    assert len(shares) == 6 and sum(shares) == pytest.approx(100, abs=3)  # six categories, printed to 1%
    assert "the induction test" in targets and len(re.findall(r"^L\d+H\d+\s+[\d.]+\s+\d+%\s+[\d.]+ -> [\d.]+$",
                                                               targets, re.M)) == 5
    paths = _stdout(_cell(nb, "paths"))  # what makes the gate vary, by input (paths.gate_paths)
    layers = re.split(r"^layer \d+: ", paths, flags=re.M)[1:]
    assert layers, paths
    for block in layers:  # every side run: the sides' whole shares and the rest add up to 100% (printed to 0.1%)
        alls = {k: float(v) for k, v in re.findall(r"^  (query|sink_key|keys)\s+all\s+([-+][\d.]+)%", block, re.M)}
        rest = float(re.search(r"^  rest\s+([-+][\d.]+)%", block, re.M)[1])
        assert set(alls) == {"query", "sink_key", "keys"} and sum(alls.values()) + rest == pytest.approx(100, abs=0.25)
        assert abs(alls["sink_key"]) < 0.05  # BOS first: token 1's key is the same in every text
    assert (out / "gate_paths.png").stat().st_size > 0
    sig = _stdout(_cell(nb, "sigmoid"))  # the gate without a sink: toy-sigmoid's row weights and edits
    totals = [float(x) for x in re.search(r"each head's total weight \[([^\]]+)\]", sig)[1].split()]
    assert len(totals) == 4 and max(abs(x - 1.0) for x in totals) > 0.1  # not softmax's 1
    assert re.search(r"largest share of a row on token 1 0\.\d+ \(no sink\)", sig)
    edits = re.findall(r"^(fixed|token|donor)\s+([-+][\d.]+)\s+([-+][\d.]+)$", sig, re.M)
    assert [e[0] for e in edits] == ["fixed", "token", "donor"]
    runs = {x["label"]: x for x in res["interventions"]}
    want = [pytest.approx(runs[k]["delta_loss"], abs=1e-4) for k in ("fixed", "token", "donor")]
    assert [float(e[2]) for e in edits] == want
    assert _count(nb, "image/png") >= 3
    for name in ("sink_side.png", "gate.png", "targets.png", "turn_sources.png"):
        assert (out / name).stat().st_size > 1000, name


CHECKS = {"quickstart.ipynb": _check_quickstart, "key_bias_patching.ipynb": _check_key_bias,
          "sink_gate.ipynb": _check_gate}
ALL_NOTEBOOKS = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_the_documented_notebooks_exist():
    assert set(CHECKS) <= set(ALL_NOTEBOOKS), f"missing from notebooks/: {set(CHECKS) - set(ALL_NOTEBOOKS)}"


def test_the_kernel_is_this_interpreter_and_offline(tmp_path):
    probe = "\n".join([
        "import socket, sys",
        "print(sys.executable)",
        "try:",
        "    socket.create_connection(('192.0.2.1', 80), timeout=1)  # TEST-NET-1: never routed",
        "except RuntimeError as err:",
        "    print('refused:', err)",
    ])
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(probe, id="probe")])
    nb, _ = _run(nb, tmp_path)
    lines = _stdout(nb.cells[0]).splitlines()
    assert lines[0] == sys.executable
    assert lines[1].startswith("refused: test tried to open a network connection")


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_runs_on_the_default_model(name, tmp_path):
    nb, out = _execute(name, tmp_path)
    check = CHECKS.get(name)
    if check is not None:
        check(nb, out)


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_is_stored_without_outputs_and_reads_its_model_from_the_environment(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        assert c.outputs == [] and c.execution_count is None, \
            f"{name}: cell {c.get('id')} has outputs; clear them before committing"
    assert not any(c.get("attachments") for c in nb.cells)
    assert 'MODEL = os.environ.get("SINKINTERP_MODEL", "default")' in code[0].source
    assert nb.cells[0].cell_type == "markdown" and "untrained" in nb.cells[0].source
