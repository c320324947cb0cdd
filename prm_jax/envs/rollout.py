"""Episodes of a text agent in a batch of environments, and the actors that choose its lines.

`run_episodes` plays games in chunks of the batch's size: every turn it builds the state
prompt of each unfinished game (`agent.state_prompt`), asks an actor for one output line per
prompt, parses each against its admissible commands and steps the batch. An actor is

    actor(prompts, admissible, key) -> outputs        (one line per prompt)

and is deterministic in `key` (fold_in of the run's key by chunk and turn). Actors here:

  * `policy_actor(sampler)`: the policy's own sample (greedy at temperature 0);
  * `best_of_n_actor(sampler, q, n)`: AgentPRM's Best-of-N per turn: N samples per state, the
    one whose command is admissible with the highest Q(s, a) is taken (ties: the earliest
    sample); if no sample is admissible, the first sample (a wasted turn, as it would be).
    Q is computed once per distinct admissible line of a state.

A sampler is `sampler(prompts, n, key) -> [[n outputs] per prompt]` (`policy_sampler` wraps
the KV-cache sampler, prompts padded to one width so a run compiles once); a Q
function is `q(prompts, outputs) -> [len] scores` (`prm_q` wraps a trained PRM's head).

An episode is recorded as a dict: `{"game", "task_type", "won", "turns": [{"prompt",
"output", "command", "kind", "answer"}]}` (kind: `agent.PARSE_KINDS`; answer: the engine's
text after the command).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from prm_jax import policy, sampling
from prm_jax.data.schema import Trajectory
from prm_jax.envs import agent
from prm_jax.envs import alfworld as engine
from prm_jax.envs.text_env import EnvBatch
from prm_jax.evaluate.prm_scores import StepScorer

Actor = Callable[[list[str], list[tuple[str, ...]], jax.Array], list[str]]
Sampler = Callable[[list[str], int, jax.Array], list[list[str]]]
QFunction = Callable[[list[str], list[str]], np.ndarray]


def first_line(text: str) -> str:
  """The action line of an output (a policy that writes more lines acts on the first)."""
  return text.split("\n", 1)[0].strip()


def run_episodes(games: Sequence[str], actor: Actor, envs: EnvBatch, *, max_history: int,
                 rng, progress: Callable[[int, int], None] | None = None) -> list[dict]:
  """Play every game once (in order, `envs.size` at a time) with `actor`."""
  rng = sampling.as_key(rng)
  episodes = []
  for chunk_index, start in enumerate(range(0, len(games), envs.size)):
    chunk = list(games[start:start + envs.size])
    observations = envs.reset(chunk)
    records = [{"game": game, "task_type": engine.read_game(game)[1]["task_type"], "turns": []}
               for game in chunk]
    histories: list[list[tuple[str, str]]] = [[] for _ in chunk]
    turn = 0
    while active := [i for i, o in enumerate(observations) if not o.done]:
      prompts = [agent.state_prompt(observations[i].goal, histories[i],
                                    observations[i].admissible, max_history) for i in active]
      key = jax.random.fold_in(jax.random.fold_in(rng, chunk_index), turn)
      outputs = actor(prompts, [observations[i].admissible for i in active], key)
      commands: list[str | None] = [None] * len(chunk)
      parsed = {}
      for i, output in zip(active, outputs):
        line = first_line(output)
        parsed[i] = (line, agent.parse_action(line, observations[i].admissible))
        commands[i] = parsed[i][1].command
      observations = envs.step(commands)
      for i, prompt in zip(active, prompts):
        line, action = parsed[i]
        records[i]["turns"].append({"prompt": prompt, "output": line, "command": action.command,
                                    "kind": action.kind, "answer": observations[i].text})
        histories[i].append((action.command, observations[i].text))
      turn += 1
    for record, observation in zip(records, observations):
      record["won"] = observation.won
    episodes += records
    if progress is not None:
      progress(len(episodes), len(games))
  return episodes


def policy_actor(sampler: Sampler) -> Actor:
  return lambda prompts, admissible, key: [s[0] for s in sampler(prompts, 1, key)]


def best_of_n_actor(sampler: Sampler, q: QFunction, n: int) -> Actor:
  """Best-of-N(pi, Q) per turn (module docstring); N = 1 is the policy itself."""
  if n < 1:
    raise ValueError(f"best_of_n_actor: n must be >= 1, got {n}")
  if n == 1:
    return policy_actor(sampler)

  def act(prompts, admissible, key):
    samples = [[first_line(s) for s in row] for row in sampler(prompts, n, key)]
    # A confident policy repeats itself: Q is computed once per distinct admissible line of
    # a state (same pick: equal lines score equal, and the earliest sample wins ties).
    distinct = list(dict.fromkeys((p, s) for p, row in enumerate(samples) for s in row
                                  if agent.parse_action(s, admissible[p]).valid))
    scores = q([prompts[p] for p, _ in distinct], [s for _, s in distinct]) if distinct else []
    best: dict[int, tuple[float, str]] = {}
    for (p, line), score in zip(distinct, scores):
      if p not in best or score > best[p][0]:
        best[p] = (float(score), line)
    return [best[p][1] if p in best else samples[p][0] for p in range(len(prompts))]

  return act


def policy_sampler(model_config, params, tokenizer, *, temperature: float, max_new_tokens: int,
                   prompt_width: int, prompts_per_batch: int, mesh=None) -> Sampler:
  """The policy's samples (`policy.sample_solutions`), prompts padded to `prompt_width`, in
  batches of `prompts_per_batch` (one compiled shape: size it to the games played at once;
  the samples do not depend on it)."""
  def sample(prompts, n, key):
    solutions = policy.sample_solutions(
        model_config, params, tokenizer, prompts, num_samples=n, max_new_tokens=max_new_tokens,
        rng=key, temperature=temperature, prompts_per_batch=prompts_per_batch,
        prompt_width=prompt_width, mesh=mesh)
    return solutions.texts
  return sample


def prm_q(model_config, params, tokenizer, *, max_length: int, batch_size: int,
          mesh=None) -> QFunction:
  """Q(s, a) = a PRM's score at the end of the action line (one-step trajectories)."""
  scorer = StepScorer(model_config, params, tokenizer, max_length=max_length, max_steps=1,
                      batch_size=batch_size, mesh=mesh)

  def q(prompts, outputs):
    scores = scorer([Trajectory(problem=p, steps=[o]) for p, o in zip(prompts, outputs)])
    return np.array([s[-1] if len(s) else -np.inf for s in scores], np.float64)
  return q


def summarise(episodes: Sequence[dict], task_types: Sequence[str] = engine.TASK_TYPES) -> dict:
  """Success rate (overall and per task type), mean turns, invalid-action rate."""
  turns = [t for e in episodes for t in e["turns"]]
  by_type = {}
  for task_type in task_types:
    chosen = [e["won"] for e in episodes if e["task_type"] == task_type]
    by_type[task_type] = float(np.mean(chosen)) if chosen else None
  return {"success": float(np.mean([e["won"] for e in episodes])) if episodes else None,
          "by_type": by_type, "episodes": len(episodes),
          "mean_turns": float(np.mean([len(e["turns"]) for e in episodes])) if episodes else None,
          "invalid_rate": float(np.mean([t["kind"] in ("invalid", "empty") for t in turns]))
          if turns else None}
