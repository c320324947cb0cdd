"""A benchmark's measurement in a fresh interpreter (the benchmarks' worker processes).

Each variant runs in its own process, so `XLA_FLAGS` (the host device count) is set before
JAX starts and no variant warms another's caches; the worker prints its result as the
last line of stdout, one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_worker(script: str, args: list[str], *, devices: int = 1, xla_flags: str = "") -> dict:
  """`python script args...` on `devices` host devices (plus `xla_flags`); its JSON result."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {xla_flags}".strip()
  done = subprocess.run([sys.executable, os.path.abspath(script), *args], capture_output=True,
                        text=True, env=env, check=False)
  if done.returncode:
    raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)} failed:\n"
                       f"{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
  """The CPU's model name and core count, for the results tables."""
  try:
    with open("/proc/cpuinfo") as f:
      name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    name = platform.processor() or platform.machine()
  return f"{name}, {os.cpu_count()} cores"
