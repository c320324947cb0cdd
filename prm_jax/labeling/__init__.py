"""Step labels for PRM training: Monte Carlo estimation (Math-Shepherd)."""

from prm_jax.labeling.monte_carlo import MonteCarloLabels, monte_carlo_labels

__all__ = ["MonteCarloLabels", "monte_carlo_labels"]
