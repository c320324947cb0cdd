"""Data: the trajectory schema, JSONL formats, tokenizers, TRL-compatible stepwise
tokenization, PRM batching, TFDS (array_record) builders, grain pipelines, and verifiable
synthetic tasks.

Heavy modules are imported on use: `prm_jax.data.tfds_builder` (tensorflow_datasets),
`prm_jax.data.pipeline` (grain, jax) and `prm_jax.data.tasks`.
"""

from prm_jax.data.batching import collate_prm, collate_sft
from prm_jax.data.formats import FORMATS, read, write
from prm_jax.data.jsonl import DataFormatError, ReadResult
from prm_jax.data.schema import Trajectory
from prm_jax.data.tokenize import IGNORE_INDEX, prompt_ids, tokenize_sft, tokenize_stepwise
from prm_jax.data.tokenizer import (CharTokenizer, HFTokenizer, Tokenizer, WordTokenizer,
                                    load_tokenizer)

__all__ = ["CharTokenizer", "DataFormatError", "FORMATS", "HFTokenizer", "IGNORE_INDEX",
           "ReadResult", "Tokenizer", "WordTokenizer", "Trajectory", "collate_prm", "collate_sft",
           "load_tokenizer", "prompt_ids", "read", "tokenize_sft", "tokenize_stepwise", "write"]
