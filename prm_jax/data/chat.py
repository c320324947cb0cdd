"""Chat templates: a conversation rendered the way an instruct model was trained to read it.

The template is the tokenizer's own (`HFTokenizer.chat_template`: `chat_template.jinja`,
`tokenizer_config.json`'s `chat_template`, or a GGUF file's `tokenizer.chat_template`),
rendered with jinja2 in a sandbox with the options and helpers transformers'
`apply_chat_template` gives it (`trim_blocks`, `lstrip_blocks`, loop controls,
`raise_exception`, `tojson`, `strftime_now`), so no model's format is written here.

    text = apply_chat_template(tokenizer, [{"role": "user", "content": "What is 2+2?"}])
    ids = tokenizer.encode(text)   # special tokens in the text (<|im_start|>) stay whole
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
  return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


def apply_chat_template(tokenizer, messages: Sequence[Mapping[str, str]], *,
                        add_generation_prompt: bool = True, **variables) -> str:
  """The text of `messages` (`[{"role", "content"}, ...]`) in `tokenizer`'s chat template.

  `add_generation_prompt` appends the header of the assistant's turn (what a model
  continues); `variables` reach the template as well (e.g. `tools`). The template sees the
  tokenizer's `bos_token`, `eos_token` and `pad_token` strings, as in transformers.
  """
  template = getattr(tokenizer, "chat_template", None)
  if not template:
    raise ValueError("the tokenizer has no chat template (tokenizer_config.json "
                     "`chat_template`, chat_template.jinja or GGUF tokenizer.chat_template)")
  specials = {f"{name}_token": tokenizer.tokenizer.id_to_token(token_id)
              for name in ("bos", "eos", "pad")
              if (token_id := getattr(tokenizer, f"{name}_id")) is not None}
  return _compile(template).render(messages=list(messages),
                                   add_generation_prompt=add_generation_prompt,
                                   **specials, **variables)
