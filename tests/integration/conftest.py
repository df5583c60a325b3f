"""Fixtures that start real backends for integration tests.

MLServer runs from ``.venv-mlserver`` (``make mlserver-env``); without it the tests that need
it skip with that instruction, or fail in CI (``tests.conftest.skip_or_fail``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.demo.mlserver import MLServerProcess, start_mlserver
from tests.conftest import skip_or_fail
from tests.integration.harness import backend  # noqa: F401 - the fake OIP backend fixture
from tests.integration.llm_fixtures import llama_server, llm_venv, smollm2_gguf  # noqa: F401
from tests.integration.private_postgres import (
    PrivatePostgres,
    missing_private_postgres,
    private_postgres,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MLSERVER_VENV = REPO_ROOT / ".venv-mlserver"


@pytest.fixture(scope="session")
def mlserver_venv() -> Path:
    """The MLServer virtualenv, once its installation has finished."""
    if not (MLSERVER_VENV / ".installed-stamp").exists():
        skip_or_fail(f"no MLServer environment at {MLSERVER_VENV}: run make mlserver-env")
    return MLSERVER_VENV


@pytest.fixture(scope="session")
def mlserver(
    mlserver_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MLServerProcess]:
    """A real MLServer serving the demo iris classifier on free ports, for the whole session."""
    server = start_mlserver(mlserver_venv, tmp_path_factory.mktemp("mlserver"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this test's own, which it may stop and restart (the machine's
    shared server must not be); stopped and deleted afterwards."""
    problem = missing_private_postgres()
    if problem:
        skip_or_fail(problem)
    with private_postgres() as server:
        yield server
