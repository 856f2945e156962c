"""The public API's documentation: numpydoc sections on every public function and
class, and their Examples run as doctests."""
import doctest
import inspect

import numpy as np
import pytest

import ce
import ce._loss
import ce._score

PUBLIC = [getattr(ce, name) for name in ce.__all__ if name != "show_config"]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__name__)
def test_numpydoc_sections(obj):
    doc = inspect.getdoc(obj) or ""
    for section in ("Parameters", "Returns") if inspect.isfunction(obj) else ("Attributes",):
        assert f"\n{section}\n" in doc, f"{obj.__name__}: no {section} section"
    if obj in (ce.cross_entropy, ce.cross_entropy_grad, ce.cross_entropy_with_grad,
               ce.softmax, ce.log_softmax, ce.logsumexp):
        assert "\nRaises\n" in doc and "\nExamples\n" in doc


@pytest.mark.parametrize("module", [ce._loss], ids=lambda m: m.__name__)
def test_examples_run(module):
    with np.printoptions(legacy=False):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10
    assert result.failed == 0


def test_score_is_exported():
    assert ce.Score is ce._score.Score
    assert isinstance(ce.score(np.zeros((2, 3)), np.array([0, 1])), ce.Score)
