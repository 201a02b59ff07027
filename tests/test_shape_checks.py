"""The suite's runtime shape checks (pyproject's ``--jaxtyping-packages=sinkinterp``) and the marker that turns
them off for a test (``shape_checks_off``, tests/conftest.py)."""

from __future__ import annotations

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
