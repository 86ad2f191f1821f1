"""The examples in the drift module docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "reference",
    "binning",
    "moments",
    "layout",
    "window",
    "wire",
    "distributions",
    "scores",
    "decisions",
    "performance",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"edgefleet.core.drift.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_public_function_with_formula_has_examples() -> None:
    # The modules that carry formulas must carry at least one runnable example.
    for name in ["reference", "moments", "window", "distributions", "scores", "performance"]:
        module = importlib.import_module(f"edgefleet.core.drift.{name}")
        assert doctest.testmod(module).attempted > 0, name
