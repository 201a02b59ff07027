"""run.sh refuses a SINKINTERP_BASE it cannot build on, before it creates or changes any environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_sh(tmp_path: Path, venv: Path, base: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SINKINTERP_VENV": str(venv), "SINKINTERP_BASE": str(base)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["bash", str(REPO / "run.sh"), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_a_base_that_run_sh_did_not_set_up_is_refused(tmp_path):
    (tmp_path / "base" / "bin").mkdir(parents=True)  # no Python, no stamp
    res = _run_sh(tmp_path, tmp_path / "new", tmp_path / "base")
    assert res.returncode == 2
    assert "SINKINTERP_BASE=" in res.stderr and "is not an environment set up by run.sh" in res.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("bsd_realpath", [False, True])
def test_the_base_must_be_another_environment(tmp_path, bsd_realpath):
    """Also without GNU realpath(1) (BSD and macOS realpath have no -m): a realpath on PATH that always fails."""
    base = tmp_path / "base"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python").symlink_to(Path(sys.executable))
    (base / ".sinkinterp-stamp").write_text("0\n")
    path = None
    if bsd_realpath:
        tools = tmp_path / "tools"
        tools.mkdir()
        (tools / "realpath").write_text('#!/bin/sh\necho "realpath: illegal option" >&2\nexit 1\n')
        (tools / "realpath").chmod(0o755)
        path = f"{tools}{os.pathsep}{os.environ['PATH']}"
    res = _run_sh(tmp_path, tmp_path / "base" / ".." / "base", base, path)
    assert res.returncode == 2 and "must name another environment than SINKINTERP_VENV" in res.stderr, res.stderr
    assert (base / ".sinkinterp-stamp").read_text() == "0\n"


def test_a_base_on_another_python_version_is_refused(tmp_path):
    base = tmp_path / "base"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python").write_text("#!/bin/sh\necho '(3, 99)'\n")
    (base / "bin" / "python").chmod(0o755)
    (base / ".sinkinterp-stamp").write_text("0\n")
    res = _run_sh(tmp_path, tmp_path / "new", base)
    assert res.returncode == 2 and "runs another Python version than" in res.stderr
    assert not (tmp_path / "new").exists()
