"""ALFWorld engine speed: as shipped vs under `fast_engine()`, and a batch in worker processes.

    python benchmarks/bench_alfworld_env.py                     # 24 generated games, 2 workers
    python benchmarks/bench_alfworld_env.py --games 60 --processes 0 2 4

Games: `--games` generated problems (all six task types, `alfworld_gen.GenConfig(seed=0)`)
replayed along their expert walkthroughs. steps/s = walkthrough commands per second of wall
time excluding resets; reset time = mean seconds per reset; "first" resets load the game
(grammar parse + PDDL translation), "again" resets replay a loaded game. Both engines play the
same commands and the script checks every observation is identical (it stops otherwise).

Batch: all games reset together in an `EnvBatch` and stepped along their walkthroughs, for each
`--processes` (0 = all in this process); steps/s counts every env's step.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prm_jax import files  # noqa: E402
from prm_jax.envs import alfworld as engine  # noqa: E402
from prm_jax.envs import alfworld_gen as gen  # noqa: E402
from prm_jax.envs.text_env import EnvBatch  # noqa: E402


def replay(folders, walks, fast: bool):
  """(observations, steps/s, first-reset s, again-reset s) of one env playing every walkthrough."""
  env = engine.AlfworldEnv(max_turns=100, fast=fast)
  observations, steps, step_time, first, again = [], 0, 0.0, 0.0, 0.0
  for folder, walk in zip(folders, walks):
    start = time.perf_counter()
    env.reset(folder)
    first += time.perf_counter() - start
    start = time.perf_counter()
    observations.append(env.reset(folder))
    again += time.perf_counter() - start
    start = time.perf_counter()
    for command in walk:
      observations.append(env.step(command))
    step_time += time.perf_counter() - start
    steps += len(walk)
  return observations, steps / step_time, first / len(folders), again / len(folders)


def batch_rate(folders, walks, processes: int) -> float:
  with EnvBatch(functools.partial(engine.AlfworldEnv, max_turns=100), len(folders),
                processes=processes) as batch:
    batch.reset(folders)
    start = time.perf_counter()
    for t in range(max(map(len, walks))):
      batch.step([w[t] if t < len(w) else None for w in walks])
    return sum(map(len, walks)) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--games", type=int, default=24)
  parser.add_argument("--processes", type=int, nargs="+", default=[0, 2])
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="alfworld-bench-")
  start = time.perf_counter()
  folders = gen.generate(root, gen.GenConfig(seed=0, train=args.games, valid_seen=0,
                                             valid_unseen=0))["train"]
  generate_s = time.perf_counter() - start
  walks = [files.read_json(os.path.join(f, engine.GAME_FILE))["walkthrough"] for f in folders]
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {len(folders)} "
        f"games, {sum(map(len, walks))} expert commands; generated in {generate_s:.1f} s")
  shipped = replay(folders, walks, fast=False)
  engine.clear_cache()  # generation filled it: the first resets below load cold
  fast = replay(folders, walks, fast=True)
  if shipped[0] != fast[0]:
    sys.exit("observations differ between the engine as shipped and fast_engine()")
  print("| engine | steps/s | first reset (s) | reset again (s) |")
  print("|---|---|---|---|")
  for name, (_, rate, first, again) in (("as shipped", shipped), ("fast_engine()", fast)):
    print(f"| {name} | {rate:.1f} | {first:.3f} | {again:.3f} |")
  print(f"speed-up: steps {fast[1] / shipped[1]:.1f}x, first reset {shipped[2] / fast[2]:.1f}x, "
        f"reset again {shipped[3] / fast[3]:.1f}x; observations identical")
  print("\n| batch of %d, worker processes | steps/s |\n|---|---|" % len(folders))
  for processes in args.processes:
    print(f"| {processes} | {batch_rate(folders, walks, processes):.1f} |")


if __name__ == "__main__":
  main()
