"""The operator commands of ``broker retention`` against a real SQLite node directory."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from broker.cli import retention as cli
from broker.config import ConfigError, load_config
from broker.retention.setup import open_retention
from broker.storage.db import create_engine_for, migrate


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["retention", *argv])
    status: int = args.handler(args)
    return status


def test_key_lifecycle_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets_dir, data = tmp_path / "secrets", tmp_path / "data"
    secrets_dir.mkdir()
    root, new_root = secrets_dir / "root.key", secrets_dir / "root2.key"
    config = tmp_path / "broker.toml"
    config.write_text(f'data_dir = "{data}"\n[retention]\nroot_key_file = "{root}"\n')
    assert _run("generate-root-key", "--out", str(root)) == 0
    with pytest.raises(ValueError, match="never overwritten"):
        _run("generate-root-key", "--out", str(root))

    loaded = load_config(config)
    engine = create_engine_for(loaded.database_url)
    migrate(engine)
    retention = open_retention(loaded, engine)
    assert retention is not None
    (info,) = retention.store.retain(
        tenant="acme", subject="s", call_id="c", model="m", request=b"x", request_ttl_s=3600
    )
    retention.close()

    assert _run("check", "--config", str(config)) == 0
    assert _run("rotate", "--config", str(config), "--all") == 0
    assert _run("rewrap", "--config", str(config), "--destroy-old-versions") == 0
    assert "acme: 1 records re-wrapped, destroyed versions [1]" in capsys.readouterr().out
    _run("generate-root-key", "--out", str(new_root))
    assert _run("rotate-root", "--config", str(config), "--new-root-key-file", str(new_root)) == 0
    with pytest.raises(ConfigError, match="is not the one that wrapped"):
        _run("check", "--config", str(config))
    config.write_text(f'data_dir = "{data}"\n[retention]\nroot_key_file = "{new_root}"\n')
    assert _run("run-once", "--config", str(config)) == 0
    retention = open_retention(load_config(config), engine)
    assert retention is not None
    assert retention.store.get(info.record_id, tenant="acme").payload == b"x"
    retention.close()
    engine.dispose()
