"""HF safetensors checkpoints: parity with transformers, round trips, sharded placement, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from prm_jax import models, parallel, sampling
from prm_jax.models import hf
from tests.hf_reference import VARIANTS, hf_greedy, hf_logits, left_padded, tiny_hf_model

LENGTHS, TOTAL = [11, 6, 1, 9], 11


def _forward(config, params, ids, mask, positions, **kwargs):
  return models.forward(config, params, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                        positions=jnp.asarray(positions), **kwargs)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
  """`(variant, transformers model, folder)`; untied variants are saved in several shards."""
  model = tiny_hf_model(request.param)
  folder = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(folder, max_shard_size="20KB" if "untied" in request.param else "5GB")
  return request.param, model, folder


def test_logits_match_transformers_on_padded_batch(checkpoint):
  variant, model, folder = checkpoint
  if "untied" in variant:
    assert (folder / hf.INDEX_FILE).exists()  # The sharded-index path is exercised.
  config, params = hf.load_pretrained(folder)
  assert config.tie_embeddings == ("tied" in variant and "untied" not in variant)
  assert config.qkv_bias == variant.startswith("qwen2")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  ids, mask, positions = left_padded(LENGTHS, TOTAL, config.vocab_size)
  ours = np.asarray(_forward(config, params, ids, mask, positions)["logits"])
  reference = hf_logits(model, ids, mask, positions)
  np.testing.assert_allclose(ours[mask], reference[mask], rtol=1e-4, atol=1e-4)


def test_greedy_continuations_match_transformers(checkpoint):
  _, model, folder = checkpoint
  config, params = hf.load_pretrained(folder)
  ids, mask, _ = left_padded(LENGTHS, TOTAL, config.vocab_size, seed=3)
  ours = sampling.generate(config, params, ids, mask, max_new_tokens=8)["tokens"]
  np.testing.assert_array_equal(ours, hf_greedy(model, ids, mask, 8))


def test_save_loads_in_transformers_with_identical_logits_and_reloads_bitwise(checkpoint,
                                                                              tmp_path):
  _, model, folder = checkpoint
  config, params = hf.load_pretrained(folder)
  hf.save_pretrained(config, params, tmp_path / "out", max_shard_bytes=40_000)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "out", attn_implementation="eager").eval()
  ids, mask, positions = left_padded(LENGTHS, TOTAL, config.vocab_size, seed=1)
  np.testing.assert_array_equal(hf_logits(reloaded, ids, mask, positions)[mask],
                                hf_logits(model, ids, mask, positions)[mask])

  config2, params2 = hf.load_pretrained(tmp_path / "out")
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)  # Heads too: same seed.


def test_prm_head_round_trips_as_token_classification(tmp_path):
  model = tiny_hf_model("qwen2_mha_untied", token_classification=True)
  model.save_pretrained(tmp_path / "prm")
  config, params = hf.load_pretrained(tmp_path / "prm")
  assert config.prm_head == "two_class"
  ids, mask, positions = left_padded(LENGTHS, TOTAL, config.vocab_size, seed=2)
  steps = np.tile(np.arange(TOTAL), (len(LENGTHS), 1))
  ours = _forward(config, params, ids, mask, positions, step_positions=jnp.asarray(steps),
                  lm_logits="none")
  reference = hf_logits(model, ids, mask, positions)
  np.testing.assert_allclose(np.asarray(ours["step_logits"])[mask],
                             (reference[..., 1] - reference[..., 0])[mask], rtol=1e-4, atol=1e-4)

  hf.save_pretrained(config, params, tmp_path / "out", head="prm")
  reloaded = transformers.AutoModelForTokenClassification.from_pretrained(
      tmp_path / "out", attn_implementation="eager").eval()
  np.testing.assert_array_equal(hf_logits(reloaded, ids, mask, positions), reference)


def test_missing_heads_are_fresh_and_seeded(tmp_path):
  model = tiny_hf_model("llama_gqa_untied", token_classification=True, num_labels=1)
  model.save_pretrained(tmp_path)
  config, params = hf.load_pretrained(tmp_path, seed=3, value_head=True)
  assert config.prm_head == "scalar" and params["prm_head"]["kernel"].shape == (48, 1)
  # A token-classification checkpoint has no LM head (untied): it is fresh, like the value head.
  _, again = hf.load_pretrained(tmp_path, seed=3, value_head=True)
  _, other = hf.load_pretrained(tmp_path, seed=4, value_head=True)
  for path in (("lm_head",), ("value_head", "kernel")):
    leaf = lambda tree: np.asarray(traverse_util.flatten_dict(tree)[path])
    np.testing.assert_array_equal(leaf(again), leaf(params))
    assert not np.array_equal(leaf(other), leaf(params))
  np.testing.assert_array_equal(params["value_head"]["bias"], 0)
  np.testing.assert_allclose(np.std(params["lm_head"]), config.init_std, rtol=0.1)


def test_trl_value_head_loads_as_value_head_or_as_scalar_prm_head(tmp_path):
  tiny_hf_model("llama_gqa_untied").save_pretrained(tmp_path)
  tensors = load_file(tmp_path / hf.SINGLE_FILE)
  rng = np.random.default_rng(0)
  weight, bias = rng.normal(size=(1, 48)).astype(np.float32), np.array([0.3], np.float32)
  save_file(dict(tensors, **{"v_head.summary.weight": weight, "v_head.summary.bias": bias}),
            tmp_path / hf.SINGLE_FILE)
  config, params = hf.load_pretrained(tmp_path)
  assert config.value_head and config.prm_head == "two_class"
  np.testing.assert_array_equal(params["value_head"]["kernel"], weight.T)
  config, params = hf.load_pretrained(tmp_path, value_head_as_prm=True)
  assert config.prm_head == "scalar" and not config.value_head
  np.testing.assert_array_equal(params["prm_head"]["kernel"], weight.T)
  np.testing.assert_array_equal(params["prm_head"]["bias"], bias)
  with pytest.raises(hf.CheckpointError, match="missing tensor v_head.summary.weight"):
    save_file(tensors, tmp_path / hf.SINGLE_FILE)
    hf.load_pretrained(tmp_path, value_head_as_prm=True)


def test_bfloat16_and_transformers4_config(tmp_path):
  model = tiny_hf_model("llama_mha_tied")
  model.save_pretrained(tmp_path)
  hf_config = json.loads((tmp_path / "config.json").read_text())
  rope = hf_config.pop("rope_parameters")  # A transformers-4 style config.
  hf_config["rope_theta"], hf_config["rope_scaling"] = rope["rope_theta"], None
  (tmp_path / "config.json").write_text(json.dumps(hf_config))
  config, params = hf.load_pretrained(tmp_path, dtype=jnp.bfloat16)
  assert config.rope_theta == 500_000.0
  assert config.param_dtype == config.dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))


def test_config_round_trip():
  for name in ("tiny", "tiny_qwen2", "smollm2_135m", "qwen2_5_7b", "llama3_8b"):
    config = models.get_model_config(name)
    for head, prm_head in (("lm", "two_class"), ("prm", "scalar")):
      config = config.replace(prm_head=prm_head)
      back, back_head = hf.config_from_hf(hf.hf_config_from(config, head))
      assert back == config and back_head == head


def test_sharded_load_places_blocks_without_reading_whole_tensors(checkpoint, monkeypatch):
  _, _, folder = checkpoint
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  reads = []
  original = hf.SafetensorsSource.read
  monkeypatch.setattr(hf.SafetensorsSource, "read",
                      lambda self, name, index: reads.append(name) or original(self, name, index))
  config, sharded = hf.load_pretrained(folder, mesh=mesh)
  _, single = hf.load_pretrained(folder)
  expected = parallel.param_shardings(config, mesh)
  jax.tree.map(lambda x, s: assert_sharding(x, s), sharded, expected)
  jax.tree.map(np.testing.assert_array_equal, sharded, single)
  # Only the blocks each device holds were read: the q projection is split fsdp x tensor = 4
  # ways, so each of its tensors is read in 4 distinct blocks (devices sharing one read once).
  q_reads = [n for n in reads if n == "model.layers.0.self_attn.q_proj.weight"]
  assert len(q_reads) == 4 + 1  # 4 blocks for the mesh, 1 whole read for the single device.


def assert_sharding(x, sharding):
  assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.sharding, sharding)


# ----------------------------------------------------------------------------- errors


def _rewrite_config(folder, **changes):
  hf_config = json.loads((folder / "config.json").read_text())
  hf_config.update(changes)
  (folder / "config.json").write_text(json.dumps(hf_config))


@pytest.fixture
def llama_folder(tmp_path):
  tiny_hf_model("llama_mha_tied").save_pretrained(tmp_path)
  return tmp_path


@pytest.mark.parametrize("changes,message", [
    (dict(architectures=["GemmaForCausalLM"]), "unsupported architecture 'GemmaForCausalLM'"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
     "rope scaling of type 'llama3' is not implemented"),
    (dict(hidden_act="gelu"), "hidden_act='gelu' is not implemented"),
    (dict(attention_bias=True), "attention_bias=true"),
])
def test_unsupported_configs_are_named(llama_folder, changes, message):
  _rewrite_config(llama_folder, **changes)
  with pytest.raises(hf.CheckpointError, match=message):
    hf.load_pretrained(llama_folder)


def test_missing_tensor_and_shape_mismatch_are_listed(llama_folder):
  file = llama_folder / hf.SINGLE_FILE
  tensors = load_file(file)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.norm.weight"] = np.ones(7, np.float32)
  save_file(tensors, file)
  with pytest.raises(hf.CheckpointError) as error:
    hf.load_pretrained(llama_folder)
  assert "missing tensor model.layers.1.mlp.up_proj.weight (expected shape (80, 48))" in str(
      error.value)
  assert "tensor model.norm.weight has shape (7,), expected (48,)" in str(error.value)


def test_missing_files_are_named(tmp_path, llama_folder):
  with pytest.raises(hf.CheckpointError, match="config.json not found"):
    hf.load_pretrained(tmp_path / "nowhere")
  (llama_folder / hf.SINGLE_FILE).unlink()
  with pytest.raises(hf.CheckpointError, match="neither model.safetensors nor"):
    hf.load_pretrained(llama_folder)
