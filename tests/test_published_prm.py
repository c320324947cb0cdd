"""Published PRM formats: random checkpoints written by torch implementations of each
architecture give the same step scores in prm_jax, read the way each model's authors read them
(the tag-id masks, the `-3` position, the last token of a right-padded batch)."""

import json

import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file
from safetensors.torch import save_file

from prm_jax.data import formats
from prm_jax.data.schema import Trajectory
from prm_jax.evaluate.prm_scores import StepScorer
from prm_jax.models import hf, published
from prm_jax.pipelines import processbench
from tests.gguf_reference import train_byte_level_bpe
from tests.test_processbench import _ascii_subsets, _folder_config

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
            "{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TRAJECTORIES = [
    Trajectory(problem="What is 3 + 4?", steps=["3 + 4 = 7", "The answer is 7"]),
    Trajectory(problem="Compute 7 * 6.", steps=["7 * 6 = 42"]),
    Trajectory(problem="The quick brown fox: 12 + 30?",
               steps=["12 + 30 = 42", "so 42 times", "The answer is 42"]),
]
SIZES = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
             tie_word_embeddings=False, initializer_range=0.08, attn_implementation="eager")


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory):
  """`tokenizer.json` + `tokenizer_config.json` (BOS, chat template); `<extra_0>`, `ки` and
  " -" are single tokens, as in the real vocabularies (Math-Shepherd's labels are the two
  tokens of "+ -")."""
  folder = tmp_path_factory.mktemp("tokenizer")
  train_byte_level_bpe(300, ["<extra_0>", "ки", " -"]).save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "chat_template": TEMPLATE}))
  return folder


def _checkpoint(folder, tokenizer_files, tensors: dict, hf_config: dict):
  folder.mkdir(parents=True, exist_ok=True)
  save_file({name: value.detach().contiguous() for name, value in tensors.items()},
            str(folder / hf.SINGLE_FILE), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(hf_config))
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (folder / name).write_bytes((tokenizer_files / name).read_bytes())
  return folder


def _perturbed(model: torch.nn.Module, seed: int):
  """Norm scales and biases moved off their ones / zeros so that parity exercises them."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.named_parameters():
      if name.endswith("norm.weight") or name.endswith(".bias"):
        tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
  return model.eval()


def _scores(prm, trajectories=TRAJECTORIES):
  """prm_jax's scores: right-padded batches of 4 rows with room for 4 steps."""
  scorer = StepScorer(prm.config, prm.params, prm.tokenizer, encode=prm.encode,
                      max_length=192, max_steps=4, batch_size=4)
  return scorer(trajectories)


class TorchQwen2PRM(torch.nn.Module):
  """`Qwen2ForProcessRewardModel` as published: Qwen2 + `score` = Linear -> ReLU -> Linear(2)."""

  def __init__(self, config):
    super().__init__()
    self.model = transformers.Qwen2Model(config)
    width = config.hidden_size
    self.score = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                     torch.nn.Linear(width, 2))

  def forward(self, input_ids):
    return self.score(self.model(input_ids=input_ids).last_hidden_state)


@pytest.fixture(scope="module")
def qwen_prm(tokenizer_files, tmp_path_factory):
  reference_tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_files)
  config = transformers.Qwen2Config(vocab_size=len(reference_tokenizer), **SIZES)
  torch.manual_seed(0)
  model = _perturbed(TorchQwen2PRM(config), seed=1)
  hf_config = dict(config.to_dict(), architectures=["Qwen2ForProcessRewardModel"])
  folder = _checkpoint(tmp_path_factory.mktemp("qwen_prm"), tokenizer_files,
                       model.state_dict(), hf_config)
  return model, reference_tokenizer, folder


