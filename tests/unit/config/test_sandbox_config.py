"""The ``[sandbox]`` section: the worker uid range (never 0) and per-worker cgroups."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import ConfigError, load_config


def test_defaults_give_each_worker_a_uid_from_a_dedicated_range() -> None:
    sandbox = load_config(None, {}).sandbox
    assert sandbox.worker_uid_base == 200_000
    assert sandbox.worker_uid_count == 1024
    assert sandbox.cgroups is True


def test_the_range_comes_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("[sandbox]\nworker_uid_base = 500000\ncgroups = false\n")
    sandbox = load_config(path, {"BROKER__SANDBOX__WORKER_UID_COUNT": "16"}).sandbox
    assert (sandbox.worker_uid_base, sandbox.worker_uid_count) == (500_000, 16)
    assert sandbox.cgroups is False


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("WORKER_UID_BASE", "0", "sandbox.worker_uid_base"),
        ("WORKER_UID_COUNT", "0", "sandbox.worker_uid_count"),
        ("WORKER_UID_BASE", "4294967000", "below 2\\*\\*32 - 1"),
    ],
)
def test_root_or_an_impossible_range_is_refused(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {f"BROKER__SANDBOX__{key}": value})
