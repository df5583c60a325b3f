"""The short form of the fuzz battery, run with every test run (``make test``, CI).

Two checks per harness:

- **seeds replay**: every checked-in corpus file (valid inputs, and every input that once
  crashed a harness) goes through ``fuzz_one`` in this process, without atheris. A seed that
  raises is a regression.
- **short fuzz pass**: the harness runs under libFuzzer for a few seconds over its corpus
  (``runner.run``), in its own process, instrumented. Any crash, hang or memory blow-up fails
  the test with libFuzzer's report. Without atheris this skips on a laptop and fails in CI.

The long form is ``make fuzz`` (``python -m tests.fuzz all --seconds N``).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.fuzz.runner import CORPUS, HARNESSES, report, run

SHORT_SECONDS = 3  # 16 harnesses x (3 s + start-up) stays near a minute and a half


@pytest.mark.parametrize("harness", list(HARNESSES))
def test_seed_corpus_replays_cleanly(harness: str) -> None:
    module = importlib.import_module(f"tests.fuzz.harnesses.{harness}")
    seeds = sorted((CORPUS / harness).iterdir())
    assert seeds, f"corpus/{harness} has no seeds"
    for seed in seeds:
        try:
            module.fuzz_one(seed.read_bytes())
        except Exception as exc:
            exc.add_note(f"seed corpus/{harness}/{seed.name}")
            raise


@pytest.mark.slow
@pytest.mark.parametrize("harness", list(HARNESSES))
def test_short_fuzz_pass_finds_nothing(harness: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        skip_or_fail("atheris is not installed (pip install -e '.[dev]')")
    result = run(harness, SHORT_SECONDS, artifact_dir=tmp_path)
    assert not result.finding, (
        f"{harness}: {result.finding}; input(s) {result.artifacts}\n{report(result)}"
    )
    assert result.inputs > 0, result.log[-2000:]
