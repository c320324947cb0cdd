"""Tokenizers with one small interface: `encode`, `decode`, `bos_id`, `eos_id`, `pad_id`,
`vocab_size`.

* `load_tokenizer(path)`: a Hugging Face tokenizer (`tokenizer.json`, read with the
  `tokenizers` library; no transformers at run time). Special tokens come from
  `tokenizer_config.json` / `special_tokens_map.json` next to it, as transformers reads them,
  so `bos_id is None` exactly when transformers' `bos_token_id` is None.
* `CharTokenizer`: one id per character of a small alphabet, for the synthetic tasks
  (vocab < 256, fits the `tiny` model configs).
* `WordTokenizer`: one id per word piece of a closed vocabulary built from a corpus, for
  text domains with known words (the ALFWorld agent's miniature).

`encode` never adds special tokens; callers add BOS/EOS where their format says so.
"""

from __future__ import annotations

import json
import os
import re
import string
from typing import Protocol, Sequence

import tokenizers


class Tokenizer(Protocol):
  """What prm_jax needs from a tokenizer. Ids are Python ints; `*_id` may be None."""

  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...


class HFTokenizer:
  """A `tokenizers.Tokenizer` with the special tokens (and chat template, a jinja2 string
  rendered by `prm_jax.data.chat`) of its Hugging Face config."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos_token: str | None = None,
               eos_token: str | None = None, pad_token: str | None = None,
               chat_template: str | None = None):
    self.tokenizer = tokenizer
    self.chat_template = chat_template
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    self.bos_id = self._token_id("bos_token", bos_token)
    self.eos_id = self._token_id("eos_token", eos_token)
    self.pad_id = self._token_id("pad_token", pad_token)

  def _token_id(self, name: str, token: str | None) -> int | None:
    if token is None:
      return None
    token_id = self.tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")
    return token_id

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without special tokens."""
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def _special_token(value) -> str | None:
  """A config's special-token entry: a string, `{"content": ...}` (AddedToken) or null."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def load_tokenizer(path: str | os.PathLike) -> HFTokenizer:
  """A Hugging Face tokenizer from a folder holding `tokenizer.json`, or that file itself.

  `tokenizer_config.json` (read last, so it wins, as in transformers) and
  `special_tokens_map.json` in the same folder name the BOS/EOS/PAD tokens; tokens they do
  not name are None. The chat template is `chat_template.jinja` (transformers 5) or the
  `chat_template` of `tokenizer_config.json`.
  """
  path = os.fspath(path)
  folder, file = (path, os.path.join(path, "tokenizer.json")) if os.path.isdir(path) else (
      os.path.dirname(path), path)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"no tokenizer.json at {path}")
  specials = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):
    config_path = os.path.join(folder, name)
    if os.path.isfile(config_path):
      with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
      specials.update({key: _special_token(config[key]) for key in
                       ("bos_token", "eos_token", "pad_token") if key in config})
      if config.get("chat_template"):
        specials["chat_template"] = _default_template(config["chat_template"])
  template_path = os.path.join(folder, "chat_template.jinja")
  if os.path.isfile(template_path):
    with open(template_path, encoding="utf-8") as f:
      specials["chat_template"] = f.read()
  return HFTokenizer(tokenizers.Tokenizer.from_file(file), **specials)


def _default_template(value) -> str:
  """A config's `chat_template`: one string, or named templates `[{"name", "template"}]`."""
  if isinstance(value, str):
    return value
  return {entry["name"]: entry["template"] for entry in value}["default"]


# Printable ASCII and newline: everything the synthetic tasks write.
DEFAULT_ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))


