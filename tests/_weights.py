"""Random weights for the reference-equality tests of the models (not a test module: pytest collects test_*.py).

A reference model with its default initialisation hides mistakes: zero biases, unit norm scales and fresh running
statistics make a swapped, ignored or mis-shaped tensor invisible. ``randomize_`` (kept in :mod:`common.checks`,
where the notebooks use it too) gives every tensor of the state_dict a value that matters, in place.
"""
from common.checks import randomize_

__all__ = ["randomize_"]
