"""The suite's runtime shape checks (pyproject's ``--jaxtyping-packages=sinkinterp``), the marker that turns
them off for a test (``shape_checks_off``, tests/conftest.py), and the modules sinkinterp imports read from their
own bytecode under jaxtyping's import hook."""

from __future__ import annotations

import sys

import jaxtyping
import pytest
import torch

from sinkinterp.metrics import alpha_bias_from_pattern


def test_annotated_functions_are_checked():
    """An integer pattern where the annotation says Float is refused by the check, before the function runs
    (unchecked, it would average the integers)."""
    with pytest.raises(jaxtyping.TypeCheckError, match="bias_pattern"):
        alpha_bias_from_pattern(torch.ones(2, 3, dtype=torch.int64))


@pytest.mark.shape_checks_off
def test_a_marked_test_runs_unchecked():
    out = alpha_bias_from_pattern(torch.ones(2, 3, dtype=torch.int64))
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 1.0]
    assert jaxtyping.config.jaxtyping_disable


def test_the_checks_are_back_after_a_marked_test():
    """Whatever test ran before (xdist may run them in any order), an unmarked test is checked."""
    assert not jaxtyping.config.jaxtyping_disable
    with pytest.raises(jaxtyping.TypeCheckError):
        alpha_bias_from_pattern(torch.ones(2, 3, dtype=torch.int64))


def test_modules_outside_sinkinterp_load_from_their_own_bytecode():
    """jaxtyping's hook names the bytecode cache ``*.opt-jaxtyping<hash>.pyc`` while an instrumented sinkinterp
    module loads; tests/conftest.py imports what sinkinterp imports before that, so no module outside sinkinterp
    was compiled from source under that name (thousands were, transformer_lens and transformers among them, when
    sinkinterp.tl_adapter was the first to import them)."""
    import sinkinterp.cli  # loads most of sinkinterp under the hook, if no test did before
    import sinkinterp.tl_adapter

    def cache_path(module) -> str:
        try:
            return str(getattr(module.__spec__, "cached", None) or "")
        except Exception:  # noqa: BLE001 - modules whose attribute access itself fails (torch's op namespaces)
            return ""

    assert "jaxtyping" in str(sinkinterp.tl_adapter.__spec__.loader.__class__).lower()  # the hook is on
    tagged = [n for n, m in list(sys.modules.items()) if not n.startswith("sinkinterp") and ".opt-jaxtyping" in
              cache_path(m)]
    assert tagged == []
