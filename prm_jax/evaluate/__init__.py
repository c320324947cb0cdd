"""Using a PRM at test time: Best-of-N curves and ProcessBench-style step metrics."""

from prm_jax.evaluate.best_of_n import BON_METHODS, Candidates, best_of_n_curves
from prm_jax.evaluate.processbench import (benchmark_f1, calibrate_threshold, earliest_error,
                                           first_errors, pad_steps, processbench_f1)

__all__ = ["BON_METHODS", "Candidates", "benchmark_f1", "best_of_n_curves", "calibrate_threshold",
           "earliest_error", "first_errors", "pad_steps", "processbench_f1"]
