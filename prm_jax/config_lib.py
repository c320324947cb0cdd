"""Experiment configs: the ConfigDict sections `experiments/*.py` build, and their typed forms.

An experiment's `get_config(arg=None)` returns a *locked* `ml_collections.ConfigDict`
(so `--config.train.lrr=1` fails instead of adding a key) with:

  pipeline     name of the pipeline `launch.py` runs (`prm_jax.pipelines.PIPELINES`)
  model        every `ModelConfig` field          (`model_section(name, **overrides)`)
  train        every `TrainConfig` field          (`train_section(**overrides)`)
  mesh         `data`, `fsdp`, `tensor` sizes     (-1: fill with the remaining devices)
  distributed  multi-host settings; empty/-1 = from the environment (`PRM_JAX_*`)
  ...          pipeline-specific sections (e.g. `data`)

The sections list every field with its default, so every field can be overridden from
the command line with its type checked, and the defaults live in one place (the
dataclasses).
"""

from __future__ import annotations

import dataclasses
import importlib.util

import ml_collections

from prm_jax import models, parallel
from prm_jax.train import TrainConfig


def experiment_config(spec: str) -> ml_collections.ConfigDict:
  """The config an experiment file builds, without command-line overrides: `spec` is
  `path` or `path:arg` (`get_config(arg)`), as `launch.py --config` takes it."""
  path, *arg = spec.split(":", 1)
  module_spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*arg)


def model_section(name: str, **overrides) -> ml_collections.ConfigDict:
  """All fields of the registered model `name` (`models.MODEL_CONFIGS`), overridden."""
  return ml_collections.ConfigDict(
      dataclasses.asdict(models.get_model_config(name, **overrides)))


def train_section(**overrides) -> ml_collections.ConfigDict:
  """All `TrainConfig` fields: its defaults, overridden."""
  return ml_collections.ConfigDict(dataclasses.asdict(TrainConfig(**overrides)))


def dataclass_section(cls, **overrides) -> ml_collections.ConfigDict:
  """All fields of the config dataclass `cls` (e.g. `online.RolloutConfig`): its defaults,
  overridden; `from_section(cls, section)` builds it back (validated)."""
  return ml_collections.ConfigDict(dataclasses.asdict(cls(**overrides)))


def from_section(cls, section: ml_collections.ConfigDict):
  return cls(**section.to_dict())


def mesh_section(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def distributed_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"coordinator_address": "", "num_processes": -1,
                                    "process_id": -1, "cpu_collectives": ""})


def model_config(section: ml_collections.ConfigDict) -> models.ModelConfig:
  return models.ModelConfig(**section.to_dict())


def train_config(section: ml_collections.ConfigDict) -> TrainConfig:
  return TrainConfig(**section.to_dict())


def make_mesh(section: ml_collections.ConfigDict):
  return parallel.make_mesh(section.data, section.fsdp, section.tensor)


def initialize_distributed(section: ml_collections.ConfigDict) -> bool:
  """`parallel.initialize_distributed` from the config (unset fields: environment)."""
  return parallel.initialize_distributed(
      section.coordinator_address or None,
      section.num_processes if section.num_processes >= 0 else None,
      section.process_id if section.process_id >= 0 else None,
      section.cpu_collectives or None)
