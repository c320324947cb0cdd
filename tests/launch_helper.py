"""Running `launch.py` in a subprocess the way a user does (one CPU device)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch_command(*args, workdir) -> list[str]:
  return [sys.executable, "launch.py", "--workdir", str(workdir), *args]


def launch_env() -> dict[str, str]:
  """This environment without the tests' 8 virtual devices (they only slow a run down)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = ROOT
  return env


def launch(*args, workdir) -> subprocess.CompletedProcess:
  """`python launch.py --workdir WORKDIR ARGS...` from the repository root, output captured."""
  return subprocess.run(launch_command(*args, workdir=workdir), capture_output=True, text=True,
                        env=launch_env(), cwd=ROOT, timeout=600)
