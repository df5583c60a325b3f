"""The ``broker`` command as a newcomer uses it, against a running broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from tests.integration.harness import (
    BrokerHarness,
    FakeBackend,
    echo_model,
    start_broker,
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerHarness]:
    harness = start_broker(tmp_path / "var", f"sqlite:///{tmp_path / 'broker.db'}")
    yield harness
    harness.stop()


def _broker(
    harness: BrokerHarness, *args: str, token: str | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BROKER_TARGET": harness.target,
        "BROKER__DATA_DIR": str(harness.config.data_dir),
        "BROKER__AUTH__DEV_ISSUER__ENABLED": "true",
    }
    env.pop("BROKER_TOKEN", None)
    if token is not None:
        env["BROKER_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "broker.cli.main", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_newcomer_flow(broker: BrokerHarness, backend: FakeBackend, tmp_path: Path) -> None:
    minted = _broker(broker, "token", "mint", "--tenant", "acme-models", "--role", "vendor")
    assert minted.returncode == 0, minted.stderr
    assert "development issuer" in minted.stderr
    vendor_token = minted.stdout.strip()

    model_file = tmp_path / "model.json"
    model_file.write_text(json_format.MessageToJson(echo_model(backend.target)))
    registered = _broker(broker, "models", "register", str(model_file), token=vendor_token)
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["ref"] == "acme-models/echo@1.0.0"

    again = _broker(broker, "models", "register", str(model_file), token=vendor_token)
    assert again.returncode == 1
    assert again.stderr.startswith("broker: ALREADY_EXISTS:")

    buyer_token = _broker(
        broker, "token", "mint", "--tenant", "bank", "--role", "buyer"
    ).stdout.strip()
    listed = _broker(broker, "models", "list", token=buyer_token)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("acme-models/echo@1.0.0\techoes its input")

    called = _broker(broker, "call", "acme-models/echo", token=buyer_token, stdin=b'{"text":"hi"}')
    assert called.returncode == 0, called.stderr
    output = json.loads(called.stdout)
    assert output["answer"] == {"echo": "hi"}
    assert output["model"] == "acme-models/echo@1.0.0"

    officer = _broker(
        broker, "token", "mint", "--tenant", "bank", "--role", "compliance"
    ).stdout.strip()
    intents = _broker(broker, "audit", "query", "--kind", "call.intent", "--json", token=officer)
    revision = json.loads(intents.stdout.splitlines()[0])["policy_revision"]
    by_revision = _broker(
        broker, "audit", "query", "--policy-revision", revision, "--json", token=officer
    )
    assert by_revision.returncode == 0, by_revision.stderr
    assert [json.loads(line)["kind"] for line in by_revision.stdout.splitlines()] == ["call.intent"]
    other = _broker(
        broker, "audit", "query", "--policy-revision", "sha256:" + "0" * 64, token=officer
    )
    assert other.returncode == 0, other.stderr
    assert "call.intent" not in other.stdout

    payload_file = tmp_path / "payload.json"
    payload_file.write_text('{"text": ')
    bad = _broker(
        broker, "call", "acme-models/echo", "--payload", str(payload_file), token=buyer_token
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("broker: INVALID_ARGUMENT: payload is not valid JSON")

    mine = _broker(broker, "models", "mine", token=vendor_token)
    assert json.loads(mine.stdout.splitlines()[0])["status"] == "MODEL_STATUS_LISTED"
    retired = _broker(broker, "models", "retire", "acme-models/echo@1.0.0", token=vendor_token)
    assert json.loads(retired.stdout)["status"] == "MODEL_STATUS_RETIRED"

    health = _broker(broker, "health")
    assert health.returncode == 0
    assert "status: SERVING" in health.stdout
    assert "service: broker.v1.Broker" in health.stdout


def test_actionable_errors(broker: BrokerHarness, tmp_path: Path) -> None:
    no_token = _broker(broker, "models", "list")
    assert no_token.returncode == 1
    assert "no token" in no_token.stderr
    assert "BROKER_TOKEN" in no_token.stderr

    bad_token = _broker(broker, "models", "list", token="garbage")
    assert bad_token.returncode == 1
    assert "UNAUTHENTICATED" in bad_token.stderr

    model_file = tmp_path / "model.json"
    model_file.write_text('{"name": "x", "colour": "blue"}')
    unknown = _broker(broker, "models", "register", str(model_file), token="t")
    assert unknown.returncode == 1
    assert "does not describe a broker.v1.Model" in unknown.stderr

    config = tmp_path / "broken.toml"
    config.write_text("[server]\nlisten = 5\n")
    broken = _broker(
        broker, "token", "mint", "--tenant", "a", "--role", "buyer", "--config", str(config)
    )
    assert broken.returncode == 2
    assert "server.listen" in broken.stderr


def test_preview_and_labels_from_the_command_line(
    broker: BrokerHarness, backend: FakeBackend
) -> None:
    broker.client("acme-models", "vendor").register_model(echo_model(backend.target))
    token = broker.token("bank", "buyer")
    preview = _broker(
        broker,
        "call",
        "acme-models/echo",
        "--preview",
        "--label",
        "/text=confidential",
        token=token,
        stdin=b'{"text": "quarterly numbers"}',
    )
    assert preview.returncode == 0, preview.stderr
    shown = json.loads(preview.stdout)
    assert shown["allow"] is True
    assert shown["decisions"][0]["action"] == "encrypt"
    assert backend.log.requests == []

    called = _broker(
        broker,
        "call",
        "acme-models/echo",
        "--label",
        "/text=confidential",
        token=token,
        stdin=b'{"text": "quarterly numbers"}',
    )
    output = json.loads(called.stdout)
    assert output["answer"] == {"echo": "quarterly numbers"}
    assert output["restored_values"] == 1
    assert output["decisions"][0]["action"] == "encrypt"
    sent = backend.log.requests[-1].inputs[0].contents.bytes_contents[0]
    assert sent.startswith(b"enc:v1:")

    bad = _broker(broker, "call", "acme-models/echo", "--label", "nolabel", token=token)
    assert bad.returncode == 1
    assert "POINTER=LABEL" in bad.stderr
