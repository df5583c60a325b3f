"""Detector throughput (MB/s of text scanned) and the cost of classifying the whole payload.

Three texts: the workload's sensitive notes (short, dense with entities), a 64 KB document with
an entity every few hundred characters, and 64 KB of plain prose (the common case: most text
holds nothing, and the detectors' cheap pre-checks should make that fast).
"""

from __future__ import annotations

from bench import workload
from bench.micro import seconds_per_call
from bench.sections import Section
from bench.settings import Settings
from bench.stats import Figure

_PROSE = (
    "The customer explained that the fee appeared after the transfer and asked whether the "
    "branch could review the statement before the end of the month. "
)


def _texts() -> dict[str, str]:
    notes = " ".join(text for _, _, text in workload.SENSITIVE)
    entities = (_PROSE * 2 + notes + " ") * 1
    return {
        "workload notes (5 entities)": notes,
        "64 KB, entity every ~600 chars": (entities * (65536 // len(entities) + 1))[:65536],
        "64 KB plain prose": (_PROSE * (65536 // len(_PROSE) + 1))[:65536],
    }


def run(settings: Settings) -> list[Figure]:
    """Scan each text and classify the payload, ``settings.repeat`` times each."""
    from broker.classify.classifier import classify  # noqa: PLC0415 - optional module
    from broker.classify.detectors import default_detector_set  # noqa: PLC0415

    detectors = default_detector_set()
    texts = _texts()
    scans = {
        name: Figure(f"detector scan: {name}", "MB/s", note=f"{len(text.encode())} bytes")
        for name, text in texts.items()
    }
    payload = workload.payload()
    labels = workload.schema_labels()
    whole = Figure("classify the 20-field 2 KB payload", "µs/call", note="walk + scan + labels")
    found = {span.label for span in detectors.scan(texts["workload notes (5 entities)"])}
    if len(found) != len(workload.SENSITIVE):
        raise RuntimeError(f"detectors found {sorted(found)} in the workload, expected 5 labels")
    for _ in range(settings.repeat):
        for name, text in texts.items():
            per_call = seconds_per_call(lambda t=text: detectors.scan(t), settings.micro_seconds)
            scans[name].add(len(text.encode()) / per_call / 1e6)
        per_call = seconds_per_call(
            lambda: classify(payload, schema_labels=labels, detectors=detectors),
            settings.micro_seconds,
        )
        whole.add(per_call * 1e6)
    return [*scans.values(), whole]


SECTION = Section(
    key="detectors",
    title="detectors and classification",
    requires=("broker.classify.classifier", "broker.classify.detectors"),
    run=run,
)
