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
