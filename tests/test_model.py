"""The decoder against a float64 NumPy reference; padding, cache, heads, remat, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prm_jax import models
from prm_jax.models import transformer
from tests.numpy_reference import reference_forward

CONFIGS = ["tiny", "tiny_mha", "tiny_qwen2"]


def _params(name, seed=0, **overrides):
  config = models.get_model_config(name, **overrides)
  params = models.init_params(config, jax.random.key(seed))
  if config.qkv_bias:  # Zero-initialised biases would not test the bias path.
    params["layers"]["attn"] = jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 1), x.shape),
        params["layers"]["attn"])
  return config, params


def _left_padded_batch(rng, lengths, total, vocab):
  ids = rng.integers(0, vocab, (len(lengths), total))
  mask = np.zeros((len(lengths), total), bool)
  for row, length in enumerate(lengths):
    mask[row, total - length:] = True
  return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask)


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_float64_numpy_reference(name):
  config, params = _params(name)
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, 11)
  out = models.forward(config, params, jnp.asarray(tokens)[None])
  ref_logits, ref_hidden = reference_forward(config, params, tokens)
  np.testing.assert_allclose(out["logits"][0], ref_logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["hidden"][0], ref_hidden, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", CONFIGS)
def test_left_padding_equals_unpadded_rows(name):
  config, params = _params(name)
  rng = np.random.default_rng(1)
  ids, mask = _left_padded_batch(rng, [9, 4, 1], 9, config.vocab_size)
  padded = models.forward(config, params, ids, attention_mask=mask)["logits"]
  for row, length in enumerate([9, 4, 1]):
    alone = models.forward(config, params, ids[row:row + 1, 9 - length:])["logits"]
    np.testing.assert_allclose(padded[row, 9 - length:], alone[0], rtol=1e-5, atol=1e-5)


LAYOUTS = {
    "unstacked": models.unstack_layers,
    "output_major": jax.jit(models.transpose_kernels),
    "decode": jax.jit(lambda p: models.transpose_kernels(models.unstack_layers(p))),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_layouts_give_the_same_outputs(name, layout):
  config, params = _params(name)
  ids, mask = _left_padded_batch(np.random.default_rng(5), [7, 3], 7, config.vocab_size)
  step_positions = jnp.array([[2, 6], [4, 6]])
  converted = LAYOUTS[layout](params)
  if layout != "output_major":
    assert "layers" not in converted and f"layers_{config.num_layers - 1}" in converted
  if layout != "unstacked":
    block = converted.get("layers", converted.get("layers_0"))
    assert set(block["attn"]) >= {"q_kernel_t", "o_kernel_t"}
    assert block["attn"]["o_kernel_t"].shape[-2:] == (config.hidden_size,
                                                     config.num_heads * config.head_dim)
    assert set(block["mlp"]) == {"gate_up_kernel_t", "down"}
    assert block["mlp"]["gate_up_kernel_t"].shape[-2:] == (2 * config.mlp_dim,
                                                           config.hidden_size)
    assert ("lm_head_t" in converted) == (not config.tie_embeddings)
  for lm_logits in ("all", "last"):
    expected = models.forward(config, params, ids, attention_mask=mask,
                              step_positions=step_positions, lm_logits=lm_logits)
    got = models.forward(config, converted, ids, attention_mask=mask,
                         step_positions=step_positions, lm_logits=lm_logits)
    for key in ("logits", "hidden", "step_scores"):
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_cache_layout_must_match_the_parameters():
  config, params = _params("tiny")
  ids = jnp.zeros((1, 2), jnp.int32)
  with pytest.raises(ValueError, match="unrolled=True"):
    models.forward(config, models.unstack_layers(params), ids,
                   cache=models.init_cache(config, 1, 4))
  with pytest.raises(ValueError, match="cache layout"):
    models.forward(config, params, ids, cache=models.init_cache(config, 1, 4, unrolled=True))
  with pytest.raises(ValueError, match="neither stacked"):
    models.forward(config, {"embedding": params["embedding"]}, ids)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int32"])
def test_write_slots_equals_dynamic_update_slice(dtype):
  rng = np.random.default_rng(4)
  buffer = jnp.asarray(rng.normal(size=(2, 3, 4, 8)) * 100).astype(dtype)
  update = jnp.asarray(rng.normal(size=(2, 3, 4, 2)) * 100).astype(dtype)
  write = jax.jit(transformer.write_slots, static_argnums=3)
  for index in (0, 5, 6):
    expected = jax.lax.dynamic_update_slice_in_dim(buffer, update, index, 3)
    got = write(buffer, update, jnp.int32(index), 3)
    assert got.dtype == buffer.dtype
    np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(expected, np.float64))


@pytest.mark.parametrize("unrolled", [False, True], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("name", CONFIGS)
def test_kv_cache_decoding_reproduces_full_logits(name, unrolled):
  config, params = _params(name)
  rng = np.random.default_rng(2)
  lengths, total = [10, 6, 3], 10
  ids, mask = _left_padded_batch(rng, lengths, total, config.vocab_size)
  full = models.forward(config, params, ids, attention_mask=mask)["logits"]
  prompt = 4  # Prefill 4 (mostly padding for short rows), then one token at a time.
  cache = models.init_cache(config, len(lengths), total + 3, unrolled=unrolled)
  if unrolled:
    params = models.unstack_layers(params)
  step = jax.jit(lambda ids, mask, cache: models.forward(
      config, params, ids, attention_mask=mask, cache=cache))
  out = step(ids[:, :prompt], mask[:, :prompt], cache)
  pieces = [out["logits"]]
  for t in range(prompt, total):
    out = step(ids[:, t:t + 1], mask[:, t:t + 1], out["cache"])
    pieces.append(out["logits"])
  incremental = jnp.concatenate(pieces, axis=1)
  valid = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(incremental)[valid], np.asarray(full)[valid],
                             rtol=2e-5, atol=2e-5)
  assert int(out["cache"]["index"]) == total
  np.testing.assert_array_equal(out["cache"]["mask"][:, :total], mask)


def test_last_logits_only_and_no_logits():
  config, params = _params("tiny")
  ids = jnp.arange(12).reshape(2, 6)
  full = models.forward(config, params, ids)
  last = models.forward(config, params, ids, lm_logits="last")
  none = models.forward(config, params, ids, lm_logits="none")
  np.testing.assert_allclose(last["logits"][:, 0], full["logits"][:, -1], rtol=1e-6)
  assert "logits" not in none


@pytest.mark.parametrize("head", ["two_class", "scalar"])
def test_prm_head_scores_step_end_hidden_states(head):
  config, params = _params("tiny", prm_head=head)
  params["prm_head"]["bias"] = params["prm_head"]["bias"] + 0.3
  ids = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, 8)))
  step_positions = jnp.array([[1, 4, 7], [2, 5, -1]])
  out = models.forward(config, params, ids, step_positions=step_positions)
  hidden = np.asarray(out["hidden"], np.float64)
  kernel = np.asarray(params["prm_head"]["kernel"], np.float64)
  bias = np.asarray(params["prm_head"]["bias"], np.float64)
  for b, row in enumerate(np.asarray(step_positions)):
    for s, pos in enumerate(row):
      if pos < 0:
        continue
      head_out = hidden[b, pos] @ kernel + bias
      if head == "two_class":
        expected = np.exp(head_out[1]) / np.exp(head_out).sum()
      else:
        expected = 1 / (1 + np.exp(-head_out[0]))
      np.testing.assert_allclose(out["step_scores"][b, s], expected, rtol=1e-5)
  assert out["step_logits"].dtype == jnp.float32


def test_value_head():
  config, params = _params("tiny", value_head=True)
  ids = jnp.arange(10).reshape(2, 5)
  out = models.forward(config, params, ids)
  expected = (np.asarray(out["hidden"], np.float64) @ np.asarray(params["value_head"]["kernel"])
              )[..., 0] + np.asarray(params["value_head"]["bias"])[0]
  np.testing.assert_allclose(out["values"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_policies_do_not_change_values_or_gradients(remat):
  config, params = _params("tiny")
  remat_config = config.replace(remat=remat)
  ids = jnp.arange(16).reshape(2, 8) % 256

  def loss(config, params):
    return jnp.mean(models.forward(config, params, ids)["logits"] ** 2)

  base_value, base_grads = jax.value_and_grad(lambda p: loss(config, p))(params)
  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(remat_config, p)))(params)
  np.testing.assert_allclose(value, base_value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               grads, base_grads)


def test_bfloat16_compute_keeps_fp32_params_and_outputs():
  config, params = _params("tiny")
  bf16 = config.replace(dtype="bfloat16")
  ids = jnp.asarray(np.random.default_rng(4).integers(0, 256, (2, 12)))
  ref = models.forward(config, params, ids, step_positions=jnp.array([[3, 11]] * 2))
  out = models.forward(bf16, params, ids, step_positions=jnp.array([[3, 11]] * 2))
  assert out["logits"].dtype == jnp.float32 and out["step_scores"].dtype == jnp.float32
  assert out["hidden"].dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  np.testing.assert_allclose(out["logits"], ref["logits"], atol=0.05)
  np.testing.assert_allclose(out["step_scores"], ref["step_scores"], atol=0.02)


def test_over_long_sequence_is_rejected_with_a_clear_error():
  config, params = _params("tiny", max_seq_len=8)
  with pytest.raises(ValueError, match="exceeds ModelConfig.max_seq_len=8"):
    models.forward(config, params, jnp.zeros((1, 9), jnp.int32))
  with pytest.raises(ValueError, match="exceeds ModelConfig.max_seq_len"):
    models.init_cache(config, 1, 9)


@pytest.mark.parametrize("field,value,message", [
    ("num_kv_heads", 3, "num_heads=4 is not divisible by ModelConfig.num_kv_heads=3"),
    ("head_dim", 15, "head_dim=15 must be even"),
    ("remat", "sometimes", "remat='sometimes'"),
    ("prm_head", "three_class", "prm_head='three_class'"),
    ("dtype", "float64", "dtype='float64'"),
    ("hidden_size", 0, "hidden_size must be a positive int"),
])
def test_wrong_model_config_names_the_field(field, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    models.get_model_config("tiny", **{field: value})


def test_unknown_model_name_and_field():
  with pytest.raises(ValueError, match="unknown model name 'gpt5'.*registered"):
    models.get_model_config("gpt5")
  with pytest.raises(ValueError, match="no field.*'n_layer'"):
    models.get_model_config("tiny", n_layer=3)


@pytest.mark.parametrize("name", sorted(models.MODEL_CONFIGS))
def test_registry_param_counts_match_the_abstract_params(name):
  config = models.get_model_config(name)
  shapes = models.abstract_params(config)
  head = config.hidden_size * config.num_prm_logits + config.num_prm_logits
  assert sum(x.size for x in jax.tree.leaves(shapes)) == config.num_params() + head


def test_published_parameter_counts():
  # Exact parameter counts of the published checkpoints (embeddings included).
  expected = {"smollm2_135m": 134_515_008, "qwen2_5_0_5b": 494_032_768,
              "qwen2_5_1_5b": 1_543_714_304, "qwen2_5_7b": 7_615_616_512,
              "llama3_8b": 8_030_261_248}
  for name, count in expected.items():
    assert models.get_model_config(name).num_params() == count


@pytest.mark.parametrize("dtype,out_dtype", [(jnp.float32, None), (jnp.bfloat16, None),
                                             (jnp.bfloat16, jnp.float32)])
def test_project_differentiates_like_the_plain_product(dtype, out_dtype):
  """`project`'s custom weight gradient (x^T @ dy) == autodiff of the einsum."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 8)), dtype)
  w = jnp.asarray(rng.normal(size=(8, 6)), dtype)
  probe = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
  plain = lambda x, w: jnp.einsum("btk,km->btm", x, w, preferred_element_type=out_dtype)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * probe)
  expected = jax.grad(loss(plain), argnums=(0, 1))(x, w)
  got = jax.grad(loss(transformer.project), argnums=(0, 1))(x, w)
  tolerance = 1e-6 if dtype == jnp.float32 else 2e-2
  for g, e in zip(got, expected):
    assert g.dtype == e.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32),
                               rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("query_block", [4, 128])
