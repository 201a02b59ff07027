"""sinkinterp.provenance: the git commit a process records is the one it started from."""

from __future__ import annotations

import subprocess

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
