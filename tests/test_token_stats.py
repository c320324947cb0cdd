"""`token_stats` against a float64 NumPy reference: extremes, -inf, ties, bf16, chunking,
masks, sharding, and extra memory that does not grow with the vocabulary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from prm_jax import parallel
from prm_jax.kernels import token_entropy, token_stats

IMPLS = ["reference", "blocked"]
LOWEST = np.finfo(np.float32).min


def reference_stats(logits, tokens):
  """Float64 statistics of each row of `logits [R, V]`, with the documented sentinels."""
  x = np.asarray(logits, np.float64)
  valid = np.isfinite(x).any(-1)
  top = np.max(x, -1, keepdims=True)
  top = np.where(np.isfinite(top), top, 0.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    log_sum = np.log(np.sum(np.exp(x - top), -1, keepdims=True))
    lse = top[:, 0] + log_sum[:, 0]
    log_p = (x - top) - log_sum  # Not x - lse: that loses log_sum next to logits of 3e38.
    p = np.exp(log_p)
    entropy = -np.sum(np.where(p > 0, p * log_p, 0.0), -1)
  order = np.argsort(-x, axis=-1, kind="stable")  # Stable: ties keep the lower id first.
  rows = np.arange(len(x))
  top2 = order[:, 1] if x.shape[1] > 1 else np.full(len(x), -1)
  stats = {
      "entropy": entropy, "logsumexp": lse, "logprob": log_p[rows, tokens],
      "top1": order[:, 0], "top2": top2,
      "top1_prob": p[rows, order[:, 0]], "top2_prob": np.where(top2 >= 0, p[rows, top2], 0.0),
  }
  empty = {"top1": -1, "top2": -1}
  return {k: np.where(valid, v, empty.get(k, 0.0)) for k, v in stats.items()}


def special_rows(rng, vocab):
  """A batch `[R, V]` of random rows and every corner case the kernel must get exactly."""
  normal = lambda scale: rng.normal(size=vocab) * scale
  half_masked = normal(3.0)
  half_masked[rng.permutation(vocab)[:vocab // 2]] = -np.inf
  one_finite = np.full(vocab, -np.inf)
  one_finite[rng.integers(vocab)] = 2.5
  peaked = normal(1.0)
  peaked[rng.integers(vocab)] = 30.0
  rows = [
      normal(1.0), normal(3.0),
      normal(1e4),                              # extreme logits: most p underflow to 0
      1e4 + normal(1.0),                        # large offset: logsumexp precision
      -1e4 + normal(1.0),
      half_masked, one_finite, peaked,
      rng.integers(-3, 3, vocab).astype(float),  # many exact ties
      np.full(vocab, -np.inf),                  # nothing finite: sentinels
      np.full(vocab, LOWEST),                   # finite-min masking: uniform, not empty
      np.full(vocab, 7.0),
  ]
  return np.stack(rows).astype(np.float32)


def check(stats, want):
  """Floats within 1e-5 relative (1e-6 absolute near 0); top-1/top-2 ids exact."""
  for key in ("entropy", "logsumexp", "logprob", "top1_prob", "top2_prob"):
    np.testing.assert_allclose(np.asarray(stats[key]), want[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  np.testing.assert_array_equal(stats["top1"], want["top1"])
  np.testing.assert_array_equal(stats["top2"], want["top2"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("vocab, chunk_size", [
    (1, None), (7, None), (1000, 300), (4099, None), (1280, 256)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matches_float64_reference(impl, vocab, chunk_size, dtype):
  rng = np.random.default_rng(vocab)
  logits = jnp.asarray(special_rows(rng, vocab), dtype)
  tokens = rng.integers(0, vocab, logits.shape[0])
  fn = jax.jit(lambda x, t: token_stats(x, t, chunk_size=chunk_size, impl=impl))
  # The reference sees exactly the values the kernel sees (bf16 rounded, then widened).
  check(fn(logits, tokens), reference_stats(np.asarray(logits.astype(jnp.float32)), tokens))


@pytest.mark.parametrize("impl", IMPLS)
def test_leading_dims_mask_and_padding_tokens(impl):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 5, 300)).astype(np.float32) * 2
  tokens = rng.integers(0, 300, (3, 5))
  mask = rng.random((3, 5)) < 0.7
  tokens = np.where(mask, tokens, -100)  # Padding positions hold an out-of-range id.
  stats = jax.jit(lambda x, t, m: token_stats(x, t, m, chunk_size=128, impl=impl))(
      logits, tokens, mask)
  want = reference_stats(logits.reshape(15, 300), np.where(mask, tokens, 0).reshape(15))
  sentinel = {"top1": -1, "top2": -1}
  for key, value in want.items():
    assert stats[key].shape == (3, 5)
    expected = np.where(mask, value.reshape(3, 5), sentinel.get(key, 0.0))
    np.testing.assert_allclose(stats[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
  # A mask that broadcasts (one flag per sequence) masks whole rows.
  by_row = token_stats(logits, mask=np.array([[True], [False], [True]]), impl=impl)
  assert np.all(np.asarray(by_row["top1"])[1] == -1)
  assert np.all(np.asarray(by_row["entropy"])[[0, 2]] > 0)


def test_token_entropy_is_the_entropy_stat():
  logits = np.random.default_rng(2).normal(size=(4, 6, 50)).astype(np.float32)
  entropy = jax.jit(token_entropy)(logits)
  np.testing.assert_array_equal(entropy, jax.jit(token_stats)(logits)["entropy"])
  np.testing.assert_allclose(entropy,
                             reference_stats(logits.reshape(24, 50), np.zeros(24, int))
                             ["entropy"].reshape(4, 6), rtol=1e-5)


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="impl"):
    token_stats(jnp.zeros((2, 3)), impl="fast")
  with pytest.raises(ValueError, match="floating"):
    token_stats(jnp.zeros((2, 3), jnp.int32))
  with pytest.raises(ValueError, match="vocabulary"):
    token_stats(jnp.zeros((2, 0)))
  with pytest.raises(ValueError, match="chunk_size"):
    token_stats(jnp.zeros((2, 3)), chunk_size=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("spec", [P(("data", "fsdp"), None, None), P("data", "fsdp", "tensor")])
def test_sharded_equals_unsharded(impl, spec):
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(4, 6, 512)).astype(np.float32) * 3
  tokens = rng.integers(0, 512, (4, 6))
  mask = rng.random((4, 6)) < 0.8
  fn = lambda x, t, m: token_stats(x, t, m, chunk_size=128, impl=impl)
  want = jax.jit(fn)(logits, tokens, mask)
  position = NamedSharding(mesh, P(*spec[:2]))
  args = (jax.device_put(logits, NamedSharding(mesh, spec)), jax.device_put(tokens, position),
          jax.device_put(mask, position))
  got = jax.jit(fn)(*args)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("impl", IMPLS)
def test_extra_memory_does_not_grow_with_vocab(impl):
  """Compiled scratch memory (fp32, 256 rows) is a few chunks, the same at V=32k and 128k."""
  rows, chunk = 256, 2048

  def scratch(vocab):
    logits = jax.ShapeDtypeStruct((rows, vocab), jnp.float32)
    tokens = jax.ShapeDtypeStruct((rows,), jnp.int32)
    fn = jax.jit(lambda x, t: token_stats(x, t, chunk_size=chunk, impl=impl))
    return fn.lower(logits, tokens).compile().memory_analysis().temp_size_in_bytes

  small, large = scratch(32768), scratch(131072)
  assert large <= small * 1.05 + (1 << 16)
  assert large <= 4 * rows * chunk * 4  # A few fp32 chunks; the logits are 128 MiB.