@pytest.mark.parametrize("name", ["qwen-math-prm", "reasonflux-prm"])
def test_qwen2_process_reward_model_scores_match_torch(qwen_prm, name):
  model, tokenizer, folder = qwen_prm
  prm = published.load(name, folder)
  assert prm.config.prm_head_hidden == prm.config.hidden_size
  ours = _scores(prm)
  tag = tokenizer.convert_tokens_to_ids("<extra_0>")
  for trajectory, score in zip(TRAJECTORIES, ours):
    # The published usage: the chat text, then softmax(logits)[:, 1] where ids == <extra_0>.
    system = ([{"role": "system", "content": published.QWEN_MATH_SYSTEM}]
              if name == "qwen-math-prm" else [])
    messages = system + [{"role": "user", "content": trajectory.problem},
                         {"role": "assistant",
                          "content": "<extra_0>".join(trajectory.steps) + "<extra_0>"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
      probabilities = model(ids).softmax(-1)[0]
    reference = probabilities[ids[0] == tag][:, 1].numpy()
    assert len(reference) == len(trajectory.steps)
    np.testing.assert_allclose(score, reference, rtol=1e-4, atol=1e-5)


def test_qwen2_process_reward_model_saves_in_its_own_layout_and_reloads_bitwise(qwen_prm,
                                                                                tmp_path):
  model, _, folder = qwen_prm
  config, params = hf.load_pretrained(folder)
  hf.save_pretrained(config, params, tmp_path / "out", head="prm")
  written = load_file(tmp_path / "out" / hf.SINGLE_FILE)
  expected = {name: value.numpy() for name, value in model.state_dict().items()}
  assert set(written) == set(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(written[name], value, err_msg=name)
  saved = json.loads((tmp_path / "out" / "config.json").read_text())
  assert saved["architectures"] == ["Qwen2ForProcessRewardModel"]
  again_config, again = hf.load_pretrained(tmp_path / "out")
  assert again_config == config
  again = traverse_util.flatten_dict(again)
  for path, leaf in traverse_util.flatten_dict(params).items():
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(again[path]), err_msg=str(path))


def test_a_two_layer_head_is_written_only_as_qwen2_and_nothing_is_written_otherwise(qwen_prm,
                                                                                    tmp_path):
  _, _, folder = qwen_prm
  config, params = hf.load_pretrained(folder)
  with pytest.raises(ValueError, match="only as Qwen2ForProcessRewardModel.*qkv_bias=False"):
    hf.save_pretrained(config.replace(qkv_bias=False), params, tmp_path / "out", head="prm")
  assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def mistral_lm(tokenizer_files, tmp_path_factory):
  reference_tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_files)
  config = transformers.MistralConfig(vocab_size=len(reference_tokenizer), sliding_window=None,
                                      head_dim=12, **SIZES)
  torch.manual_seed(2)
  model = _perturbed(transformers.MistralForCausalLM(config), seed=3)
  folder = tmp_path_factory.mktemp("mistral")
  model.save_pretrained(folder)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (folder / name).write_bytes((tokenizer_files / name).read_bytes())
  return model, reference_tokenizer, folder


def _logits(model, ids):
  with torch.no_grad():
    return model(input_ids=torch.tensor([ids])).logits[0]


def test_math_shepherd_token_logit_scores_match_torch(mistral_lm):
  model, tokenizer, folder = mistral_lm
  prm = published.load("math-shepherd", folder)
  ours = _scores(prm)
  # Math-Shepherd's usage: BOS + f"{question} {output}", steps ending in " ки", candidate
  # tokens = encode("+ -") and softmax(logits[:, candidates])[:, 0] where ids == step tag.
  candidates = tokenizer.encode("+ -", add_special_tokens=False)
  tag = tokenizer.encode("ки", add_special_tokens=False)[-1]
  for trajectory, score in zip(TRAJECTORIES, ours):
    output = "\n".join(f"{step} ки" for step in trajectory.steps)
    ids = [tokenizer.bos_token_id] + tokenizer.encode(f"{trajectory.problem} {output}",
                                                      add_special_tokens=False)
    probabilities = _logits(model, ids)[:, candidates].softmax(-1)[:, 0]
    reference = probabilities[torch.tensor(ids) == tag].numpy()
    np.testing.assert_allclose(score, reference, rtol=1e-4, atol=1e-5)


def test_rlhflow_chat_turn_scores_match_torch(mistral_lm):
  model, tokenizer, folder = mistral_lm
  prm = published.load("rlhflow", folder)
  ours = _scores(prm)
  plus, minus = (tokenizer.encode(text, add_special_tokens=False)[-1] for text in "+-")
  for trajectory, score in zip(TRAJECTORIES, ours):
    # RLHFlow's usage: the conversation up to step k, each step answered "+"; the score is
    # read just before the last "+".
    conversation, reference = [], []
    for index, step in enumerate(trajectory.steps):
      conversation += [{"role": "user",
                        "content": f"{trajectory.problem} {step}" if index == 0 else step},
                       {"role": "assistant", "content": "+"}]
      ids = tokenizer.apply_chat_template(conversation, tokenize=True)
      ids = list(ids if isinstance(ids, list) else ids["input_ids"])
      before_plus = len(ids) - 1 - ids[::-1].index(plus) - 1
      logits = _logits(model, ids)[before_plus, [plus, minus]]
      reference.append(float(logits.softmax(-1)[0]))
    np.testing.assert_allclose(score, reference, rtol=1e-4, atol=1e-5)


def test_a_sliding_window_narrower_than_the_sequence_is_refused(mistral_lm, tmp_path):
  _, _, folder = mistral_lm
  hf_config = json.loads((folder / "config.json").read_text())
  for name in (hf.SINGLE_FILE, "tokenizer.json", "tokenizer_config.json"):
    (tmp_path / name).write_bytes((folder / name).read_bytes())
  (tmp_path / "config.json").write_text(json.dumps(dict(hf_config, sliding_window=64)))
  with pytest.raises(hf.CheckpointError, match="sliding_window=64 is smaller than "
                                               "max_seq_len=256.*max_seq_len=64"):
    published.load("math-shepherd", tmp_path)
  assert published.load("math-shepherd", tmp_path, max_seq_len=64).config.max_seq_len == 64


def test_reasonflux_1_5b_reward_head_matches_torch_on_a_right_padded_batch(tokenizer_files,
                                                                          tmp_path):
  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_files)
  tokenizer.pad_token = "<|endoftext|>"
  config = transformers.Qwen2Config(vocab_size=len(tokenizer), **SIZES)
  torch.manual_seed(4)
  model = _perturbed(transformers.Qwen2ForCausalLM(config), seed=5)
  head = torch.nn.Linear(config.hidden_size, 1)
  model.save_pretrained(tmp_path)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (tmp_path / name).write_bytes((tokenizer_files / name).read_bytes())
  save_file({k: v.contiguous() for k, v in head.state_dict().items()},
            str(tmp_path / "reward_head.safetensors"))
  prm = published.load("reasonflux-1.5b", tmp_path)
  assert prm.config.prm_head == "scalar"
  ours = _scores(prm)
  # ReasonFlux's RewardModel: problem + completion, right-padded, last hidden state of the
  # base model at attention_mask.sum() - 1, sigmoid(reward_head(.)).
  texts = [t.problem + "\n\n".join(t.steps) for t in TRAJECTORIES]
  encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
  with torch.no_grad():
    hidden = model.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                         output_hidden_states=True).hidden_states[-1]
    last = encoded["attention_mask"].sum(1) - 1
    reference = torch.sigmoid(head(hidden[torch.arange(len(texts)), last])[:, 0]).numpy()
  assert [len(score) for score in ours] == [1, 1, 1]
  np.testing.assert_allclose(np.concatenate(ours), reference, rtol=1e-4, atol=1e-5)

  save_file({"weight": head.weight.detach().contiguous()}, str(tmp_path / "bad.safetensors"))
  with pytest.raises(hf.CheckpointError, match="missing tensor reward_head.bias"):
    published.load("reasonflux-1.5b", tmp_path, reward_head=tmp_path / "bad.safetensors")
  with pytest.raises(hf.CheckpointError, match="nothing.safetensors not found"):
    published.load("reasonflux-1.5b", tmp_path, reward_head=tmp_path / "nothing.safetensors")


