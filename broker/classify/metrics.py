"""Precision and recall of a detector set on a labelled corpus, and a table to show them.

Shared by the unit test that holds the detectors to their thresholds and by the benchmark, so
both report the same numbers the same way. Scoring is by exact span: a reported span counts as
a true positive only if the corpus has a span with the same label, start and end. A span with the
right label but wrong boundaries is both a false positive and a false negative, because an
enforcement step that masks the wrong characters has failed twice (it hid data the buyer needs
and showed data it should have hidden).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from broker.classify.detectors import DetectorSet, Span


@dataclass(frozen=True, slots=True)
class LabelledText:
    """A text and every span a perfect detector set would report in it (none for a negative)."""

    text: str
    spans: tuple[Span, ...]


@dataclass(slots=True)
class LabelScore:
    """True positives, false positives and false negatives of one label."""

    label: str
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 1.0 when nothing was reported (no claim, no wrong claim)."""
        reported = self.tp + self.fp
        return self.tp / reported if reported else 1.0

    @property
    def recall(self) -> float:
        """tp / (tp + fn); 1.0 when the corpus has no instance of the label."""
        expected = self.tp + self.fn
        return self.tp / expected if expected else 1.0


@dataclass(slots=True)
class Evaluation:
    """Scores per label, plus the corpus size, for one detector set on one corpus."""

    scores: dict[str, LabelScore] = field(default_factory=dict)
    texts: int = 0
    negatives: int = 0

    def score(self, label: str) -> LabelScore:
        """The score of ``label``, created empty on first use."""
        found = self.scores.get(label)
        if found is None:
            found = self.scores[label] = LabelScore(label)
        return found


def evaluate(corpus: Iterable[LabelledText], detectors: DetectorSet) -> Evaluation:
    """Scan every text of ``corpus`` with ``detectors`` and count exact-span agreement."""
    result = Evaluation()
    for sample in corpus:
        result.texts += 1
        if not sample.spans:
            result.negatives += 1
        expected = set(sample.spans)
        found = set(detectors.scan(sample.text))
        for span in found & expected:
            result.score(span.label).tp += 1
        for span in found - expected:
            result.score(span.label).fp += 1
        for span in expected - found:
            result.score(span.label).fn += 1
    return result


def format_table(evaluation: Evaluation) -> str:
    """A fixed-width table, one row per label sorted by name, for test output and READMEs."""
    header = f"{'label':<26} {'tp':>7} {'fp':>5} {'fn':>5} {'precision':>9} {'recall':>7}"
    lines = [header, "-" * len(header)]
    for label in sorted(evaluation.scores):
        s = evaluation.scores[label]
        lines.append(
            f"{label:<26} {s.tp:>7} {s.fp:>5} {s.fn:>5} {s.precision:>9.4f} {s.recall:>7.4f}"
        )
    lines.append(f"{evaluation.texts} texts, {evaluation.negatives} of them hard negatives")
    return "\n".join(lines)
