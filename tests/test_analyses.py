"""The CPU calibration analysis renders its page from snapshots of training runs alone."""

import json
from pathlib import Path

from conftest import load_script

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
    assert mod.main([]) == 2  # nothing snapshotted yet
    assert mod.main(["--snapshot", str(tmp_path / "runs" / "missing")]) == 2
    assert mod.main(["--snapshot", str(run)]) == 0
    assert mod.main([]) == 0
    page = (tmp_path / "page.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| kv_run"))
    assert '`model.attn_bias="kv"`' in row and "`lr=0.003`" in row
    assert "250 of 6,000" in row and "| 0.50 |" in row and "| 12.50 |" in row and "9.000 (step 0)" in row
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
