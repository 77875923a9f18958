"""The examples in the reports package's docstrings run (the package is not in pytest's doctest paths)."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["reports._frontier", "reports._stats", "reports._html", "reports._claims",
                                  "reports._measure", "reports._configs"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
