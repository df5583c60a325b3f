"""Train the demo iris classifier and write an MLServer model repository for it.

Run with the MLServer virtualenv's Python (``.venv-mlserver/bin/python``), never the broker's:
scikit-learn and MLServer live apart from the broker so that their pins cannot constrain it.
The data set ships inside scikit-learn (``load_iris``), so nothing is downloaded.

Layout written under ``OUT``::

    OUT/settings.json              server settings: ports, one process, metrics off
    OUT/iris/model.joblib          the fitted estimator
    OUT/iris/model-settings.json   tells MLServer to serve it with mlserver_sklearn.SKLearnModel

The model is trained only when ``model.joblib`` is missing (or with ``--retrain``), so a restart
with new ports is quick; the settings files are rewritten every time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODEL_NAME = "iris"


def train(model_file: Path) -> float:
    """Fit a logistic regression on the full iris set and save it; return the training accuracy."""
    import joblib  # noqa: PLC0415 - heavy imports only when training is needed
    from sklearn.datasets import load_iris  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000, random_state=0)
    model.fit(features, labels)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_file.with_suffix(".tmp")
    joblib.dump(model, tmp)
    tmp.replace(model_file)  # atomic: a half-written model is never served
    return float(model.score(features, labels))


def write_settings(out: Path, *, grpc_port: int, http_port: int, host: str) -> None:
    """Write the server and model settings MLServer reads at start."""
    server = {
        "debug": False,
        "host": host,
        "http_port": http_port,
        "grpc_port": grpc_port,
        # Inference in the server process itself: no worker pool to start or to leak.
        "parallel_workers": 0,
        # No metrics server (it would need a third port); its scratch dir stays inside OUT.
        "metrics_endpoint": None,
        "metrics_dir": str(out / ".metrics"),
        "environments_dir": str(out / ".envs"),
        "load_models_at_startup": True,
    }
    model = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }
    (out / "settings.json").write_text(json.dumps(server, indent=2) + "\n")
    (out / MODEL_NAME / "model-settings.json").write_text(json.dumps(model, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="model repository directory to write")
    parser.add_argument("--grpc-port", type=int, default=8081)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--retrain", action="store_true", help="train even if a model exists")
    args = parser.parse_args(argv)

    out: Path = args.out.resolve()
    model_file = out / MODEL_NAME / "model.joblib"
    if args.retrain or not model_file.exists():
        accuracy = train(model_file)
        print(f"trained {MODEL_NAME}: training accuracy {accuracy:.3f}", file=sys.stderr)
    write_settings(out, grpc_port=args.grpc_port, http_port=args.http_port, host=args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
