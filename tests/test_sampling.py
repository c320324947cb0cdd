"""The KV-cache sampler: greedy, seeded sampling, stop tokens, shared prefixes, statistics."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prm_jax import models, parallel, sampling

STEPS = 6


@pytest.fixture(scope="module")
def model():
  config = models.get_model_config("tiny_qwen2")
  params = models.init_params(config, jax.random.key(0))
  # Larger weights than the default init: peaked distributions, so tokens vary by context.
  return config, jax.tree.map(lambda x: x * 4 if x.ndim > 1 else x, params)


@pytest.fixture(scope="module")
def prompts():
  """Left-padded prompts of lengths 9, 5, 1 and 7 `[4, 9]`."""
  rng = np.random.default_rng(0)
  lengths = [9, 5, 1, 7]
  mask = np.arange(9)[None] >= 9 - np.asarray(lengths)[:, None]
  return np.where(mask, rng.integers(3, 256, mask.shape), 0).astype(np.int32), mask


def _forward_logits(config, params, tokens, width=32):
  """fp32 logits `[T, V]` of one sequence, no cache (right-padded to one jitted shape: the
  padding comes after every real token, so causal attention never sees it)."""
  ids = np.zeros((1, width), np.int32)
  ids[0, :len(tokens)] = tokens
  return np.asarray(_logits_fn(config)(params, ids))[0, :len(tokens)]


@functools.lru_cache
def _logits_fn(config):
  return jax.jit(lambda params, ids: models.forward(config, params, ids)["logits"])


def _generate(*args, **kwargs):
  return jax.tree.map(np.asarray, sampling.generate(*args, **kwargs))


def _continue(*args, **kwargs):
  return jax.tree.map(np.asarray, sampling.continue_prefixes(*args, **kwargs))


def _row(ids, mask, r):
  return list(ids[r][mask[r]])


def test_greedy_equals_step_by_step_argmax(model, prompts):
  config, params = model
  ids, mask = prompts
  out = _generate(config, params, ids, mask, max_new_tokens=STEPS)
  for r in range(len(ids)):
    sequence = _row(ids, mask, r)
    for _ in range(STEPS):
      sequence.append(int(np.argmax(_forward_logits(config, params, sequence)[-1])))
    assert list(out["tokens"][r]) == sequence[-STEPS:]
  assert list(out["lengths"]) == [STEPS] * len(ids) and not out["stopped"].any()
  # Greedy is what sampling tends to as the distribution is truncated to one token.
  top1 = _generate(config, params, ids, mask, max_new_tokens=STEPS, temperature=1.0,
                           top_k=1, rng=jax.random.key(3))
  np.testing.assert_array_equal(top1["tokens"], out["tokens"])


def test_statistics_match_teacher_forced_logits(model, prompts):
  config, params = model
  ids, mask = prompts
  out = _generate(config, params, ids, mask, max_new_tokens=STEPS, temperature=1.0,
                          rng=jax.random.key(1))
  for r in range(len(ids)):
    prompt = _row(ids, mask, r)
    logits = _forward_logits(config, params, prompt + list(out["tokens"][r]))[len(prompt) - 1:-1]
    log_p = jax.nn.log_softmax(logits.astype(np.float64), axis=-1)
    tokens = out["tokens"][r]
    np.testing.assert_allclose(out["logprobs"][r], log_p[np.arange(STEPS), tokens], atol=2e-4)
    np.testing.assert_allclose(out["entropy"][r], -(np.exp(log_p) * log_p).sum(-1), atol=2e-4)
    order = np.argsort(-logits, axis=-1)
    np.testing.assert_array_equal(out["top1"][r], order[:, 0])
    np.testing.assert_array_equal(out["top2"][r], order[:, 1])
    np.testing.assert_allclose(out["top2_prob"][r], np.exp(log_p[np.arange(STEPS), order[:, 1]]),
                               atol=1e-5)


def test_seeded_rows_do_not_depend_on_batch_composition(model, prompts):
  config, params = model
  ids, mask = prompts
  keys = jax.random.split(jax.random.key(7), len(ids))
  kwargs = dict(max_new_tokens=STEPS, temperature=1.3, top_p=0.9)
  batch = _generate(config, params, ids, mask, rng=keys, **kwargs)
  again = _generate(config, params, ids, mask, rng=keys, **kwargs)
  np.testing.assert_array_equal(batch["tokens"], again["tokens"])
  order = [2, 0, 3, 1]
  shuffled = _generate(config, params, ids[order], mask[order], rng=keys[np.array(order)],
                               **kwargs)
  np.testing.assert_array_equal(shuffled["tokens"], batch["tokens"][order])
  alone = _generate(config, params, ids[1:2, 4:], mask[1:2, 4:], rng=keys[1:2], **kwargs)
  np.testing.assert_array_equal(alone["tokens"][0], batch["tokens"][1])
  other_seed = _generate(config, params, ids, mask, rng=jax.random.key(8), **kwargs)
  assert not np.array_equal(other_seed["tokens"], batch["tokens"])


def test_stop_tokens_end_rows_and_pad_the_rest(model, prompts):
  config, params = model
  ids, mask = prompts
  greedy = _generate(config, params, ids, mask, max_new_tokens=STEPS)["tokens"]
  stop = int(greedy[0, 2])  # Row 0 emits it at step 2 (maybe earlier too).
  out = _generate(config, params, ids, mask, max_new_tokens=STEPS, stop_tokens=(stop,),
                          pad_id=-1)
  for r in range(len(ids)):
    hits = np.flatnonzero(greedy[r] == stop)
    length = hits[0] + 1 if hits.size else STEPS
    assert out["lengths"][r] == length and out["stopped"][r] == bool(hits.size)
    np.testing.assert_array_equal(out["tokens"][r, :length], greedy[r, :length])
    assert (out["tokens"][r, length:] == -1).all()
    assert (out["logprobs"][r, length:] == 0).all() and (out["entropy"][r, length:] == 0).all()
  assert out["stopped"][0]


def test_shared_prefix_equals_independent_sampling(model, prompts):
  config, params = model
  ids, mask = prompts
  n = 5
  keys = jax.random.split(jax.random.key(11), 2 * n)
  kwargs = dict(max_new_tokens=STEPS, temperature=1.0, top_k=20)
  shared = _generate(config, params, ids[:2], mask[:2], num_samples=n, rng=keys, **kwargs)
  copies = _generate(config, params, np.repeat(ids[:2], n, 0), np.repeat(mask[:2], n, 0),
                             rng=keys, **kwargs)
  for name in ("tokens", "logprobs", "entropy"):
    np.testing.assert_allclose(shared[name], copies[name], atol=1e-5, err_msg=name)
  assert len({tuple(t) for t in shared["tokens"][:n]}) > 1  # The samples differ.


def test_continuations_from_step_boundaries_equal_fresh_prompts(model, prompts):
  config, params = model
  ids, mask = prompts
  # Rows: prompt 0 cut at 3, 7 and 9 real tokens, prompt 3 cut at 2, with forced tokens on two.
  sources, lengths = np.array([0, 0, 0, 3]), np.array([3, 7, 9, 2])
  next_tokens = np.array([-1, 17, -1, 42])
  keys = jax.random.split(jax.random.key(5), 4)
  kwargs = dict(max_new_tokens=STEPS, temperature=0.8)
  out = _continue(config, params, ids, mask, sources=sources, prefix_lengths=lengths,
                  next_tokens=next_tokens, rng=keys, **kwargs)
  for r in range(4):
    forced = [next_tokens[r]] if next_tokens[r] >= 0 else []
    prefix = _row(ids, mask, sources[r])[:lengths[r]] + forced
    fresh = _generate(config, params, np.array([prefix]), rng=keys[r:r + 1], **kwargs)
    np.testing.assert_array_equal(out["tokens"][r], fresh["tokens"][0])
    np.testing.assert_allclose(out["logprobs"][r], fresh["logprobs"][0], atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_layout_samples_like_stacked_layers(model, prompts, dtype):
  config, params = model
  config = config.replace(dtype=dtype, param_dtype=dtype)
  params = jax.tree.map(lambda x: x.astype(dtype), params)
  ids, mask = prompts
  # bf16: the two forms round differently (XLA:CPU computes some scanned bf16 products in
  # fp32), so a sampled draw near a CDF boundary could flip; greedy tokens must agree.
  temperature, atol = (1.0, 1e-5) if dtype == "float32" else (0.0, 3e-2)
  kwargs = dict(max_new_tokens=STEPS, temperature=temperature, rng=jax.random.key(4),
                num_samples=2, stop_tokens=(7,))
  scanned = _generate(config, params, ids, mask, decode_layout=False, **kwargs)
  unrolled = _generate(config, params, ids, mask, decode_layout=True, **kwargs)
  np.testing.assert_array_equal(unrolled["tokens"], scanned["tokens"])
  np.testing.assert_array_equal(unrolled["lengths"], scanned["lengths"])
  for name in ("logprobs", "entropy"):
    np.testing.assert_allclose(unrolled[name], scanned[name], atol=atol, err_msg=name)


def test_params_converted_once_sample_like_converted_per_call(model, prompts):
  config, params = model
  ids, mask = prompts
  kwargs = dict(max_new_tokens=STEPS, temperature=1.0, rng=jax.random.key(5), num_samples=2)
  per_call = _generate(config, params, ids, mask, decode_layout=True, **kwargs)
  converted = sampling.decode_params(params)
  once = _generate(config, converted, ids, mask, **kwargs)
  for name in per_call:
    np.testing.assert_array_equal(once[name], per_call[name], err_msg=name)
  with pytest.raises(ValueError, match="already in the decode layout"):
    sampling.generate(config, converted, ids, mask, decode_layout=False, **kwargs)


@pytest.mark.parametrize("layout", ["stacked", "decode_layout", "converted"])
def test_sharded_sampling_equals_single_device(model, prompts, layout):
  config, params = model
  ids, mask = prompts
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  kwargs = dict(max_new_tokens=STEPS, temperature=1.0, rng=jax.random.key(2), num_samples=3,
                decode_layout=layout != "stacked")
  single = _generate(config, params, ids, mask, **kwargs)
  placed = jax.device_put(params, parallel.param_shardings(config, mesh))
  if layout == "converted":
    placed = sampling.decode_params(placed)
  sharded = _generate(config, placed, ids[:3], mask[:3], mesh=mesh,
                      **kwargs)  # 9 rows: padded to 12 inside.
  np.testing.assert_array_equal(sharded["tokens"], single["tokens"][:9])
  np.testing.assert_allclose(sharded["entropy"], single["entropy"][:9], atol=1e-5)


def _frequencies(sampling_config, logits, draws=40_000):
  keys = jax.random.split(jax.random.key(0), draws)
  tokens = sampling.choose_tokens(sampling_config, jnp.tile(logits, (draws, 1)), keys)
  return np.bincount(np.asarray(tokens), minlength=logits.shape[-1]) / draws


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, None, None), (0.5, None, None), (1.0, 3, None), (1.0, None, 0.7), (2.0, 4, 0.8)])
def test_sampled_frequencies_follow_the_truncated_distribution(temperature, top_k, top_p):
  logits = jnp.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0])
  expected = np.exp(np.asarray(logits, np.float64) / temperature)
  expected /= expected.sum()
  order = np.argsort(-expected)
  keep = np.ones_like(expected, bool)
  if top_k:
    keep[order[top_k:]] = False
  if top_p:
    kept = expected * keep / (expected * keep).sum()
    before = np.cumsum(kept[order]) - kept[order]
    keep[order[before >= top_p]] = False
  expected = expected * keep / (expected * keep).sum()
  config = sampling.SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k,
                                   top_p=top_p)
  np.testing.assert_allclose(_frequencies(config, logits), expected, atol=0.01)


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_new_tokens=0), "max_new_tokens must be a positive int"),
    (dict(max_new_tokens=2, temperature=-1.0), "temperature must be >= 0"),
    (dict(max_new_tokens=2, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(max_new_tokens=2, top_k=0), "top_k must be a positive int"),
    (dict(max_new_tokens=2, rng=jax.random.split(jax.random.key(0), 3)),
     "rng must be one key or 4 keys"),
    (dict(max_new_tokens=600), "exceeds ModelConfig.max_seq_len=512"),
])
def test_bad_arguments_are_named(model, prompts, kwargs, message):
  config, params = model
  ids, mask = prompts
  with pytest.raises(ValueError, match=message):
    _generate(config, params, ids, mask, **kwargs)


def test_bad_prefixes_are_named(model, prompts):
  config, params = model
  ids, mask = prompts
  with pytest.raises(ValueError, match="must be stacked"):
    _generate(config, {"embedding": params["embedding"]}, ids, mask, max_new_tokens=2)
  with pytest.raises(ValueError, match="left-padded"):
    _generate(config, params, ids, mask[:, ::-1], max_new_tokens=2)
  with pytest.raises(ValueError, match="row 1: prefix_lengths=6 but prompt 1 has 5 real tokens"):
    _continue(config, params, ids, mask, sources=[0, 1], prefix_lengths=[2, 6],
                               max_new_tokens=2)


@dataclasses.dataclass(frozen=True)
class _HaltAt:
  """A `TokenRule` that halts each row at the path position its carry names."""

  def __call__(self, tokens, stats, carry):
    halt = carry["position"] == carry["halt_at"]
    return tokens, halt, halt, {**carry, "position": carry["position"] + 1}


def _halt_carry(positions, halt_at):
  return {"position": np.asarray(positions, np.int32), "halt_at": np.asarray(halt_at, np.int32)}


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_halted_rows_resume_and_fork_without_recomputing(model, prompts, mesh_shape):
  config, params = model
  ids, mask = prompts
  n = 12
  mesh = None if mesh_shape is None else parallel.make_mesh(*mesh_shape)
  if mesh is not None:
    params = jax.device_put(params, parallel.param_shardings(config, mesh))
  full = _generate(config, params, ids, mask, max_new_tokens=n)["tokens"]
  # Round 0 halts rows 0-2 at positions 3, 0 and 7; row 3 never halts.
  first = sampling.continue_prefixes(
      config, params, ids, mask, sources=np.arange(4), prefix_lengths=mask.sum(-1),
      max_new_tokens=n, rule=_HaltAt(), rule_carry=_halt_carry([0] * 4, [3, 0, 7, 99]),
      keep_cache=True, mesh=mesh)
  lengths, halted = np.asarray(first["lengths"]), np.asarray(first["halted"])
  np.testing.assert_array_equal(lengths, [3, 0, 7, n])
  np.testing.assert_array_equal(halted, [True, True, True, False])
  marks = np.asarray(first["marks"])  # The rule marked each halt step, and nothing else.
  assert [list(np.flatnonzero(m)) for m in marks] == [[3], [0], [7], []]
  assert not np.asarray(first["stopped"]).any()
  tokens = np.asarray(first["tokens"])
  for r in range(3):  # The halt step records the token the row would have taken.
    assert tokens[r, lengths[r]] == full[r, lengths[r]]
  # Round 1: rows 0-2 go on with their own token; row 0 also forks into token 5; row 1
  # halts again at position 5.
  sources = np.array([0, 1, 2, 0])
  forced = np.array([full[0, 3], full[1, 0], full[2, 7], 5])
  start = lengths[sources] + 1
  second = sampling.resume(
      config, params, first["row_cache"], sources=sources, next_tokens=forced,
      max_new_tokens=n, limits=n - start, rule=_HaltAt(),
      rule_carry=_halt_carry(start, [99, 5, 99, 99]), mesh=mesh)
  out = jax.tree.map(np.asarray, {k: v for k, v in second.items() if k != "row_cache"})
  for r in range(3):
    path = list(tokens[r, :lengths[r]]) + [forced[r]] + list(out["tokens"][r, :out["lengths"][r]])
    assert path == list(full[r, :len(path)])
  assert out["halted"][1] and out["lengths"][1] == 4
  # The fork equals decoding the forked prefix from scratch.
  prefix = _row(ids, mask, 0) + list(tokens[0, :3]) + [5]
  fresh = _generate(config, params, np.array([prefix]), max_new_tokens=n - 4)["tokens"][0]
  np.testing.assert_array_equal(out["tokens"][3, :n - 4], fresh)
  # A branch from an earlier token: row 3 (which never halted) cut after its 5th token.
  branch = sampling.resume(config, params, first["row_cache"], sources=[3], next_tokens=[7],
                           keep=[first["row_cache"].first + 1 + 5], max_new_tokens=n,
                           limits=[n - 6], mesh=mesh)
  prefix = _row(ids, mask, 3) + list(tokens[3, :5]) + [7]
  fresh = _generate(config, params, np.array([prefix]), max_new_tokens=n - 6)["tokens"][0]
  np.testing.assert_array_equal(np.asarray(branch["tokens"])[0, :n - 6], fresh)
  # Round 2: row 1 again (its cache now holds three rounds of tokens).
  third = sampling.resume(config, params, second["row_cache"], sources=[1],
                          next_tokens=[out["tokens"][1, 4]], max_new_tokens=n,
                          limits=[n - 6], mesh=mesh)
  path = (list(tokens[1, :0]) + [forced[1]] + list(out["tokens"][1, :5])
          + list(np.asarray(third["tokens"])[0, :n - 6]))
  assert path == list(full[1])


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_rows_continued_in_place_over_calls_equal_one_call(model, prompts, mesh_shape):
  """A row decoded in pieces (`resume` with `dest`, `key_offsets` = its tokens so far)
  draws exactly the tokens one call draws; rows not continued keep their caches."""
  config, params = model
  ids, mask = prompts
  mesh = None if mesh_shape is None else parallel.make_mesh(*mesh_shape)
  if mesh is not None:
    params = jax.device_put(params, parallel.param_shardings(config, mesh))
  n, cut = 12, 5
  keys = jax.random.split(jax.random.key(4), 4)
  common = dict(temperature=1.0, mesh=mesh)
  full = _generate(config, params, ids, mask, max_new_tokens=n, rng=keys, **common)["tokens"]
  first = sampling.continue_prefixes(
      config, params, ids, mask, sources=np.arange(4), prefix_lengths=mask.sum(-1),
      max_new_tokens=cut, rng=keys, keep_cache=True, room=n, **common)
  tokens = np.asarray(first["tokens"])
  np.testing.assert_array_equal(tokens, full[:, :cut])
  # Rows 1 and 3 go on for 4 tokens; row 3's continuation replaces row 0; row 2's result
  # (dest -1) is not kept.
  second = sampling.resume(
      config, params, first["row_cache"], sources=[1, 3, 2], next_tokens=tokens[[1, 3, 2], -1],
      max_new_tokens=4, rng=keys[np.array([1, 3, 2])], key_offsets=[cut] * 3, dest=[1, 0, -1],
      **common)
  more = np.asarray(second["tokens"])
  np.testing.assert_array_equal(more[:2], full[[1, 3], cut:cut + 4])
  assert len(second["row_cache"].ends) == 4
  # Row 2, untouched, and rows 0 and 1 (now rows 3 and 1 after 9 tokens) to the end.
  third = sampling.resume(
      config, params, second["row_cache"], sources=[0, 2, 1],
      next_tokens=[more[1, -1], tokens[2, -1], more[0, -1]], max_new_tokens=n - cut,
      limits=[n - cut - 4, n - cut, n - cut - 4], rng=keys[np.array([3, 2, 1])],
      key_offsets=[cut + 4, cut, cut + 4], **common)
  last = np.asarray(third["tokens"])
  np.testing.assert_array_equal(last[0, :n - cut - 4], full[3, cut + 4:])
  np.testing.assert_array_equal(last[1], full[2, cut:])
  np.testing.assert_array_equal(last[2, :n - cut - 4], full[1, cut + 4:])
  with pytest.raises(ValueError, match="dest must not repeat"):
    sampling.resume(config, params, third["row_cache"], sources=[0, 1], next_tokens=[3, 3],
                    max_new_tokens=2, dest=[2, 2], mesh=mesh)


def test_grown_bf16_cache_resumes_like_the_original(model, prompts):
  """`with_rows` keeps bf16 keys and values as their bits; resuming from (and writing into)
  the grown cache gives what resuming the original gives."""
  config, params = model
  config = dataclasses.replace(config, dtype="bfloat16")
  ids, mask = prompts
  def first():
    return sampling.continue_prefixes(config, params, ids, mask, sources=np.arange(4),
                                      prefix_lengths=mask.sum(-1), max_new_tokens=4,
                                      keep_cache=True, room=12)
  made = first()
  tokens = np.asarray(made["tokens"])
  plain = sampling.resume(config, params, made["row_cache"], sources=[2, 0],
                          next_tokens=tokens[[2, 0], -1], max_new_tokens=8)
  grown = sampling.with_rows(config, first()["row_cache"], 6)
  assert grown.cache["k"][0].dtype == np.uint16 and len(grown.ends) == 6
  moved = sampling.resume(config, params, grown, sources=[2, 0], next_tokens=tokens[[2, 0], -1],
                          max_new_tokens=8, dest=[5, 0])
  np.testing.assert_array_equal(moved["tokens"], plain["tokens"])
  again = sampling.resume(config, params, moved["row_cache"], sources=[5], max_new_tokens=4,
                          next_tokens=[np.asarray(moved["tokens"])[0, -1]])
  reference = sampling.resume(config, params, plain["row_cache"], sources=[0], max_new_tokens=4,
                              next_tokens=[np.asarray(plain["tokens"])[0, -1]])
  np.testing.assert_array_equal(again["tokens"], reference["tokens"])


def test_prompts_put_into_free_rows_resume_like_their_own_cache(model, prompts):
  """`put_rows` (the EDU scheduler's admission): prompts prefilled on their own and written
  into free rows of a grown bf16 cache continue exactly as from their own cache; a cache of
  another shape, or a row index past the store, is refused by name."""
  config, params = model
  config = dataclasses.replace(config, dtype="bfloat16")
  ids, mask = prompts
  def prefill(rows):
    return sampling.continue_prefixes(config, params, ids, mask, sources=rows,
                                      prefix_lengths=mask.sum(-1)[rows], max_new_tokens=1,
                                      keep_cache=True, room=10)
  own = prefill([1, 3])
  own_tokens = np.asarray(own["tokens"])[:, -1]
  reference = sampling.resume(config, params, own["row_cache"], sources=[0, 1],
                              next_tokens=own_tokens, max_new_tokens=6)
  store = sampling.with_rows(config, prefill([0, 2])["row_cache"], 5)
  store = sampling.put_rows(store, prefill([1, 3])["row_cache"], [4, -1])
  store = sampling.put_rows(store, prefill([1, 3])["row_cache"], [-1, 2])
  assert list(store.ends[[2, 4]]) == list(own["row_cache"].ends[[1, 0]])
  moved = sampling.resume(config, params, store, sources=[4, 2], next_tokens=own_tokens,
                          max_new_tokens=6)
  np.testing.assert_array_equal(moved["tokens"], reference["tokens"])
  with pytest.raises(ValueError, match="do not fit a cache"):
    sampling.put_rows(store, dataclasses.replace(prefill([1])["row_cache"], first=0), [3])
  with pytest.raises(ValueError, match="dest must be"):
    sampling.put_rows(moved["row_cache"], prefill([1])["row_cache"], [7])


def test_limits_cut_rows_and_resume_is_checked(model, prompts):
  config, params = model
  ids, mask = prompts
  out = _generate(config, params, ids, mask, max_new_tokens=STEPS)
  limited = _continue(config, params, ids, mask, sources=np.arange(4), prefix_lengths=mask.sum(-1),
                      max_new_tokens=STEPS, limits=[2, 0, STEPS, 5])
  np.testing.assert_array_equal(limited["lengths"], [2, 0, STEPS, 5])
  for r, limit in enumerate([2, 0, STEPS, 5]):
    np.testing.assert_array_equal(limited["tokens"][r, :limit], out["tokens"][r, :limit])
  with pytest.raises(ValueError, match="limits must be <= max_new_tokens=6"):
    _continue(config, params, ids, mask, sources=[0], prefix_lengths=[9], max_new_tokens=STEPS,
              limits=[7])
  kept = sampling.continue_prefixes(config, params, ids, mask, sources=[0], prefix_lengths=[9],
                                    max_new_tokens=STEPS, keep_cache=True)
  with pytest.raises(ValueError, match="does not fit"):
    sampling.resume(config, params, kept["row_cache"], sources=[0], next_tokens=[3],
                    max_new_tokens=STEPS + 1)
  with pytest.raises(ValueError, match="sources must index the 1 rows"):
    sampling.resume(config, params, kept["row_cache"], sources=[1], next_tokens=[3],
                    max_new_tokens=STEPS)
  with pytest.raises(ValueError, match="keep must be"):
    sampling.resume(config, params, kept["row_cache"], sources=[0], next_tokens=[3],
                    max_new_tokens=STEPS, keep=[kept["row_cache"].first])
  with pytest.raises(ValueError, match="different layouts"):
    sampling.resume(config, params, kept["row_cache"], sources=[0], next_tokens=[3],
                    max_new_tokens=STEPS, decode_layout=False)


def test_as_key_takes_typed_keys_and_raw_key_data():
  typed = jax.random.key(3)
  np.testing.assert_array_equal(jax.random.key_data(sampling.as_key(typed)),
                                jax.random.key_data(typed))
  raw = jax.random.PRNGKey(3)  # uint32 [2]: the same key as jax.random.key(3).
  np.testing.assert_array_equal(jax.random.key_data(sampling.as_key(raw)), np.asarray(raw))
  batch = np.stack([np.asarray(jax.random.PRNGKey(s)) for s in range(4)])
  keys = sampling.as_key(batch)
  assert keys.shape == (4,) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.uniform(keys[2]), jax.random.uniform(
      jax.random.key(2)))
