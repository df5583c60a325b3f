"""The root key inside SoftHSM2 through PKCS#11: wrap, unwrap, wrong token key, keyring on top."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import skip_or_fail

SOFTHSM_LIBS = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
)
PIN = "5678"


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SoftHSM2 token labelled ``broker`` in a private token directory."""
    library = next((p for p in SOFTHSM_LIBS if p.exists()), None)
    util = shutil.which("softhsm2-util")
    if library is None or util is None:
        skip_or_fail("SoftHSM2 is not installed (Debian package softhsm2)")
    try:
        import pkcs11  # noqa: F401, PLC0415
    except ImportError:
        skip_or_fail("python-pkcs11 is not installed (PyPI python-pkcs11)")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(
        [
            str(util),
            "--init-token",
            "--free",
            "--label",
            "broker",
            "--so-pin",
            "1234",
            "--pin",
            PIN,
        ],
        check=True,
        capture_output=True,
    )
    yield str(library)


def test_wrap_and_unwrap_inside_the_token(token: str) -> None:
    from broker.retention.keyring import UnwrapError  # noqa: PLC0415
    from broker.retention.pkcs11 import Pkcs11KeyWrapper  # noqa: PLC0415

    wrapper = Pkcs11KeyWrapper.open(token, "broker", "root", PIN, create=True)
    try:
        blob = wrapper.wrap(b"k" * 32, b"ctx")
        assert b"k" * 32 not in blob
        assert wrapper.unwrap(blob, b"ctx") == b"k" * 32
        with pytest.raises(UnwrapError):
            wrapper.unwrap(blob, b"other context")
        assert wrapper.key_id == "pkcs11:broker/root"
    finally:
        wrapper.close()


def test_missing_key_pin_or_token_are_clear_errors(token: str) -> None:
    from broker.retention.keyring import RootKeyError  # noqa: PLC0415
    from broker.retention.pkcs11 import Pkcs11KeyWrapper  # noqa: PLC0415

    with pytest.raises(RootKeyError, match="no AES key labelled"):
        Pkcs11KeyWrapper.open(token, "broker", "absent", PIN)
    with pytest.raises(RootKeyError, match="cannot log in"):
        Pkcs11KeyWrapper.open(token, "broker", "root", "0000")
    with pytest.raises(RootKeyError, match="not found"):
        Pkcs11KeyWrapper.open(token, "nosuchtoken", "root", PIN)


def test_keyring_and_records_on_an_hsm_root_key(token: str, tmp_path: Path) -> None:
    from broker.retention.keyring import Keyring, RootKeyError  # noqa: PLC0415
    from broker.retention.pkcs11 import Pkcs11KeyWrapper  # noqa: PLC0415
    from broker.retention.records import RetentionStore  # noqa: PLC0415
    from broker.storage.db import create_engine_for, migrate  # noqa: PLC0415

    engine = create_engine_for(f"sqlite:///{tmp_path / 'broker.db'}")
    migrate(engine)
    wrapper = Pkcs11KeyWrapper.open(token, "broker", "root", PIN, create=True)
    try:
        store = RetentionStore(engine, Keyring.open(engine, wrapper))
        (info,) = store.retain(
            tenant="acme", subject="s", call_id="c", model="m", request=b"hsm", request_ttl_s=60
        )
        reopened = RetentionStore(engine, Keyring.open(engine, wrapper))
        assert reopened.get(info.record_id, tenant="acme").payload == b"hsm"
    finally:
        wrapper.close()
    other = Pkcs11KeyWrapper.open(token, "broker", "other", PIN, create=True)
    try:
        with pytest.raises(RootKeyError, match="pkcs11:broker/other"):
            Keyring.open(engine, other)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM retention_tenant_keys")).scalar() == 1
    finally:
        other.close()
        engine.dispose()
