"""GSM8K: the whole real dataset parses and round-trips; the calculator verifier finds slips.

The data folder comes from `PRM_JAX_GSM8K_DIR` (default `<repo>/../shared/data/gsm8k`).
"""

import collections
import json
import os
import pathlib

import pytest

from prm_jax.data import calculator, formats
from prm_jax.data.formats import gsm8k

GSM8K_DIR = pathlib.Path(os.environ.get(
    "PRM_JAX_GSM8K_DIR", pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" /
    "gsm8k"))
needs_gsm8k = pytest.mark.skipif(
    not (GSM8K_DIR / "test.jsonl").is_file(),
    reason=f"GSM8K not found at {GSM8K_DIR} (set PRM_JAX_GSM8K_DIR to its folder)")


@needs_gsm8k
@pytest.mark.parametrize("split,count", [("train", 7473), ("test", 1319)])
def test_every_gsm8k_line_parses_and_round_trips(split, count, tmp_path):
  path = GSM8K_DIR / f"{split}.jsonl"
  result = formats.read(path, "gsm8k")
  assert len(result.examples) == count and not result.skipped
  first = result.examples[0]
  assert first.steps[-1] == f"#### {first.answer}" and len(first.steps) >= 2
  formats.write(tmp_path / "out.jsonl", result.examples, "gsm8k")
  records = lambda p: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
  assert records(tmp_path / "out.jsonl") == records(path)


@needs_gsm8k
def test_calculator_finds_no_slip_in_reference_solutions():
  verdicts = collections.Counter()
  for split in ("train", "test"):
    for trajectory in formats.read(GSM8K_DIR / f"{split}.jsonl", "gsm8k").examples:
      verdicts.update(calculator.calculator_labels(trajectory.steps))
  print(f"reference steps by calculator label: {dict(verdicts)}")
  assert verdicts[0.0] == 0 and verdicts[1.0] > 25_000


@needs_gsm8k
def test_calculator_finds_slips_in_model_solutions():
  candidates = gsm8k.read_model_solutions(GSM8K_DIR / "example_model_solutions.jsonl").examples
  assert len(candidates) == 4 * 1319
  flagged = [t for t in candidates if 0.0 in calculator.calculator_labels(t.steps)]
  slip_steps = sum(calculator.calculator_labels(t.steps).count(0.0) for t in flagged)
  wrong = sum(not t.meta["is_correct"] for t in flagged)
  print(f"{len(flagged)} of {len(candidates)} model solutions have an arithmetic slip "
        f"({slip_steps} steps); {wrong} of them reach a wrong final answer")
  # Measured: 121 solutions, 152 steps, 111 wrong. Slips should mostly sink the answer,
  # far above the 60% base rate of wrong candidates.
  assert len(flagged) >= 100 and wrong / len(flagged) > 0.85


@pytest.mark.parametrize("step,label", [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.", 1.0),
    ("So 130000*.15 = $<<130000*.15=19500>>195,000.", 0.0),   # Miscopied result.
    ("4*(1/3) = <<4*(1/3)=8>>8 cups", 0.0),                    # Wrong calculation.
    ("200/3 = <<200/3=66.67>>66 full bags", 1.0),              # Floored to the written unit.
    ("He pays 10/3 = $<<10/3=3.33>>3.33", 1.0),                # Rounded to the written unit.
    ("<<4.20+9.45+1.35=14.999999999999998>>15 dollars", 1.0),  # Float noise is not a slip.
    ("It is <<3/4=3/4>>3/4 of the wires", 1.0),                # A fraction, not the number 3.
    ("<<12,000*2=24,000>>24,000", 1.0),
    ("X = <<X*2=4>>4", None),                                  # Not arithmetic: unchecked.
    ("no annotation here", None),
])
def test_step_labels(step, label):
  assert calculator.step_label(step) == label


def test_evaluate_is_arithmetic_only():
  assert calculator.evaluate("0.1+0.2") == calculator.evaluate("3/10")
  for text in ("__import__('os')", "x+1", "2**1000", "1/0", "(1).real", "[1]"):
    assert calculator.evaluate(text) is None


def test_model_solution_lines_are_checked(tmp_path):
  record = {"question": "Q", "ground_truth": "a\nA: 5", "m": {"is_correct": True,
                                                           "solution": "x\nA: 5"}}
  path = tmp_path / "m.jsonl"
  path.write_text(json.dumps(record) + "\n" + json.dumps({"question": "Q"}) + "\n")
  with pytest.raises(formats.DataFormatError, match=":2: missing field 'ground_truth'"):
    gsm8k.read_model_solutions(path)
  result = gsm8k.read_model_solutions(path, skip_bad=True)
  assert [t.answer for t in result.examples] == ["5"] and len(result.skipped) == 1
