"""Configuration: TOML file, environment overrides, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import ConfigError, load_config


def test_defaults_start_a_working_node() -> None:
    config = load_config(None, {})
    assert config.server.listen == "127.0.0.1:50051"
    assert config.limits.max_depth == 64
    assert config.database_url == "sqlite:///var/broker.db"
    assert config.auth.dev_issuer.enabled is False


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text('data_dir = "/srv/broker"\n[server]\nlisten = "0.0.0.0:9000"\n')
    config = load_config(
        path,
        {
            "BROKER__SERVER__MAX_WORKERS": "4",
            "BROKER__LIMITS__MAX_DEPTH": "10",
            "BROKER__DATABASE__URL": "postgresql://db/broker",
            "UNRELATED": "x",
        },
    )
    assert config.server.listen == "0.0.0.0:9000"
    assert config.server.max_workers == 4
    assert config.limits.max_depth == 10
    assert config.database_url == "postgresql://db/broker"
    assert config.data_dir == Path("/srv/broker")


def test_issuers_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        '[[auth.issuers]]\nissuer = "https://login.example.com/"\naudience = "broker"\n'
        'algorithms = ["RS256"]\njwks_file = "/etc/jwks.json"\n'
    )
    issuer = load_config(path, {}).auth.issuers[0]
    assert issuer.algorithms == ["RS256"]
    assert issuer.jwks_file == Path("/etc/jwks.json")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nlisten = 5\n", "server.listen"),
        ("[server]\nlistne = '127.0.0.1:1'\n", "server.listne"),
        ("[limits]\nmax_depth = 0\n", "limits.max_depth"),
        ("[[auth.issuers]]\nissuer='x'\naudience='y'\nalgorithms=['none']\n", "algorithms"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"broker\.toml") as exc:
        load_config(path, {})
    assert needle in str(exc.value)


def test_missing_file_and_bad_environment() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Path("/nonexistent/broker.toml"), {})
    with pytest.raises(ConfigError, match=r"limits\.max_depth"):
        load_config(None, {"BROKER__LIMITS__MAX_DEPTH": "deep"})
    with pytest.raises(ConfigError, match="non-table"):
        load_config(None, {"BROKER__DATA_DIR": "x", "BROKER__DATA_DIR__SUB": "y"})


def test_keys_live_in_the_data_dir_unless_a_keys_dir_is_shared(tmp_path: Path) -> None:
    alone = load_config(None, {"BROKER__DATA_DIR": str(tmp_path / "a")})
    assert alone.key_dir == tmp_path / "a"
    shared = load_config(
        None, {"BROKER__DATA_DIR": str(tmp_path / "b"), "BROKER__KEYS_DIR": str(tmp_path / "k")}
    )
    assert shared.key_dir == tmp_path / "k"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'data_dir = "var"\n# caf\xdf\n', "not UTF-8 text (invalid byte at offset 22)"),
        (b"a = " + b"[" * 3000 + b"]" * 3000 + b"\n", "too deeply"),
    ],
    ids=["not-utf8", "deep-arrays"],
)
def test_unreadable_files_are_config_errors(tmp_path: Path, content: bytes, needle: str) -> None:
    # Found by the config_file fuzz harness: both escaped load_config as UnicodeDecodeError and
    # RecursionError, so `broker serve` died with a traceback instead of naming the file.
    path = tmp_path / "broker.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"broker\.toml") as exc:
        load_config(path, {})
    assert needle in str(exc.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path, {})  # a directory


def test_an_environment_value_nested_too_deep_for_json_is_text() -> None:
    # Found by the config_file fuzz harness: json.loads' RecursionError escaped the override.
    with pytest.raises(ConfigError, match=r"limits\.max_depth"):
        load_config(None, {"BROKER__LIMITS__MAX_DEPTH": "[" * 3000})
    config = load_config(None, {"BROKER__DATA_DIR": "[" * 3000})
    assert str(config.data_dir) == "[" * 3000