class _ClosedVocabulary:
  """Ids `pad=0, bos=1, eos=2`, then one id per unit (character or word piece) in order;
  `decode` concatenates units and drops the special ids unless asked to keep them."""

  pad_id, bos_id, eos_id = 0, 1, 2
  _SPECIALS = {0: "<pad>", 1: "<bos>", 2: "<eos>"}

  def __init__(self, units: Sequence[str], repeats_message: str):
    if len(set(units)) != len(units):
      raise ValueError(repeats_message)
    self._units = units
    self._ids = {unit: index + len(self._SPECIALS) for index, unit in enumerate(units)}
    self.vocab_size = len(self._SPECIALS) + len(units)

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    out = []
    for token in ids:
      token = int(token)
      if not 0 <= token < self.vocab_size:
        raise ValueError(f"token id {token} is outside the vocabulary [0, {self.vocab_size})")
      if token in self._SPECIALS:
        if not skip_special_tokens:
          out.append(self._SPECIALS[token])
      else:
        out.append(self._units[token - len(self._SPECIALS)])
    return "".join(out)


class CharTokenizer(_ClosedVocabulary):
  """One id per character: `pad=0, bos=1, eos=2`, then the alphabet in order.

  `encode` rejects characters outside the alphabet (silently mapping them to an unknown id
  would hide data bugs); `decode` drops the special ids unless asked to keep them.
  """

  def __init__(self, alphabet: str = DEFAULT_ALPHABET):
    super().__init__(alphabet, "the alphabet repeats a character")
    self.alphabet = alphabet

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[char] for char in text]
    except KeyError as err:
      raise ValueError(f"character {err.args[0]!r} (at {text.index(err.args[0])} of "
                       f"{text!r}) is not in the tokenizer's alphabet") from None


# A word, a digit, any other character, each with the one space before it if there is one;
# newlines and further spaces are tokens of their own.
_WORD_PIECES = re.compile(r"\n| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]| ")


class WordTokenizer(_ClosedVocabulary):
  """One id per word piece of a closed vocabulary: `pad=0, bos=1, eos=2`, then the pieces.

  A piece is a word, a digit or a punctuation mark, with the single space before it if there
  is one (so decoding is concatenation and `decode(encode(t)) == t`), or a newline or a
  space. The vocabulary is every piece of a corpus (`from_corpus`, which also adds every
  ASCII letter, the space and the newline): for a text domain whose words are known in advance (ALFWorld's grammar and
  object names) this is a small exact tokenizer. A word outside the vocabulary (a policy can
  write "goto" by emitting "go" and "to") is spelled with known pieces, longest first, so
  any text over the alphabet encodes and decodes back; a character no piece holds raises,
  naming it (like `CharTokenizer`).
  """

  def __init__(self, pieces: Sequence[str]):
    super().__init__(tuple(pieces), "the vocabulary repeats a piece")
    self.pieces = self._units

  @classmethod
  def from_corpus(cls, texts: Sequence[str]) -> "WordTokenizer":
    """The pieces of `texts`, each word also with and without its leading space and
    capitalised or not (a word seen once at a sentence start can appear mid-sentence)."""
    pieces = {" ", "\n", *(p for c in string.ascii_letters for p in (c, " " + c))}
    for text in texts:
      for piece in _WORD_PIECES.findall(text):
        word = piece.lstrip(" ")
        variants = {word, word.lower(), word.capitalize()} if word.isalpha() else {word}
        pieces.update(v for variant in variants for v in (variant, " " + variant))
    return cls(sorted(pieces))

  def encode(self, text: str) -> list[int]:
    ids = []
    for match in _WORD_PIECES.finditer(text):
      piece = match.group()
      if piece in self._ids:
        ids.append(self._ids[piece])
      else:
        ids += self._spell(piece, match.start(), text)
    return ids

  def _spell(self, piece: str, at: int, text: str) -> list[int]:
    """An out-of-vocabulary piece as the longest known pieces, left to right."""
    ids, start = [], 0
    while start < len(piece):
      for end in range(len(piece), start, -1):
        if piece[start:end] in self._ids:
          ids.append(self._ids[piece[start:end]])
          start = end
          break
      else:
        raise ValueError(f"character {piece[start]!r} (at {at + start} of {text[:80]!r}) is not "
                         "in the tokenizer's vocabulary")
    return ids
