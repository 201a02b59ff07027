"""The GPU machine's transfer limit: every device call carries the tracked tree, the wheels the machine lacks
and, for a training call, the Debian corpus pack, 64 MiB in all (the device tool's README). The tracked tree
is the part that grows with every session (analysis snapshots, figures, shipped models): this test fails
before a training call would be refused, and says by how much."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 64 * 2**20  # bytes that travel with one call
PACK = 26_000_000  # data/debian/debian-shards.tar.xz: 25.7 MB as built on 2026-11-23 (docs/data.md), rounded up
WHEELS = 2_450_000  # .whl of scripts/device/fetch_wheels.sh on 2026-12-05: 2,444,656 bytes (runtime only)
TEST_WHEELS = 3_300_000  # .whl-test: pytest and what it needs (3,282,754 bytes), for calls that run tests
MARGIN = 2**20  # room for a session's own untracked files (a config, a script)


def _tracked_bytes() -> int:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked tree is not defined")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def test_a_training_call_fits_the_transfer_limit():
    """The tracked tree, the runtime wheels and the corpus pack (a training call's carry) fit under 64 MiB."""
    tree = _tracked_bytes()
    room = LIMIT - MARGIN - PACK - WHEELS
    assert tree <= room, (
        f"the tracked tree is {tree / 1e6:.1f} MB: with the corpus pack ({PACK / 1e6:.1f} MB) and the wheels "
        f"({WHEELS / 1e6:.1f} MB) a training call would carry {(tree + PACK + WHEELS) / 2**20:.1f} MiB, over the "
        f"device's 64 MiB less {MARGIN / 2**20:.0f} MiB of room; shrink what is tracked by {(tree - room) / 1e6:.1f} MB "
        "(analysis snapshots are written compact by analyses/_common.write_snapshot)")


def test_a_test_call_fits_the_transfer_limit():
    """A call that runs the tests carries the test wheels too (without the pack: first_call.sh, and
    second_call.sh where it trains nothing)."""
    tree = _tracked_bytes()
    assert tree + WHEELS + TEST_WHEELS <= LIMIT - MARGIN


def test_doc_figures_are_palette_pngs():
    """The figures in docs/figures travel with every call: each is a 256-colour PNG, about a third of a
    full-colour one (analyses write them with ``figures.save_figure(..., palette=True)`` or copy a command's
    figure with ``figures.copy_figure``)."""
    from PIL import Image

    pngs = sorted((ROOT / "docs" / "figures").glob("*.png"))
    if not pngs:
        pytest.skip("no docs/figures here")
    full = [p.name for p in pngs if Image.open(p).mode != "P"]
    assert not full, f"full-colour figures in docs/figures (write them with palette=True): {full}"
