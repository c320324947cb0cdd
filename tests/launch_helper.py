"""Running `launch.py` in a subprocess the way a user does (one CPU device)."""

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def _compilation_cache() -> str:
  """One persistent XLA cache for every run this test process launches, removed at exit.

  The pipelines' runs compile the same programs over and over (a rerun, a resumed run, a
  second method in the same workdir, bad-setting checks); a cached executable is the very
  program a compile would give, so results are unchanged (the rerun tests compare them)."""
  path = tempfile.mkdtemp(prefix="prm_jax_launch_xla_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


def launch_command(*args, workdir) -> list[str]:
  return [sys.executable, "launch.py", "--workdir", str(workdir), *args]


def launch_env() -> dict[str, str]:
  """This environment without the tests' 8 virtual devices (they only slow a run down),
  with the shared compilation cache."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=_compilation_cache(),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def launch(*args, workdir) -> subprocess.CompletedProcess:
  """`python launch.py --workdir WORKDIR ARGS...` from the repository root, output captured."""
  return subprocess.run(launch_command(*args, workdir=workdir), capture_output=True, text=True,
                        env=launch_env(), cwd=ROOT, timeout=600)
