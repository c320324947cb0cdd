"""Pipelines: what `launch.py` runs, selected by an experiment's `config.pipeline`.

Each pipeline is a module with `run(config, workdir)`; the registry maps names to module
paths so that launching one pipeline imports only that one.
"""

from __future__ import annotations

import importlib
from typing import Callable

PIPELINES: dict[str, str] = {
    "agent_prm": "prm_jax.pipelines.agent_prm",
    "edu_prm": "prm_jax.pipelines.edu_prm",
    "edu_profile": "prm_jax.pipelines.edu_profile",
    "policy_rl": "prm_jax.pipelines.policy_rl",
    "prm_train": "prm_jax.pipelines.prm_train",
    "processbench": "prm_jax.pipelines.processbench",
    "quickstart": "prm_jax.pipelines.quickstart",
    "reasonflux": "prm_jax.pipelines.reasonflux",
    "test_time_search": "prm_jax.pipelines.test_time_search",
}


def get_pipeline(name: str) -> Callable:
  """`run(config, workdir)` of the pipeline `name`; unknown names list the known ones."""
  if name not in PIPELINES:
    raise ValueError(f"unknown pipeline {name!r} (config.pipeline); known: "
                     f"{sorted(PIPELINES)}")
  return importlib.import_module(PIPELINES[name]).run
