"""Run an experiment: `python launch.py --config experiments/<x>.py[:arg] --workdir DIR`.

Any config field can be overridden with `--config.<section>.<field>=<value>`. A config
error (missing file, unknown key, wrong type, invalid value) and a run-stopping error
(non-finite loss, unreadable checkpoints) end the process with one line on stderr and
a non-zero exit code; anything else is a bug and keeps its traceback.

The same command with the same workdir resumes the run from its newest checkpoint.
"""

from __future__ import annotations

import difflib
import json
import logging as std_logging
import os
import re
import sys
from typing import NoReturn

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from prm_jax import checkpoint, config_lib, pipelines
from prm_jax.train import NonFiniteError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file, `path.py` or `path.py:arg`", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics)")

_OVERRIDE = re.compile(r"^--config\.([^=]+)(=.*)?$")


class ConfigError(Exception):
  """A bad command line or config; the message is the one line shown to the user."""


def _fail(message: str, code: int) -> NoReturn:
  print(f"launch.py: error: {message}", file=sys.stderr)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every config error reduced to one clear line."""
  try:
    spec = _config_spec(argv)
    # Checked first: config_flags reports a missing file only when the config is used.
    if spec and not os.path.isfile(spec.split(":", 1)[0]):
      raise ConfigError(f"config file {spec.split(':', 1)[0]!r} does not exist")
    rest = flags.FLAGS(argv)
    if _CONFIG.value is None or _WORKDIR.value is None:
      raise ConfigError("--config and --workdir are required")
  except (ConfigError, flags.Error, OSError, KeyError, AttributeError, TypeError,
          ValueError) as error:
    _fail(_explain(error, argv), 2)
  return rest


def _explain(error: Exception, argv: list[str]) -> str:
  """One line naming the file or key at fault (absl/ml_collections say it in many ways)."""
  text = str(error).strip()
  if isinstance(error, ConfigError):
    return text
  if "Error whilst parsing config file" in text:  # get_config raised; keep its last line.
    return f"cannot load config {_config_spec(argv)!r}: {text.splitlines()[-1]}"
  text = " ".join(text.split())
  match = re.match(r"flag --config\.([^=\s]+)=(.*?): (.*)", text)
  if match:
    return f"bad value {match.group(2)!r} for config key {match.group(1)!r}: {match.group(3)}"
  if isinstance(error, (KeyError, AttributeError)):
    return _first_unknown_key(argv) or f"unknown config key ({text})"
  return text


def _config_spec(argv: list[str]) -> str | None:
  """The `path[:arg]` given to --config (either `--config=x` or `--config x`)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _first_unknown_key(argv: list[str]) -> str | None:
  """'unknown config key ...' for the first `--config.a.b=` override not in the config."""
  # The config as its file builds it (config_flags would apply the overrides again).
  config = config_lib.experiment_config(_config_spec(argv))
  for arg in argv[1:]:
    match = _OVERRIDE.match(arg)
    if not match:
      continue
    node, walked = config, []
    for name in match.group(1).split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if name not in keys:
        close = difflib.get_close_matches(name, keys, n=1)
        hint = f" (did you mean {'.'.join(walked + close)!r}?)" if close else ""
        return f"unknown config key {'.'.join(walked + [name])!r}{hint}"
      node, walked = node[name], walked + [name]
  return None


def _quiet_orbax(record) -> bool:
  """Logging filter: orbax's INFO chatter (several lines per save) hides the progress."""
  return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
  del argv
  logging.get_absl_handler().addFilter(_quiet_orbax)
  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    if "distributed" in config:  # Before anything touches a device.
      config_lib.initialize_distributed(config.distributed)
    run = pipelines.get_pipeline(config.pipeline)
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2) + "\n")
    logging.info("pipeline %s, workdir %s", config.pipeline, workdir)
    result = run(config, workdir)
  except (ValueError, NonFiniteError, checkpoint.CheckpointError) as error:
    if logging.level_debug():  # --verbosity=1 keeps the traceback.
      raise
    _fail(" ".join(str(error).split()), 1)
  if result is not None and getattr(result, "history", None):
    logging.info("final metrics: %s", json.dumps(result.history[-1]))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
