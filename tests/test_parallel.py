"""Sharding: 1 device == 8 devices (data=2, fsdp=2, tensor=2); the rule table is obeyed."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from prm_jax import models, parallel, train
from prm_jax.objectives.prm import make_prm_loss


def _batch(config, rng, batch=8, length=16, steps=3):
  ids = rng.integers(0, config.vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), bool)
  mask[::3, :5] = False  # Some left-padded rows.
  step_positions = np.sort(rng.choice(np.arange(5, length), (batch, steps)), axis=1)
  return {"input_ids": ids, "attention_mask": mask, "step_positions": step_positions.astype(np.int32),
          "step_labels": rng.random((batch, steps)).astype(np.float32),
          "step_mask": rng.random((batch, steps)) < 0.8}


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh(data=2, fsdp=2, tensor=2)


@pytest.mark.parametrize("name", ["tiny", "tiny_qwen2"])
def test_sharded_forward_equals_single_device(name, mesh):
  config = models.get_model_config(name)
  params = models.init_params(config, jax.random.key(0))
  batch = _batch(config, np.random.default_rng(0))
  single = jax.jit(lambda p, b: models.forward(
      config, p, b["input_ids"], attention_mask=b["attention_mask"],
      step_positions=b["step_positions"]), device=jax.devices()[0])(params, batch)

  shardings = parallel.param_shardings(config, mesh)
  fwd = parallel.sharded_jit(
      lambda p, b: models.forward(config, p, b["input_ids"], attention_mask=b["attention_mask"],
                                  step_positions=b["step_positions"]),
      mesh, in_shardings=(shardings, parallel.batch_shardings(batch, mesh)), out_shardings=None)
  sharded = fwd(jax.device_put(params, shardings), parallel.make_global_batch(batch, mesh))
  for key in ("logits", "hidden", "step_scores"):
    np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, atol=1e-5)
  assert sharded["logits"].sharding.spec == P(("data", "fsdp"), None, "tensor")


def test_params_are_sharded_as_the_rule_table_says(mesh):
  config = models.get_model_config("tiny")
  params = parallel.init_params_sharded(config, jax.random.key(0), mesh)
  expected = {
      ("embedding",): P("tensor", "fsdp"),
      ("lm_head",): P("fsdp", "tensor"),
      ("layers", "attn", "q_kernel"): P(None, "fsdp", "tensor", None),
      ("layers", "attn", "k_kernel"): P(None, "fsdp", "tensor", None),
      ("layers", "attn", "o_kernel"): P(None, "tensor", None, "fsdp"),
      ("layers", "mlp", "gate", "kernel"): P(None, "fsdp", "tensor"),
      ("layers", "mlp", "down", "kernel"): P(None, "tensor", "fsdp"),
      ("layers", "attn_norm", "scale"): P(None, None),
      ("prm_head", "kernel"): P("fsdp", None),
  }
  for path, spec in expected.items():
    leaf = params
    for key in path:
      leaf = leaf[key]
    assert leaf.sharding.spec == spec, path
    # Really split: each device holds 1/(product of sharded mesh axes) of the array.
    parts = np.prod([mesh.shape[a] for a in jax.tree.leaves(tuple(spec))] or [1])
    assert leaf.addressable_shards[0].data.size * parts == leaf.size, path
  # Same values as an unsharded init with the same key (to the ulp: fusion differs).
  reference = models.init_params(config, jax.random.key(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
               params, reference)


def test_indivisible_dimension_is_replicated_not_an_error():
  mesh = parallel.make_mesh(data=1, fsdp=2, tensor=4)
  config = models.get_model_config("tiny")  # 2 kv heads: cannot split 4 ways.
  shardings = parallel.param_shardings(config, mesh)
  assert shardings["layers"]["attn"]["k_kernel"].spec == P(None, "fsdp", None, None)
  assert shardings["layers"]["attn"]["q_kernel"].spec == P(None, "fsdp", "tensor", None)


def test_sharded_train_step_matches_single_device(mesh):
  config = models.get_model_config("tiny")
  tx = train.make_optimizer(learning_rate=1e-3, total_steps=10, warmup_steps=2)
  step = train.make_train_step(make_prm_loss(config), tx)
  batch = _batch(config, np.random.default_rng(1))

  state = train.init_state(models.init_params(config, jax.random.key(0)), tx,
                           jax.random.PRNGKey(1))
  single_state, single_metrics = jax.jit(step)(state, batch)

  shardings = train.state_shardings(config, tx, mesh)
  sharded_step = train.jit_train_step(step, shardings, batch, mesh)
  sharded_state = train.init_state_sharded(config, tx, jax.random.PRNGKey(0), mesh)
  sharded_state = sharded_state.replace(params=jax.device_put(state.params, shardings.params),
                                        rng=state.rng)
  sharded_state, metrics = sharded_step(sharded_state, parallel.make_global_batch(batch, mesh))
  np.testing.assert_allclose(metrics["loss"], single_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], single_metrics["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               sharded_state.params, single_state.params)
  # Adam moments live where their parameter lives.
  mu = sharded_state.opt_state[1][0].mu
  assert (mu["layers"]["mlp"]["up"]["kernel"].sharding.spec
          == sharded_state.params["layers"]["mlp"]["up"]["kernel"].sharding.spec)


def test_gradient_accumulation_equals_one_big_batch():
  config = models.get_model_config("tiny")
  tx = optax.sgd(1.0)  # Params move by the gradient itself (Adam's first step is ~sign(g)).
  batch = _batch(config, np.random.default_rng(2))
  batch["step_mask"][:] = True  # Equal step counts per micro-batch: the means agree exactly.
  state = train.init_state(models.init_params(config, jax.random.key(0)), tx,
                           jax.random.PRNGKey(1))
  loss_fn = make_prm_loss(config)
  one, m1 = jax.jit(train.make_train_step(loss_fn, tx))(state, batch)
  four, m4 = jax.jit(train.make_train_step(loss_fn, tx, grad_accum_steps=4))(state, batch)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               four.params, one.params)


def test_nonfinite_loss_leaves_state_unchanged():
  config = models.get_model_config("tiny")
  tx = train.make_optimizer(learning_rate=1e-3, total_steps=10)
  batch = _batch(config, np.random.default_rng(3))
  batch["step_labels"][0, 0] = np.nan
  batch["step_mask"][0, 0] = True
  state = train.init_state(models.init_params(config, jax.random.key(0)), tx,
                           jax.random.PRNGKey(1))
  new_state, metrics = jax.jit(train.make_train_step(make_prm_loss(config), tx))(state, batch)
  assert int(metrics["nonfinite"]) == 1 and int(new_state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)


@pytest.mark.parametrize("axes,message", [
    (dict(data=3, fsdp=1, tensor=1), r"needs 3 devices but 8 are available \(check mesh.data\)"),
    (dict(data=-1, fsdp=3, tensor=1), r"8 devices are not divisible by 3"),
    (dict(data=-1, fsdp=-1, tensor=2), r"only one mesh axis may be -1"),
    (dict(data=2, fsdp=0, tensor=4), r"mesh.fsdp=0 must be a positive int or -1"),
])
def test_bad_mesh_names_the_field(axes, message):
  with pytest.raises(ValueError, match=message):
    parallel.make_mesh(**axes)


def test_fill_axis_and_unknown_logical_name(mesh):
  assert dict(parallel.make_mesh(data=-1, tensor=2).shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  with pytest.raises(ValueError, match="logical axis 'embd' has no entry in the rule table"):
    parallel.logical_to_sharding(P("batch", "embd"), mesh)


def test_global_batch_must_divide_batch_parallelism(mesh):
  with pytest.raises(ValueError, match="global batch size 6 is not divisible by the 4-way"):
    parallel.make_global_batch({"x": np.zeros((6, 2))}, mesh)
