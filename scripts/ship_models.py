"""Copy trained runs into the package as shipped models (sinkinterp/assets/models/NAME/).

    python scripts/ship_models.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--dest DIR] [--step N]

For each run: the latest checkpoint (or step N) re-saved with bf16 storage (half the bytes; loaded
back in float32), the tokenizer it was trained with, its metrics.jsonl and train_config.json. Each
model folder is assembled in a temporary folder beside the destination and renamed into place, so a
failed copy never leaves half a model behind. Prints the size of every folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from sinkinterp.models import load_checkpoint, read_checkpoint_info, save_checkpoint  # noqa: E402

DEST = REPO / "sinkinterp" / "assets" / "models"


def _checkpoint_dir(run: Path, step: int | None) -> Path:
    ckpts = run / "checkpoints"
    if step is not None:
        path = ckpts / f"step_{step:07d}"
    else:
        latest = ckpts / "latest"
        if not latest.is_file():
            raise SystemExit(f"{run}: no checkpoints/latest (is this a training run folder?)")
        path = ckpts / latest.read_text().strip()
    if not (path / "config.json").is_file():
        raise SystemExit(f"{run}: no checkpoint at {path}")
    return path


def ship(name: str, run: Path, dest: Path, step: int | None) -> Path:
    ckpt = _checkpoint_dir(run, step)
    info = read_checkpoint_info(ckpt)
    extra = dict(info.get("extra") or {})
    train_cfg = extra.get("train_config") or {}
    shard_dir = Path(train_cfg.get("data", {}).get("shard_dir", ""))
    tokenizer = (shard_dir if shard_dir.is_absolute() else REPO / shard_dir) / "tokenizer.json"
    if not tokenizer.is_file():
        raise SystemExit(f"{name}: tokenizer not found at {tokenizer} (the run's data.shard_dir)")
    model = load_checkpoint(ckpt)
    extra["shipped_from"] = {"run": run.name, "checkpoint": ckpt.name}
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest))
    tmp.chmod(0o755)  # mkdtemp makes it private; package data must be readable by everyone
    try:
        save_checkpoint(tmp, model, extra=extra, storage_dtype=torch.bfloat16)
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        for f in ("metrics.jsonl", "train_config.json"):
            if (run / f).is_file():
                shutil.copyfile(run / f, tmp / f)
        final = dest / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    p.add_argument("--dest", type=Path, default=DEST)
    p.add_argument("--step", type=int, default=None, help="ship this step instead of the latest checkpoint")
    args = p.parse_args(argv)
    for spec in args.runs:
        name, sep, run = spec.partition("=")
        if not sep or not name or "/" in name:
            raise SystemExit(f"expected NAME=RUN_DIR with a plain NAME, got {spec!r}")
        folder = ship(name, Path(run), args.dest, args.step)
        size = sum(f.stat().st_size for f in folder.iterdir())
        step = json.loads((folder / "config.json").read_text())["extra"].get("step")
        print(f"{name}: step {step}, {size / 2**20:.1f} MiB -> {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