def test_causal_attention_matches_autodiff_of_plain_softmax_attention(dtype, query_block,
                                                                       monkeypatch):
  """Blocked queries + custom VJP == one softmax over all keys, values and gradients
  (left-padded rows, GQA; padding query rows are never read, so they are not compared)."""
  monkeypatch.setattr(transformer, "QUERY_BLOCK", query_block)
  rng = np.random.default_rng(0)
  b, t, h, kv, dh = 3, 11, 6, 2, 8
  q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, dh)), dtype) for n in (h, kv, kv))
  real = np.zeros((b, t), bool)
  for row, length in enumerate([11, 7, 1]):
    real[row, t - length:] = True
  mask = jnp.asarray(real[:, None, :] & np.tril(np.ones((t, t), bool))[None])
  probe = jnp.asarray(rng.normal(size=(b, t, h, dh)) * real[:, :, None, None], jnp.float32)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * probe)
  # `attend` takes the cache layout: keys and values [B, K, S, Dh].
  plain = lambda q, k, v: transformer.attend(
      q, [(jnp.einsum("bskd->bksd", k), jnp.einsum("bskd->bksd", v), mask)])
  blocked = lambda q, k, v: transformer.causal_attention(q, k, v, mask)
  tolerance = 1e-5 if dtype == jnp.float32 else 3e-2
  rows = real[:, :, None, None]
  np.testing.assert_allclose(np.asarray(blocked(q, k, v), np.float32) * rows,
                             np.asarray(plain(q, k, v), np.float32) * rows,
                             rtol=tolerance, atol=tolerance)
  expected = jax.grad(loss(plain), argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(loss(blocked), argnums=(0, 1, 2))(q, k, v)
  for g, e in zip(got, expected):
    assert g.dtype == e.dtype == dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32),
                               rtol=tolerance, atol=tolerance)
