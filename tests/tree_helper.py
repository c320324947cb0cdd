"""Comparing pytrees of arrays in tests."""

import jax
import numpy as np


def assert_trees_equal(a, b):
  """Every leaf of `a` equals the matching leaf of `b`, bit for bit."""
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
