"""Chat templates come from the tokenizer's files and render with jinja2 like transformers."""

import json

import pytest
import transformers

from prm_jax.data.chat import apply_chat_template
from prm_jax.data.tokenizer import load_tokenizer
from tests.gguf_reference import train_byte_level_bpe

TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
            "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
            "<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [{"role": "user", "content": " Hi! "}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "2+2?"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tokenizer")
  train_byte_level_bpe(300).save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "chat_template": TEMPLATE}))
  return folder


def test_template_from_tokenizer_config_renders_like_transformers(folder):
  tokenizer = load_tokenizer(folder)
  reference = transformers.AutoTokenizer.from_pretrained(folder)
  for add_generation_prompt in (True, False):
    text = apply_chat_template(tokenizer, MESSAGES, add_generation_prompt=add_generation_prompt)
    assert text == reference.apply_chat_template(MESSAGES, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
    assert text.startswith("<|endoftext|><|im_start|>user\nHi!<|im_end|>\n")
    assert tokenizer.encode(text)[:2] == [tokenizer.bos_id, tokenizer.tokenizer.token_to_id(
        "<|im_start|>")]


def test_chat_template_jinja_file_wins_and_template_errors_surface(folder, tmp_path):
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (tmp_path / name).write_bytes((folder / name).read_bytes())
  (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
  assert apply_chat_template(load_tokenizer(tmp_path), MESSAGES) == " Hi! !"
  with pytest.raises(Exception, match="unknown role system"):
    apply_chat_template(load_tokenizer(folder), [{"role": "system", "content": "x"}])


def test_tokenizer_without_template_is_named(folder, tmp_path):
  (tmp_path / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
  with pytest.raises(ValueError, match="the tokenizer has no chat template"):
    apply_chat_template(load_tokenizer(tmp_path), MESSAGES)