def test_a_format_refuses_a_checkpoint_of_another_architecture(mistral_lm):
  with pytest.raises(hf.CheckpointError, match="architecture 'MistralForCausalLM'; the "
                                               "qwen-math-prm format reads"):
    published.load("qwen-math-prm", mistral_lm[2])
  with pytest.raises(ValueError, match="unknown PRM format 'shepherd'"):
    published.load("shepherd", mistral_lm[2])


class _PairTokenizer:
  """Characters as ids, except that "ab" is one token: a reading point between a and b
  falls inside a token."""

  bos_id = eos_id = pad_id = None
  chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

  def encode(self, text):
    ids, index = [], 0
    while index < len(text):
      if text.startswith("ab", index):
        ids.append(1000)
        index += 2
      else:
        ids.append(ord(text[index]))
        index += 1
    return ids


def test_a_score_read_inside_a_token_is_refused():
  fmt = published.PRMFormat("pairs", "chat_tag", "checkpoint", (), tag="a")
  encoded = published.encode(fmt, _PairTokenizer(), "q", ["x", "y"])
  assert encoded["step_ends"] == [2, 4] and encoded["input_ids"] == [113, 120, 97, 121, 97]
  with pytest.raises(ValueError, match="score 1 would be read inside a token"):
    published.encode(fmt, _PairTokenizer(), "q", ["x", "by"])


def test_processbench_reads_a_published_prm_in_its_own_layout(qwen_prm, tmp_path):
  _, _, folder = qwen_prm
  data = _ascii_subsets(tmp_path / "data")
  config = _folder_config(data, init="hf", path=str(folder), format="qwen-math-prm",
                          max_length=192)
  processbench.run(config, str(tmp_path / "run"))
  saved = json.loads((tmp_path / "run" / "scores.json").read_text())["groups"]
  prm = published.load("qwen-math-prm", folder)
  for name in ("gsm8k", "math"):
    samples = formats.read(str(data / f"{name}.json"), "processbench").examples
    for ours, direct in zip(saved[name]["scores"], _scores(prm, samples)):
      np.testing.assert_allclose(ours, direct, rtol=1e-5)
  for prm_fields, message in [
      (dict(format="qwen-math-prm"), "reads a Hugging Face folder: set prm.init='hf'"),
      (dict(init="hf", path=str(folder), format="reasonflux-1.5b"), "scores whole solutions"),
      (dict(init="hf", path=str(folder), format="qwen"), "unknown PRM format 'qwen'")]:
    with pytest.raises(ValueError, match=message):
      processbench.run(_folder_config(data, **prm_fields), str(tmp_path / "bad"))
