"""Root key sources and the start-up checks: missing, malformed, misplaced, wrong."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.config import Config, ConfigError
from broker.retention.keyring import LocalKeyWrapper, RootKeyError
from broker.retention.rootkey import (
    decode_root_key,
    encode_root_key,
    generate_root_key_file,
    load_key_wrapper,
)
from broker.retention.setup import open_retention
from tests.unit.retention.conftest import ROOT_KEY


def _config(tmp_path: Path, **retention: object) -> Config:
    return Config.model_validate({"data_dir": str(tmp_path / "data"), "retention": retention})


def test_keys_decode_from_base64_and_hex() -> None:
    assert decode_root_key(encode_root_key(ROOT_KEY), source="x") == ROOT_KEY
    assert decode_root_key(ROOT_KEY.hex() + "\n", source="x") == ROOT_KEY
    with pytest.raises(RootKeyError, match="generate-root-key"):
        decode_root_key(base64.b64encode(b"short").decode(), source="x")
    with pytest.raises(RootKeyError):
        decode_root_key("not a key at all!", source="x")


def test_generated_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    generate_root_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_root_key_file(path)
    assert path.read_bytes() == first


def test_nothing_configured_means_retention_off(tmp_path: Path) -> None:
    assert load_key_wrapper(_config(tmp_path), environ={}) is None


def test_missing_key_file_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_key_wrapper(_config(tmp_path, root_key_file=str(tmp_path / "nope")), environ={})


def test_key_file_inside_the_data_dir_is_refused_unless_unsafe(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    inside = tmp_path / "data" / "root.key"
    generate_root_key_file(inside)
    with pytest.raises(RootKeyError, match="beside the data"):
        load_key_wrapper(_config(tmp_path, root_key_file=str(inside)), environ={})
    config = _config(tmp_path, root_key_file=str(inside), unsafe_allow_root_key_in_data_dir=True)
    assert load_key_wrapper(config, environ={}) is not None


def test_key_from_environment(tmp_path: Path) -> None:
    config = _config(tmp_path, root_key_env="ROOT")
    wrapper = load_key_wrapper(config, environ={"ROOT": encode_root_key(ROOT_KEY)})
    assert wrapper is not None and wrapper.key_id == LocalKeyWrapper(ROOT_KEY).key_id
    with pytest.raises(RootKeyError, match="not set"):
        load_key_wrapper(config, environ={})


def test_two_sources_are_ambiguous(tmp_path: Path) -> None:
    config = _config(tmp_path, root_key_env="ROOT", root_key_file=str(tmp_path / "k"))
    with pytest.raises(RootKeyError, match="only one"):
        load_key_wrapper(config, environ={"ROOT": encode_root_key(ROOT_KEY)})


def test_start_refuses_a_wrong_key_and_a_missing_one(tmp_path: Path, engine: sa.Engine) -> None:
    key_file = tmp_path / "root.key"
    generate_root_key_file(key_file)
    config = _config(tmp_path, root_key_file=str(key_file))
    retention = open_retention(config, engine, environ={})
    assert retention is not None
    retention.store.retain(
        tenant="acme", subject="s", call_id="c", model="m", request=b"x", request_ttl_s=9
    )
    retention.close()

    with pytest.raises(ConfigError, match="no root key is configured"):
        open_retention(_config(tmp_path), engine, environ={})
    other = tmp_path / "other.key"
    generate_root_key_file(other)
    with pytest.raises(ConfigError, match="is not the one that wrapped"):
        open_retention(_config(tmp_path, root_key_file=str(other)), engine, environ={})
    again = open_retention(config, engine, environ={})
    assert again is not None
    assert again.keyring.verify_all() == 1
    again.close()


def test_unconfigured_and_empty_database_starts_without_retention(
    tmp_path: Path, engine: sa.Engine
) -> None:
    assert open_retention(_config(tmp_path), engine, environ={}) is None
