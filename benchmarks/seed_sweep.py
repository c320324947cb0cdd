"""Run one experiment over several seeds through `launch.py` (the benchmarks' sweeps).

Each seed runs in `<workdir>/seed_<S>` with `--config.seed=S`; a seed whose results.json
exists is not run again, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_seed(seed: int, workdir: str, overrides: list[str],
             experiment: str = "quickstart.py") -> dict:
  """`experiments/<experiment>` with `--config.seed=seed` in `workdir/seed_<seed>` (skipped
  if its results.json exists, so an interrupted sweep resumes); its results."""
  folder = os.path.join(workdir, f"seed_{seed}")
  if not os.path.exists(os.path.join(folder, "results.json")):
    subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                    os.path.join(ROOT, "experiments", experiment), "--workdir", folder,
                    f"--config.seed={seed}", *overrides], check=True)
  with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def sweep(doc: str, experiment: str, default_workdir: str):
  """Parse `--seeds`, `--workdir` and `--config.x=y` overrides (given to every run); run
  `experiments/<experiment>` per seed; returns (args, [results per seed])."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir", default=default_workdir)
  args, overrides = parser.parse_known_args()
  return args, [run_seed(seed, args.workdir, overrides, experiment) for seed in args.seeds]
