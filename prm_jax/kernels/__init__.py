"""Jitted per-token statistics of logits and Best-of-N scoring (pure functions)."""

from prm_jax.kernels.scoring import (AGGREGATIONS, NO_CHOICE, aggregate_step_scores, best_of_n,
                                     weighted_vote)
from prm_jax.kernels.token_stats import token_entropy, token_stats

__all__ = ["AGGREGATIONS", "NO_CHOICE", "aggregate_step_scores", "best_of_n", "token_entropy",
           "token_stats", "weighted_vote"]
