"""Precision and recall of every detector label on the generated corpus, held to a threshold.

The thresholds are the product's promise (a detector that cries wolf gets switched off, one that
misses leaks); when this fails, tune the detector, not the numbers.
"""

from __future__ import annotations

import pytest

from broker.classify.detectors import default_detector_set
from broker.classify.metrics import evaluate, format_table

from .conftest import METRICS_TABLE
from .corpus import POSITIVE_MAKERS, build_corpus

MIN_PRECISION = 0.98
MIN_RECALL = 0.95


@pytest.fixture(scope="module")
def evaluation_table(request: pytest.FixtureRequest) -> tuple[dict[str, tuple[float, float]], str]:
    evaluation = evaluate(build_corpus(), default_detector_set())
    table = format_table(evaluation)
    request.config.stash[METRICS_TABLE] = table
    print("\n" + table)
    scores = {label: (score.precision, score.recall) for label, score in evaluation.scores.items()}
    return scores, table


def test_every_label_is_measured(
    evaluation_table: tuple[dict[str, tuple[float, float]], str],
) -> None:
    scores, _ = evaluation_table
    assert set(POSITIVE_MAKERS) <= set(scores)


@pytest.mark.parametrize("label", sorted(POSITIVE_MAKERS))
def test_precision_and_recall(
    label: str, evaluation_table: tuple[dict[str, tuple[float, float]], str]
) -> None:
    scores, table = evaluation_table
    precision, recall = scores[label]
    assert precision >= MIN_PRECISION, table
    assert recall >= MIN_RECALL, table


def test_corpus_is_deterministic() -> None:
    assert build_corpus(seed=7, per_label=20, negatives=50) == build_corpus(
        seed=7, per_label=20, negatives=50
    )
