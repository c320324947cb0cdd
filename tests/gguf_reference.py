"""Tiny GGUF files written the way llama.cpp's `convert_hf_to_gguf.py` writes them.

The tensor names, the Llama q/k row permutation and the metadata keys here are llama.cpp's,
written out independently of `prm_jax.models.gguf` (which has to undo them).
"""

import json

import numpy as np
import tokenizers
import torch
import transformers
from gguf import GGMLQuantizationType as Q, GGUFWriter, quants
from tokenizers import models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The quick brown fox jumps over the lazy dog 1234567890 times.",
          "Process reward models score every step: 3 + 4 = 7, so 7 * 6 = 42.",
          "Ünïcödé, naïve café, 日本語のテキスト, emoji 😀 and   spaces\n\nnew lines."] * 20
# Where each K-quant block keeps its fp16 scale(s): random bytes there could be inf/NaN.
K_QUANT_HALVES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def train_byte_level_bpe(vocab_size: int, extra_special_tokens=()) -> tokenizers.Tokenizer:
  """A small byte-level BPE vocabulary with merges, learned from `CORPUS`."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                special_tokens=SPECIAL_TOKENS + list(extra_special_tokens),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(CORPUS, trainer)
  return tokenizer


def tiny_hf_model(model_type: str, vocab_size: int, seed: int = 0):
  """A random Llama / Qwen2 whose input dims are multiples of 256 (the K-quant block)."""
  config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[model_type]
  config = config_class(vocab_size=vocab_size, hidden_size=256, intermediate_size=256,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=64, max_position_embeddings=128, rms_norm_eps=1e-5,
                        rope_theta=20_000.0, tie_word_embeddings=False, initializer_range=0.05,
                        attn_implementation="eager")
  torch.manual_seed(seed)
  family = {"llama": "Llama", "qwen2": "Qwen2"}[model_type]
  return getattr(transformers, family + "ForCausalLM")(config).eval()


def _llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
  """convert_hf_to_gguf.py's `LlamaModel.permute` (rotate-half -> interleaved rows)."""
  return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
          .swapaxes(1, 2).reshape(weights.shape))


def _gguf_name(hf_name: str) -> str:
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}
  if hf_name in names:
    return names[hf_name]
  _, _, layer, rest = hf_name.split(".", 3)
  rest = (rest.replace("self_attn.q_proj", "attn_q").replace("self_attn.k_proj", "attn_k")
          .replace("self_attn.v_proj", "attn_v").replace("self_attn.o_proj", "attn_output")
          .replace("mlp.gate_proj", "ffn_gate").replace("mlp.up_proj", "ffn_up")
          .replace("mlp.down_proj", "ffn_down").replace("post_attention_layernorm", "ffn_norm")
          .replace("input_layernorm", "attn_norm"))
  return f"blk.{layer}.{rest}"


def _random_k_quant(rows: int, cols: int, qtype, rng) -> np.ndarray:
  """Random but valid K-quant blocks `[rows, bytes]` (small finite fp16 scales)."""
  block_elems, block_bytes = quants.GGML_QUANT_SIZES[qtype]
  data = rng.integers(0, 256, (rows, cols // block_elems, block_bytes), dtype=np.uint8)
  for offset in K_QUANT_HALVES[qtype]:
    scale = rng.uniform(1e-3, 4e-3, data.shape[:2]).astype(np.float16)
    data[:, :, offset:offset + 2] = scale[..., None].view(np.uint8)
  return data.reshape(rows, -1)


def write_gguf(path, model, tokenizer: tokenizers.Tokenizer, qtype=Q.F32, *, pre="gpt-2",
               chat_template=None, seed=0, drop=(), metadata=None) -> None:
  """Write `model` (+ `tokenizer`) as a GGUF file; 2-D weights in `qtype`, norms in F32.

  K-quants cannot be produced by the `gguf` package, so for them the 2-D weights are random
  valid blocks (the model in the file is then not `model`, only shaped like it).
  `drop`: GGUF tensor names to leave out; `metadata`: extra / replaced key-value pairs.
  """
  config = model.config
  arch = config.model_type
  rng = np.random.default_rng(seed)
  writer = GGUFWriter(str(path), arch)
  writer.add_block_count(config.num_hidden_layers)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.hidden_size)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_attention_heads)
  writer.add_head_count_kv(config.num_key_value_heads)
  writer.add_key_length(config.head_dim)
  writer.add_value_length(config.head_dim)
  writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  writer.add_vocab_size(config.vocab_size)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
  writer.add_token_list([token for token, _ in vocab])
  writer.add_token_types([3 if token in SPECIAL_TOKENS else 1 for token, _ in vocab])
  merges = json.loads(tokenizer.to_str())["model"]["merges"]
  writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
  writer.add_bos_token_id(tokenizer.token_to_id("<|im_start|>"))
  writer.add_eos_token_id(tokenizer.token_to_id("<|im_end|>"))
  writer.add_pad_token_id(tokenizer.token_to_id("<|im_end|>"))
  writer.add_add_bos_token(False)
  if chat_template:
    writer.add_chat_template(chat_template)
  for key, value in (metadata or {}).items():
    writer.kv_data[0].pop(key, None)
    add = {str: writer.add_string, bool: writer.add_bool, int: writer.add_uint32}[type(value)]
    add(key, value)

  for hf_name, tensor in model.state_dict().items():
    name = _gguf_name(hf_name)
    if name in drop:
      continue
    weights = tensor.float().numpy()
    if arch == "llama" and ".attn_q." in name:
      weights = _llama_cpp_permute(weights, config.num_attention_heads)
    elif arch == "llama" and ".attn_k." in name:
      weights = _llama_cpp_permute(weights, config.num_key_value_heads)
    if weights.ndim == 1 or qtype == Q.F32:
      writer.add_tensor(name, weights.astype(np.float32))
    elif qtype in K_QUANT_HALVES:
      writer.add_tensor(name, _random_k_quant(*weights.shape, qtype, rng), raw_dtype=qtype)
    elif qtype == Q.F16:
      writer.add_tensor(name, weights.astype(np.float16))
    else:
      writer.add_tensor(name, quants.quantize(weights, qtype), raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
