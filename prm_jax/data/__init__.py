"""Data: the trajectory schema, JSONL formats, and the GSM8K calculator verifier."""

from prm_jax.data.formats import FORMATS, read, write
from prm_jax.data.jsonl import DataFormatError, ReadResult
from prm_jax.data.schema import Trajectory

__all__ = ["DataFormatError", "FORMATS", "ReadResult", "Trajectory", "read", "write"]
