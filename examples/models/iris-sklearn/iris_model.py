"""An iris classifier (scikit-learn logistic regression) trained at prepare time.

``train`` is the package's prepare step: the broker runs it once, in a sandbox worker with the
prepared site-packages, on the iris data set that ships inside scikit-learn (no download), and
stores what it returns as the artefact ``iris.pkl`` in the prepared environment. Workers then
find it read-only at ``/env/0/iris.pkl`` and ``predict`` serves calls from it.

scikit-learn is imported when the worker starts, so the first call does not pay for it.

Payload: ``{"flowers": [[sepal_length, sepal_width, petal_length, petal_width], ...]}`` (cm).
"""

from __future__ import annotations

import base64
import pickle
from pathlib import Path
from typing import Any

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

ARTEFACT = Path("/env/0/iris.pkl")
MAX_FLOWERS = 1000


def train(payload: dict[str, Any]) -> dict[str, Any]:
    """Fit the classifier on the bundled iris data; return it as a base64 artefact."""
    data = load_iris()
    model = LogisticRegression(max_iter=1000).fit(data.data, data.target)
    blob = pickle.dumps({"model": model, "species": [str(n) for n in data.target_names]})
    accuracy = float(model.score(data.data, data.target))
    return {"artefacts": {"iris.pkl": base64.b64encode(blob).decode()}, "accuracy": accuracy}


_loaded: dict[str, Any] = {}


def predict(payload: dict[str, Any]) -> dict[str, Any]:
    """Classify each flower; answer the species and the class probabilities."""
    if not _loaded:
        _loaded.update(pickle.loads(ARTEFACT.read_bytes()))  # noqa: S301 - our own artefact
    flowers = payload.get("flowers")
    if not isinstance(flowers, list) or not 1 <= len(flowers) <= MAX_FLOWERS:
        raise ValueError(f"flowers must be a list of 1 to {MAX_FLOWERS} measurements")
    rows = [[float(x) for x in flower] for flower in flowers]
    if any(len(row) != 4 for row in rows):
        raise ValueError("each flower needs 4 measurements (sepal and petal length and width)")
    model, species = _loaded["model"], _loaded["species"]
    probabilities = model.predict_proba(rows).round(4).tolist()
    return {
        "predictions": [
            {
                "species": species[row.index(max(row))],
                "probabilities": dict(zip(species, row, strict=True)),
            }
            for row in probabilities
        ]
    }
