"""Published PRMs in: the text layout each was trained with, and its head on prm_jax's PRM head.

    prm = published.load("qwen-math-prm", "ckpt/Qwen2.5-Math-PRM-7B", mesh=mesh)
    scores = StepScorer(prm.config, prm.params, prm.tokenizer, encode=prm.encode,
                        max_length=4096, max_steps=64)(trajectories)

Every format becomes a prm_jax model whose `forward(..., step_positions=...)["step_scores"]` are
the published model's step scores, plus an `encode(trajectory)` that lays the problem and steps
out as the model was trained and says where each score is read (`step_ends`):

  format           checkpoint (examples)                 text                        score at
  qwen-math-prm    Qwen2ForProcessRewardModel            chat template, its system   each `<extra_0>`:
                   (Qwen2.5-Math-PRM-7B / 72B)           prompt, steps joined and    softmax(score(h))[1]
                                                         ended by `<extra_0>`
  reasonflux-prm   Qwen2ForProcessRewardModel            the same, no system         the same
                   (ReasonFlux-PRM-7B)                   message
  math-shepherd    a causal LM (math-shepherd-           f"{problem} {s_1} ки\\n     each ` ки`:
                   mistral-7b-prm)                       {s_2} ки..." (BOS first)    softmax(logits[[+, -]])[0]
  rlhflow          a causal LM (RLHFlow Llama-3.1-8B     chat: step t a user turn    the token before each
                   PRMs)                                 (step 1 after the problem), assistant "+":
                                                         each answered "+"           softmax(logits[[+, -]])[0]
  reasonflux-1.5b  a causal LM + `reward_head`           problem + steps joined by   the last token, one score
                   (ReasonFlux-PRM-1.5B)                 blank lines                 per solution: sigmoid

Heads. `Qwen2ForProcessRewardModel`'s `Linear(D, D) -> ReLU -> Linear(D, 2)` loads as a
two-layer PRM head (`ModelConfig.prm_head_hidden`, `hf.load_pretrained`). A token-logit PRM
needs no new weights: since softmax over `[l_good, l_bad]` at index 0 is
`sigmoid(l_good - l_bad)`, a two-class head whose columns are the LM head's `bad` and `good`
columns computes it exactly (`token_logit_head`), without the vocabulary-wide projection. A
separately stored linear head loads as a scalar PRM head from safetensors
(`hf.load_pretrained(reward_head=...)`; the one-line conversion of a torch-pickled head is in
its docstring).

Positions. The score positions are found by tokenizing the text up to each reading point: a
score is read at the last token of `text[:offset]`. This is exact when the tokenization of
that prefix is the head of the whole text's tokenization, which `encode` checks (a format
whose reading points fall inside a token raises, naming the step), rather than by matching a
tag id, so a tag inside a problem or a step cannot move a score.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Sequence

import jax.numpy as jnp

from prm_jax.data.chat import apply_chat_template
from prm_jax.data.schema import Trajectory
from prm_jax.data.tokenize import IGNORE_INDEX
from prm_jax.data.tokenizer import Tokenizer, load_tokenizer
from prm_jax.models import hf
from prm_jax.models.config import ModelConfig

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
LAYOUTS = ("chat_tag", "text_tag", "chat_turns", "last_token")
HEADS = ("checkpoint", "token_logits", "reward_head")


@dataclasses.dataclass(frozen=True)
class PRMFormat:
  """How one published PRM reads a solution.

  Attributes:
    name: the key in `FORMATS`.
    layout: "chat_tag" (the chat template; the assistant turn is the steps, each followed by
      `tag`; score at each tag), "text_tag" (`f"{problem} "` then the steps, each followed by
      `" " + tag`, joined by newlines; score at each tag), "chat_turns" (step t is a user
      turn, the first prefixed by the problem and a space, each answered by an assistant turn
      `good`; score at the token before each answer) or "last_token" (problem then the steps
      joined by `joiner`; one score at the last token).
    head: "checkpoint" (the checkpoint's own score head), "token_logits" (LM logits of the
      `good` / `bad` tokens) or "reward_head" (a linear head in a separate safetensors file).
    architectures: the `config.json` architectures the checkpoint may declare.
    tag: the step tag of the tag layouts.
    system: a system message for the chat layouts (None: no system turn).
    good, bad: the label texts of a token-logit PRM; `label_ids` says how they become ids.
    joint_labels: ids = the two tokens of `f"{good} {bad}"` (Math-Shepherd's rule), else the
      last token of each text (RLHFlow's).
    bos: prepend the tokenizer's BOS (the text of the chat layouts carries its own).
    joiner: what joins the steps of the "last_token" layout.
  """

  name: str
  layout: str
  head: str
  architectures: tuple[str, ...]
  tag: str = ""
  system: str | None = None
  good: str = "+"
  bad: str = "-"
  joint_labels: bool = False
  bos: bool = False
  joiner: str = "\n\n"

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"PRMFormat.layout={self.layout!r} is not one of {LAYOUTS}")
    if self.head not in HEADS:
      raise ValueError(f"PRMFormat.head={self.head!r} is not one of {HEADS}")


_CAUSAL_LM = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
FORMATS = {f.name: f for f in (
    PRMFormat("qwen-math-prm", "chat_tag", "checkpoint", (hf.TWO_LAYER_PRM,), tag="<extra_0>",
              system=QWEN_MATH_SYSTEM),
    PRMFormat("reasonflux-prm", "chat_tag", "checkpoint", (hf.TWO_LAYER_PRM,), tag="<extra_0>"),
    PRMFormat("math-shepherd", "text_tag", "token_logits", _CAUSAL_LM, tag="ки",
              joint_labels=True, bos=True),
    PRMFormat("rlhflow", "chat_turns", "token_logits", _CAUSAL_LM),
    PRMFormat("reasonflux-1.5b", "last_token", "reward_head", _CAUSAL_LM),
)}


def get_format(name: str) -> PRMFormat:
  if name not in FORMATS:
    raise ValueError(f"unknown PRM format {name!r}; known: {sorted(FORMATS)}")
  return FORMATS[name]


# ----------------------------------------------------------------------------- text


def render(fmt: PRMFormat, tokenizer: Tokenizer, problem: str, steps: Sequence[str]
           ) -> tuple[str, list[int]]:
  """`(text, offsets)`: the whole text, and for each score the end (in characters) of the
  prefix whose last token carries it."""
  if not steps:
    raise ValueError("a solution with no steps has nothing to score")
  if fmt.layout == "text_tag":
    text, offsets = f"{problem} ", []
    for index, step in enumerate(steps):
      text += ("\n" if index else "") + f"{step} {fmt.tag}"
      offsets.append(len(text))
    return text, offsets
  if fmt.layout == "last_token":
    text = problem + fmt.joiner.join(steps)
    return text, [len(text)]
  system = [{"role": "system", "content": fmt.system}] if fmt.system is not None else []
  if fmt.layout == "chat_tag":
    content = "".join(step + fmt.tag for step in steps)
    messages = system + [{"role": "user", "content": problem},
                         {"role": "assistant", "content": content}]
    text = apply_chat_template(tokenizer, messages, add_generation_prompt=False)
    start = text.rfind(content)
    if start < 0:
      raise ValueError(f"{fmt.name}: the chat template changed the assistant's text (it "
                       "strips or rewrites it), so the step tags cannot be located")
    offsets, end = [], start
    for step in steps:
      end += len(step) + len(fmt.tag)
      offsets.append(end)
    return text, offsets
  # chat_turns: the prompt of turn t (generation prompt included) ends where score t is read.
  messages, prompts = list(system), []
  for index, step in enumerate(steps):
    messages.append({"role": "user", "content": f"{problem} {step}" if index == 0 else step})
    prompts.append(apply_chat_template(tokenizer, messages, add_generation_prompt=True))
    messages.append({"role": "assistant", "content": fmt.good})
  text = apply_chat_template(tokenizer, messages, add_generation_prompt=False)
  for index, prompt in enumerate(prompts):
    if not text.startswith(prompt):
      raise ValueError(f"{fmt.name}: the chat template does not render turn {index + 1}'s "
                       "prompt as a prefix of the whole conversation")
  return text, [len(prompt) for prompt in prompts]


def encode(fmt: PRMFormat, tokenizer: Tokenizer, problem: str, steps: Sequence[str]
           ) -> dict[str, list[int]]:
  """`{"input_ids", "labels" (all ignored), "step_ends"}` of a solution in `fmt`'s layout
  (`prm_jax.data.batching.collate_prm` pads them)."""
  text, offsets = render(fmt, tokenizer, problem, steps)
  bos = [tokenizer.bos_id] if fmt.bos and tokenizer.bos_id is not None else []
  ids = bos + tokenizer.encode(text)
  step_ends = []
  for index, offset in enumerate(offsets):
    prefix = bos + tokenizer.encode(text[:offset])
    if ids[:len(prefix)] != prefix:
      raise ValueError(f"{fmt.name}: score {index + 1} would be read inside a token (the text "
                       f"up to {text[max(0, offset - 20):offset]!r} tokenizes differently "
                       "alone and in the whole text)")
    step_ends.append(len(prefix) - 1)
  return {"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids), "step_ends": step_ends}


def encoder(fmt: PRMFormat, tokenizer: Tokenizer) -> Callable[[Trajectory], dict]:
  """`encode` of a `Trajectory` (problem and steps), for `StepScorer(encode=...)`."""
  return lambda trajectory: encode(fmt, tokenizer, trajectory.problem, trajectory.steps)


# ----------------------------------------------------------------------------- heads


def label_ids(fmt: PRMFormat, tokenizer: Tokenizer) -> tuple[int, int]:
  """`(good_id, bad_id)` of a token-logit PRM, by the rule its authors used."""
  if fmt.joint_labels:
    ids = tokenizer.encode(f"{fmt.good} {fmt.bad}")
    if len(ids) != 2:
      raise ValueError(f"{fmt.name}: {fmt.good + ' ' + fmt.bad!r} tokenizes into {len(ids)} "
                       "tokens, expected one per label")
    return ids[0], ids[1]
  return tokenizer.encode(fmt.good)[-1], tokenizer.encode(fmt.bad)[-1]


def token_logit_head(config: ModelConfig, params: dict, good_id: int, bad_id: int
                     ) -> tuple[ModelConfig, dict]:
  """A causal LM as a PRM scoring `softmax(logits[[good_id, bad_id]])[0]` at step positions:
  a two-class PRM head made of the LM head's `bad` and `good` columns (no new weights)."""
  for name, token in (("good_id", good_id), ("bad_id", bad_id)):
    if not 0 <= token < config.vocab_size:
      raise ValueError(f"{name}={token} is outside the vocabulary [0, {config.vocab_size})")
  kernel = params["embedding"].T if config.tie_embeddings else params["lm_head"]
  head = {"kernel": jnp.stack([kernel[:, bad_id], kernel[:, good_id]], axis=1),
          "bias": jnp.zeros((2,), kernel.dtype)}
  params = {key: value for key, value in params.items() if key != "prm_hidden"}
  return config.replace(prm_head="two_class", prm_head_hidden=0), dict(params, prm_head=head)


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class PublishedPRM:
  """A loaded published PRM: the model, its tokenizer and its text layout."""

  format: PRMFormat
  config: ModelConfig
  params: dict
  tokenizer: Tokenizer

  def encode(self, trajectory: Trajectory) -> dict[str, list[int]]:
    return encode(self.format, self.tokenizer, trajectory.problem, trajectory.steps)


def load(name: str, path, *, tokenizer_path=None, reward_head=None, mesh=None,
         dtype=jnp.float32, **overrides) -> PublishedPRM:
  """Load the checkpoint folder `path` as the published PRM format `name` (see the table).

  Args:
    tokenizer_path: folder or `tokenizer.json` (default `path`).
    reward_head: the separate head file of a "reward_head" format (default
      `path/reward_head.safetensors`).
    mesh, dtype, **overrides: as `hf.load_pretrained` (e.g. `max_seq_len`).
  Raises:
    hf.CheckpointError: the checkpoint's architecture is not one the format reads.
  """
  fmt = get_format(name)
  folder = pathlib.Path(path)
  hf_config = hf._read_json(folder / "config.json")
  architecture = (hf_config.get("architectures") or ["?"])[0]
  if architecture not in fmt.architectures:
    raise hf.CheckpointError(f"{folder / 'config.json'}: architecture {architecture!r}; the "
                             f"{name} format reads {list(fmt.architectures)}")
  tokenizer = load_tokenizer(tokenizer_path or folder)
  if fmt.head == "reward_head":
    reward_head = reward_head or folder / "reward_head.safetensors"
    config, params = hf.load_pretrained(folder, dtype, mesh=mesh, reward_head=reward_head,
                                        **overrides)
  else:
    config, params = hf.load_pretrained(folder, dtype, mesh=mesh, **overrides)
  if fmt.head == "token_logits":
    config, params = token_logit_head(config, params, *label_ids(fmt, tokenizer))
  return PublishedPRM(fmt, config, params, tokenizer)
