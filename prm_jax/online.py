"""Online batches for `train.train_loop`: every rollout samples with the current policy.

    source = OnlineSource(model_config, prompts, score, GRPOConfig(kl_coef=1e-3),
                          RolloutConfig(prompts_per_step=16, group_size=8), mesh=mesh,
                          reference_params=sft_params)
    train.train_loop(model_config, make_grpo_loss(model_config, grpo_config), source, ...)

The loop gives the source the current parameters before every step
(`source.next_batch(params)`). When the source has no rollout batch left to serve, it
  1. takes the next `prompts_per_step` prompts of its stream (reshuffled every epoch),
  2. samples `group_size` completions of each with those parameters (`sampling.generate`:
     rows data-parallel, weights tensor-parallel on the mesh),
  3. scores them: `score(rollouts) -> Scores` (sequence rewards or step rewards, and
     per-row statistics to log; `prm_jax.rewards` builds scorers),
  4. keeps the groups that carry a signal, sampling further prompts to replace the others,
     at most `max_rounds` rounds (GRPO with `dynamic_sampling`; always for online DPO,
     whose pairs need two different rewards); a batch still short is filled with dropped
     groups (zero advantage / zero pair weight),
  5. builds the objective's batch: GRPO advantages (`group_advantages`, or
     `process_advantages` for step rewards), behaviour and reference log-probs; DPO pairs
     (best and worst of each group) and their reference log-probs,
  6. splits it into `minibatches` minibatches, reshuffled for each of `epochs` passes,
and serves those, one per optimizer step: `minibatches * epochs` steps per rollout.

Behaviour log-probs (GRPO's `old`). The sampler returns the log-probs of the untempered,
untruncated `softmax(logits)`, which is the distribution tokens are drawn from only at
temperature 1 without top-p. `behaviour_logprobs="sampler"` uses them (no extra pass), and
is allowed only then; `"recompute"` runs a forward pass of the sampling parameters at the
sampling temperature, `softmax(logits / T)` (as TRL does; top-p truncation is not modelled,
also as in TRL); `"auto"` picks "sampler" when it is exact. Recomputing also removes the
rounding gap between the decode-step and the training forward pass (ratio exactly 1 in
the first minibatch), which matters more in bf16.

Reference. With `kl_coef > 0` (GRPO) or for DPO, `reference_params` are placed on the
mesh with the policy's shardings once, held frozen, and their log-probs computed for every
rollout batch by a forward pass (at the sampling temperature for GRPO's k3 KL, untempered
for DPO's sequence log-probs). With `kl_coef = 0` no reference is kept.

State (`get_state` / `set_state`, checkpointed by the loop with the train state): the
prompt stream position, the rollout RNG key, the rollout batch still being served with its
minibatch order, and the count of generated tokens (`generated_tokens`: the cost). A run
stopped at any step resumes bitwise (on CPU) as if it had not stopped.

Multi-host: every process computes the same global rollout (same prompts, keys and
parameters) and serves its own rows (`parallel.process_batch_slice`); the state is the
same on every process.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from prm_jax import models, parallel, sampling
from prm_jax.objectives import dpo, grpo
from prm_jax.objectives.completion import completion_logprobs

BEHAVIOUR_LOGPROBS = ("auto", "sampler", "recompute")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """How a rollout batch is sampled and served (an experiment's `config.rollout`).

  Attributes:
    prompts_per_step: prompts (groups) per rollout batch.
    group_size: completions sampled per prompt (GRPO's G, online DPO's K).
    max_new_tokens: N, the completion width (tokens per completion, stop token included).
    temperature: sampling temperature (> 0).
    top_p: nucleus sampling; 0 = off.
    minibatches: optimizer steps per pass over a rollout batch (its rows split evenly).
    epochs: passes over a rollout batch.
    max_rounds: sampling rounds per batch when groups are filtered (dynamic sampling, DPO).
    behaviour_logprobs: "auto", "sampler" or "recompute" (module docstring).
    seed: the prompt order and the rollout RNG.
  """

  prompts_per_step: int = 16
  group_size: int = 8
  max_new_tokens: int = 48
  temperature: float = 1.0
  top_p: float = 0.0
  minibatches: int = 1
  epochs: int = 1
  max_rounds: int = 4
  behaviour_logprobs: str = "auto"
  seed: int = 0

  def __post_init__(self):
    for name in ("prompts_per_step", "group_size", "max_new_tokens", "minibatches", "epochs",
                 "max_rounds"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"rollout.{name} must be a positive int, got {value!r}")
    if self.group_size < 2:
      raise ValueError(f"rollout.group_size must be >= 2 (a group compares samples), got "
                       f"{self.group_size}")
    if not self.temperature > 0:
      raise ValueError(f"rollout.temperature must be > 0, got {self.temperature!r}")
    if not 0 <= self.top_p <= 1:
      raise ValueError(f"rollout.top_p must be in [0, 1] (0 = off), got {self.top_p!r}")
    if self.behaviour_logprobs not in BEHAVIOUR_LOGPROBS:
      raise ValueError(f"rollout.behaviour_logprobs={self.behaviour_logprobs!r} is not one of "
                       f"{BEHAVIOUR_LOGPROBS}")
    exact = self.temperature == 1 and not self.top_p
    if self.behaviour_logprobs == "sampler" and not exact:
      raise ValueError("rollout.behaviour_logprobs='sampler' needs temperature 1 and no top_p "
                       "(the sampler's log-probs are the untempered policy's); use 'recompute'")


@dataclasses.dataclass(frozen=True)
class Rollouts:
  """One round of samples, R = prompts x group_size rows (group-major), N tokens each.

  prompt_index: `[R]` int, index of the row's prompt in the source's prompt list.
  tokens: `[R, N]` int32, the completion (padding after the stop token).
  lengths: `[R]` int32, completion tokens up to and including the stop token.
  finished: `[R]` bool, ended with a stop token within N.
  logprobs, entropy: `[R, N]` fp32, per token of the untempered policy (the sampler's).
  """

  prompt_index: np.ndarray
  tokens: np.ndarray
  lengths: np.ndarray
  finished: np.ndarray
  logprobs: np.ndarray
  entropy: np.ndarray

  @property
  def completion_mask(self) -> np.ndarray:
    """`[R, N]` bool, the completion's real tokens."""
    return np.arange(self.tokens.shape[1])[None] < self.lengths[:, None]


@dataclasses.dataclass(frozen=True)
class Scores:
  """What a scorer returns for R rollout rows.

  rewards: `[R]` sequence rewards (outcome, PRM, mixes); needed by online DPO.
  step_rewards, step_mask, step_ends: `[R, S]` per-step rewards, real steps, and the
    completion-token index of each step's last token (GRPO's process-supervised
    advantages use these when given).
  stats: `{name: [R]}` per-row statistics, logged as rollout means (`rollout_<name>`).
  """

  rewards: np.ndarray | None = None
  step_rewards: np.ndarray | None = None
  step_mask: np.ndarray | None = None
  step_ends: np.ndarray | None = None
  stats: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def check(self, rows: int) -> None:
    """Raise `ValueError` naming the field if a shape does not fit `rows` rollout rows."""
    if self.rewards is None and self.step_rewards is None:
      raise ValueError("Scores has neither rewards nor step_rewards")
    if self.rewards is not None and np.shape(self.rewards) != (rows,):
      raise ValueError(f"Scores.rewards has shape {np.shape(self.rewards)}, expected [R] = "
                       f"({rows},): one reward per rollout row")
    if self.step_rewards is not None:
      shape = np.shape(self.step_rewards)
      if len(shape) != 2 or shape[0] != rows:
        raise ValueError(f"Scores.step_rewards has shape {shape}, expected [R, S] with R = "
                         f"{rows} rollout rows")
      for name in ("step_mask", "step_ends"):
        if np.shape(getattr(self, name)) != shape:
          raise ValueError(f"Scores.{name} has shape {np.shape(getattr(self, name))}, "
                           f"expected step_rewards' {shape}")
    for name, value in self.stats.items():
      if np.shape(value) != (rows,):
        raise ValueError(f"Scores.stats[{name!r}] has shape {np.shape(value)}, expected "
                         f"[R] = ({rows},)")


ScoreFn = Callable[[Rollouts], Scores]


def _to_host(x) -> np.ndarray:
  """A (possibly multi-process) jax.Array as one NumPy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  width = max(len(p) for p in prompts)
  ids = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros(ids.shape, bool)
  for row, prompt in enumerate(prompts):
    ids[row, width - len(prompt):] = prompt
    mask[row, width - len(prompt):] = True
  return ids, mask


def logprobs_program(model_config: models.ModelConfig, mesh: Mesh, completion_width: int,
                     temperature: float, rules=parallel.LOGICAL_AXIS_RULES):
  """The jitted `(params, input_ids, attention_mask) -> [R, N]` completion log-probs on
  `mesh` (parameters with the policy's shardings, rows over the batch axes): what the
  source runs for behaviour and reference log-probs, and what `prm_jax.aot` compiles."""
  rows = parallel.batch_sharding(mesh, 2, rules)
  return parallel.sharded_jit(
      lambda params, ids, mask: completion_logprobs(model_config, params, ids, mask,
                                                    completion_width, temperature),
      mesh, in_shardings=(parallel.param_shardings(model_config, mesh, rules), rows, rows),
      out_shardings=rows, rules=rules)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, total: int) -> np.ndarray:
  """The prompt order of one epoch of the stream."""
  return np.random.default_rng((seed, epoch)).permutation(total)


class OnlineSource:
  """A batch source for `train.train_loop` that samples with the current parameters.

  Args:
    model_config: the policy.
    prompts: token ids of every training prompt (BOS included if the policy uses one).
    score: `score(rollouts) -> Scores` (see `Scores`).
    objective: a `grpo.GRPOConfig` (GRPO family) or a `dpo.DPOConfig` (online DPO).
    config: sampling and serving (`RolloutConfig`).
    mesh: where the policy lives; sampling and the log-prob passes run on it.
    reference_params: the frozen reference policy (needed for DPO and GRPO with kl_coef > 0).
    stop_tokens, pad_id: the sampler's.
    rules: the logical-axis rule table.
  """

  def __init__(self, model_config: models.ModelConfig, prompts: Sequence[Sequence[int]],
               score: ScoreFn, objective: grpo.GRPOConfig | dpo.DPOConfig,
               config: RolloutConfig, *, mesh: Mesh, reference_params=None,
               stop_tokens: Sequence[int] = (), pad_id: int = 0,
               rules=parallel.LOGICAL_AXIS_RULES):
    if not isinstance(objective, (grpo.GRPOConfig, dpo.DPOConfig)):
      raise TypeError(f"objective must be a GRPOConfig or a DPOConfig, got {type(objective)}")
    if not prompts:
      raise ValueError("the online source needs at least one prompt")
    self.model_config, self.score, self.objective, self.config = (model_config, score,
                                                                  objective, config)
    self.mesh, self.rules = mesh, rules
    self.stop_tokens, self.pad_id = tuple(stop_tokens), pad_id
    self.is_dpo = isinstance(objective, dpo.DPOConfig)
    self._prompt_ids, self._prompt_mask = _left_pad(prompts, pad_id)
    # Rows of one optimizer step: GRPO serves completions, DPO pairs (one per prompt).
    batch_rows = config.prompts_per_step * (1 if self.is_dpo else config.group_size)
    if batch_rows % config.minibatches:
      raise ValueError(f"rollout.minibatches={config.minibatches} does not divide the "
                       f"{batch_rows} {'pairs' if self.is_dpo else 'rows'} of a rollout batch")
    self._minibatch_rows = batch_rows // config.minibatches
    parallelism = parallel.batch_parallelism(mesh, rules)
    if self._minibatch_rows % parallelism:
      raise ValueError(f"a minibatch of {self._minibatch_rows} rows is not divisible by the "
                       f"{parallelism}-way batch sharding of mesh {dict(mesh.shape)} "
                       "(check rollout.prompts_per_step, group_size and minibatches)")
    needs_reference = self.is_dpo or objective.kl_coef > 0
    if needs_reference and reference_params is None:
      raise ValueError("reference_params are needed for online DPO and for GRPO with "
                       "grpo.kl_coef > 0")
    shardings = parallel.param_shardings(model_config, mesh, rules)
    self._reference = (jax.device_put(reference_params, shardings) if needs_reference
                       else None)
    self._logprobs_fn = functools.lru_cache(maxsize=4)(
        lambda temperature: logprobs_program(model_config, mesh, config.max_new_tokens,
                                             temperature, rules))
    # State.
    self._position = 0
    self._rng = np.asarray(jax.random.key_data(jax.random.key(config.seed)), np.uint32)
    self._buffer: dict | None = None
    self._order: np.ndarray | None = None
    self._served = 0
    self.generated_tokens = 0  # Sampled completion tokens so far (stop tokens included).

  # --------------------------------------------------------------------------- state

  def get_state(self) -> dict:
    """The source's state as a pytree of NumPy arrays (copies)."""
    state = {"position": np.asarray(self._position, np.int64), "rng": self._rng.copy(),
             "served": np.asarray(self._served, np.int64),
             "generated_tokens": np.asarray(self.generated_tokens, np.int64)}
    if self._buffer is not None:
      state["buffer"] = jax.tree.map(np.array, self._buffer)
      state["order"] = self._order.copy()
    return state

  def set_state(self, state: Mapping) -> None:
    self._position = int(state["position"])
    self._rng = np.asarray(state["rng"], np.uint32)
    self._served = int(state["served"])
    self.generated_tokens = int(state["generated_tokens"])
    self._buffer = jax.tree.map(np.asarray, dict(state["buffer"])) if "buffer" in state else None
    self._order = np.asarray(state["order"]) if "order" in state else None

  # --------------------------------------------------------------------------- serving

  def next_batch(self, params) -> dict:
    """This process's rows of the next minibatch; samples a rollout batch with `params`
    first if the current one has been served."""
    steps = self.config.minibatches * self.config.epochs
    if self._buffer is None or self._served >= steps:
      self._buffer = self._rollout_batch(params)
      rows = jax.tree.leaves(self._buffer)[0].shape[0]
      orders = [np.asarray(jax.random.permutation(self._next_key(), rows))
                for _ in range(self.config.epochs)]
      self._order = np.concatenate(orders).reshape(steps, self._minibatch_rows)
      self._served = 0
    rows = self._order[self._served]
    self._served += 1
    batch = self._finish(jax.tree.map(lambda x: x[rows], self._buffer))
    local = parallel.process_batch_slice(self._minibatch_rows)
    return jax.tree.map(lambda x: x[local], batch)

  def _finish(self, batch: dict) -> dict:
    """Normalisers over the served minibatch (the global batch of one optimizer step)."""
    if self.is_dpo:
      valid = batch.pop("pair_valid").astype(np.float32)
      fraction = valid.mean()
      batch["pair_weight"] = valid / fraction if fraction > 0 else valid
      if self.objective.sft_weight:  # The NLL term's global token count.
        chosen = (batch["completion_mask"][:, 0] * valid[:, None]).sum()
        batch["chosen_tokens"] = np.full(len(valid), chosen / len(valid), np.float32)
    else:
      tokens = batch["completion_mask"].sum() / batch["completion_mask"].shape[0]
      batch["tokens_per_row"] = np.full(batch["completion_mask"].shape[0], tokens, np.float32)
    return batch

  def _next_key(self) -> jax.Array:
    key, sub = jax.random.split(jax.random.wrap_key_data(self._rng))
    self._rng = np.asarray(jax.random.key_data(key), np.uint32)
    return sub

  def _next_prompts(self, count: int) -> np.ndarray:
    """The next `count` prompt indices of the stream (a new permutation every epoch)."""
    total = len(self._prompt_ids)
    epochs = [divmod(p, total) for p in range(self._position, self._position + count)]
    self._position += count
    return np.asarray([_epoch_order(self.config.seed, epoch, total)[offset]
                       for epoch, offset in epochs])

  # --------------------------------------------------------------------------- rollouts

  def _sample(self, params, prompt_index: np.ndarray) -> Rollouts:
    c = self.config
    key = self._next_key()
    rows = len(prompt_index) * c.group_size
    keys = jax.vmap(lambda r: jax.random.key_data(jax.random.fold_in(key, r)))(
        jnp.arange(rows))
    out = sampling.generate(
        self.model_config, params, self._prompt_ids[prompt_index],
        self._prompt_mask[prompt_index], max_new_tokens=c.max_new_tokens,
        temperature=c.temperature, top_p=c.top_p or None, stop_tokens=self.stop_tokens,
        pad_id=self.pad_id, rng=np.asarray(keys), num_samples=c.group_size, mesh=self.mesh,
        rules=self.rules)
    out = {name: _to_host(out[name]) for name in ("tokens", "lengths", "stopped", "logprobs",
                                                  "entropy")}
    self.generated_tokens += int(out["lengths"].sum())
    return Rollouts(prompt_index=np.repeat(prompt_index, c.group_size),
                    tokens=out["tokens"].astype(np.int32), lengths=out["lengths"],
                    finished=out["stopped"], logprobs=out["logprobs"], entropy=out["entropy"])

  def _keep(self, scores: Scores) -> np.ndarray:
    """`[groups]` bool: the groups that carry a learning signal (or all of them)."""
    size = self.config.group_size
    if self.is_dpo:
      return np.asarray(dpo.preference_pairs(scores.rewards, size)[2])
    if scores.step_rewards is not None:
      keep = grpo.keep_groups(scores.step_rewards, size, scores.step_mask)
    else:
      keep = grpo.keep_groups(scores.rewards, size)
    return np.asarray(keep) | (not self.objective.dynamic_sampling)

  def _rollout_batch(self, params) -> dict:
    """Sample and score rounds until `prompts_per_step` groups carry a signal (or
    `max_rounds` is reached), then build the objective's batch (module docstring)."""
    c = self.config
    filtering = self.is_dpo or self.objective.dynamic_sampling
    rounds, kept, dropped = [], [], []
    while len(kept) < c.prompts_per_step and len(rounds) < (c.max_rounds if filtering else 1):
      rollouts = self._sample(params, self._next_prompts(c.prompts_per_step))
      scores = self.score(rollouts)
      scores.check(len(rollouts.tokens))
      if self.is_dpo and scores.rewards is None:
        raise ValueError("online DPO ranks samples by Scores.rewards, but the scorer "
                         "returned only step_rewards")
      keep = self._keep(scores)
      index = len(rounds)
      kept += [(index, g) for g in np.flatnonzero(keep)]
      dropped += [(index, g) for g in np.flatnonzero(~keep)]
      rounds.append((rollouts, scores))
    chosen = (kept + dropped)[:c.prompts_per_step]
    rollouts, scores = self._gather(rounds, chosen)
    stats = self._stats(rounds, len(kept))
    if self.is_dpo:
      batch = self._dpo_rows(params, rollouts, scores)
    else:
      batch = self._grpo_rows(params, rollouts, scores)
    rows = batch["input_ids"].shape[0]
    batch["stats"] = {name: np.full(rows, value, np.float32) for name, value in stats.items()}
    return batch

  def _gather(self, rounds, groups) -> tuple[Rollouts, Scores]:
    """The rows of the chosen `(round, group)`s, in order, as one Rollouts and Scores
    (step fields padded to the widest round's steps)."""
    size = self.config.group_size

    def pick(get):
      width = max(get(round_).shape[1:] for round_ in rounds)
      pad = lambda x: np.pad(x, [(0, 0)] + [(0, w - d) for w, d in zip(width, x.shape[1:])])
      return np.concatenate([pad(get(rounds[r])[g * size:(g + 1) * size]) for r, g in groups])

    rollouts = Rollouts(**{field.name: pick(lambda rs, n=field.name: getattr(rs[0], n))
                           for field in dataclasses.fields(Rollouts)})
    first = rounds[0][1]
    scores = Scores(**{name: None if getattr(first, name) is None else
                       pick(lambda rs, n=name: getattr(rs[1], n))
                       for name in ("rewards", "step_rewards", "step_mask", "step_ends")})
    return rollouts, scores

  def _stats(self, rounds, kept_groups: int) -> dict[str, float]:
    """Rollout statistics over every sampled row (all rounds): what the policy does now."""
    sampled = [r for r, _ in rounds]
    mask = np.concatenate([r.completion_mask for r in sampled])
    entropy = np.concatenate([r.entropy for r in sampled])
    stats = {"length": float(np.mean(np.concatenate([r.lengths for r in sampled]))),
             "entropy": float(np.sum(entropy * mask) / max(mask.sum(), 1)),
             "truncated": float(np.mean(~np.concatenate([r.finished for r in sampled]))),
             "kept_groups": kept_groups / (len(rounds) * self.config.prompts_per_step)}
    if rounds[0][1].rewards is not None:
      stats["reward"] = float(np.mean(np.concatenate([s.rewards for _, s in rounds])))
    for name in rounds[0][1].stats:
      stats[name] = float(np.mean(np.concatenate([s.stats[name] for _, s in rounds])))
    return stats

  def _rows(self, rollouts: Rollouts) -> dict:
    """The completion layout (`objectives.completion`) of the rollout rows."""
    completion_mask = rollouts.completion_mask
    return {"input_ids": np.concatenate([self._prompt_ids[rollouts.prompt_index],
                                         rollouts.tokens], axis=1),
            "attention_mask": np.concatenate([self._prompt_mask[rollouts.prompt_index],
                                              completion_mask], axis=1),
            "completion_mask": completion_mask}

  def _grpo_rows(self, params, rollouts: Rollouts, scores: Scores) -> dict:
    c, objective = self.config, self.objective
    batch = self._rows(rollouts)
    width = c.max_new_tokens
    if scores.step_rewards is not None:
      advantages = grpo.process_advantages(
          scores.step_rewards, scores.step_mask, scores.step_ends, width, c.group_size,
          scale=objective.scale_rewards, eps=objective.advantage_eps)
    else:
      advantages = jnp.broadcast_to(grpo.group_advantages(
          scores.rewards, c.group_size, scale=objective.scale_rewards,
          eps=objective.advantage_eps)[:, None], batch["completion_mask"].shape)
    batch["advantages"] = np.asarray(advantages, np.float32)
    recompute = (c.behaviour_logprobs == "recompute" or (
        c.behaviour_logprobs == "auto" and (c.temperature != 1 or c.top_p)))
    batch["old_logprobs"] = (self._logprobs(params, batch, c.temperature) if recompute
                             else rollouts.logprobs.astype(np.float32))
    if objective.kl_coef:
      batch["ref_logprobs"] = self._logprobs(self._reference, batch, c.temperature)
    return batch

  def _dpo_rows(self, params, rollouts: Rollouts, scores: Scores) -> dict:
    del params  # DPO needs no behaviour log-probs.
    rows = self._rows(rollouts)
    chosen, rejected, valid = (np.asarray(x) for x in dpo.preference_pairs(
        scores.rewards, self.config.group_size))
    pairs = np.stack([chosen, rejected], axis=1)  # [Q, 2] row indices
    reference = self._logprobs(self._reference, rows, 1.0)
    ref_logprobs = np.asarray(dpo.sequence_logprobs(reference, rows["completion_mask"]))
    batch = {name: value[pairs] for name, value in rows.items()}
    batch.update(ref_logprobs=ref_logprobs[pairs].astype(np.float32), pair_valid=valid)
    return batch

  # --------------------------------------------------------------------------- log-probs

  def _logprobs(self, params, rows: dict, temperature: float) -> np.ndarray:
    """`[R, N]` fp32 completion log-probs of `rows` under `params` (a forward pass on the
    mesh; rows padded to the batch sharding)."""
    ids, mask = rows["input_ids"], rows["attention_mask"]
    count = len(ids)
    extra = -count % parallel.batch_parallelism(self.mesh, self.rules)
    if extra:
      ids = np.concatenate([ids, np.repeat(ids[:1], extra, axis=0)])
      mask = np.concatenate([mask, np.repeat(mask[:1], extra, axis=0)])
    local = parallel.process_batch_slice(len(ids))
    inputs = parallel.make_global_batch({"ids": ids[local], "mask": mask[local]}, self.mesh,
                                        self.rules)
    out = self._logprobs_fn(float(temperature))(params, inputs["ids"], inputs["mask"])
    return _to_host(out)[:count].astype(np.float32)
