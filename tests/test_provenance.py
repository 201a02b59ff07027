"""sinkinterp.provenance: the git commit a process records is the one it started from."""

from __future__ import annotations

import subprocess

import pytest

from sinkinterp import provenance


def test_git_commit_is_read_once_per_process(monkeypatch):
    """A commit made while a long analysis runs must not be recorded for the code it already imported."""
    heads = iter(["a" * 40, "b" * 40])
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=next(heads) + "\n", stderr="")

    provenance.git_commit.cache_clear()
    monkeypatch.setattr(provenance.subprocess, "run", fake_run)
    try:
        assert provenance.git_commit() == "a" * 40
        assert provenance.git_commit() == "a" * 40  # HEAD moved to b... meanwhile: still the first
        assert calls == [["git", "rev-parse", "HEAD"]]
    finally:
        provenance.git_commit.cache_clear()


def test_the_cli_reads_the_commit_when_it_starts(monkeypatch):
    """The commands record git_commit in config.json after they ran (minutes to hours later): the CLI reads
    HEAD as it starts, so a commit made meanwhile is not recorded as the run's."""
    from sinkinterp import cli

    heads = iter(["c" * 40, "d" * 40])

    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 0, stdout=next(heads) + "\n", stderr="")

    provenance.git_commit.cache_clear()
    monkeypatch.setattr(provenance.subprocess, "run", fake_run)
    try:
        with pytest.raises(SystemExit):
            cli.main(["--help"])
        assert provenance.git_commit.cache_info().currsize == 1
        assert provenance.git_commit() == "c" * 40
    finally:
        provenance.git_commit.cache_clear()


def test_benchmarks_record_the_commit_and_tree_state_they_started_from(monkeypatch):
    """A benchmark writes its provenance after it ran: the commit and whether the tree was dirty are read when
    benchmarks.common is imported (start_provenance), not when the JSON is written."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import common

    state = {"head": "e" * 40, "status": ""}

    def fake_run(cmd, **kwargs):
        out = state["head"] + "\n" if cmd[1] == "rev-parse" else state["status"]
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    provenance.git_commit.cache_clear()
    common._git_dirty.cache_clear()
    monkeypatch.setattr(subprocess, "run", fake_run)
    try:
        common.start_provenance()
        state.update(head="f" * 40, status=" M sinkinterp/paths.py\n")  # a commit and an edit while it runs
        info = common.provenance_info(["benchmarks/x.py"])
        assert info["git_commit"] == "e" * 40 and info["git_dirty"] is False
    finally:
        provenance.git_commit.cache_clear()
        common._git_dirty.cache_clear()


def test_training_reads_the_commit_when_it_starts(monkeypatch, tmp_path):
    """train() (the CLI's, a sweep's and the Python API's entry) reads HEAD first: the checkpoints it writes
    over minutes or hours record the commit it started from."""
    from sinkinterp.train.testing import make_tiny_shards, tiny_train_config
    from sinkinterp.train.trainer import train

    cfg = tiny_train_config(make_tiny_shards(tmp_path / "shards"))

    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout="a" * 40 + "\n",
                                                                                         stderr=""))
    provenance.git_commit.cache_clear()
    try:
        with pytest.raises(ValueError, match="until_step"):
            train(cfg, tmp_path / "run", until_step=0)  # refused in train's body, after it read HEAD
        assert provenance.git_commit.cache_info().currsize == 1
    finally:
        provenance.git_commit.cache_clear()
